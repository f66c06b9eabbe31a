//! `X-Magento-Tags-Pattern` and `X-Pool` come from purgers (trusted, but their tools are
//! not): parsing must never panic, and Magento's shape must read back into its tags.
#![no_main]
use floodgate::purge::pattern::{self, Selector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let Ok(Selector::Tags(tags)) = pattern::parse(data) {
        assert!(!tags.is_empty());
        for tag in &tags {
            assert!(!tag.is_empty() && !tag.contains(','), "{tag:?}");
        }
    }
    let _ = pattern::pool(data);
});
