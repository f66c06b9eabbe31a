//! The disk tier: pages kept on local disk across restarts, upgrades and crashes, and a
//! catalogue larger than memory.
//!
//! One redb file (`<cache.disk_dir>/cache.redb`) with two tables keyed by the cache key's
//! hash: the objects (sealed with a checksum, see `record`) and their summaries (what the
//! index needs, read at start-up without reading a body). Fills reach it through a
//! queue bounded in entries and bytes, written in batches by one background writer, off
//! the request path; a
//! memory miss reads it before the shared tier and the origin, and a disk hit is promoted
//! to memory. Memory hits never touch it.
//!
//! Invariants:
//! - **A purge answered is on disk.** Purges select disk objects from the index and
//!   commit their removal with `Durability::Immediate` (an fsync) before they return;
//!   fills commit without an fsync, at most a second before the next durable commit
//!   (a crash loses at most that second of fills, which are fetched again).
//! - **No fill outlives a purge.** Writers (fills, purges, evictions) hold `writing` from
//!   the start of their transaction until the index reflects its commit, and a fill is
//!   dropped if a purge of its tags has been recorded since its fetch began. A purge that
//!   records first makes the fill drop itself; a fill that commits first is in the index
//!   the purge then reads.
//! - **Nothing partial is served.** redb commits atomically; a record is served only if
//!   its checksum holds.
//! - **A slow disk does not hold the threads that serve hits.** Reads run on the
//!   request's thread while they take page-cache time (a copy); after one slow read
//!   they go to the blocking pool for a while, with a timeout that makes them misses.
//!   Writes never run on a request's thread. A tier that is opening, failed or closed
//!   is a miss.

pub mod index;
pub mod metrics;
pub mod record;

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::server::ShutdownWatch;
use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use regex::Regex;
use tokio::sync::{mpsc, Notify};

use super::recent_purges::RecentPurges;
use super::{StoredObject, TagSelector};
use index::DiskIndex;
pub use metrics::DiskMetrics;
use record::Summary;

const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
const SUMMARIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("summaries");
/// The purge bus position the pages are valid at (`BUS_POSITION`).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BUS_POSITION: &str = "bus-position";

/// Where on the purge bus the pages on disk are valid: every purge up to this entry is
/// applied to them. A restarted node replays the purges after it instead of dropping its
/// pages, when the stream still holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusPosition {
    /// The data set the stream belongs to (`purge::bus`'s epoch).
    pub epoch: String,
    /// The sequence number of the last entry applied.
    pub seq: u64,
    /// That entry's stream id.
    pub id: String,
}

impl BusPosition {
    fn encode(&self) -> Vec<u8> {
        format!("{}\n{}\n{}", self.epoch, self.seq, self.id).into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split('\n');
        Some(Self {
            epoch: parts.next()?.to_string(),
            seq: parts.next()?.parse().ok()?,
            id: parts.next()?.to_string(),
        })
    }
}
const FILE: &str = "cache.redb";

/// Fills waiting to be written at most, and their bytes; more are dropped (counted),
/// never waited for, so a slow disk costs neither latency nor unbounded memory.
const QUEUE: usize = 2048;
const QUEUE_BYTES: u64 = 64 << 20;
/// Fills written in one transaction at most.
const BATCH: usize = 512;
/// How often fills written without an fsync are made durable.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How often objects past their last usable moment are swept from disk.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// A read slower than this (the page cache did not have it, or the disk is in
/// trouble) sends reads to the blocking pool for `SLOW_READ_PENALTY`.
const SLOW_READ: Duration = Duration::from_millis(5);
const SLOW_READ_PENALTY: Duration = Duration::from_secs(30);
/// A read in the blocking pool that takes longer is a miss.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How long fills are dropped after the disk refused a write.
const WRITE_BACKOFF: Duration = Duration::from_secs(10);
/// How long a purge waits for a tier that is still opening before it fails.
const PURGE_WAITS_FOR_OPEN: Duration = Duration::from_secs(10);
/// How long start-up waits for the previous process to let go of the file (an upgrade).
const WAIT_FOR_PREVIOUS: Duration = Duration::from_secs(30);
/// redb's own page cache; the operating system's page cache does the rest.
const REDB_CACHE_BYTES: usize = 32 << 20;

/// Why the disk tier could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("the disk tier is still opening; retry in a moment")]
    Opening,
    #[error("the disk tier is off ({0}); fix it or set cache.disk_dir = \"\" and restart")]
    Off(String),
    #[error("the disk tier could not {what}: {source}")]
    Store {
        what: &'static str,
        source: redb::Error,
    },
    #[error("the disk tier could not {what} in {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the disk tier's worker stopped: {0}")]
    Worker(String),
}

