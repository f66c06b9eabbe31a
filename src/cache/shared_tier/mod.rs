//! The second tier, shared by every node in Redis: a page one node fetched is a hit for
//! the others, and a node that joins starts warm.
//!
//! Keys under the configured prefix: `obj:<key hash>` holds when its fetch began (unix
//! milliseconds, 8 bytes big-endian), then the encoded object (see `wire`), and expires
//! with it (TTL + keep); a purge removes only copies fetched before it, so a page
//! another node re-warmed after the purge survives the purge's arrival elsewhere; `tag:<tag>` and `pool:<value>` are sets of
//! object hashes, so a purge finds shared copies through the index, never by SCAN; `tags`
//! and `pools` list the index's names, for `.*` and regex purges. Redis bounds its memory
//! with its own `maxmemory` and an LRU policy (`allkeys-lru`); an index entry whose
//! object was evicted costs a few bytes until the next purge of that tag.
//!
//! Redis never holds a request: every call has the configured timeout, a timeout is a
//! miss, and while Redis is unreachable the tier is skipped for half a second at a time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use pingora::cache::key::HashBinary;

use super::recent_purges::RecentPurges;
use super::{wire, StoredObject};
use crate::cluster::{self, Client, Connection};
use crate::config::RedisSection;
use prometheus::{IntCounter, Registry};

use crate::metrics::{counter, counter_vec, Metrics};

const RECONNECT_AFTER: Duration = Duration::from_millis(500);
/// A TCP and TLS handshake, in the background.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Fills being written to Redis at once at most; more stay local.
const MAX_WRITES: usize = 256;
/// The fetch's start, before the encoded object in each shared copy.
const STARTED_LEN: usize = 8;

/// Unix milliseconds.
pub(super) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct SharedTier {
    client: Client,
    prefix: String,
    timeout: Duration,
    max_object_bytes: usize,
    /// The connection, and when one was last attempted.
    connection: Arc<Mutex<(Option<Connection>, Option<Instant>)>>,
    metrics: SharedMetrics,
    /// Cross-node coalescing: how long to wait for another node's fetch, if at all.
    coalesce_wait: Option<Duration>,
    /// This node's name in coalescing locks: its own requests wait on its local lock.
    node: String,
    /// The newest flush of everything (`purge --everything`), unix milliseconds:
    /// copies stored before it are not served. Kept in Redis too, for nodes that start
    /// after it.
    flushed_at: std::sync::atomic::AtomicU64,
    /// Writes in flight at most (`MAX_WRITES`).
    writes: Arc<tokio::sync::Semaphore>,
}

/// Why Redis did not take a shared-tier operation; the caller keeps a purge to retry.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("Redis is unreachable")]
    Unreachable,
    #[error("Redis did not {0}")]
    NotDone(&'static str),
    #[error("{0}")]
    Batch(#[from] crate::cluster::BatchError),
    #[error("Redis answered something unexpected: {0}")]
    Reply(#[from] redis::RedisError),
}

/// The shared tier's own metrics, registered when it is built.
struct SharedMetrics {
    /// Memory misses looked up here: found, not found.
    hits: IntCounter,
    misses: IntCounter,
    writes: IntCounter,
    timeouts: IntCounter,
    coalesced: IntCounter,
}

impl SharedMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let lookups = counter_vec(
            registry,
            "floodgate_shared_lookups_total",
            "Memory misses looked up in the shared Redis tier, by result (hit, miss)",
            &["result"],
        )?;
        Ok(Self {
            hits: lookups.with_label_values(&["hit"]),
            misses: lookups.with_label_values(&["miss"]),
            writes: counter(
                registry,
                "floodgate_shared_writes_total",
                "Fills written to the shared Redis tier",
            )?,
            timeouts: counter(
                registry,
                "floodgate_shared_timeouts_total",
                "Shared-tier operations that ran past redis.timeout_ms (treated as misses)",
            )?,
            coalesced: counter(
                registry,
                "floodgate_shared_coalesced_total",
                "Misses served by another node's fetch through the shared tier (cross-node coalescing)",
            )?,
        })
    }
}

fn hex(key: &HashBinary) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

impl SharedTier {
    /// The tier in Redis through `client` (the runtime's, for `redis.url`).
    pub fn new(
        config: &RedisSection,
        client: Client,
        metrics: &Metrics,
    ) -> prometheus::Result<Arc<Self>> {
        let metrics = SharedMetrics::register(metrics.registry())?;
        Ok(Arc::new(Self {
            client,
            prefix: config.key_prefix.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            max_object_bytes: config.shared_max_object_bytes,
            connection: Arc::new(Mutex::new((None, None))),
            metrics,
            coalesce_wait: config
                .coalesce
                .then(|| Duration::from_millis(config.coalesce_wait_ms)),
            node: format!(
                "{}-{}",
                std::process::id(),
                SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ),
            flushed_at: std::sync::atomic::AtomicU64::new(0),
            writes: Arc::new(tokio::sync::Semaphore::new(MAX_WRITES)),
        }))
    }

