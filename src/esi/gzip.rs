//! An assembled page as one gzip stream, without compressing the page again per hit.
//!
//! Every piece (a template's literal, a fragment) is compressed on its own as raw deflate
//! that ends on a byte boundary (a sync flush) and is not final. Such pieces concatenate
//! into one valid deflate stream, because none refers back past its own start; the gzip
//! trailer's CRC-32 is combined from the pieces' CRCs. Varnish stitches its ESI gzip the
//! same way. A template's literals are compressed once, when it is parsed, so a hit costs
//! only its fragments' compression. For clients without gzip each piece is inflated on
//! its own (Pingora's response decompression holds output back by one chunk, which would
//! hold the page's start until the first fragment is there).

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, FlushCompress};

/// gzip member header: deflate, no name or time, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// An empty final block with fixed codes: ends the deflate stream.
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// A piece of a page, compressed on its own.
#[derive(Clone, Debug)]
pub struct Piece {
    deflate: Bytes,
    crc: crc32fast::Hasher,
    len: u64,
}

impl PartialEq for Piece {
    fn eq(&self, other: &Self) -> bool {
        self.deflate == other.deflate && self.len == other.len
    }
}

impl Eq for Piece {}

impl Piece {
    pub fn compress(data: &[u8], level: u32) -> Piece {
        let mut compressor = Compress::new(Compression::new(level), false);
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let mut consumed = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(1024));
            }
            let before = compressor.total_in();
            // Compressing into a Vec with spare room cannot fail: zlib only reports
            // misuse (a stream error), which this loop does not commit.
            if compressor
                .compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            consumed += (compressor.total_in() - before) as usize;
            // The flush is complete once all input is in and zlib left output room.
            if consumed == data.len() && out.len() < out.capacity() {
                break;
            }
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(data);
        Piece {
            deflate: Bytes::from(out),
            crc,
            len: data.len() as u64,
        }
    }

    /// Bytes held.
    pub fn compressed_len(&self) -> usize {
        self.deflate.len()
    }

    /// The piece's own text again.
    pub fn inflate(&self) -> Bytes {
        let mut decompressor = flate2::Decompress::new(false);
        let mut out = Vec::with_capacity(self.len as usize + 64);
        while (decompressor.total_in() as usize) < self.deflate.len() {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(1024));
            }
            let before = (decompressor.total_in(), decompressor.total_out());
            let input = &self.deflate[decompressor.total_in() as usize..];
            // A piece is what `compress` made: a failure or a stall means memory was
            // corrupted, and the rest of the piece is dropped rather than looped on.
            let ok = decompressor
                .decompress_vec(input, &mut out, flate2::FlushDecompress::Sync)
                .is_ok();
            if !ok || (decompressor.total_in(), decompressor.total_out()) == before {
                break;
            }
        }
        Bytes::from(out)
    }
}

/// A piece read out in identity a bounded stretch at a time, so a page assembled for a
/// client without gzip never holds a whole literal inflated at once.
pub struct PieceReader {
    deflate: Bytes,
    decompressor: flate2::Decompress,
    done: bool,
}

impl PieceReader {
    pub fn new(piece: &Piece) -> Self {
        Self {
            deflate: piece.deflate.clone(),
            decompressor: flate2::Decompress::new(false),
            done: piece.deflate.is_empty(),
        }
    }

    /// Appends at most `max` bytes of the piece's text to `out` (fewer only at its end);
    /// `false` once the piece is all out.
    pub fn read_into(&mut self, out: &mut bytes::BytesMut, max: usize) -> bool {
        if self.done {
            return false;
        }
        let start = out.len();
        out.reserve(max);
        while out.len() - start < max {
            let consumed = self.decompressor.total_in() as usize;
            if consumed >= self.deflate.len() {
                self.done = true;
                break;
            }
            let room = max - (out.len() - start);
            let mut buf = vec![0u8; room.min(16 * 1024)];
            let before = (self.decompressor.total_in(), self.decompressor.total_out());
            let status = self.decompressor.decompress(
                &self.deflate[consumed..],
                &mut buf,
                flate2::FlushDecompress::Sync,
            );
            let made = (self.decompressor.total_out() - before.1) as usize;
            out.extend_from_slice(&buf[..made]);
            // A piece is what `compress` made: a failure or a stall means memory was
            // corrupted, and the rest of the piece is dropped rather than looped on.
            if status.is_err()
                || (self.decompressor.total_in(), self.decompressor.total_out()) == before
            {
                self.done = true;
                break;
            }
        }
        !self.done
    }
}

impl Piece {
    /// The same piece, its deflate read from `range` of `stream` (where `one_stream`
    /// put it) instead of from a buffer of its own.
    pub fn within(&self, stream: &Bytes, range: std::ops::Range<usize>) -> Piece {
        Piece {
            deflate: stream.slice(range),
            crc: self.crc.clone(),
            len: self.len,
        }
    }
}

