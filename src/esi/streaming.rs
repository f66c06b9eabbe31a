//! A text response on its way from the origin, passed to the client as it arrives, up to
//! its first ESI marker.
//!
//! Invariant: a byte of the page leaves as soon as it is known not to begin an ESI
//! marker (`<esi:` or `<!--esi`); only the few bytes that could still become one wait
//! for the next chunk. From the first marker on, the rest of the body is held (at most
//! `max_bytes`) to be parsed and assembled at its end; a rest larger than that leaves
//! unprocessed, as a page too large for ESI always has.
//!
//! Why: Varnish parses ESI as the body streams, so a page without ESI reaches the
//! visitor as fast as the origin sends it. Holding every `text/*` answer whole cost a
//! slow page's visitor the whole page's time before the first byte.
//!
//! The output is in the client's encoding: a gzip origin body is inflated to be scanned,
//! and each stretch sent is compressed on its own and stitched into one gzip stream
//! (`gzip`), so the assembled rest continues the same stream.

use std::io::Write;

use bytes::{Bytes, BytesMut};

use super::gzip::{Piece, Stitcher};
use super::template::{ESI_COMMENT_OPEN, ESI_TAG};

/// Where a streamed page stands when its origin body has ended.
pub enum End {
    /// The last bytes to send: the page is complete after them.
    Done(Bytes),
    /// A marker was found: `rest` (identity text, from the marker on) is to be parsed
    /// and assembled into the same output stream, `stitcher` (gzip) or identity (`None`).
    Assemble {
        rest: Bytes,
        stitcher: Option<Stitcher>,
    },
}

pub struct Streamed {
    /// Inflates a gzip origin body; `None` for identity.
    inflate: Option<flate2::write::MultiGzDecoder<Vec<u8>>>,
    /// Stitches the output into one gzip stream; `None` for identity.
    out: Option<Stitcher>,
    level: u32,
    /// Scanned text not sent yet: the start of a marker, maybe.
    pending: BytesMut,
    /// Everything from the first marker on.
    rest: Option<BytesMut>,
    max_bytes: usize,
    /// The rest outgrew `max_bytes`: everything passes unprocessed from then on.
    unprocessed: bool,
}

impl Streamed {
    /// A stream of a body that is gzip-encoded (`gzip_in`) or not, to a client that
    /// takes gzip (`gzip_out`, compressed at `level`) or not.
    pub fn new(gzip_in: bool, gzip_out: bool, level: u32, max_bytes: usize) -> Streamed {
        Streamed {
            inflate: gzip_in.then(|| flate2::write::MultiGzDecoder::new(Vec::new())),
            out: gzip_out.then(Stitcher::default),
            level,
            pending: BytesMut::new(),
            rest: None,
            max_bytes,
            unprocessed: false,
        }
    }

    /// Takes the next bytes of the origin's body; returns what can go to the client now
    /// (maybe nothing). Fails only on a gzip body that does not inflate.
    pub fn push(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        let text = match &mut self.inflate {
            Some(inflate) => {
                inflate.write_all(data)?;
                // flate2's writer keeps its output until the next write otherwise.
                inflate.flush()?;
                Bytes::from(std::mem::take(inflate.get_mut()))
            }
            None => return Ok(self.scan(data)),
        };
        Ok(self.scan(&text))
    }

    /// The body has ended: what is left to send, or to assemble.
    pub fn finish(mut self) -> std::io::Result<End> {
        let mut last = BytesMut::new();
        if let Some(mut inflate) = self.inflate.take() {
            inflate.try_finish()?;
            let text = std::mem::take(inflate.get_mut());
            last.extend_from_slice(&self.scan(&text));
        }
        if let Some(rest) = self.rest.take() {
            debug_assert!(last.is_empty(), "nothing is sent once a marker was found");
            return Ok(End::Assemble {
                rest: rest.freeze(),
                stitcher: self.out.take(),
            });
        }
        let pending = self.pending.split().freeze();
        last.extend_from_slice(&self.literal(pending));
        if let Some(out) = &mut self.out {
            last.extend_from_slice(&out.finish());
        }
        Ok(End::Done(last.freeze()))
    }

    fn scan(&mut self, text: &[u8]) -> Bytes {
        if self.unprocessed {
            return self.literal(Bytes::copy_from_slice(text));
        }
        if let Some(rest) = &mut self.rest {
            rest.extend_from_slice(text);
            if rest.len() <= self.max_bytes {
                return Bytes::new();
            }
            tracing::debug!(
                max_bytes = self.max_bytes,
                "the rest of a page after its first ESI marker is too large: sent unprocessed"
            );
            let rest = self.rest.take().unwrap_or_default().freeze();
            self.unprocessed = true;
            return self.literal(rest);
        }
        self.pending.extend_from_slice(text);
        let send = match first_marker(&self.pending) {
            Some(at) => {
                let before = self.pending.split_to(at).freeze();
                self.rest = Some(self.pending.split());
                before
            }
            None => {
                let keep = marker_prefix_at_end(&self.pending);
                self.pending.split_to(self.pending.len() - keep).freeze()
            }
        };
        self.literal(send)
    }