    /// The connection if there is one. Never waits: without one it starts connecting in
    /// the background (at most every half second) and the caller treats Redis as absent,
    /// so no request waits for a TCP or TLS handshake.
    fn connection(&self) -> Option<Connection> {
        let mut state = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(con) = &state.0 {
            return Some(con.clone());
        }
        if state.1.is_some_and(|at| at.elapsed() < RECONNECT_AFTER) {
            return None;
        }
        state.1 = Some(Instant::now());
        let (client, slot) = (self.client.clone(), self.connection.clone());
        tokio::spawn(async move {
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, client.connect()).await;
            if let Ok(Ok(con)) = attempt {
                slot.lock().unwrap_or_else(|p| p.into_inner()).0 = Some(con);
            }
        });
        None
    }

    /// Connects now, waiting for it (at start-up, in the background).
    pub async fn connect(&self) {
        if self.connection_waiting().await.is_some() {
            let at: Option<Option<u64>> = self
                .run(redis::cmd("GET").arg(format!("{}flushed", self.prefix)))
                .await;
            if let Some(Some(at)) = at {
                self.flushed_at
                    .fetch_max(at, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Every copy stored before `at` is gone: after an emergency flush of everything.
    /// `Err` when Redis could not record it (this node ignores older copies anyway).
    pub async fn flushed(&self, at: SystemTime) -> Result<(), SharedError> {
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.flushed_at
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
        let set: Option<()> = self
            .run(
                redis::cmd("SET")
                    .arg(format!("{}flushed", self.prefix))
                    .arg(ms),
            )
            .await;
        set.ok_or(SharedError::NotDone("record the flush"))
    }

    fn flushed_before(&self, object: &StoredObject) -> bool {
        let flushed = self.flushed_at.load(std::sync::atomic::Ordering::Relaxed);
        flushed > 0
            && object
                .updated
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(true, |d| (d.as_millis() as u64) < flushed)
    }

    /// For background work: waits up to `CONNECT_TIMEOUT` for a connection.
    async fn connection_waiting(&self) -> Option<Connection> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            if let Some(con) = self.connection() {
                return Some(con);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn broken(&self) {
        let mut state = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        state.0 = None;
        state.1 = Some(Instant::now());
    }

    async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Option<T> {
        let mut con = self.connection()?;
        match tokio::time::timeout(self.timeout, command.query_async::<T>(&mut con)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "shared tier: Redis refused a command");
                // A connection that died with its Redis is replaced in the background
                // (at most every half second); an answer of an unexpected type is not
                // the connection's fault.
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    self.broken();
                }
                None
            }
            Err(_) => {
                self.metrics.timeouts.inc();
                self.broken();
                None
            }
        }
    }

    /// The shared copy of `key`, if Redis has one and answers in time.
    pub async fn get(&self, key: &HashBinary) -> Option<StoredObject> {
        let value: Option<Vec<u8>> = self
            .run(redis::cmd("GET").arg(format!("{}obj:{}", self.prefix, hex(key))))
            .await?;
        let object = value
            .filter(|v| v.len() > STARTED_LEN)
            .and_then(|v| wire::decode(Bytes::from(v).slice(STARTED_LEN..)))
            .filter(|o| !self.flushed_before(o));
        match &object {
            Some(_) => self.metrics.hits.inc(),
            None => self.metrics.misses.inc(),
        }
        object
    }

    /// For a page no node holds: whether another node is fetching it, and if so its copy
    /// once it lands (polled for up to `coalesce_wait_ms`). `None` means this node
    /// fetches it (it now holds the lock, or Redis could not say).
    pub async fn fetched_elsewhere(&self, key: &HashBinary) -> Option<StoredObject> {
        let wait = self.coalesce_wait?;
        let lock = format!("{}lock:{}", self.prefix, hex(key));
        let lock_ms = (wait.as_millis() as u64).max(1000) * 2;
        // SET … GET returns the holder: nil when the lock was free and is now ours.
        let holder: Option<Option<String>> = self
            .run(
                redis::cmd("SET")
                    .arg(&lock)
                    .arg(&self.node)
                    .arg("NX")
                    .arg("GET")
                    .arg("PX")
                    .arg(lock_ms),
            )
            .await;
        match holder {
            // Ours now, or already ours (this node's cache lock coalesces its requests),
            // or Redis could not say: fetch.
            Some(None) | None => return None,
            Some(Some(holder)) if holder == self.node => return None,
            Some(Some(_)) => {}
        }
        let deadline = Instant::now() + wait;
        // Asked often at first (most fetches take a render), less as the wait grows.
        let mut pause = Duration::from_millis(20);
        while Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(Duration::from_millis(200));
            if let Some(object) = self.get(key).await {
                self.metrics.coalesced.inc();
                return Some(object);
            }
        }
        None
    }

    /// The fetch of `key` ended without a copy for the shared tier (uncacheable, failed):
    /// nodes waiting on it stop waiting.
    pub fn fetch_ended(self: &Arc<Self>, key: HashBinary) {
        if self.coalesce_wait.is_none() {
            return;
        }
        let tier = self.clone();
        tokio::spawn(async move {
            let lock = format!("{}lock:{}", tier.prefix, hex(&key));
            let _: Option<i64> = tier.run(redis::cmd("DEL").arg(lock)).await;
        });
    }

    /// Writes a fill to Redis in the background, with its index entries; objects larger
    /// than `redis.shared_max_object_bytes` stay local.
    /// `started` is when its fetch began: a purge of its tags since then (seen here, from
    /// any node) cancels the write, so a page fetched before a purge does not outlive it
    /// in Redis.
    pub fn put(
        self: &Arc<Self>,
        key: HashBinary,
        object: &StoredObject,
        started: SystemTime,
        recent: &'static RecentPurges,
    ) {
        if object.body.len() > self.max_object_bytes {
            return;
        }
        let Ok(ttl) = object.usable_until().duration_since(SystemTime::now()) else {
            return;
        };
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let mut value = Vec::with_capacity(object.body.len() + 512);
        value.extend_from_slice(&unix_ms(started).to_be_bytes());
        value.extend_from_slice(&wire::encode(object));
        let object_tags = object.tags.clone();
        let tags: Vec<String> = object.tags.iter().map(str::to_string).collect();
        let pool = object.pool.as_deref().map(str::to_string);
        // While Redis is away no write waits for it, and only so many are in flight:
        // a fill that finds neither a connection nor a slot stays local.
        let Some(con) = self.connection() else {
            return;
        };
        let Ok(slot) = self.writes.clone().try_acquire_owned() else {
            tracing::debug!("shared tier: too many writes in flight, a fill stays local");
            return;
        };
        let tier = self.clone();
        tokio::spawn(async move {
            let name = hex(&key);
            let p = &tier.prefix;
            // The index first, the object last: a write cut short leaves index entries
            // without an object (harmless), never an object that purges cannot find.
            let mut index_commands = Vec::with_capacity(4 * tags.len() + 4);
            let mut index = |kind: &str, list: &str, member: &str| {
                let set = format!("{p}{kind}:{member}");
                index_commands.push(redis::cmd("SADD").arg(&set).arg(&name).to_owned());
                // A new set gets the object's lifetime; an old one only ever grows it.
                index_commands.push(
                    redis::cmd("PEXPIRE")
                        .arg(&set)
                        .arg(ttl_ms)
                        .arg("NX")
                        .to_owned(),
                );
                index_commands.push(
                    redis::cmd("PEXPIRE")
                        .arg(&set)
                        .arg(ttl_ms)
                        .arg("GT")
                        .to_owned(),
                );
                index_commands.push(
                    redis::cmd("SADD")
                        .arg(format!("{p}{list}"))
                        .arg(member)
                        .to_owned(),
                );
            };
            for tag in &tags {
                index("tag", "tags", tag);
            }
            if let Some(pool) = &pool {
                index("pool", "pools", pool);
            }
            let object_commands = vec![
                redis::cmd("SET")
                    .arg(format!("{p}obj:{name}"))
                    .arg(value.as_slice())
                    .arg("PX")
                    .arg(ttl_ms)
                    .to_owned(),
                // The copy is there: nodes waiting on this fetch stop waiting.
                redis::cmd("DEL").arg(format!("{p}lock:{name}")).to_owned(),
            ];
            if recent.purged_since(&object_tags, pool.as_deref(), started) {
                return;
            }
            let written = match cluster::each(&con, index_commands, tier.timeout * 4).await {
                Ok(_) => cluster::each(&con, object_commands, tier.timeout * 4).await,
                Err(e) => Err(e),
            };
            match written {
                Ok(_) => tier.metrics.writes.inc(),
                Err(e) => {
                    tier.broken();
                    tracing::debug!(error = %e, "shared tier: a fill was not written");
                }
            }
            drop(slot);
        });
    }
}

mod purge;