fn store_error<E: Into<redb::Error>>(what: &'static str) -> impl FnOnce(E) -> DiskError {
    move |e| DiskError::Store {
        what,
        source: e.into(),
    }
}

enum State {
    Opening,
    Open(Arc<Database>),
    /// Not serving. `file_holds_objects`: a file is left that a later start may serve
    /// from, so purges cannot be promised now; without one, there is nothing to purge.
    Off {
        why: String,
        file_holds_objects: bool,
    },
}

enum Read {
    Absent,
    Found(Box<StoredObject>),
    Corrupt,
}

enum Pending {
    Put {
        key: HashBinary,
        record: Bytes,
        summary: Summary,
        /// When its fetch began: a purge of its tags since then drops it.
        started: SystemTime,
    },
    Remove(HashBinary),
}

pub struct DiskTier {
    dir: PathBuf,
    max_bytes: u64,
    /// With a purge bus: what the file held at start-up is not served until the bus has
    /// replayed the purges since its position (`trust`), or dropped it (`clear`).
    held_for_bus: bool,
    /// Serving is held (see `held_for_bus`).
    held: std::sync::atomic::AtomicBool,
    /// The position the file's pages were valid at when it was opened.
    opened_at: Mutex<Option<BusPosition>>,
    /// The position to make durable with the next sync.
    position: Mutex<Option<BusPosition>>,
    state: ArcSwap<State>,
    /// Counts the times the file was opened: a failure is recovered from once, not
    /// once per caller that saw it.
    epoch: std::sync::atomic::AtomicU64,
    changed: Notify,
    index: Mutex<DiskIndex>,
    /// Held by a writer from the start of its transaction until the index shows its
    /// commit (see the invariants).
    writing: Mutex<()>,
    /// When the tier was built, and when (ms after that) a read was last slow: 0 never.
    born: Instant,
    slow_read_at: std::sync::atomic::AtomicU64,
    queue: mpsc::Sender<Pending>,
    /// Bytes of the records in `queue`.
    queued_bytes: std::sync::atomic::AtomicU64,
    receiver: Mutex<Option<mpsc::Receiver<Pending>>>,
    metrics: DiskMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl DiskTier {
    pub fn new(
        dir: impl Into<PathBuf>,
        max_bytes: u64,
        held_for_bus: bool,
        metrics: DiskMetrics,
    ) -> Arc<Self> {
        let (queue, receiver) = mpsc::channel(QUEUE);
        Arc::new(Self {
            dir: dir.into(),
            max_bytes,
            held_for_bus,
            held: std::sync::atomic::AtomicBool::new(held_for_bus),
            opened_at: Mutex::new(None),
            position: Mutex::new(None),
            state: ArcSwap::from_pointee(State::Opening),
            epoch: std::sync::atomic::AtomicU64::new(0),
            changed: Notify::new(),
            index: Mutex::new(DiskIndex::default()),
            writing: Mutex::new(()),
            born: Instant::now(),
            slow_read_at: std::sync::atomic::AtomicU64::new(0),
            queue,
            queued_bytes: std::sync::atomic::AtomicU64::new(0),
            receiver: Mutex::new(Some(receiver)),
            metrics,
        })
    }

    fn index(&self) -> MutexGuard<'_, DiskIndex> {
        lock(&self.index)
    }

