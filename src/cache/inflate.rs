//! A stored gzip body inflated for a client that does not take gzip, a bounded piece at a
//! time, and the budget every such response in flight is charged against.
//!
//! Invariant: what one response holds while it is inflated is bounded by `CHUNK` plus
//! the decoder's window, whatever the page's size or how slowly its client reads; the
//! sum over all responses in flight never passes the budget (a response that would pass
//! it is refused, and the caller answers 503).
//!
//! Why not Pingora's response decompression: it inflates each body chunk it is handed
//! whole, and a hit hands it the whole stored body, so a client that stops reading pinned
//! the whole inflated page (1,000 stalled readers of a 2 MB page held 1.9 GB).

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use flate2::bufread::MultiGzDecoder;

/// The most identity bytes produced per read: what a stalled client holds at most of a
/// page, beside the decoder.
pub const CHUNK: usize = 16 * 1024;

/// What one inflating response is charged: the decoder's state (a 32 KiB window and its
/// tables) and a chunk on its way out, rounded up.
pub const CHARGE: usize = 64 * 1024;

/// The bytes responses in flight hold for what is done to them on the way out (a stored
/// page inflated, an ESI page assembled in identity), all together
/// (`limits.response_buffer_bytes`).
pub struct ResponseBudget {
    used: AtomicUsize,
    /// Mirrors `used` for `/metrics`.
    gauge: prometheus::IntGauge,
    refused: prometheus::IntCounter,
}

impl ResponseBudget {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Arc<Self>> {
        Ok(Self::new(
            crate::metrics::gauge(
                registry,
                "floodgate_response_buffer_bytes",
                "Bytes reserved by responses in flight for their transformation (a stored gzip page inflated for a client without gzip), limits.response_buffer_bytes at most",
            )?,
            crate::metrics::counter(
                registry,
                "floodgate_response_buffer_refused_total",
                "Responses refused (503) because limits.response_buffer_bytes was taken by responses in flight",
            )?,
        ))
    }

    pub fn new(gauge: prometheus::IntGauge, refused: prometheus::IntCounter) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            gauge,
            refused,
        })
    }

    /// `bytes` of the budget until the reservation drops; `None` (and counted) when the
    /// responses in flight would then hold more than `limit`.
    pub fn reserve(self: &Arc<Self>, bytes: usize, limit: usize) -> Option<Reservation> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(bytes).filter(|n| *n <= limit) else {
                self.refused.inc();
                return None;
            };
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        self.gauge.add(bytes as i64);
        Some(Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// A share of the budget, given back when dropped.
pub struct Reservation {
    budget: Arc<ResponseBudget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.gauge.sub(self.bytes as i64);
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reservation({} bytes)", self.bytes)
    }
}

/// A gzip body read out in identity, at most `CHUNK` bytes per call.
pub struct Inflater {
    decoder: MultiGzDecoder<std::io::Cursor<Bytes>>,
    done: bool,
    _reservation: Reservation,
}

impl Inflater {
    /// Inflates `gzip` (shared, not copied) under `reservation`.
    pub fn new(gzip: Bytes, reservation: Reservation) -> Self {
        Self {
            decoder: MultiGzDecoder::new(std::io::Cursor::new(gzip)),
            done: false,
            _reservation: reservation,
        }
    }

    /// The next piece of identity body; `Ok(None)` at its end, `Err` if the stored body
    /// is not valid gzip (the response then ends cut short: its status is out already).
    pub fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        let mut out = vec![0u8; CHUNK];
        let mut filled = 0;
        while filled < CHUNK {
            match self.decoder.read(&mut out[filled..]) {
                Ok(0) => {
                    self.done = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            }
        }
        if filled == 0 {
            return Ok(None);
        }
        out.truncate(filled);
        Ok(Some(Bytes::from(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        encoder.write_all(data).expect("gzip");
        Bytes::from(encoder.finish().expect("gzip"))
    }

    fn budget() -> Arc<ResponseBudget> {
        ResponseBudget::new(
            prometheus::IntGauge::new("test_budget_bytes", "test").expect("gauge"),
            prometheus::IntCounter::new("test_refused_total", "test").expect("counter"),
        )
    }

    #[test]
    fn a_page_comes_out_whole_in_bounded_chunks() {
        // 2 MB of very compressible text: the whole page from a few KB of gzip.
        let page: Vec<u8> = b"<div class=\"price\">19.99</div>\n"
            .iter()
            .copied()
            .cycle()
            .take(2 << 20)
            .collect();
        let budget = budget();
        let reservation = budget.reserve(CHARGE, CHARGE).expect("room");
        let mut inflater = Inflater::new(gzip(&page), reservation);
        let mut out = Vec::new();
        while let Some(chunk) = inflater.next_chunk().expect("valid gzip") {
            assert!(chunk.len() <= CHUNK, "a chunk of {} bytes", chunk.len());
            out.extend_from_slice(&chunk);
        }
        assert_eq!(out, page);
        assert_eq!(budget.used(), CHARGE);
        drop(inflater);
        assert_eq!(budget.used(), 0, "the reservation is given back");
    }

    #[test]
    fn the_configured_least_budget_holds_one_response() {
        assert_eq!(crate::config::MIN_RESPONSE_BUFFER_BYTES, CHARGE);
    }

    #[test]
    fn the_budget_refuses_past_its_limit_and_takes_again_once_freed() {
        let budget = budget();
        let limit = 2 * CHARGE;
        let a = budget.reserve(CHARGE, limit).expect("first");
        let b = budget.reserve(CHARGE, limit).expect("second");
        assert!(
            budget.reserve(CHARGE, limit).is_none(),
            "third would pass the limit"
        );
        assert_eq!(budget.refused.get(), 1);
        drop(a);
        let c = budget.reserve(CHARGE, limit).expect("room again");
        assert_eq!(budget.used(), 2 * CHARGE);
        drop((b, c));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_corrupt_body_ends_in_an_error_not_a_loop() {
        let budget = budget();
        let mut corrupt = gzip(b"hello world, hello world").to_vec();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        corrupt.truncate(corrupt.len() - 4);
        let mut inflater = Inflater::new(
            Bytes::from(corrupt),
            budget.reserve(CHARGE, CHARGE).expect("room"),
        );
        let mut chunks = 0;
        loop {
            match inflater.next_chunk() {
                Ok(Some(_)) => chunks += 1,
                Ok(None) | Err(_) => break,
            }
            assert!(chunks < 10, "no end");
        }
        assert!(inflater.next_chunk().expect("done").is_none());
    }
}
