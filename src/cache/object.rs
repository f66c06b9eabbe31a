//! One stored response: its freshness, header, body, tags and the bookkeeping that rides
//! with it (heat for the re-warmer, what the layer above derived from its body).
//!
//! Invariant: an object is immutable once stored. Expiring it (a soft purge), keeping it
//! as a purged copy or revalidating it makes a new object that replaces it through the
//! store's `put`; only its heat counters and its one memo change in place.

use std::any::Any;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;
use pingora::Result;

use super::derived::Derived;
use super::{CompactHeader, RequestIdentity, Tags};

/// Bookkeeping bytes per object beyond body, header and tags: the object itself (one
/// 256-byte allocation). Its slot and index entry in the map (about 60 bytes) are more
/// than covered by the header lines it shares with other pages, which are weighed whole
/// for every object (`CompactHeader::len_bytes`), so the budget errs on the safe side.
pub(super) const ENTRY_OVERHEAD: usize = 256;
/// Tag-index bytes per tag of an object (map slot, key copy, generation).
pub(super) const INDEX_BYTES_PER_TAG: usize = 48;

/// When the fetch that produced an object started; purges after it make it unstorable.
#[derive(Debug, Clone, Copy)]
pub struct FetchStarted(pub SystemTime);

/// The object was fetched for a visitor (not by a warmer), which counts as a request
/// for "requested recently".
#[derive(Debug, Clone, Copy)]
pub struct VisitorFetch;

/// How often and how lately an object was served, for the re-warmer's "hottest first".
#[derive(Debug, Default)]
pub struct Heat {
    hits: AtomicU32,
    last_hit_secs: AtomicU64,
}

impl Heat {
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.last_hit_secs
            .store(unix_secs(SystemTime::now()), Ordering::Relaxed);
    }

    pub fn hits(&self) -> u32 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Whether it was served within `window` of now.
    pub fn recent(&self, window: Duration) -> bool {
        let last = self.last_hit_secs.load(Ordering::Relaxed);
        last > 0 && unix_secs(SystemTime::now()).saturating_sub(last) <= window.as_secs()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How a stored object may be served at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Servable {
    /// Within its TTL: a hit.
    Fresh,
    /// Expired, within grace: served stale while one refresh runs.
    Grace,
    /// Past grace, within keep: served only when the origin cannot answer.
    IfError,
    /// Past everything: about to leave the store.
    No,
}

impl Servable {
    pub fn label(self) -> &'static str {
        match self {
            Servable::Fresh => "fresh",
            Servable::Grace => "grace",
            Servable::IfError => "stale_if_error",
            Servable::No => "expired",
        }
    }
}

/// One stored response.
pub struct StoredObject {
    pub fresh_until: SystemTime,
    /// When the object was fetched or last revalidated; the reference for its age.
    pub updated: SystemTime,
    pub grace_secs: u32,
    pub keep_secs: u32,
    pub header: CompactHeader,
    pub body: Bytes,
    pub tags: Tags,
    /// The response's `X-Pool` header, for Magento's pool purges.
    pub pool: Option<Box<str>>,
    pub identity: Option<Arc<RequestIdentity>>,
    /// What the layer above worked out from the body when it was stored (its ESI
    /// template); `None` for most bodies.
    pub derived: Option<Arc<dyn Derived>>,
    /// The body was looked at and nothing was derived from it (no ESI): a copy read back
    /// from disk need not be inflated and scanned again to learn that.
    pub nothing_derived: bool,
    /// One value the layer above computes from the object on first use and keeps with it
    /// (ESI: the body as a piece of other pages). Not weighed (the map weighs at insert);
    /// it is about the gzipped body, and few objects have one.
    memo: std::sync::OnceLock<Option<Box<dyn Any + Send + Sync>>>,
    pub heat: Heat,
    /// Set by `MemoryStore::put`; tells index entries of successive objects apart.
    pub(super) generation: u64,
    /// A purged page's copy kept as a last resort (`purged`).
    purged_copy: bool,
}

/// Headers that are never stored: tags live beside the object, and the body's framing
/// is decided again from its exact length.
const NOT_STORED: &[&str] = &["x-magento-tags", "transfer-encoding", "content-length"];

/// Marks the copy of a purged page kept as a last resort (`purge.keep_purged_secs`): it
/// travels in the stored header, so every response served from it says so.
pub const PURGED_COPY_HEADER: &str = "x-floodgate-purged-copy";

impl StoredObject {
    /// Stores `header` with the freshness of `freshness`; `body` is complete.
    pub(super) fn new(
        freshness: &CacheMeta,
        header: &ResponseHeader,
        body: Bytes,
        tags: Tags,
        identity: Option<Arc<RequestIdentity>>,
    ) -> Result<Self> {
        let pool = header
            .headers
            .get("x-pool")
            .and_then(|v| v.to_str().ok())
            .map(Into::into);
        // The stored body is complete, so its length is known: hits go out with
        // Content-Length rather than chunked (gzipping before storing had removed the
        // origin's length), which saves a write and the chunk framing on every hit.
        let length = body.len().to_string();
        let header = CompactHeader::pack(header, NOT_STORED, &[("content-length", &length)]);
        Ok(Self::restored(
            freshness.fresh_until(),
            freshness.updated(),
            freshness.stale_while_revalidate_sec(),
            freshness.stale_if_error_sec(),
            header,
            body,
            tags,
            pool,
            identity,
        ))
    }

