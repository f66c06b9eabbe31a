//! A stored response header in one buffer.
//!
//! A `ResponseHeader` held as such costs about 4 KB per object (Pingora keeps a second,
//! case-preserving map, and every name and value is its own allocation); with 50,000
//! pages that overhead was larger than many of the bodies. Kept as `name\0value\0…` in
//! exact-size buffers it costs the header's bytes, and a hit rebuilds the header from
//! zero-copy slices of them, which is no dearer than cloning one.
//!
//! Most of a page's lines are the same on every page of a shop (`Server`, `Content-Type`,
//! `Cache-Control`, `Vary`, `Content-Encoding`): those are held once for all objects
//! (interned), and each object keeps only its own lines (`Date`, `Content-Length`, …),
//! about 60 bytes instead of 200 to 300.
//!
//! Invariant: `unpack` gives back every line `pack` kept, each name's lines in their
//! order (a name's lines are all shared or all own); shared lines come first.

use std::sync::{Arc, LazyLock};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Version};
use pingora::http::ResponseHeader;
use pingora::{ErrorType, OrErr, Result};

use super::interner::Interner;

/// Header lines that differ from one response to the next (their values carry a time, a
/// length or a version), kept with each object; every other line is shared.
const OWN: &[&str] = &[
    "date",
    "expires",
    "last-modified",
    "etag",
    "content-length",
    "age",
];

/// Distinct shared blocks remembered for reuse (`Interner`).
const INTERNED_MAX: usize = 4096;

static INTERNED: LazyLock<Interner<Arc<Bytes>>> = LazyLock::new(|| Interner::new(INTERNED_MAX));

/// One buffer for every block with the same lines: 50,000 product pages whose origin
/// sends the same `Server`, `Content-Type`, `Cache-Control` and `Vary` hold them once.
fn intern(block: Bytes) -> Arc<Bytes> {
    INTERNED.intern(Arc::new(block))
}

#[derive(Debug, Clone)]
pub struct CompactHeader {
    status: u16,
    version: Version,
    /// `name\0value\0` for every line other objects may share (interned), names as the
    /// origin spelled them, in the origin's order. Behind an `Arc` of its own so the
    /// object carries a pointer, not a 32-byte `Bytes` (it keeps the object within
    /// 256 bytes, one allocator size class lower).
    shared: Arc<Bytes>,
    /// The same for this response's own lines (`OWN`), in the origin's order; they come
    /// after the shared ones when the header is rebuilt.
    own: Bytes,
}

/// `name\0value\0` for each field, in one exact-size buffer.
fn block<'a>(fields: impl Iterator<Item = (&'a str, &'a [u8])> + Clone) -> Bytes {
    let size = fields.clone().map(|(n, v)| n.len() + v.len() + 2).sum();
    let mut block = BytesMut::with_capacity(size);
    for (name, value) in fields {
        block.put_slice(name.as_bytes());
        block.put_u8(0);
        // A header value cannot contain NUL, so NUL separates unambiguously.
        block.put_slice(value);
        block.put_u8(0);
    }
    block.freeze()
}

/// The `(name, value)` pairs of a block (a trailing odd field is ignored).
fn fields(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
    let mut parts = block.split(|b| *b == 0);
    std::iter::from_fn(move || match (parts.next(), parts.next()) {
        (Some(name), Some(value)) => Some((name, value)),
        _ => None,
    })
}

/// Appends the lines of `block` except those named in `skip` (any case), slicing the
/// buffer, not copying.
fn append_block(header: &mut ResponseHeader, block: &Bytes, skip: &[&str]) -> Result<()> {
    let mut at = 0;
    for (name, value) in fields(block) {
        let name_at = at;
        let value_at = name_at + name.len() + 1;
        at = value_at + value.len() + 1;
        if skip.iter().any(|s| s.as_bytes().eq_ignore_ascii_case(name)) {
            continue;
        }
        let name = block.slice(name_at..name_at + name.len());
        let value = HeaderValue::from_maybe_shared(block.slice(value_at..value_at + value.len()))
            .or_err(ErrorType::InternalError, "stored header value is invalid")?;
        header.append_header(name, value)?;
    }
    Ok(())
}

fn is_own(name: &str) -> bool {
    OWN.iter().any(|own| own.eq_ignore_ascii_case(name))
}

impl CompactHeader {
    /// Packs `header`, leaving out the headers named in `skip` (lower case) and adding
    /// the `extra` ones.
    pub fn pack(header: &ResponseHeader, skip: &[&str], extra: &[(&str, &str)]) -> Self {
        let kept = header
            .headers
            .iter()
            .filter(|(name, _)| !skip.contains(&name.as_str()))
            .map(|(name, value)| (name.as_str(), value.as_bytes()));
        let added = extra.iter().map(|(name, value)| (*name, value.as_bytes()));
        let fields: Vec<(&str, &[u8])> = kept.chain(added).collect();
        Self::split(header.status.as_u16(), header.version, &fields)
    }

    fn split(status: u16, version: Version, fields: &[(&str, &[u8])]) -> Self {
        let shared = fields.iter().copied().filter(|(name, _)| !is_own(name));
        let own = fields.iter().copied().filter(|(name, _)| is_own(name));
        Self {
            status,
            version,
            shared: intern(block(shared)),
            own: block(own),
        }
    }

    /// Rebuilds the header for one response.
    pub fn unpack(&self) -> Result<ResponseHeader> {
        let mut header = self.unpack_shared()?;
        self.append_own(&mut header, &[])?;
        Ok(header)
    }

