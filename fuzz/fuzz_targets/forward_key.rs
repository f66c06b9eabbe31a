//! A request's headers, as any client sends them (duplicates, `Connection` nominations,
//! cookie crumbs), through `policy::forward::prepare` and then what Pingora forwards:
//! every header the cache key or a learnt `Vary` reads must reach the origin with the
//! value the key saw, so no visitor can store a page under a key Magento did not render.
#![no_main]
use std::sync::OnceLock;

use floodgate::config::{Config, DesignException};
use floodgate::policy::forward::{as_pingora_forwards, is_hop_by_hop, prepare};
use floodgate::policy::key::{cache_key, with_variance, Variant};
use floodgate::policy::Rules;
use libfuzzer_sys::fuzz_target;
use pingora::cache::key::CacheHashKey;

/// Names a line may carry: what the key reads, hop-by-hop ones, and any other.
const NAMES: [&str; 16] = [
    "cookie",
    "connection",
    "user-agent",
    "accept-language",
    "store",
    "content-currency",
    "x-magento-cache-id",
    "authorization",
    "keep-alive",
    "te",
    "upgrade",
    "x-forwarded-proto",
    "x-custom",
    "host",
    "transfer-encoding",
    "proxy-connection",
];

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let mut config = Config::default();
        config.magento.design_exceptions = vec![DesignException {
            user_agent: "iPhone|Android".into(),
            value: "mobile".into(),
        }];
        Rules::new(&config).expect("rules")
    })
}

fn values(headers: &http::HeaderMap, name: &http::HeaderName) -> Vec<Vec<u8>> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some((&pick, value)) = line.split_first() else {
            continue;
        };
        if let Ok(value) = http::HeaderValue::from_bytes(value) {
            headers.append(NAMES[pick as usize % NAMES.len()], value);
        }
    }
    if prepare(&mut headers).is_err() {
        return;
    }
    let forwarded = as_pingora_forwards(&headers).expect("Pingora forwards a prepared request");
    assert!(headers.get_all(http::header::COOKIE).iter().count() <= 1);
    for name in headers.keys() {
        if is_hop_by_hop(name.as_str()) {
            continue;
        }
        assert_eq!(
            values(&headers, name),
            values(&forwarded, name),
            "{name} changed between the key and the origin"
        );
    }
    // The key, and a page varying on every header present, are the same for both.
    for url in ["/p.html", "/graphql?query=q"] {
        let key = |h: &http::HeaderMap| cache_key(url, h, &Variant::of(url, h), rules());
        let (seen, sent) = (key(&headers), key(&forwarded));
        assert_eq!(seen.primary_bin(), sent.primary_bin(), "the key changed");
        let names: Vec<http::HeaderName> = headers
            .keys()
            .filter(|n| !is_hop_by_hop(n.as_str()))
            .cloned()
            .collect();
        assert_eq!(
            with_variance(&seen, &names, &headers).primary_bin(),
            with_variance(&sent, &names, &forwarded).primary_bin(),
            "a Vary key changed"
        );
    }
});
