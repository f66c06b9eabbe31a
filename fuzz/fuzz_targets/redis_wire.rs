//! Objects read back from Redis, which other nodes (or anyone with access to it) wrote:
//! decoding any bytes must never panic, and what decodes must encode and decode again to
//! the same object.
#![no_main]
use bytes::Bytes;
use floodgate::cache::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(object) = wire::decode(Bytes::copy_from_slice(data)) {
        let encoded = wire::encode(&object);
        let again = wire::decode(encoded.clone()).expect("an encoded object decodes");
        assert_eq!(wire::encode(&again), encoded);
        let _ = object.usable_until();
    }
});
