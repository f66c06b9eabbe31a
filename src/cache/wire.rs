//! A stored object as bytes, for the shared tier in Redis: a small length-prefixed
//! format (version byte first), read back with every length checked, so a truncated or
//! foreign value is a miss, never a panic or a garbled page.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::Version;

use super::{CompactHeader, RequestIdentity, StoredObject, Tags};

const FORMAT: u8 = 1;

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(bytes.len() as u32);
    out.put_slice(bytes);
}

fn version_code(version: Version) -> u8 {
    match version {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        _ => 2,
    }
}

fn version_of(code: u8) -> Version {
    match code {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        3 => Version::HTTP_2,
        4 => Version::HTTP_3,
        _ => Version::HTTP_11,
    }
}

pub fn encode(object: &StoredObject) -> Bytes {
    let (status, version, [shared, own]) = object.header.parts();
    let mut out = BytesMut::with_capacity(object.body.len() + object.header.len_bytes() + 256);
    out.put_u8(FORMAT);
    out.put_u64(millis(object.fresh_until));
    out.put_u64(millis(object.updated));
    out.put_u32(object.grace_secs);
    out.put_u32(object.keep_secs);
    out.put_u16(status);
    out.put_u8(version_code(version));
    // One length-prefixed block, written from its two pieces.
    out.put_u32((shared.len() + own.len()) as u32);
    out.put_slice(shared);
    out.put_slice(own);
    put_bytes(&mut out, object.tags.as_str().as_bytes());
    put_bytes(&mut out, object.pool.as_deref().unwrap_or("").as_bytes());
    match &object.identity {
        Some(identity) => {
            out.put_u8(1);
            put_bytes(&mut out, identity.url.as_bytes());
            out.put_u16(identity.headers.len() as u16);
            for (name, value) in identity.headers.iter() {
                put_bytes(&mut out, name.as_bytes());
                put_bytes(&mut out, value.as_bytes());
            }
        }
        None => out.put_u8(0),
    }
    put_bytes(&mut out, &object.body);
    out.freeze()
}

struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Option<()> {
        (self.0.remaining() >= n).then_some(())
    }
    fn u8(&mut self) -> Option<u8> {
        self.need(1)?;
        Some(self.0.get_u8())
    }
    fn u16(&mut self) -> Option<u16> {
        self.need(2)?;
        Some(self.0.get_u16())
    }
    fn u32(&mut self) -> Option<u32> {
        self.need(4)?;
        Some(self.0.get_u32())
    }
    fn u64(&mut self) -> Option<u64> {
        self.need(8)?;
        Some(self.0.get_u64())
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let len = self.u32()? as usize;
        self.need(len)?;
        Some(self.0.split_to(len))
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

pub fn decode(value: Bytes) -> Option<StoredObject> {
    let mut r = Reader(value);
    if r.u8()? != FORMAT {
        return None;
    }
    let fresh_until = UNIX_EPOCH + Duration::from_millis(r.u64()?);
    let updated = UNIX_EPOCH + Duration::from_millis(r.u64()?);
    let grace_secs = r.u32()?;
    let keep_secs = r.u32()?;
    let status = r.u16()?;
    let version = version_of(r.u8()?);
    let header = CompactHeader::from_parts(status, version, &r.bytes()?)?;
    let tags = Tags::from_normalised(&r.string()?);
    let pool = Some(r.string()?)
        .filter(|p| !p.is_empty())
        .map(String::into_boxed_str);
    let identity = match r.u8()? {
        0 => None,
        _ => {
            let url = r.string()?;
            let count = r.u16()?;
            let mut headers = Vec::with_capacity(count as usize);
            for _ in 0..count {
                headers.push((r.string()?, r.string()?));
            }
            Some(Arc::new(RequestIdentity::new(url, headers)))
        }
    };
    let body = r.bytes()?;
    Some(StoredObject::restored(
        fresh_until,
        updated,
        grace_secs,
        keep_secs,
        header,
        body,
        tags,
        pool,
        identity,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;

    #[test]
    fn an_object_survives_the_round_trip_and_garbage_is_refused() {
        let mut header = ResponseHeader::build(200, None).expect("header");
        header
            .insert_header("content-type", "text/html")
            .expect("ct");
        let object = StoredObject::restored(
            UNIX_EPOCH + Duration::from_millis(1_800_000_000_123),
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
            300,
            259_200,
            CompactHeader::pack(&header, &[], &[("content-length", "5")]),
            Bytes::from_static(b"hello"),
            Tags::from_normalised("cat_p_1,cat_p"),
            Some("pool-a".into()),
            Some(Arc::new(RequestIdentity::new(
                "/a.html".into(),
                vec![("host".into(), "shop.test".into())],
            ))),
        );
        let back = decode(encode(&object)).expect("decodes");
        assert_eq!(back.fresh_until, object.fresh_until);
        assert_eq!(back.keep_secs, 259_200);
        assert_eq!(back.body, object.body);
        assert_eq!(back.tags.as_str(), "cat_p_1,cat_p");
        assert_eq!(back.pool.as_deref(), Some("pool-a"));
        assert_eq!(back.identity.as_ref().map(|i| &*i.url), Some("/a.html"));
        let h = back.header.unpack().expect("header");
        assert_eq!(h.headers["content-type"], "text/html");

        let whole = encode(&object);
        for cut in [0, 1, 10, whole.len() - 1] {
            assert!(decode(whole.slice(..cut)).is_none(), "cut at {cut}");
        }
        assert!(decode(Bytes::from_static(b"\x09garbage")).is_none());
    }
}