    /// The header with the shared lines only (status and version included): what a
    /// caller derives from it once holds for every object with the same
    /// [`CompactHeader::shared`] block.
    pub fn unpack_shared(&self) -> Result<ResponseHeader> {
        let mut header = ResponseHeader::build(self.status, Some(16))?;
        header.set_version(self.version);
        append_block(&mut header, &self.shared, &[])?;
        Ok(header)
    }

    /// Appends this response's own lines (`OWN`) to `header` in the origin's order,
    /// except those named in `skip`.
    pub fn append_own(&self, header: &mut ResponseHeader, skip: &[&str]) -> Result<()> {
        append_block(header, &self.own, skip)
    }

    /// The shared lines' block: one `Arc` for every object whose origin sent the same
    /// lines (while the interner remembers them), so its address names them.
    pub fn shared(&self) -> &Arc<Bytes> {
        &self.shared
    }

    /// Status, version and the `name\0value\0…` block of every line in two pieces
    /// (shared, own) that read as one when written one after the other, for the shared
    /// tier's encoding (which copies them into its record: no joined copy first).
    pub fn parts(&self) -> (u16, Version, [&[u8]; 2]) {
        (self.status, self.version, [&self.shared, &self.own])
    }

    /// The inverse of [`CompactHeader::parts`], in buffers of its own (the block may be
    /// a slice of a record read from disk or Redis); `unpack` checks the values when it
    /// is used. `None` if a name is not text.
    pub fn from_parts(status: u16, version: Version, block: &[u8]) -> Option<Self> {
        let fields: Vec<(&str, &[u8])> = fields(block)
            .map(|(name, value)| Some((std::str::from_utf8(name).ok()?, value)))
            .collect::<Option<_>>()?;
        Some(Self::split(status, version, &fields))
    }

    /// The same header with `Content-Length: len`; `None` if it does not unpack.
    pub fn with_length(&self, len: usize) -> Option<Self> {
        let header = self.unpack().ok()?;
        Some(Self::pack(
            &header,
            &["content-length"],
            &[("content-length", &len.to_string())],
        ))
    }

    /// Bytes of the header's lines (the shared ones counted whole: an upper bound).
    pub fn len_bytes(&self) -> usize {
        self.shared.len() + self.own.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_order_repeats_and_skips() {
        let mut h = ResponseHeader::build(404, None).unwrap();
        h.append_header("Content-Type", "text/html").unwrap();
        h.append_header("X-Magento-Tags", "cat_p_1").unwrap();
        h.append_header("Set-Cookie", "a=1").unwrap();
        h.append_header("Set-Cookie", "b=2").unwrap();
        h.append_header("X-Empty", "").unwrap();
        let packed = CompactHeader::pack(&h, &["x-magento-tags"], &[("content-length", "12")]);
        let back = packed.unpack().unwrap();
        assert_eq!(back.status, 404);
        assert_eq!(back.headers["content-type"], "text/html");
        assert!(!back.headers.contains_key("x-magento-tags"));
        let cookies: Vec<_> = back.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, vec!["a=1", "b=2"]);
        assert_eq!(back.headers["x-empty"], "");
        assert_eq!(back.headers["content-length"], "12");
    }

    fn page(date: &str, length: &str) -> ResponseHeader {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.append_header("Server", "nginx").unwrap();
        h.append_header("Date", date).unwrap();
        h.append_header("Content-Type", "text/html; charset=UTF-8")
            .unwrap();
        h.append_header("Cache-Control", "public, max-age=86400")
            .unwrap();
        h.append_header("ETag", format!("\"{length}\"")).unwrap();
        h.append_header("Vary", "Accept-Encoding").unwrap();
        h.append_header("Content-Length", length).unwrap();
        h
    }

    #[test]
    fn pages_share_their_common_lines_and_keep_their_own() {
        let a = CompactHeader::pack(&page("Wed, 02 Dec 2026 13:00:00 GMT", "100"), &[], &[]);
        let b = CompactHeader::pack(&page("Wed, 02 Dec 2026 13:00:01 GMT", "200"), &[], &[]);
        assert!(Arc::ptr_eq(&a.shared, &b.shared), "one buffer for both");
        assert!(a.own.len() < 80, "own lines only: {} bytes", a.own.len());
        let back = b.unpack().unwrap();
        assert_eq!(back.headers["date"], "Wed, 02 Dec 2026 13:00:01 GMT");
        assert_eq!(back.headers["content-length"], "200");
        assert_eq!(back.headers["etag"], "\"200\"");
        assert_eq!(back.headers["server"], "nginx");
        assert_eq!(back.headers["vary"], "Accept-Encoding");
        assert_eq!(back.headers.len(), 7);
        // Through the shared tier's encoding and back: the same lines, own buffers.
        let (status, version, block) = b.parts();
        let block = block.concat();
        let again = CompactHeader::from_parts(status, version, &block).unwrap();
        assert_eq!(again.parts().2.concat(), block);
        assert!(Arc::ptr_eq(&again.shared, &a.shared));
        assert!(CompactHeader::from_parts(200, version, b"\xff\0x\0").is_none());
    }

    #[test]
    fn a_unique_line_per_response_does_not_grow_the_interned_set() {
        for n in 0..INTERNED_MAX + 10 {
            let mut h = page("Wed, 02 Dec 2026 13:00:00 GMT", "1");
            h.append_header("X-Request-Id", n.to_string()).unwrap();
            let packed = CompactHeader::pack(&h, &[], &[]);
            assert_eq!(
                packed.unpack().unwrap().headers["x-request-id"],
                n.to_string()
            );
        }
        assert!(INTERNED.len() <= INTERNED_MAX);
    }
}
