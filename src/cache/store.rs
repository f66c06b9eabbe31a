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

use super::Tags;

/// Bookkeeping bytes per object beyond body, header and tags (key, Arc, moka node).
const ENTRY_OVERHEAD: usize = 256;

/// One stored response.
pub struct StoredObject {
    pub fresh_until: SystemTime,
    /// When the object was fetched or last revalidated; the reference for its age.
    pub updated: SystemTime,
    pub grace_secs: u32,
    pub keep_secs: u32,
    pub header: ResponseHeader,
    pub body: Bytes,
    pub tags: Tags,
}

impl StoredObject {
    fn from_meta(meta: &CacheMeta, body: Bytes, tags: Tags) -> Self {
        Self {
            fresh_until: meta.fresh_until(),
            updated: meta.updated(),
            grace_secs: meta.stale_while_revalidate_sec(),
            keep_secs: meta.stale_if_error_sec(),
            header: meta.response_header_copy(),
            body,
            tags,
        }
    }

    fn meta(&self) -> CacheMeta {
        CacheMeta::new(
            self.fresh_until,
            self.updated,
            self.grace_secs,
            self.keep_secs,
            self.header.clone(),
        )
    }

    /// When nobody may be served this object any more, stale or not.
    fn unusable_at(&self) -> SystemTime {
        self.fresh_until + Duration::from_secs(self.grace_secs.max(self.keep_secs).into())
    }

    fn weight(&self) -> u32 {
        let header: usize = self
            .header
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        let total = ENTRY_OVERHEAD + header + self.body.len() + self.tags.len_bytes();
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
        let meta = object.meta();
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
        let mut header = meta.response_header_copy();
        header.remove_header("x-magento-tags");
        Ok(Box::new(Miss {
            key: key.combined_bin(),
            fresh_until: meta.fresh_until(),
            updated: meta.updated(),
            grace_secs: meta.stale_while_revalidate_sec(),
            keep_secs: meta.stale_if_error_sec(),
            header: Some(header),
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
        let object = StoredObject::from_meta(meta, old.body.clone(), old.tags.clone());
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
    fresh_until: SystemTime,
    updated: SystemTime,
    grace_secs: u32,
    keep_secs: u32,
    header: Option<ResponseHeader>,
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
        let header = self.header.take().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "miss handler finished twice")
        })?;
        let body = std::mem::take(&mut self.body).freeze();
        let size = body.len();
        let object = StoredObject {
            fresh_until: self.fresh_until,
            updated: self.updated,
            grace_secs: self.grace_secs,
            keep_secs: self.keep_secs,
            header,
            body,
            tags: std::mem::take(&mut self.tags),
        };
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