/// `pieces`, in order, as one gzip member in one buffer (`buffer` makes it from the
/// assembled bytes), and where each piece's deflate lies in it.
pub fn one_stream(
    pieces: &[&Piece],
    buffer: impl FnOnce(&[u8]) -> Bytes,
) -> (Bytes, Vec<std::ops::Range<usize>>) {
    let size = HEADER.len()
        + pieces.iter().map(|p| p.deflate.len()).sum::<usize>()
        + FINAL_BLOCK.len()
        + 8;
    let mut out = Vec::with_capacity(size);
    let mut ranges = Vec::with_capacity(pieces.len());
    let mut stitcher = Stitcher::default();
    for piece in pieces {
        let framed = stitcher.piece(piece);
        // The first piece comes after the gzip header.
        let start = out.len() + framed.len() - piece.deflate.len();
        out.extend_from_slice(&framed);
        ranges.push(start..out.len());
    }
    out.extend_from_slice(&stitcher.finish());
    (buffer(&out), ranges)
}

/// Frames pieces, in order, as one gzip member.
#[derive(Default)]
pub struct Stitcher {
    crc: crc32fast::Hasher,
    len: u64,
    started: bool,
}

impl Stitcher {
    /// The next bytes of the stream: the piece, after the gzip header for the first.
    pub fn piece(&mut self, piece: &Piece) -> Bytes {
        self.crc.combine(&piece.crc);
        self.len += piece.len;
        if self.started {
            return piece.deflate.clone();
        }
        self.started = true;
        let mut out = BytesMut::with_capacity(HEADER.len() + piece.deflate.len());
        out.put_slice(&HEADER);
        out.put_slice(&piece.deflate);
        out.freeze()
    }

    /// The stream's last bytes: final block and trailer (and header, if nothing came).
    pub fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER.len() + 10);
        if !self.started {
            self.started = true;
            out.put_slice(&HEADER);
        }
        out.put_slice(&FINAL_BLOCK);
        out.put_u32_le(self.crc.clone().finalize());
        // ISIZE is the length modulo 2^32 (RFC 1952).
        out.put_u32_le(self.len as u32);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    #[test]
    fn pieces_compressed_apart_make_one_valid_gzip_stream() {
        let texts: Vec<Vec<u8>> = vec![
            b"<html><body>".to_vec(),
            "<p>product tile</p>".repeat(3000).into_bytes(),
            b"<ul>menu</ul>".to_vec(),
            (0..50_000u32).map(|i| (i * 7919 % 251) as u8).collect(),
            b"</body></html>".to_vec(),
        ];
        let mut stitcher = Stitcher::default();
        let mut stream = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let piece = Piece::compress(text, if i % 2 == 0 { 6 } else { 1 });
            assert_eq!(piece.inflate(), *text);
            stream.extend_from_slice(&stitcher.piece(&piece));
        }
        stream.extend_from_slice(&stitcher.finish());
        assert_eq!(gunzip(&stream), texts.concat());
    }

    #[test]
    fn pieces_kept_within_one_stream_read_as_before() {
        let texts: [&[u8]; 3] = [b"<p>head</p>", b"<esi:include src=\"/m\"/>", b"<p>tail</p>"];
        let pieces: Vec<Piece> = texts.iter().map(|t| Piece::compress(t, 6)).collect();
        let (stream, ranges) =
            one_stream(&pieces.iter().collect::<Vec<_>>(), Bytes::copy_from_slice);
        assert_eq!(gunzip(&stream), texts.concat());
        for ((piece, range), text) in pieces.iter().zip(ranges).zip(texts) {
            let within = piece.within(&stream, range);
            assert_eq!(within, *piece);
            assert_eq!(within.inflate(), text);
        }
    }

    #[test]
    fn a_piece_read_in_stretches_is_its_text() {
        let text: Vec<u8> = b"<li>menu item</li>\n"
            .iter()
            .copied()
            .cycle()
            .take(300_000)
            .collect();
        let piece = Piece::compress(&text, 6);
        let mut reader = PieceReader::new(&piece);
        let mut out = bytes::BytesMut::new();
        let mut reads = 0;
        loop {
            let before = out.len();
            let more = reader.read_into(&mut out, 16 * 1024);
            assert!(out.len() - before <= 16 * 1024);
            reads += 1;
            if !more {
                break;
            }
        }
        assert_eq!(&out[..], &text[..]);
        assert!(reads >= 300_000 / (16 * 1024), "{reads} reads");
    }

    #[test]
    fn an_empty_page_is_a_valid_empty_stream() {
        let mut stitcher = Stitcher::default();
        assert!(gunzip(&stitcher.finish()).is_empty());
    }
}
