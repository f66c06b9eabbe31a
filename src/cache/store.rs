//! The in-memory tier: Pingora's cache `Storage` on a moka cache bounded in bytes.
//!
//! moka does the admission (TinyLFU), eviction (by weight) and expiry (each object at its
//! TTL + keep, so objects nobody may be served any more give their memory back), which is
//! why no Pingora eviction manager runs on top: two accountants would disagree.
//!
//! Objects are kept as their parts (freshness, header, body, tags) instead of the
//! serialised `CacheMeta`, so a hit clones a header map rather than decompressing and
//! re-parsing it. A shared tier (Redis) attaches behind `lookup`/`finish` and a tag
//! index behind insert/eviction; neither changes this file's interface to Pingora.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use moka::future::Cache;
use moka::Expiry;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::storage::{HandleHit, HandleMiss, MissFinishType};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{
    CacheKey, CacheMeta, HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};

use super::{CompactHeader, Tags};

/// Bookkeeping bytes per object beyond body, header and tags (key, Arc, moka node).
const ENTRY_OVERHEAD: usize = 256;

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
}

/// Headers that are never stored: tags live beside the object, and the body's framing
/// is decided again from its exact length.
const NOT_STORED: &[&str] = &["x-magento-tags", "transfer-encoding", "content-length"];

impl StoredObject {
    /// Stores `header` with the freshness of `freshness`; `body` is complete.
    fn new(
        freshness: &CacheMeta,
        header: &ResponseHeader,
        body: Bytes,
        tags: Tags,
    ) -> Result<Self> {
        // The stored body is complete, so its length is known: hits go out with
        // Content-Length rather than chunked (gzipping before storing had removed the
        // origin's length), which saves a write and the chunk framing on every hit.
        let length = body.len().to_string();
        let header = CompactHeader::pack(header, NOT_STORED, &[("content-length", &length)]);
        Ok(Self {
            fresh_until: freshness.fresh_until(),
            updated: freshness.updated(),
            grace_secs: freshness.stale_while_revalidate_sec(),
            keep_secs: freshness.stale_if_error_sec(),
            header,
            body,
            tags,
        })
    }

    fn meta(&self) -> Result<CacheMeta> {
        Ok(CacheMeta::new(
            self.fresh_until,
            self.updated,
            self.grace_secs,
            self.keep_secs,
            self.header.unpack()?,
        ))
    }

    /// When nobody may be served this object any more, stale or not.
    fn unusable_at(&self) -> SystemTime {
        self.fresh_until + Duration::from_secs(self.grace_secs.max(self.keep_secs).into())
    }

    fn weight(&self) -> u32 {
        let total =
            ENTRY_OVERHEAD + self.header.len_bytes() + self.body.len() + self.tags.len_bytes();
        total.min(u32::MAX as usize) as u32
    }
}

struct ExpireWhenUnusable;

impl ExpireWhenUnusable {
    fn remaining(object: &StoredObject) -> Option<Duration> {
        Some(
            object
                .unusable_at()
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }
}

impl Expiry<HashBinary, Arc<StoredObject>> for ExpireWhenUnusable {
    fn expire_after_create(
        &self,
        _: &HashBinary,
        object: &Arc<StoredObject>,
        _: Instant,
    ) -> Option<Duration> {
        Self::remaining(object)
    }

    fn expire_after_update(
        &self,
        _: &HashBinary,
        object: &Arc<StoredObject>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Self::remaining(object)
    }
}

/// The memory tier. Leaked once at start-up: Pingora wants `&'static dyn Storage`.
pub struct MemoryStore {
    objects: Cache<HashBinary, Arc<StoredObject>>,
}

impl MemoryStore {
    pub fn new(memory_bytes: u64) -> Self {
        let objects = Cache::builder()
            .max_capacity(memory_bytes)
            .weigher(|_, object: &Arc<StoredObject>| object.weight())
            .expire_after(ExpireWhenUnusable)
            .build();
        Self { objects }
    }

    /// Objects and bytes held now (moka's counters lag slightly behind inserts).
    pub fn usage(&self) -> (u64, u64) {
        (self.objects.entry_count(), self.objects.weighted_size())
    }

    /// Applies pending inserts and evictions, so `usage` is exact (tests, metrics scrape).
    pub async fn sync(&self) {
        self.objects.run_pending_tasks().await;
    }