    /// An object from its parts (as the shared tier hands it back, too).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn restored(
        fresh_until: SystemTime,
        updated: SystemTime,
        grace_secs: u32,
        keep_secs: u32,
        header: CompactHeader,
        body: Bytes,
        tags: Tags,
        pool: Option<Box<str>>,
        identity: Option<Arc<RequestIdentity>>,
    ) -> Self {
        Self {
            fresh_until,
            updated,
            grace_secs,
            keep_secs,
            header,
            body,
            tags,
            pool,
            identity,
            derived: None,
            nothing_derived: false,
            memo: std::sync::OnceLock::new(),
            heat: Heat::default(),
            generation: 0,
            purged_copy: false,
        }
    }

    /// Until when the object may be served at all (stale included).
    pub fn usable_until(&self) -> SystemTime {
        self.unusable_at()
    }

    /// The same object, expired now: served stale within grace while one refresh runs.
    pub(super) fn expired(&self) -> Self {
        let now = SystemTime::now() - Duration::from_secs(1);
        let mut expired = Self::restored(
            self.fresh_until.min(now),
            self.updated.min(now),
            self.grace_secs,
            self.keep_secs,
            self.header.clone(),
            self.body.clone(),
            self.tags.clone(),
            self.pool.clone(),
            self.identity.clone(),
        );
        expired.derived = self.derived.clone();
        expired.nothing_derived = self.nothing_derived;
        expired
    }

    /// The same object purged but kept `keep_secs` as a last resort: expired, with no
    /// grace (never served while a refresh runs), servable only where the origin cannot
    /// answer (stale-if-error), and marked.
    pub(super) fn purged(&self, keep_secs: u32) -> Self {
        let now = SystemTime::now() - Duration::from_secs(1);
        let header = match self.header.unpack() {
            Ok(mut header) => match header.insert_header(PURGED_COPY_HEADER, "1") {
                Ok(()) => CompactHeader::pack(&header, &[], &[]),
                Err(_) => self.header.clone(),
            },
            Err(_) => self.header.clone(),
        };
        let mut purged = Self::restored(
            self.fresh_until.min(now),
            self.updated.min(now),
            0,
            keep_secs,
            header,
            self.body.clone(),
            self.tags.clone(),
            self.pool.clone(),
            self.identity.clone(),
        );
        purged.derived = self.derived.clone();
        purged.nothing_derived = self.nothing_derived;
        purged.purged_copy = true;
        purged
    }

    /// Keeps what the layer above derived from the body. When that shares its bytes with
    /// a re-encoded body (ESI: the template's literals are the stream's), the re-encoded
    /// body replaces this one and the stored length follows, so the page is held once.
    pub(super) fn set_derived(&mut self, derived: Option<Arc<dyn Derived>>) {
        if let Some(body) = derived.as_ref().and_then(|d| d.shared_body()) {
            if let Some(header) = self.header.with_length(body.len()) {
                self.header = header;
                self.body = body;
            }
        }
        self.nothing_derived = derived.is_none();
        self.derived = derived;
    }

    /// Copies the body out of the record it was read from (disk, Redis), so the record's
    /// buffer is freed and the body kept at its exact size (the header was copied out
    /// when it was decoded).
    pub(super) fn detach(&mut self) {
        self.body = super::body::copy_of(&self.body);
    }

    /// Whether this is a purged page's copy kept as a last resort.
    pub fn is_purged_copy(&self) -> bool {
        self.purged_copy
    }

    /// The value `init` computes from this object, computed on first use and kept with
    /// it; `None` when `init` gave none (or the one value kept is of another type: there
    /// is one per object, for the one layer that keeps one).
    pub fn memo<T: Any + Send + Sync>(&self, init: impl FnOnce(&Self) -> Option<T>) -> Option<&T> {
        self.memo
            .get_or_init(|| init(self).map(|v| Box::new(v) as Box<dyn Any + Send + Sync>))
            .as_ref()?
            .downcast_ref::<T>()
    }

    pub fn is_fresh(&self) -> bool {
        self.fresh_until >= SystemTime::now()
    }

    /// How the object may be served at `now`.
    pub fn state(&self, now: SystemTime) -> Servable {
        let past = |secs: u32| self.fresh_until + Duration::from_secs(secs.into());
        if self.fresh_until >= now {
            Servable::Fresh
        } else if past(self.grace_secs) >= now {
            Servable::Grace
        } else if past(self.keep_secs) >= now {
            Servable::IfError
        } else {
            Servable::No
        }
    }

    pub(super) fn meta(&self) -> Result<CacheMeta> {
        Ok(CacheMeta::new(
            self.fresh_until,
            self.updated,
            self.grace_secs,
            self.keep_secs,
            self.header.unpack()?,
        ))
    }

    /// When nobody may be served this object any more, stale or not.
    pub(super) fn unusable_at(&self) -> SystemTime {
        self.fresh_until + Duration::from_secs(self.grace_secs.max(self.keep_secs).into())
    }

    pub(super) fn weight(&self) -> u32 {
        let total = ENTRY_OVERHEAD
            + self.header.len_bytes()
            + self.body.len()
            + self.derived.as_ref().map_or(0, |t| t.len_bytes())
            + self.tags.len_bytes()
            + self.tags.iter().count() * INDEX_BYTES_PER_TAG;
        total.min(u32::MAX as usize) as u32
    }
}
#[cfg(test)]
mod size {
    /// Every stored object is one `Arc` allocation: with its two counters it must stay
    /// within 256 bytes, the allocator's size class (the next one is 320: 64 bytes more
    /// for each of 50,000 pages).
    #[test]
    fn an_object_fits_the_256_byte_size_class() {
        let allocation = std::mem::size_of::<super::StoredObject>() + 16;
        assert!(allocation <= 256, "{allocation} bytes per stored object");
    }
}
