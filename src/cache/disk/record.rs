//! What the disk tier writes for one object, and reads back.
//!
//! Two records per object, written in one transaction:
//! - the object: a CRC-32 of the rest, a flags byte (bit 0: nothing was derived from
//!   the body, so a read need not inflate and scan it again), then the object in the
//!   shared tier's encoding (`wire`). Checked on every read: a record that does not
//!   match its checksum is a miss (and is removed), never a garbled page;
//! - its summary: until when it may be served, its size, tags and pool. Read at start-up
//!   to rebuild the index without reading a single body.
//!
//! redb checksums its own pages and commits atomically; the record's own checksum is the
//! second line of defence, against a file damaged outside redb's sight.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::super::{wire, StoredObject, Tags};

const SUMMARY_FORMAT: u8 = 1;

const NOTHING_DERIVED: u8 = 1;

/// An object sealed for disk: checksum, flags, then the encoding.
pub fn seal(object: &StoredObject) -> Bytes {
    let encoded = wire::encode(object);
    let mut out = BytesMut::with_capacity(encoded.len() + 5);
    out.put_u32(0);
    out.put_u8(if object.nothing_derived {
        NOTHING_DERIVED
    } else {
        0
    });
    out.put_slice(&encoded);
    let sum = crc32fast::hash(&out[4..]);
    out[..4].copy_from_slice(&sum.to_be_bytes());
    out.freeze()
}

/// The object in a sealed record; `None` when the checksum or the encoding is wrong.
pub fn unseal(record: &[u8]) -> Option<StoredObject> {
    if record.len() < 5 {
        return None;
    }
    let (sum, rest) = record.split_at(4);
    let sum = u32::from_be_bytes([sum[0], sum[1], sum[2], sum[3]]);
    if crc32fast::hash(rest) != sum {
        return None;
    }
    let mut object = wire::decode(Bytes::copy_from_slice(&rest[1..]))?;
    object.nothing_derived = rest[0] & NOTHING_DERIVED != 0;
    Some(object)
}

/// What the index keeps of an object on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub usable_until: SystemTime,
    /// Bytes of the sealed record.
    pub size: u64,
    pub tags: Tags,
    pub pool: Option<Box<str>>,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Summary {
    pub fn of(object: &StoredObject, size: u64) -> Self {
        Self {
            // Whole milliseconds, as stored.
            usable_until: UNIX_EPOCH + Duration::from_millis(millis(object.usable_until())),
            size,
            tags: object.tags.clone(),
            pool: object.pool.clone(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let tags = self.tags.as_str().as_bytes();
        let pool = self.pool.as_deref().unwrap_or("").as_bytes();
        let mut out = Vec::with_capacity(25 + tags.len() + pool.len());
        out.put_u8(SUMMARY_FORMAT);
        out.put_u64(millis(self.usable_until));
        out.put_u64(self.size);
        out.put_u32(tags.len() as u32);
        out.put_slice(tags);
        out.put_u32(pool.len() as u32);
        out.put_slice(pool);
        out
    }

    /// `None` for anything but a whole summary of this format.
    pub fn decode(mut bytes: &[u8]) -> Option<Self> {
        fn string(bytes: &mut &[u8]) -> Option<String> {
            if bytes.remaining() < 4 {
                return None;
            }
            let len = bytes.get_u32() as usize;
            if bytes.remaining() < len {
                return None;
            }
            let (s, rest) = bytes.split_at(len);
            let s = String::from_utf8(s.to_vec()).ok();
            *bytes = rest;
            s
        }
        if bytes.remaining() < 17 || bytes.get_u8() != SUMMARY_FORMAT {
            return None;
        }
        let usable_until = UNIX_EPOCH + Duration::from_millis(bytes.get_u64());
        let size = bytes.get_u64();
        let tags = Tags::from_normalised(&string(&mut bytes)?);
        let pool = Some(string(&mut bytes)?)
            .filter(|p| !p.is_empty())
            .map(String::into_boxed_str);
        bytes.is_empty().then_some(Self {
            usable_until,
            size,
            tags,
            pool,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CompactHeader;
    use pingora::http::ResponseHeader;

    fn object() -> StoredObject {
        let header = ResponseHeader::build(200, None).expect("header");
        StoredObject::restored(
            SystemTime::now() + Duration::from_secs(60),
            SystemTime::now(),
            300,
            600,
            CompactHeader::pack(&header, &[], &[]),
            Bytes::from_static(b"<html>page</html>"),
            Tags::from_normalised("cat_p_1,store"),
            Some("pool-a".into()),
            None,
        )
    }

    #[test]
    fn a_record_with_one_flipped_bit_is_refused() {
        let sealed = seal(&object());
        let back = unseal(&sealed).expect("a whole record reads back");
        assert_eq!(back.body, Bytes::from_static(b"<html>page</html>"));
        for at in [0, 3, 4, 10, sealed.len() - 1] {
            let mut damaged = sealed.to_vec();
            damaged[at] ^= 0x10;
            assert!(unseal(&damaged).is_none(), "a flip at byte {at} is caught");
        }
        assert!(unseal(&sealed[..sealed.len() - 1]).is_none());
        assert!(unseal(b"").is_none());
    }

    #[test]
    fn a_summary_reads_back_and_a_cut_one_does_not() {
        let object = object();
        let summary = Summary::of(&object, 1234);
        let bytes = summary.encode();
        assert_eq!(Summary::decode(&bytes), Some(summary.clone()));
        for cut in 0..bytes.len() {
            assert!(Summary::decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
    }
}