    pub async fn get(&self, key: &HashBinary) -> Option<Arc<StoredObject>> {
        self.objects.get(key).await
    }
}

#[async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(object) = self.objects.get(&key.combined_bin()).await else {
            return Ok(None);
        };
        let meta = object.meta()?;
        let end = object.body.len();
        Ok(Some((
            meta,
            Box::new(Hit {
                body: object.body.clone(),
                done: false,
                start: 0,
                end,
            }),
        )))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let tags = meta.extensions().get::<Tags>().cloned().unwrap_or_default();
        Ok(Box::new(Miss {
            key: key.combined_bin(),
            meta: Some(CacheMeta::new(
                meta.fresh_until(),
                meta.updated(),
                meta.stale_while_revalidate_sec(),
                meta.stale_if_error_sec(),
                meta.response_header_copy(),
            )),
            tags,
            body: BytesMut::new(),
            store: self,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        Ok(
            match self.objects.remove(&target.key().combined_bin()).await {
                Some(_) => PurgeOutcome::Purged(None),
                None => PurgeOutcome::NotFound,
            },
        )
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let hash = key.combined_bin();
        // The object may have been evicted or purged while it was revalidated.
        let Some(old) = self.objects.get(&hash).await else {
            return Ok(false);
        };
        let object = StoredObject::new(
            meta,
            meta.response_header(),
            old.body.clone(),
            old.tags.clone(),
        )?;
        self.objects.insert(hash, Arc::new(object)).await;
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Serves one stored body; seekable, so Range requests are answered from the cache.
struct Hit {
    body: Bytes,
    done: bool,
    start: usize,
    end: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
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
        true
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

/// Collects a response body; the object becomes visible only when it is complete, so a
/// failed or cut fetch never leaves a truncated page behind.
struct Miss {
    key: HashBinary,
    /// The response's freshness and header; taken when the object is stored.
    meta: Option<CacheMeta>,
    tags: Tags,
    body: BytesMut,
    store: &'static MemoryStore,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let meta = self.meta.take().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "miss handler finished twice")
        })?;
        let collected = std::mem::take(&mut self.body);
        // The buffer grew by doubling; keeping its slack would cost up to twice the body
        // for as long as the object lives, so store an exact-size copy instead.
        let body = if collected.capacity() > collected.len() + collected.len() / 16 {
            Bytes::copy_from_slice(&collected)
        } else {
            collected.freeze()
        };
        let size = body.len();
        let tags = std::mem::take(&mut self.tags);
        // Packing copies the header out of Pingora's socket read buffer, which it would
        // otherwise keep alive (about 8 KB) for as long as the object lives.
        let object = StoredObject::new(&meta, meta.response_header(), body, tags)?;
        self.store.objects.insert(self.key, Arc::new(object)).await;
        Ok(MissFinishType::Created(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::trace::Span;

    async fn put(
        store: &'static MemoryStore,
        name: &str,
        body_len: usize,
        ttl: Duration,
        keep: u32,
    ) {
        let now = SystemTime::now();
        let header = ResponseHeader::build(200, None).expect("header");
        let meta = CacheMeta::new(now + ttl, now, 0, keep, header);
        let key = CacheKey::new(name.to_string(), "");
        let trace = Span::inactive().handle();
        let mut miss = store
            .get_miss_handler(&key, &meta, &trace)
            .await
            .expect("miss handler");
        miss.write_body(Bytes::from(vec![b'x'; body_len]), true)
            .await
            .expect("write");
        miss.finish().await.expect("finish");
    }

    async fn has(store: &'static MemoryStore, name: &str) -> bool {
        let key = CacheKey::new(name.to_string(), "");
        let trace = Span::inactive().handle();
        store.lookup(&key, &trace).await.expect("lookup").is_some()
    }

    #[tokio::test]
    async fn memory_stays_within_the_byte_budget() {
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(1 << 20)));
        for i in 0..40 {
            put(
                store,
                &format!("page-{i}"),
                64 << 10,
                Duration::from_secs(3600),
                0,
            )
            .await;
        }
        store.sync().await;
        let (objects, bytes) = store.usage();
        assert!(bytes <= 1 << 20, "{bytes} bytes held for a 1 MiB budget");
        assert!(objects > 0 && objects < 40, "{objects} objects");
    }

    #[tokio::test]
    async fn objects_are_dropped_when_ttl_plus_keep_has_passed() {
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(1 << 24)));
        put(store, "short", 10, Duration::from_millis(300), 0).await;
        put(store, "kept", 10, Duration::from_millis(300), 3600).await;
        assert!(has(store, "short").await && has(store, "kept").await);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !has(store, "short").await,
            "expired and not kept: memory is given back"
        );
        assert!(
            has(store, "kept").await,
            "stale but within keep: still there to serve stale"
        );
    }
}