    fn set_state(&self, state: State) {
        self.metrics
            .open
            .set(i64::from(matches!(state, State::Open(_))));
        self.state.store(Arc::new(state));
        self.changed.notify_waiters();
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    fn database(&self) -> Option<Arc<Database>> {
        match &**self.state.load() {
            State::Open(db) => Some(db.clone()),
            _ => None,
        }
    }

    /// The database for a purge: waits for a tier that is still opening. `Ok(None)`:
    /// the tier is off and left no file, so there is nothing to purge.
    async fn database_for_purge(&self) -> Result<Option<Arc<Database>>, DiskError> {
        let deadline = tokio::time::Instant::now() + PURGE_WAITS_FOR_OPEN;
        loop {
            let changed = self.changed.notified();
            match &**self.state.load() {
                State::Open(db) => return Ok(Some(db.clone())),
                State::Off {
                    file_holds_objects: false,
                    ..
                } => return Ok(None),
                State::Off { why, .. } => return Err(DiskError::Off(why.clone())),
                State::Opening => {}
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(DiskError::Opening);
            }
        }
    }

    fn publish_usage(&self, index: &DiskIndex) {
        self.metrics.objects.set(index.len() as i64);
        self.metrics.bytes.set(index.bytes() as i64);
    }

    /// The purge bus position the file's pages were valid at when it was opened (waits
    /// for the tier to open); `None` when it has none, is off, or takes too long.
    pub async fn bus_position(&self) -> Option<BusPosition> {
        let deadline = tokio::time::Instant::now() + PURGE_WAITS_FOR_OPEN;
        loop {
            let changed = self.changed.notified();
            match &**self.state.load() {
                State::Open(_) => return lock(&self.opened_at).clone(),
                State::Off { .. } => return None,
                State::Opening => {}
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// The bus has replayed every purge since the file's position: its pages are served.
    pub fn trust(&self) {
        if self.held.swap(false, std::sync::atomic::Ordering::AcqRel) {
            tracing::info!(
                objects = self.usage().0,
                "disk tier: the purges missed while down are applied; its pages are served"
            );
        }
    }

    /// Every purge up to `position` is applied here: made durable with the next sync.
    pub fn record_bus_position(&self, position: BusPosition) {
        if self.held_for_bus {
            *lock(&self.position) = Some(position);
        }
    }

    /// `(objects, bytes)` on disk now.
    pub fn usage(&self) -> (usize, u64) {
        let index = self.index();
        (index.len(), index.bytes())
    }

    /// Whether the tier is open and serving.
    pub fn is_open(&self) -> bool {
        matches!(&**self.state.load(), State::Open(_))
    }

    /// Queues a fill to be written; never waits (a full queue drops it, counted).
    pub fn write(&self, key: HashBinary, object: &StoredObject, started: SystemTime) {
        if !self.is_open() {
            return;
        }
        let record = record::seal(object);
        let size = record.len() as u64;
        if size > self.max_bytes / 4 {
            return;
        }
        use std::sync::atomic::Ordering::Relaxed;
        if self.queued_bytes.fetch_add(size, Relaxed) + size > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(size, Relaxed);
            self.metrics.dropped.inc();
            return;
        }
        let pending = Pending::Put {
            key,
            summary: Summary::of(object, size),
            record,
            started,
        };
        if self.queue.try_send(pending).is_err() {
            self.queued_bytes.fetch_sub(size, Relaxed);
            self.metrics.dropped.inc();
        }
    }

    /// `batch` left the queue: its bytes no longer count against it.
    fn dequeued(&self, batch: &[Pending]) {
        let bytes: u64 = batch
            .iter()
            .map(|p| match p {
                Pending::Put { record, .. } => record.len() as u64,
                Pending::Remove(_) => 0,
            })
            .sum();
        self.queued_bytes
            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The object stored on disk under `key`, if any and whole, and whether it has
    /// earned a place in memory again (its second read: see `DiskIndex::touch`).
    pub async fn get(&self, key: HashBinary) -> Option<(StoredObject, bool)> {
        if self.held.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let db = self.database()?;
        let promote = {
            let mut index = self.index();
            if !index.contains(&key) {
                self.metrics.misses.inc();
                return None;
            }
            index.touch(&key)
        };
        let read = move || -> Result<Read, DiskError> {
            let txn = db.begin_read().map_err(store_error("begin a read"))?;
            let table = txn
                .open_table(OBJECTS)
                .map_err(store_error("open the objects"))?;
            let value = table.get(&key[..]).map_err(store_error("read an object"))?;
            Ok(match value {
                None => Read::Absent,
                Some(v) => {
                    record::unseal(v.value()).map_or(Read::Corrupt, |o| Read::Found(Box::new(o)))
                }
            })
        };
        let read = if self.reads_inline() {
            // From the page cache this is a copy: cheaper than a trip to another thread.
            let started = Instant::now();
            let read = read();
            if started.elapsed() > SLOW_READ {
                self.slow_since(started);
            }
            read
        } else {
            match tokio::time::timeout(READ_TIMEOUT, tokio::task::spawn_blocking(read)).await {
                Ok(done) => done
                    .map_err(|e| DiskError::Worker(e.to_string()))
                    .and_then(|read| read),
                Err(_) => Err(DiskError::Worker(format!(
                    "a read took longer than {} ms",
                    READ_TIMEOUT.as_millis()
                ))),
            }
        };
        match read {
            Ok(Read::Found(object)) if object.usable_until() > SystemTime::now() => {
                self.metrics.hits.inc();
                Some((*object, promote))
            }
            Ok(read) => {
                if matches!(read, Read::Corrupt) {
                    self.metrics.corrupt.inc();
                    tracing::warn!("disk tier: a record failed its checksum; removed, not served");
                }
                self.metrics.misses.inc();
                let _ = self.queue.try_send(Pending::Remove(key));
                None
            }
            Err(e) => {
                self.metrics.errors.with_label_values(&["read"]).inc();
                tracing::warn!(error = %e, "disk tier: a read failed (served from elsewhere)");
                None
            }
        }
    }

    /// Whether reads run on the request's own thread: yes while the disk answers like
    /// a page cache; for a while after one slow read, they go to the blocking pool,
    /// where a stuck disk holds a pool thread and a read gives up after `READ_TIMEOUT`,
    /// not a thread that serves hits.
    fn reads_inline(&self) -> bool {
        let slow = self.slow_read_at.load(std::sync::atomic::Ordering::Relaxed);
        slow == 0
            || self.born.elapsed().as_millis() as u64 > slow + SLOW_READ_PENALTY.as_millis() as u64
    }

    fn slow_since(&self, at: Instant) {
        let at = at.duration_since(self.born).as_millis() as u64;
        self.slow_read_at
            .store(at.max(1), std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            "disk tier: a read took over {} ms; reads go to the blocking pool for {} s",
            SLOW_READ.as_millis(),
            SLOW_READ_PENALTY.as_secs()
        );
    }

    /// Removes (or with `soft`, expires) the disk objects a purge selects, durably:
    /// when this returns `Ok`, a crash cannot bring them back. `Err` when the tier
    /// cannot promise that (opening for too long, failed, closed, the disk refused).
    pub async fn purge(
        self: &Arc<Self>,
        tags: Option<&TagSelector>,
        pool: Option<&Regex>,
        soft: bool,
    ) -> Result<usize, DiskError> {
        let mut recovered = false;
        loop {
            let epoch = self.epoch();
            let Some(db) = self.database_for_purge().await? else {
                return Ok(0);
            };
            let (tier, tags, pool) = (self.clone(), tags.cloned(), pool.cloned());
            // The handle goes with the closure: a reopen must not find it still held.
            let purged = tokio::task::spawn_blocking(move || {
                tier.purge_blocking(&db, tags.as_ref(), pool.as_ref(), soft)
            })
            .await
            .map_err(|e| DiskError::Worker(e.to_string()))
            .and_then(|purged| purged);
            match purged {
                Ok(purged) => return Ok(purged),
                // redb refuses everything after an I/O error until the file is opened
                // again: once, and the purge tried again on the reopened file.
                Err(DiskError::Store { .. }) if !recovered => {
                    recovered = true;
                    self.metrics.errors.with_label_values(&["purge"]).inc();
                    self.reopen(epoch).await;
                }
                Err(e) => {
                    self.metrics.errors.with_label_values(&["purge"]).inc();
                    self.give_up(&e);
                    return Err(e);
                }
            }
        }
    }

    /// Opens the file again after the disk refused an operation (redb refuses every
    /// later one until then) and rebuilds the index from it, since reopening goes back
    /// to the last durable commit. `epoch`: the opening the failure happened on; a
    /// reopen already done since is not repeated. A file that cannot be reopened is
    /// given up (removed, the tier off).
    async fn reopen(self: &Arc<Self>, epoch: u64) {
        let tier = self.clone();
        let reopened = tokio::task::spawn_blocking(move || tier.reopen_blocking(epoch))
            .await
            .map_err(|e| DiskError::Worker(e.to_string()))
            .and_then(|reopened| reopened);
        if let Err(e) = reopened {
            self.metrics.errors.with_label_values(&["open"]).inc();
            self.give_up(&e);
        }
    }

    fn reopen_blocking(&self, epoch: u64) -> Result<(), DiskError> {
        let _writing = lock(&self.writing);
        if self.epoch() != epoch || !self.is_open() {
            return Ok(());
        }
        tracing::warn!("disk tier: reopening the file after the disk refused an operation");
        // New lookups miss and purges wait while the handles in use are let go of.
        self.set_state(State::Opening);
        let db = open_file(&self.dir.join(FILE))?;
        let found = self.load_unlocked(&db)?;
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.set_state(State::Open(Arc::new(db)));
        tracing::warn!(objects = found, "disk tier: reopened");
        Ok(())
    }

    /// A file the disk refused (a purge that could not be written, or a reopen that
    /// failed) may hold objects that must never be served: the tier stops serving now,
    /// and the file is removed so that the next start does not serve them either.
    fn give_up(&self, why: &DiskError) {
        let path = self.dir.join(FILE);
        let removed = std::fs::remove_file(&path);
        tracing::error!(
            error = %why,
            file = %path.display(),
            file_removed = removed.is_ok(),
            "disk tier: giving the file up (the disk refused it); the tier is off until restart and its file is removed, so nothing it held is served later"
        );
        self.set_state(State::Off {
            why: format!("the disk refused an operation: {why}"),
            file_holds_objects: removed.is_err(),
        });
        let mut index = self.index();
        index.clear();
        self.publish_usage(&index);
    }

    /// Drops every object on disk, durably (a flush of everything, or purges missed).
    pub async fn clear(self: &Arc<Self>) -> Result<usize, DiskError> {
        let Some(db) = self.database_for_purge().await? else {
            return Ok(0);
        };
        let tier = self.clone();
        let cleared = tokio::task::spawn_blocking(move || tier.clear_blocking(&db))
            .await
            .map_err(|e| DiskError::Worker(e.to_string()))
            .and_then(|cleared| cleared);
        if let Err(e) = &cleared {
            self.metrics.errors.with_label_values(&["purge"]).inc();
            self.give_up(e);
        }
        // Nothing from before is left to hold back.
        *lock(&self.opened_at) = None;
        self.held.store(false, std::sync::atomic::Ordering::Release);
        cleared
    }

    fn purge_blocking(
        &self,
        db: &Database,
        tags: Option<&TagSelector>,
        pool: Option<&Regex>,
        soft: bool,
    ) -> Result<usize, DiskError> {
        let _writing = lock(&self.writing);
        let keys = self.index().select(tags, pool);
        if keys.is_empty() {
            return Ok(0);
        }
        let mut txn = db.begin_write().map_err(store_error("begin a purge"))?;
        txn.set_quick_repair(true);
        let mut changed: Vec<(HashBinary, Option<Summary>)> = Vec::with_capacity(keys.len());
        {
            let mut tables = Tables::open(&txn)?;
            for key in &keys {
                let expired = if soft {
                    let old = tables
                        .objects
                        .get(&key[..])
                        .map_err(store_error("read an object to expire"))?
                        .and_then(|v| record::unseal(v.value()));
                    match old {
                        // Already stale: left as it is, as in memory.
                        Some(object) if !object.is_fresh() => continue,
                        Some(object) => Some(object.expired()),
                        None => None,
                    }
                } else {
                    None
                };
                match expired {
                    Some(object) => {
                        let record = record::seal(&object);
                        let summary = Summary::of(&object, record.len() as u64);
                        tables.put(&key[..], &record, &summary)?;
                        changed.push((*key, Some(summary)));
                    }
                    None => {
                        tables.remove(&key[..])?;
                        changed.push((*key, None));
                    }
                }
            }
        }
        // Immediate (the default): on disk before the purge is answered.
        txn.commit().map_err(store_error("commit a purge"))?;
        let mut index = self.index();
        for (key, summary) in changed.iter().cloned() {
            match summary {
                Some(summary) => index.insert(key, summary),
                None => {
                    index.remove(&key);
                }
            }
        }
        self.publish_usage(&index);
        Ok(changed.len())
    }

    fn clear_blocking(&self, db: &Database) -> Result<usize, DiskError> {
        let _writing = lock(&self.writing);
        let mut txn = db.begin_write().map_err(store_error("begin a flush"))?;
        txn.set_quick_repair(true);
        txn.delete_table(OBJECTS)
            .map_err(store_error("drop the objects"))?;
        txn.delete_table(SUMMARIES)
            .map_err(store_error("drop the summaries"))?;
        txn.open_table(OBJECTS)
            .map_err(store_error("create the objects"))?;
        txn.open_table(SUMMARIES)
            .map_err(store_error("create the summaries"))?;
        txn.commit().map_err(store_error("commit a flush"))?;
        let mut index = self.index();
        let objects = index.len();
        index.clear();
        self.publish_usage(&index);
        Ok(objects)
    }

    /// Writes a batch of fills and removals in one transaction, then evicts down to the
    /// budget. Without `durable`, no fsync: the next durable commit carries it.
    fn write_blocking(
        &self,
        db: &Database,
        batch: Vec<Pending>,
        recent: &RecentPurges,
        in_memory: &(dyn Fn(&HashBinary) -> bool + Send + Sync),
    ) -> Result<(), DiskError> {
        let _writing = lock(&self.writing);
        let mut txn = db.begin_write().map_err(store_error("begin a write"))?;
        txn.set_durability(Durability::None)
            .map_err(|e| DiskError::Worker(e.to_string()))?;
        let mut changed: Vec<(HashBinary, Option<Summary>)> = Vec::with_capacity(batch.len());
        {
            let mut tables = Tables::open(&txn)?;
            for pending in batch {
                match pending {
                    Pending::Put {
                        key,
                        record,
                        summary,
                        started,
                    } => {
                        // Checked under `writing`: see the invariants.
                        if recent.purged_since(&summary.tags, summary.pool.as_deref(), started) {
                            continue;
                        }
                        tables.put(&key[..], &record, &summary)?;
                        changed.push((key, Some(summary)));
                    }
                    Pending::Remove(key) => {
                        tables.remove(&key[..])?;
                        changed.push((key, None));
                    }
                }
            }
        }
        txn.commit().map_err(store_error("commit a write"))?;
        let victims = {
            let mut index = self.index();
            for (key, summary) in changed {
                match summary {
                    Some(summary) => {
                        self.metrics.writes.inc();
                        index.insert(key, summary)
                    }
                    None => {
                        index.remove(&key);
                    }
                }
            }
            self.publish_usage(&index);
            index.victims(self.max_bytes, in_memory)
        };
        if victims.is_empty() {
            return Ok(());
        }
        let mut txn = db.begin_write().map_err(store_error("begin an eviction"))?;
        txn.set_durability(Durability::None)
            .map_err(|e| DiskError::Worker(e.to_string()))?;
        {
            let mut tables = Tables::open(&txn)?;
            for key in &victims {
                tables.remove(&key[..])?;
            }
        }
        txn.commit().map_err(store_error("commit an eviction"))?;
        let mut index = self.index();
        for key in &victims {
            index.remove(key);
        }
        self.metrics.evictions.inc_by(victims.len() as u64);
        self.publish_usage(&index);
        Ok(())
    }

    /// Makes every commit so far durable (an empty transaction, committed with an fsync).
    fn sync_blocking(&self, db: &Database) -> Result<(), DiskError> {
        let _writing = lock(&self.writing);
        // Writes count their objects under the same lock: this commit covers them all.
        let covered = self.metrics.writes.get();
        let mut txn = db.begin_write().map_err(store_error("begin a sync"))?;
        txn.set_quick_repair(true);
        // The purges up to it were applied (committed) before it was recorded.
        if let Some(position) = lock(&self.position).take() {
            let mut meta = txn
                .open_table(META)
                .map_err(store_error("open the meta table"))?;
            meta.insert(BUS_POSITION, &position.encode()[..])
                .map_err(store_error("write the bus position"))?;
        }
        txn.commit().map_err(store_error("commit a sync"))?;
        self.metrics.syncs.inc();
        self.metrics
            .durable_writes
            .set(i64::try_from(covered).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Removes the objects that may no longer be served at all.
    fn sweep(&self, now: SystemTime) -> Vec<Pending> {
        self.index()
            .unusable(now)
            .into_iter()
            .map(Pending::Remove)
            .collect()
    }

    /// Opens the file (waiting for a previous process to let go of it), repairs it after
    /// a crash, and rebuilds the index. A file redb cannot open is set aside and a new
    /// one started: a damaged cache is a cold cache, never a stopped proxy.
    fn open_blocking(&self) -> Result<(Database, usize), DiskError> {
        // Pages may be one visitor's as much as the shop's: only Floodgate's user reads
        // them, whatever the umask (a unit's `UMask` can only narrow this).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| DiskError::Io {
                what: "create the directory",
                path: self.dir.clone(),
                source,
            })?;
        let path = self.dir.join(FILE);
        match open_file(&path) {
            Ok(db) => match self.load(&db) {
                Ok(found) => return Ok((db, found)),
                Err(e) => {
                    tracing::error!(error = %e, "disk tier: the file could not be read; starting a new one");
                    drop(db);
                }
            },
            Err(e @ DiskError::Store { .. }) => {
                tracing::error!(error = %e, "disk tier: the file could not be opened; starting a new one");
            }
            Err(e) => return Err(e),
        }
        self.metrics.errors.with_label_values(&["open"]).inc();
        set_aside(&path)?;
        let db = open_file(&path)?;
        let found = self.load(&db)?;
        Ok((db, found))
    }

    /// Reads every summary into the index; drops what may not be served any more.
    fn load(&self, db: &Database) -> Result<usize, DiskError> {
        let _writing = lock(&self.writing);
        self.load_unlocked(db)
    }

    fn load_unlocked(&self, db: &Database) -> Result<usize, DiskError> {
        let now = SystemTime::now();
        let mut drop_keys: Vec<Vec<u8>> = Vec::new();
        let mut index = DiskIndex::default();
        {
            let txn = db.begin_write().map_err(store_error("begin the load"))?;
            {
                let meta = txn
                    .open_table(META)
                    .map_err(store_error("open the meta table"))?;
                let position = meta
                    .get(BUS_POSITION)
                    .map_err(store_error("read the bus position"))?
                    .and_then(|v| BusPosition::decode(v.value()));
                *lock(&self.opened_at) = position;
            }
            {
                txn.open_table(OBJECTS)
                    .map_err(store_error("open the objects"))?;
                let summaries = txn
                    .open_table(SUMMARIES)
                    .map_err(store_error("open the summaries"))?;
                for entry in summaries
                    .iter()
                    .map_err(store_error("list the summaries"))?
                {
                    let (key, value) = entry.map_err(store_error("read a summary"))?;
                    let key_bytes = key.value();
                    let summary = Summary::decode(value.value());
                    match (HashBinary::try_from(key_bytes), summary) {
                        (Ok(key), Some(summary)) if summary.usable_until > now => {
                            index.insert(key, summary)
                        }
                        _ => drop_keys.push(key_bytes.to_vec()),
                    }
                }
            }
            txn.commit().map_err(store_error("commit the load"))?;
        }
        if !drop_keys.is_empty() {
            let txn = db
                .begin_write()
                .map_err(store_error("begin the clean-up"))?;
            {
                let mut tables = Tables::open(&txn)?;
                for key in &drop_keys {
                    tables.remove(&key[..])?;
                }
            }
            txn.commit().map_err(store_error("commit the clean-up"))?;
        }
        let found = index.len();
        self.publish_usage(&index);
        *self.index() = index;
        Ok(found)
    }

    /// Opens the tier, then writes what fills queue until shutdown; at shutdown writes
    /// what is queued, makes it durable and lets go of the file for the next process.
    /// `in_memory` tells which objects memory still serves (spared by eviction).
    pub async fn run(
        self: Arc<Self>,
        recent: &'static RecentPurges,
        in_memory: Arc<dyn Fn(&HashBinary) -> bool + Send + Sync>,
        mut shutdown: ShutdownWatch,
    ) {
        let Some(mut receiver) = lock(&self.receiver).take() else {
            return;
        };
        let started = Instant::now();
        let tier = self.clone();
        let opened = tokio::task::spawn_blocking(move || tier.open_blocking()).await;
        let db = match opened {
            Ok(Ok((db, found))) => {
                let took = started.elapsed();
                self.metrics.recovery_seconds.set(took.as_secs_f64());
                self.metrics.recovered_objects.set(found as i64);
                tracing::info!(
                    objects = found,
                    ms = took.as_millis() as u64,
                    dir = %self.dir.display(),
                    "disk tier open"
                );
                let db = Arc::new(db);
                self.set_state(State::Open(db.clone()));
                db
            }
            Ok(Err(e)) => {
                self.metrics.errors.with_label_values(&["open"]).inc();
                tracing::error!(error = %e, "disk tier: not opened; serving from memory only");
                self.set_state(State::Off {
                    why: e.to_string(),
                    file_holds_objects: self.dir.join(FILE).exists(),
                });
                return;
            }
            Err(e) => {
                self.metrics.errors.with_label_values(&["open"]).inc();
                tracing::error!(error = %e, "disk tier: opening it crashed; serving from memory only");
                self.set_state(State::Off {
                    why: format!("opening crashed: {e}"),
                    file_holds_objects: self.dir.join(FILE).exists(),
                });
                return;
            }
        };
        drop(db);
        let mut sync = tokio::time::interval(SYNC_EVERY);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        let mut unsynced = false;
        // After the disk refused a write, fills are dropped for a while: a full disk is
        // not asked again for every batch.
        let mut paused_until: Option<tokio::time::Instant> = None;
        loop {
            let batch = tokio::select! {
                first = receiver.recv() => {
                    let Some(first) = first else { break };
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match receiver.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    self.dequeued(&batch);
                    batch
                }
                _ = sync.tick() => {
                    if unsynced || lock(&self.position).is_some() {
                        unsynced = false;
                        if !self.work(|tier, db| tier.sync_blocking(db)).await {
                            paused_until = Some(tokio::time::Instant::now() + WRITE_BACKOFF);
                        }
                    }
                    continue;
                }
                _ = sweep.tick() => self.sweep(SystemTime::now()),
                _ = shutdown.changed() => break,
            };
            if batch.is_empty() {
                continue;
            }
            if paused_until.is_some_and(|until| tokio::time::Instant::now() < until) {
                self.metrics.dropped.inc_by(batch.len() as u64);
                continue;
            }
            let in_memory = in_memory.clone();
            if self
                .work(move |tier, db| tier.write_blocking(db, batch, recent, &*in_memory))
                .await
            {
                unsynced = true;
            } else {
                paused_until = Some(tokio::time::Instant::now() + WRITE_BACKOFF);
            }
        }
        // Shutting down: what is queued is written, made durable, and the file let go.
        let mut rest = Vec::new();
        while let Ok(next) = receiver.try_recv() {
            rest.push(next);
        }
        self.dequeued(&rest);
        let in_memory = in_memory.clone();
        self.work(move |tier, db| {
            tier.write_blocking(db, rest, recent, &*in_memory)?;
            tier.sync_blocking(db)
        })
        .await;
        // The next process serves from the file: purges here can no longer reach it.
        self.set_state(State::Off {
            why: "closed: this process is shutting down".into(),
            file_holds_objects: true,
        });
        tracing::info!("disk tier closed");
    }

    /// Runs a write in the blocking pool on the open file; `false` when it failed (the
    /// file is then reopened, or given up). Nothing to do while the tier is not open.
    async fn work(
        self: &Arc<Self>,
        work: impl FnOnce(&DiskTier, &Database) -> Result<(), DiskError> + Send + 'static,
    ) -> bool {
        let epoch = self.epoch();
        let Some(db) = self.database() else {
            return true;
        };
        let tier = self.clone();
        // The handle goes with the closure: a reopen must not find it still held.
        let done = tokio::task::spawn_blocking(move || work(&tier, &db)).await;
        let failed = match done {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        self.metrics.errors.with_label_values(&["write"]).inc();
        tracing::warn!(error = %failed, "disk tier: a write failed (those fills stay in memory only; writes pause for 10 s)");
        self.reopen(epoch).await;
        false
    }
}

/// The two tables of one write transaction: an object and its summary always change
/// together.
struct Tables<'t> {
    objects: redb::Table<'t, &'static [u8], &'static [u8]>,
    summaries: redb::Table<'t, &'static [u8], &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, DiskError> {
        Ok(Self {
            objects: txn
                .open_table(OBJECTS)
                .map_err(store_error("open the objects"))?,
            summaries: txn
                .open_table(SUMMARIES)
                .map_err(store_error("open the summaries"))?,
        })
    }

    fn put(&mut self, key: &[u8], record: &[u8], summary: &Summary) -> Result<(), DiskError> {
        self.objects
            .insert(key, record)
            .map_err(store_error("write an object"))?;
        self.summaries
            .insert(key, &summary.encode()[..])
            .map_err(store_error("write a summary"))?;
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> Result<(), DiskError> {
        self.objects
            .remove(key)
            .map_err(store_error("remove an object"))?;
        self.summaries
            .remove(key)
            .map_err(store_error("remove a summary"))?;
        Ok(())
    }
}

/// The tier's file, opened (or created) by Floodgate itself: owner-only (0600), never
/// through a symlink (another file, or another user's, would be written), and only a
/// regular file.
fn owned_file(path: &Path) -> Result<std::fs::File, DiskError> {
    let io = |what: &'static str| {
        move |source: std::io::Error| DiskError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io("open the file: it is a symlink, which is refused; remove it")(e)
            } else {
                io("open the file")(e)
            }
        })?;
    let meta = file.metadata().map_err(io("read the file's metadata"))?;
    if !meta.is_file() {
        return Err(io("open the file: it is not a regular file")(
            std::io::Error::other("not a regular file"),
        ));
    }
    // A file an earlier version created readable to others is narrowed.
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io("make the file owner-only"))?;
    }
    Ok(file)
}

