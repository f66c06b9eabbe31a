//! Who the client is: `X-Forwarded-For` lines as a client or proxy sends them, and the
//! PROXY protocol header a trusted proxy sends first. Never a panic, and an untrusted
//! peer is the client whatever it claims.
#![no_main]
use std::net::IpAddr;

use floodgate::policy::client::real_client;
use floodgate::proxy::proxy_protocol;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = proxy_protocol::parse(data);
    let mut headers = http::HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(value) = http::HeaderValue::from_bytes(line) {
            headers.append("x-forwarded-for", value);
        }
    }
    let stranger: IpAddr = "203.0.113.1".parse().expect("ip");
    assert_eq!(
        real_client(stranger, &headers, |ip| ip.is_loopback()),
        stranger
    );
    let _ = real_client("127.0.0.1".parse().expect("ip"), &headers, |ip| {
        ip.is_loopback()
    });
});
