//! URL normalisation and routing: a request target and method are whatever a client
//! sends. Normalising must never panic, must be idempotent (the origin gets the URL the
//! key was built from), and must keep the URL a path.
#![no_main]
use floodgate::config::Config;
use floodgate::policy::Rules;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static RULES: Rules = Rules::new(&Config::default()).expect("default rules");
    }
    RULES.with(|rules| {
        let (url, _route, _variant) =
            rules.classify(&http::Method::GET, data, &http::HeaderMap::new());
        let again = rules.normalizer.normalize(&url);
        assert_eq!(again, url, "normalising twice changed the URL");
        if data.starts_with(b"/") || data.starts_with(b"http://") || data.starts_with(b"https://") {
            assert!(url.starts_with('/'), "{url:?} is not a path");
        }
    });
});