fn open_file(path: &Path) -> Result<Database, DiskError> {
    let deadline = Instant::now() + WAIT_FOR_PREVIOUS;
    loop {
        let file = owned_file(path)?;
        // redb may panic on a file altered behind its back: that is a damaged file too.
        let attempt = std::panic::catch_unwind(|| {
            Database::builder()
                .set_cache_size(REDB_CACHE_BYTES)
                .create_with_backend(redb::backends::FileBackend::new(file)?)
        });
        match attempt {
            Ok(Ok(db)) => return Ok(db),
            // The previous process (an upgrade, a restart) has not let go of it yet.
            Ok(Err(DatabaseError::DatabaseAlreadyOpen)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(Err(e)) => return Err(store_error("open the file")(e)),
            Err(_) => {
                return Err(DiskError::Store {
                    what: "open the file",
                    source: redb::Error::Corrupted("redb panicked reading it".into()),
                })
            }
        }
    }
}

/// Renames a file that cannot be used, for a post-mortem, instead of deleting it.
fn set_aside(path: &Path) -> Result<(), DiskError> {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = path.with_extension(format!("redb.broken-{stamp}"));
    match std::fs::rename(path, &aside) {
        Ok(()) => {
            tracing::error!(file = %aside.display(), "disk tier: the damaged file was set aside");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DiskError::Io {
            what: "set the damaged file aside",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slow_read_sends_reads_to_the_pool_for_a_while() {
        let registry = prometheus::Registry::new();
        let metrics = DiskMetrics::register(&registry).expect("metrics");
        let mut tier = DiskTier::new("/nonexistent", 1 << 30, false, metrics);
        // A tier that has been up for a minute.
        Arc::get_mut(&mut tier).expect("unique").born = Instant::now() - Duration::from_secs(60);
        assert!(tier.reads_inline(), "page-cache reads run inline");
        tier.slow_since(Instant::now());
        assert!(!tier.reads_inline(), "after a slow read, the pool");
        // The slow read was 60 s ago, longer than the penalty: inline again.
        tier.slow_read_at
            .store(1, std::sync::atomic::Ordering::Relaxed);
        assert!(
            tier.reads_inline(),
            "the penalty lasts SLOW_READ_PENALTY only"
        );
    }
}