    /// `text` in the client's encoding (identity passes as it is, without a copy).
    fn literal(&mut self, text: Bytes) -> Bytes {
        if text.is_empty() {
            return text;
        }
        match &mut self.out {
            Some(out) => out.piece(&Piece::compress(&text, self.level)),
            None => text,
        }
    }
}

fn first_marker(text: &[u8]) -> Option<usize> {
    let find = |marker: &[u8]| text.windows(marker.len()).position(|w| w == marker);
    match (find(ESI_TAG), find(ESI_COMMENT_OPEN)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// How many bytes at the end of `text` could be the start of a marker.
fn marker_prefix_at_end(text: &[u8]) -> usize {
    let longest = ESI_TAG.len().max(ESI_COMMENT_OPEN.len()) - 1;
    (1..=longest.min(text.len()))
        .rev()
        .find(|&n| {
            let tail = &text[text.len() - n..];
            ESI_TAG.starts_with(tail) || ESI_COMMENT_OPEN.starts_with(tail)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        encoder.write_all(data).expect("gzip");
        encoder.finish().expect("gzip")
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    /// Streams `chunks`; returns what left before the end, and the end.
    fn run(chunks: &[&[u8]], gzip_in: bool, gzip_out: bool) -> (Vec<u8>, Vec<usize>, End) {
        let mut s = Streamed::new(gzip_in, gzip_out, 1, 1 << 20);
        let mut sent = Vec::new();
        let mut sizes = Vec::new();
        for chunk in chunks {
            let out = s.push(chunk).expect("push");
            sizes.push(out.len());
            sent.extend_from_slice(&out);
        }
        (sent, sizes, s.finish().expect("finish"))
    }

    #[test]
    fn a_page_without_esi_leaves_chunk_by_chunk() {
        let (mut sent, sizes, end) = run(
            &[b"<html><body>", b"tiles", b"</body></html>"],
            false,
            false,
        );
        assert!(
            sizes.iter().all(|&n| n > 0),
            "every chunk left at once: {sizes:?}"
        );
        let End::Done(last) = end else {
            panic!("no marker, nothing to assemble")
        };
        sent.extend_from_slice(&last);
        assert_eq!(sent, b"<html><body>tiles</body></html>");
    }

    #[test]
    fn a_marker_split_across_chunks_is_held_back_and_found() {
        let (sent, _, end) = run(
            &[b"before<es", b"i:include src=\"/m\"/>after"],
            false,
            false,
        );
        assert_eq!(sent, b"before");
        let End::Assemble { rest, stitcher } = end else {
            panic!("the marker was missed")
        };
        assert_eq!(&rest[..], b"<esi:include src=\"/m\"/>after");
        assert!(stitcher.is_none());
        // A near-miss is let go once it cannot be a marker.
        let (sent, _, end) = run(&[b"a <!--es", b"sential -->"], false, false);
        let End::Done(last) = end else {
            panic!("not a marker")
        };
        assert_eq!([sent, last.to_vec()].concat(), b"a <!--essential -->");
    }

    #[test]
    fn gzip_in_and_out_make_one_valid_stream() {
        let page = "<p>tile</p>".repeat(2000);
        let compressed = gzip(page.as_bytes());
        let parts: Vec<&[u8]> = compressed.chunks(700).collect();
        let (mut sent, _, end) = run(&parts, true, true);
        let End::Done(last) = end else {
            panic!("no marker")
        };
        sent.extend_from_slice(&last);
        assert_eq!(gunzip(&sent), page.as_bytes());
        // And to a client without gzip, identity.
        let (mut sent, _, end) = run(&parts, true, false);
        let End::Done(last) = end else {
            panic!("no marker")
        };
        sent.extend_from_slice(&last);
        assert_eq!(sent, page.as_bytes());
    }

    #[test]
    fn a_flushed_gzip_start_leaves_before_the_rest_arrives() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        encoder.write_all(b"<html>start").expect("gzip");
        encoder.flush().expect("gzip");
        let first = std::mem::take(encoder.get_mut());
        let mut s = Streamed::new(true, false, 1, 1 << 20);
        assert_eq!(&s.push(&first).expect("push")[..], b"<html>start");
    }

    #[test]
    fn a_rest_too_large_leaves_unprocessed() {
        let mut s = Streamed::new(false, false, 1, 10);
        let mut sent = s
            .push(b"a<esi:include src=\"/x\"/>")
            .expect("push")
            .to_vec();
        sent.extend_from_slice(&s.push(b"b").expect("push"));
        let End::Done(last) = s.finish().expect("finish") else {
            panic!("too large to assemble")
        };
        sent.extend_from_slice(&last);
        assert_eq!(sent, b"a<esi:include src=\"/x\"/>b");
    }

    #[test]
    fn a_corrupt_gzip_body_is_an_error() {
        let mut s = Streamed::new(true, false, 1, 1 << 20);
        assert!(s.push(b"this is not gzip at all").is_err());
    }
}
