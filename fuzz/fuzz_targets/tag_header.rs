//! `X-Magento-Tags` from the origin, any number of lines of any bytes: the tags read
//! back must be non-empty, comma-free, and survive the shared tier's normalised form.
#![no_main]
use floodgate::cache::Tags;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(value) = http::HeaderValue::from_bytes(line) {
            headers.append("x-magento-tags", value);
        }
    }
    let tags = Tags::from_headers(&headers);
    for tag in tags.iter() {
        assert!(!tag.is_empty() && !tag.contains(','), "{tag:?}");
    }
    let again = Tags::from_normalised(tags.as_str());
    assert!(again.iter().eq(tags.iter()));
});
