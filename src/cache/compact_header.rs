//! A stored response header in one buffer.
//!
//! A `ResponseHeader` held as such costs about 4 KB per object (Pingora keeps a second,
//! case-preserving map, and every name and value is its own allocation); with 50,000
//! pages that overhead was larger than many of the bodies. Kept as `name\0value\0…` in a
//! single exact-size buffer it costs the header's bytes, and a hit rebuilds the header
//! from zero-copy slices of that buffer, which is no dearer than cloning one.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Version};
use pingora::http::ResponseHeader;
use pingora::{ErrorType, OrErr, Result};

#[derive(Debug, Clone)]
pub struct CompactHeader {
    status: u16,
    version: Version,
    /// `name\0value\0` for every header line, names as the origin spelled them.
    block: Bytes,
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
        let size = fields.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
        let mut block = BytesMut::with_capacity(size);
        for (name, value) in fields {
            block.put_slice(name.as_bytes());
            block.put_u8(0);
            // A header value cannot contain NUL, so NUL separates unambiguously.
            block.put_slice(value);
            block.put_u8(0);
        }
        Self {
            status: header.status.as_u16(),
            version: header.version,
            block: block.freeze(),
        }
    }

    /// Rebuilds the header for one response.
    pub fn unpack(&self) -> Result<ResponseHeader> {
        let mut fields = self.block.split(|b| *b == 0);
        let mut header = ResponseHeader::build(self.status, Some(16))?;
        header.set_version(self.version);
        let mut at = 0;
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            let name_at = at;
            let value_at = name_at + name.len() + 1;
            at = value_at + value.len() + 1;
            let name = self.block.slice(name_at..name_at + name.len());
            let value =
                HeaderValue::from_maybe_shared(self.block.slice(value_at..value_at + value.len()))
                    .or_err(ErrorType::InternalError, "stored header value is invalid")?;
            header.append_header(name, value)?;
        }
        Ok(header)
    }

    /// Status, version and the `name\0value\0…` block, for the shared tier's encoding.
    pub fn parts(&self) -> (u16, Version, &Bytes) {
        (self.status, self.version, &self.block)
    }

    /// The inverse of [`CompactHeader::parts`]; `unpack` checks the block when it is used.
    pub fn from_parts(status: u16, version: Version, block: Bytes) -> Self {
        Self {
            status,
            version,
            block,
        }
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

    /// The same header in a buffer of its own (not a slice of a larger one).
    pub fn detached(&self) -> Self {
        Self {
            block: Bytes::copy_from_slice(&self.block),
            ..self.clone()
        }
    }

    pub fn len_bytes(&self) -> usize {
        self.block.len()
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
}
