//! An origin response's Cache-Control, Surrogate-Control, Expires, Vary and Set-Cookie,
//! as whatever bytes an origin (or a module in it) sends: the storage decision must never
//! panic, and must never store a status Varnish gives no TTL, nor a Vary on credentials.
#![no_main]
use std::time::{Duration, SystemTime};

use floodgate::policy::key::Variant;
use floodgate::policy::storability::{decide, Storability};
use floodgate::policy::vary::{self, Vary};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 6] = [
    "cache-control",
    "surrogate-control",
    "expires",
    "vary",
    "set-cookie",
    "x-magento-cache-id",
];

fuzz_target!(|data: &[u8]| {
    let Some((&status, rest)) = data.split_first() else {
        return;
    };
    let status = [200u16, 203, 301, 302, 307, 400, 401, 404, 405, 429, 500][status as usize % 11];
    let mut headers = http::HeaderMap::new();
    for (i, line) in rest.split(|b| *b == b'\n').enumerate() {
        if let Ok(value) = http::HeaderValue::from_bytes(line) {
            headers.append(NAMES[i % NAMES.len()], value);
        }
    }
    let variant = Variant::default();
    let decision = decide(
        http::StatusCode::from_u16(status).expect("status"),
        &headers,
        &variant,
        Duration::from_secs(120),
        SystemTime::now(),
    );
    if matches!(decision.storability, Storability::Store { .. }) {
        assert!(
            ![400, 401, 404, 405, 429, 500].contains(&status),
            "stored a {status}"
        );
    }
    if let Vary::Headers(names) = vary::of(&headers, &["x-forwarded-proto"]) {
        assert!(names.iter().all(|n| n != "cookie" && n != "authorization"));
    }
});
