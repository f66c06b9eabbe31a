//! A hit: one stored body served to Pingora, whole or by range, or the body the layer
//! above makes instead (an assembled ESI page).
//!
//! Invariant: a hit reads what was stored and changes nothing; a range applies to the
//! stored body only, so a hit that will be assembled or inflated cannot seek. An inflated
//! body leaves `inflate::CHUNK` bytes at a time.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::CacheKey;
use pingora::cache::storage::HandleHit;
use pingora::cache::trace::SpanHandle;
use pingora::cache::Storage;
use pingora::{Error, ErrorType, Result};

use super::derived::{BodySource, Derived};
use super::inflate::{Inflater, Reservation};

/// Serves one stored body; seekable, so Range requests are answered from the cache. A
/// body the layer above makes another way (an assembled ESI page) replaces it whole,
/// once it is handed to the hit as a `BodySource`.
pub struct StoredHit {
    body: Bytes,
    done: bool,
    start: usize,
    end: usize,
    derived: Option<Arc<dyn Derived>>,
    assembles: bool,
    source: Option<Box<dyn BodySource>>,
    /// The client may get the body inflated: its gzip bytes' ranges mean nothing then.
    no_seek: bool,
    inflater: Option<Inflater>,
}

impl StoredHit {
    pub(super) fn new(body: Bytes, derived: Option<Arc<dyn Derived>>) -> Self {
        Self {
            end: body.len(),
            body,
            done: false,
            start: 0,
            derived,
            assembles: false,
            source: None,
            no_seek: false,
            inflater: None,
        }
    }

    /// The body may go out inflated (the client does not take gzip): no byte range of
    /// the stored body is served.
    pub fn no_seek(&mut self) {
        self.no_seek = true;
    }

    /// The stored gzip body goes out in identity, a bounded chunk per read, charged to
    /// `reservation` until the hit ends.
    pub fn inflate(&mut self, reservation: Reservation) {
        self.no_seek = true;
        self.inflater = Some(Inflater::new(self.body.clone(), reservation));
    }

    /// What was derived from the body when it was stored.
    pub fn derived(&self) -> Option<&Arc<dyn Derived>> {
        self.derived.as_ref()
    }

    /// The body will be assembled: byte ranges of the stored body mean nothing then.
    pub fn will_assemble(&mut self) {
        self.assembles = true;
    }

    /// The body comes from `source` instead of the store.
    pub fn assemble(&mut self, source: Box<dyn BodySource>) {
        self.source = Some(source);
    }
}

#[async_trait]
impl HandleHit for StoredHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if let Some(source) = &mut self.source {
            return Ok(source.next_chunk().await);
        }
        if let Some(inflater) = &mut self.inflater {
            return inflater.next_chunk().map_err(|e| {
                Error::because(
                    ErrorType::InternalError,
                    "the stored gzip body could not be inflated for a client without gzip",
                    e,
                )
            });
        }
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        !self.assembles && !self.no_seek
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!(
                    "seek start {start} is past the body ({} bytes)",
                    self.body.len()
                ),
            );
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |end| end.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
