//! The in-memory tier: Pingora's cache `Storage` on a map bounded in bytes.
//!
//! The map (`object_map`) does the eviction (CLOCK, by weight) and expiry (each object at
//! its TTL + keep, so objects nobody may be served any more give their memory back),
//! which is why no Pingora eviction manager runs on top: two accountants would disagree.
//!
//! Invariant: every object enters through `put` and leaves through the map's removal
//! listener, which is where the tag and pool indexes are kept in step: eviction, expiry,
//! replacement and purge alike (the listener queues the removal, `index_cleanup` applies
//! it after the purge's answer). The index may name an object that is gone (a lookup
//! then finds nothing), never miss one that is there.
//!
//! Objects are kept as their parts (`object`: freshness, header, body, tags) instead of
//! the serialised `CacheMeta`, so a hit (`hit`) does not decompress and re-parse a
//! header; a fill (`miss`) stores nothing until its body is complete. A shared tier
//! (Redis) attaches behind `lookup`/`finish` without changing Pingora's view.

use std::any::Any;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{
    CacheKey, CacheMeta, HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora::http::ResponseHeader;
use pingora::Result;
use regex::Regex;

use super::derived::{Derive, Derived, Deriver};
use super::disk::DiskTier;
use super::hit::StoredHit;
use super::index_cleanup::IndexCleanup;
use super::miss::Miss;
use super::object::{FetchStarted, StoredObject, VisitorFetch};
use super::object_map::{Cause, ObjectMap};
use super::recent_purges::RecentPurges;
use super::removals::{Removal, Removals};
use super::shared_tier::SharedTier;
use super::tag_index::TagIndex;
use super::{RequestIdentity, Tags};

/// Removals remembered so a miss can say why its page was gone (evicted, expired,
/// purged by which tag): the most recent ones, for at most an hour.
const REMEMBERED_REMOVALS: usize = 65_536;
const REMOVALS_KEPT: Duration = Duration::from_secs(3600);

/// Most bytes read to derive what a copy promoted from the shared tier needs (its ESI),
/// whose request's configuration is not known here: the default `cache.max_object_bytes`.
const PROMOTED_MAX_INFLATED: usize = 16 << 20;

/// The memory tier. Leaked once at start-up: Pingora wants `&'static dyn Storage`.
pub struct MemoryStore {
    objects: ObjectMap,
    tags: Arc<TagIndex>,
    pools: Arc<TagIndex>,
    /// Index entries of objects that left, taken out after the work that removed them.
    cleanup: Arc<IndexCleanup>,
    pub(super) recent_purges: RecentPurges,
    generation: AtomicU64,
    /// Objects evicted to make room, since start.
    evictions: Arc<AtomicU64>,
    /// Why recently removed keys left, for the misses that follow.
    removals: Arc<Removals>,
    /// The second tier shared by the nodes in Redis, when configured.
    pub(super) shared: std::sync::OnceLock<Arc<SharedTier>>,
    /// The local disk tier, when configured: looked up before the shared tier.
    pub(super) disk: std::sync::OnceLock<Arc<DiskTier>>,
    /// How long a hard purge keeps the old copy as a last resort (0: removed at once).
    keep_purged_secs: AtomicU32,
    /// Works out what the layer above needs of a body (ESI's template), when set.
    deriver: std::sync::OnceLock<Arc<dyn Deriver>>,
}

impl MemoryStore {
    /// `longest_fetch` bounds how long a fetch can run, so how long purges are remembered.
    pub fn new(memory_bytes: u64, longest_fetch: Duration) -> Self {
        let tags = Arc::new(TagIndex::default());
        let pools = Arc::new(TagIndex::default());
        let evictions = Arc::new(AtomicU64::new(0));
        let counted_evictions = evictions.clone();
        let removals = Arc::new(Removals::new(REMEMBERED_REMOVALS, REMOVALS_KEPT));
        let noted = removals.clone();
        let cleanup = Arc::new(IndexCleanup::default());
        let queued = cleanup.clone();
        let objects = ObjectMap::new(
            memory_bytes,
            Box::new(move |key, object, cause| {
                match cause {
                    Cause::Size => {
                        counted_evictions.fetch_add(1, Ordering::Relaxed);
                        noted.note([key], &Removal::Evicted);
                    }
                    Cause::Expired => noted.note([key], &Removal::Expired),
                    // A purge notes itself, with its tag (`note_purged`).
                    Cause::Removed | Cause::Replaced => {}
                }
                queued.queue(key, object);
            }),
        );
        Self {
            objects,
            tags,
            pools,
            cleanup,
            evictions,
            removals,
            shared: std::sync::OnceLock::new(),
            disk: std::sync::OnceLock::new(),
            recent_purges: RecentPurges::new(longest_fetch),
            generation: AtomicU64::new(1),
            keep_purged_secs: AtomicU32::new(0),
            deriver: std::sync::OnceLock::new(),
        }
    }

    /// Who derives what hits need of a body (ESI); set once, at start.
    pub fn set_deriver(&self, deriver: Arc<dyn Deriver>) {
        let _ = self.deriver.set(deriver);
    }

    pub(super) fn derive(
        &self,
        header: &ResponseHeader,
        body: &Bytes,
        max_bytes: usize,
    ) -> Option<Arc<dyn Derived>> {
        self.deriver.get()?.derive(header, body, max_bytes)
    }

    /// `purge.keep_purged_secs`: set at start and on every reload.
    pub fn set_keep_purged_secs(&self, secs: u32) {
        self.keep_purged_secs.store(secs, Ordering::Relaxed);
    }

    /// A fetch of `key` ended without storing anything: other nodes stop waiting for it.
    pub fn fetch_ended_unstored(&self, key: HashBinary) {
        if let Some(shared) = self.shared.get() {
            shared.fetch_ended(key);
        }
    }

    /// Memory misses are then looked up in the shared tier, and fills written to it.
    pub fn attach_shared(&self, shared: Arc<SharedTier>) {
        let _ = self.shared.set(shared);
    }

    /// Memory misses are then looked up on disk, and fills written to it.
    pub fn attach_disk(&self, disk: Arc<DiskTier>) {
        let _ = self.disk.set(disk);
    }

    /// The disk tier, when configured.
    pub fn disk(&self) -> Option<&Arc<DiskTier>> {
        self.disk.get()
    }

    /// Whether memory holds `key` now (no bookkeeping: not a hit).
    pub fn holds(&self, key: &HashBinary) -> bool {
        self.objects.contains_key(key)
    }

    /// Objects evicted to make room since start (not expired, not purged).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The one way in: indexes the object's tags and pool, then stores it.
    pub(super) async fn put(&self, key: HashBinary, mut object: StoredObject) {
        // Evictions free their memory while the cache fills, a batch at a time.
        self.cleanup.settle_if_over(&self.tags, &self.pools);
        // Stored again: an earlier removal no longer explains a miss.
        self.removals.forget(&key);
        object.generation = self.generation.fetch_add(1, Ordering::Relaxed);
        self.tags.insert(key, object.generation, object.tags.iter());
        if let Some(pool) = &object.pool {
            self.pools
                .insert(key, object.generation, std::iter::once(&**pool));
        }
        self.objects.insert(key, Arc::new(object));
    }

    /// Why `key` left memory, if it did lately: a miss's reason.
    pub fn removed(&self, key: &HashBinary) -> Option<Removal> {
        self.removals.get(key)
    }

    /// `keys` are being purged by `by` (a tag, `.*`, a pool): their next miss says so.
    pub fn note_purged(&self, keys: &[HashBinary], by: &Arc<str>) {
        self.removals
            .note(keys.iter().copied(), &Removal::Purged(by.clone()));
    }

    /// Objects carrying any of `tags`, each once.
    pub fn tagged(&self, tags: &[&str]) -> Vec<HashBinary> {
        let mut keys: Vec<HashBinary> = tags.iter().flat_map(|t| self.tags.objects(t)).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Tags known to the index that `pattern` matches.
    pub fn tags_matching(&self, pattern: &Regex) -> Vec<String> {
        self.tags
            .known_tags()
            .into_iter()
            .filter(|t| pattern.is_match(t))
            .collect()
    }

    /// Objects whose `X-Pool` matches `pattern`.
    pub fn pooled(&self, pattern: &Regex) -> Vec<HashBinary> {
        let mut keys: Vec<HashBinary> = self
            .pools
            .known_tags()
            .iter()
            .filter(|p| pattern.is_match(p))
            .flat_map(|p| self.pools.objects(p))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Every object that carries a tag (Magento's `.*` leaves the untagged ones).
    pub fn all_tagged(&self) -> Vec<HashBinary> {
        self.tags.all_tagged()
    }

    /// What was purged recently, for in-flight fetches to be checked against.
    pub fn recent_purges(&self) -> &RecentPurges {
        &self.recent_purges
    }

    /// Removes (hard) or expires (soft) `keys`; returns the objects as they were.
    pub async fn invalidate(
        &self,
        keys: &[HashBinary],
        soft: bool,
    ) -> Vec<(HashBinary, Arc<StoredObject>)> {
        let mut invalidated = Vec::with_capacity(keys.len());
        let keep = self.keep_purged_secs.load(Ordering::Relaxed);
        for key in keys {
            if !soft && keep > 0 {
                // Kept as a last resort; one purged already is not purged again.
                if let Some(object) = self.objects.get(key) {
                    if !object.is_purged_copy() {
                        self.put(*key, object.purged(keep)).await;
                        invalidated.push((*key, object));
                    }
                }
            } else if soft {
                if let Some(object) = self.objects.get(key) {
                    if object.is_fresh() {
                        self.put(*key, object.expired()).await;
                    }
                    invalidated.push((*key, object));
                }
            } else if let Some(object) = self.objects.remove(key) {
                invalidated.push((*key, object));
            }
        }
        invalidated
    }

    /// Drops every object, in memory and on disk (a node that may have missed purges
    /// cannot tell which of its objects are stale). The tag index follows through the
    /// removal listener. `Err` when the disk could not be cleared (its objects are then
    /// still there, for the next start: the caller says so).
    pub async fn flush(&self) -> Result<(), super::disk::DiskError> {
        self.objects.clear();
        // The memory goes back now, not at the next fill.
        self.sync().await;
        match self.disk.get() {
            Some(disk) => disk.clear().await.map(drop),
            None => Ok(()),
        }
    }

    /// Objects and bytes held now.
    pub fn usage(&self) -> (u64, u64) {
        self.objects.usage()
    }

    /// Gives back the memory of expired objects and settles the indexes (tests,
    /// metrics scrape).
    pub async fn sync(&self) {
        self.objects.sweep_expired();
        self.settle_index();
    }

    /// Takes every object that left memory out of the tag and pool indexes: after a
    /// purge's answer (its removals were only queued), and on every metrics scrape.
    pub fn settle_index(&self) {
        self.cleanup.settle(&self.tags, &self.pools, usize::MAX);
    }

    /// Every object filled by a request for `url` (path and query), each variant and host:
    /// a walk over the whole store, for an operator's question, not for the request path.
    pub fn filled_for(&self, url: &str) -> Vec<Arc<StoredObject>> {
        self.objects
            .objects()
            .into_iter()
            .filter(|object| object.identity.as_ref().is_some_and(|i| &*i.url == url))
            .collect()
    }

    pub async fn get(&self, key: &HashBinary) -> Option<Arc<StoredObject>> {
        self.objects.get(key)
    }
}

impl MemoryStore {
    /// A memory miss asks the disk, then the shared tier; a copy found there is kept in
    /// memory too.
    async fn lookup_tiers(
        &'static self,
        hash: HashBinary,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        if let Some(disk) = self.disk.get() {
            if let Some((object, promote)) = disk.get(hash).await {
                if !promote {
                    return self.serve_lower(object);
                }
                return self.promote(hash, object, false).await;
            }
        }
        let Some(shared) = self.shared.get() else {
            return Ok(None);
        };
        let found = match shared.get(&hash).await {
            Some(object) => Some(object),
            None => shared.fetched_elsewhere(&hash).await,
        };
        match found {
            Some(object) => self.promote(hash, object, true).await,
            None => Ok(None),
        }
    }

    /// Serves a copy found on disk without keeping it in memory (read once so far),
    /// unless it may show what a purge removed.
    fn serve_lower(
        &'static self,
        mut object: StoredObject,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        if object.usable_until() <= SystemTime::now()
            || self
                .recent_purges
                .purged_since(&object.tags, object.pool.as_deref(), object.updated)
        {
            return Ok(None);
        }
        let meta = object.meta()?;
        if !object.nothing_derived {
            object.derived =
                self.derive(meta.response_header(), &object.body, PROMOTED_MAX_INFLATED);
        }
        Ok(Some((
            meta,
            Box::new(StoredHit::new(object.body, object.derived)),
        )))
    }

    /// Keeps a copy found in a lower tier in memory, and serves it, unless it may show
    /// what a purge removed. `to_disk`: the copy came from elsewhere (the shared tier)
    /// and is written to disk as well.
    async fn promote(
        &'static self,
        hash: HashBinary,
        mut object: StoredObject,
        to_disk: bool,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        if object.usable_until() <= SystemTime::now() {
            return Ok(None);
        }
        // The same rule as for fills: a copy stored before a purge of its tags that this
        // node has seen is stale, even if its removal there has not landed yet.
        let purged = |object: &StoredObject| {
            self.recent_purges
                .purged_since(&object.tags, object.pool.as_deref(), object.updated)
        };
        if purged(&object) {
            return Ok(None);
        }
        let mut meta = object.meta()?;
        // Lower tiers keep bodies only; what is derived from one is this node's work,
        // unless the disk says there was nothing to derive (most pages: no ESI).
        object.detach();
        if !object.nothing_derived {
            let derived = self.derive(meta.response_header(), &object.body, PROMOTED_MAX_INFLATED);
            object.set_derived(derived);
            // The body may have been re-encoded, with its length.
            meta = object.meta()?;
        }
        let hit = StoredHit::new(object.body.clone(), object.derived.clone());
        if to_disk {
            if let Some(disk) = self.disk.get() {
                disk.write(hash, &object, object.updated);
            }
        }
        let (tags, pool, updated) = (object.tags.clone(), object.pool.clone(), object.updated);
        self.put(hash, object).await;
        // A purge that chose its objects while this copy was on its way in did not see
        // it; it recorded itself before choosing, so asking again after the insert
        // catches exactly that case.
        if self
            .recent_purges
            .purged_since(&tags, pool.as_deref(), updated)
        {
            self.objects.remove(&hash);
            return Ok(None);
        }
        Ok(Some((meta, Box::new(hit))))
    }
}

#[async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = key.combined_bin();
        let Some(object) = self.objects.get(&hash) else {
            return self.lookup_tiers(hash).await;
        };
        object.heat.hit();
        let meta = object.meta()?;
        Ok(Some((
            meta,
            Box::new(StoredHit::new(object.body.clone(), object.derived.clone())),
        )))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let tags = meta.extensions().get::<Tags>().cloned().unwrap_or_default();
        let identity = meta.extensions().get::<Arc<RequestIdentity>>().cloned();
        let started = meta
            .extensions()
            .get::<FetchStarted>()
            .map_or_else(|| meta.created(), |s| s.0);
        let visitor = meta.extensions().get::<VisitorFetch>().is_some();
        let derive = meta.extensions().get::<Derive>().map(|d| d.0);
        Ok(Box::new(Miss {
            derive,
            identity,
            started,
            visitor,
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
        Ok(match self.objects.remove(&target.key().combined_bin()) {
            Some(_) => PurgeOutcome::Purged(None),
            None => PurgeOutcome::NotFound,
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let hash = key.combined_bin();
        // The object may have been evicted or purged while it was revalidated.
        let Some(old) = self.objects.get(&hash) else {
            return Ok(false);
        };
        let mut object = StoredObject::new(
            meta,
            meta.response_header(),
            old.body.clone(),
            old.tags.clone(),
            old.identity.clone(),
        )?;
        object.derived = old.derived.clone();
        object.nothing_derived = old.nothing_derived;
        if let Some(disk) = self.disk.get() {
            disk.write(hash, &object, meta.updated());
        }
        self.put(hash, object).await;
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::trace::Span;
    use std::time::Instant;

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
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(
            1 << 20,
            Duration::from_secs(600),
        )));
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
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(
            1 << 24,
            Duration::from_secs(600),
        )));
        put(store, "short", 10, Duration::from_millis(300), 0).await;
        put(store, "kept", 10, Duration::from_millis(300), 3600).await;
        assert!(has(store, "short").await && has(store, "kept").await);
        // Waits on the fact (the short object gone), bounded; the kept one must outlive it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while has(store, "short").await {
            assert!(
                Instant::now() < deadline,
                "expired and not kept: memory is given back"
            );
            tokio::task::yield_now().await;
        }
        assert!(
            has(store, "kept").await,
            "stale but within keep: still there to serve stale"
        );
    }
}
