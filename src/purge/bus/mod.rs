//! The purge bus: every node applies every purge, whichever node Magento sent it to.
//!
//! A node applies a purge locally, answers, and appends it to a Redis stream
//! (`<prefix>purges`, trimmed to about `stream_max_len` entries). Every node reads the
//! stream and applies the entries other nodes wrote. A node remembers the last entry it
//! applied, so after a network cut or a Redis restart it resumes where it stopped.
//!
//! Each entry carries a sequence number from a counter incremented in the same script
//! that appends it, so a reader sees a gap as a jump in the numbers: entries it never
//! read were trimmed while it was away. It cannot know what they purged, so it drops its
//! whole memory tier. (Stream IDs alone cannot tell: they are timestamps, and Redis's
//! `max-deleted-entry-id` does not move when XADD trims.) A Redis restarted empty starts
//! the numbers again, and may have taken entries this node had not read: that is a gap
//! too (run Redis with `appendonly yes` to keep the stream across its restarts).
//! A full outbox becomes one flush of everything, so no purge is lost, only precision.
//!
//! Redis never holds a request: publishing only queues the purge in a bounded outbox,
//! which a background task empties into the stream, and keeps while Redis is down.
//!
//! Through a failover (Sentinel, a managed Redis): replication is asynchronous, so the
//! primary that dies may take the last entries with it. A purge leaves the outbox only
//! once a replica has it (`WAIT`), or when the primary has no replica to lose it to; one
//! not confirmed is sent again (a duplicate: every node skips a purge id it applied). A
//! new primary that lacks the lost tail has a lower sequence number, but the same epoch
//! (`<stream>:epoch`, written once, replicated like the rest): a reader then takes up at
//! the new primary's end instead of dropping its memory, since what the old one lost is
//! being sent again. Only a Redis that came back without its data (a new epoch) makes
//! readers drop their memory tier.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::Notify;

use super::Purger;
use crate::cache::shared_tier::SharedTier;
use crate::cluster::{Client, Connection};
use crate::config::RedisSection;
use prometheus::{IntCounter, IntGauge, Registry};

use crate::metrics::{counter, gauge, Metrics};

/// How long one XREAD waits for new entries before asking again.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// Pause before reconnecting to an unreachable Redis.
const RETRY: Duration = Duration::from_millis(500);
const READ_BATCH: usize = 256;
/// How long a purge may stay appended but unconfirmed by a replica before the primary is
/// suspected (demoted by a failover behind this connection's back) and it is sent again.
const UNCONFIRMED_FOR: Duration = Duration::from_secs(2);

/// One purge, as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeMessage {
    pub pattern: Option<String>,
    pub pool: Option<String>,
    pub soft: bool,
    /// Drop every object, tagged or not (`floodgate purge --everything`).
    pub everything: bool,
    /// The purge's id and time, the same on every node: one node re-warms each hot page
    /// (`warm::claims`), and copies fetched after it stay. Absent from a node that does
    /// not send them (then it counts from when it arrives).
    pub fleet: Option<super::FleetPurge>,
}

/// A stream entry ID (`milliseconds-sequence`), ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EntryId(u64, u64);

impl EntryId {
    fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// What an exchange with Redis ran into; the bus reconnects and says so in the log.
#[derive(Debug, thiserror::Error)]
enum BusError {
    #[error("Redis refused {command}: {source}")]
    Redis {
        command: &'static str,
        source: redis::RedisError,
    },
    #[error("{0} timed out")]
    TimedOut(&'static str),
}

/// Appends a purge with the next sequence number, atomically.
const APPEND: &str = r"
local seq = redis.call('INCR', KEYS[2])
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'seq', seq, unpack(ARGV, 2))
";

pub struct PurgeBus {
    client: Client,
    stream: String,
    sequence: String,
    /// Written once per data set: a Redis that lost its data has a new one.
    epoch: String,
    /// Purge ids applied here lately: a purge sent again after a failover is applied once.
    applied_ids: Mutex<(VecDeque<u64>, std::collections::HashSet<u64>)>,
    append: redis::Script,
    /// Tells this node's own entries apart from the others'.
    node: String,
    timeout: Duration,
    max_len: usize,
    outbox: Mutex<VecDeque<PurgeMessage>>,
    outbox_size: usize,
    ready: Notify,
    connected: AtomicBool,
    purger: Arc<Purger>,
    own: BusMetrics,
}

/// The bus's own metrics, registered when it is built (a node without Redis has none).
struct BusMetrics {
    connected: IntGauge,
    following: IntGauge,
    published: IntCounter,
    applied: IntCounter,
    outbox: IntGauge,
    dropped: IntCounter,
    flushes: IntCounter,
    unconfirmed: IntCounter,
}

impl BusMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            connected: gauge(
                registry,
                "floodgate_redis_connected",
                "1 while the last exchange with Redis worked",
            )?,
            following: gauge(
                registry,
                "floodgate_purge_bus_following",
                "1 once this node reads the purge stream: other nodes' purges reach it",
            )?,
            published: counter(
                registry,
                "floodgate_purge_bus_published_total",
                "Purges this node published to the other nodes",
            )?,
            applied: counter(
                registry,
                "floodgate_purge_bus_applied_total",
                "Purges from other nodes applied here",
            )?,
            outbox: gauge(
                registry,
                "floodgate_purge_bus_outbox",
                "Purges waiting for Redis to be published",
            )?,
            dropped: counter(
                registry,
                "floodgate_purge_bus_dropped_total",
                "Purges dropped from the full outbox while Redis was unreachable",
            )?,
            flushes: counter(
                registry,
                "floodgate_purge_bus_flushes_total",
                "Times this node dropped its memory tier because it may have missed purges",
            )?,
            unconfirmed: counter(
                registry,
                "floodgate_purge_bus_unconfirmed_total",
                "Purges appended whose replication a replica did not confirm in time: kept and sent again, so a failover cannot lose them",
            )?,
        })
    }
}

impl PurgeBus {
    /// The bus through `client` (the runtime's, for `redis.url`).
    pub fn new(
        config: &RedisSection,
        client: Client,
        purger: Arc<Purger>,
        metrics: &Metrics,
    ) -> prometheus::Result<Arc<Self>> {
        let own = BusMetrics::register(metrics.registry())?;
        // The append script touches both keys: in a cluster they must share a slot.
        let stream = client.slot_tag(&format!("{}purges", config.key_prefix));
        let sequence = format!("{stream}:seq");
        let epoch = format!("{stream}:epoch");
        let node = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        Ok(Arc::new(Self {
            client,
            stream,
            sequence,
            epoch,
            applied_ids: Mutex::new(Default::default()),
            append: redis::Script::new(APPEND),
            node,
            timeout: Duration::from_millis(config.timeout_ms),
            max_len: config.stream_max_len,
            outbox: Mutex::new(VecDeque::new()),
            outbox_size: config.outbox_size,
            ready: Notify::new(),
            connected: AtomicBool::new(false),
            purger,
            own,
        }))
    }

    /// Whether the last exchange with Redis worked.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Queues a purge for the other nodes; never waits for Redis. When the outbox is
    /// full, what it holds is replaced by one flush of everything: the other nodes then
    /// drop every object they cannot prove fresh, instead of keeping pages purged here.
    pub fn publish(&self, message: PurgeMessage) {
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        if outbox.len() >= self.outbox_size {
            let dropped = outbox.len() as u64;
            outbox.clear();
            outbox.push_back(PurgeMessage {
                pattern: None,
                pool: None,
                soft: false,
                everything: true,
                fleet: None,
            });
            self.own.dropped.inc_by(dropped);
            tracing::warn!(
                dropped,
                "the purge outbox is full (Redis away too long): the other nodes will flush everything when it returns"
            );
        }
        outbox.push_back(message);
        self.own.outbox.set(outbox.len() as i64);
        drop(outbox);
        self.ready.notify_one();
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        self.own.connected.set(i64::from(up));
    }

    async fn connect(&self) -> Option<Connection> {
        match tokio::time::timeout(
            // A TCP and TLS handshake; this runs in the background, never for a request.
            self.timeout.max(Duration::from_secs(2)),
            self.client.connect(),
        )
        .await
        {
            Ok(Ok(connection)) => Some(connection),
            Ok(Err(e)) => {
                self.disconnected(&e.to_string());
                None
            }
            Err(_) => {
                self.disconnected("connection timed out");
                None
            }
        }
    }

    fn disconnected(&self, why: &str) {
        if self.connected.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                reason = why,
                "Redis is unreachable: purges are applied here and kept until it returns"
            );
        }
        self.own.connected.set(0);
    }

    /// Empties the outbox into the stream, oldest first, keeping what Redis refused; a
    /// purge appended but not yet on a replica is kept aside and sent again on the next
    /// connection (after a failover) unless a replica confirms it first.
    async fn publisher(&self, mut shutdown: ShutdownWatch) {
        let mut connection: Option<Connection> = None;
        // Appended on `connection`, not yet on a replica, and since when.
        let mut unconfirmed: Vec<PurgeMessage> = Vec::new();
        let mut since = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = self.ready.notified() => {}
                _ = tokio::time::sleep(RETRY) => {}
                _ = shutdown.changed() => return,
            }
            if !unconfirmed.is_empty() {
                let confirmed = match connection.as_mut() {
                    Some(con) => self.replicated(con).await,
                    None => Err(BusError::TimedOut("the connection")),
                };
                match confirmed {
                    Ok(true) => unconfirmed.clear(),
                    // Still no replica has it: give the primary a while, then suspect it
                    // (a primary demoted behind this connection's back) and send again.
                    Ok(false) if since.elapsed() < UNCONFIRMED_FOR => {}
                    _ => {
                        connection = None;
                        self.resend(&mut unconfirmed);
                    }
                }
            }
            loop {
                let next = {
                    let outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
                    outbox.front().cloned()
                };
                let Some(message) = next else { break };
                // Shared copies go before the purge is announced, so no node can refill
                // its memory from a copy the purge should have removed.
                let shared = if message.everything {
                    self.purger.flush_shared().await
                } else {
                    let at = message
                        .fleet
                        .map_or_else(std::time::SystemTime::now, |f| f.at);
                    self.purger
                        .purge_shared(
                            message.pattern.as_deref(),
                            message.pool.as_deref(),
                            true,
                            at,
                        )
                        .await
                        .map(|_| ())
                };
                if let Err(reason) = shared {
                    self.disconnected(&reason.to_string());
                    break;
                }
                if connection.is_none() {
                    // A new connection (maybe to a new primary): what the last one did not
                    // get confirmed goes again first.
                    self.resend(&mut unconfirmed);
                    connection = self.connect().await;
                    if connection.is_some() {
                        continue;
                    }
                }
                let Some(con) = connection.as_mut() else {
                    break;
                };
                let mut append = self.append.key(&self.stream);
                append
                    .key(&self.sequence)
                    .arg(self.max_len)
                    .arg("node")
                    .arg(&self.node)
                    .arg("soft")
                    .arg(if message.soft { "1" } else { "0" });
                if message.everything {
                    append.arg("everything").arg("1");
                }
                if let Some(pattern) = &message.pattern {
                    append.arg("pattern").arg(pattern);
                }
                if let Some(pool) = &message.pool {
                    append.arg("pool").arg(pool);
                }
                if let Some(fleet) = message.fleet {
                    let at = fleet
                        .at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    append
                        .arg("id")
                        .arg(fleet.id.to_string())
                        .arg("at")
                        .arg(at.to_string());
                }
                match tokio::time::timeout(self.timeout, append.invoke_async::<String>(con)).await {
                    Ok(Ok(_)) => {
                        self.set_connected(true);
                        let confirmed = self.replicated(con).await;
                        {
                            let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
                            if outbox.front() == Some(&message) {
                                outbox.pop_front();
                            }
                            self.own.outbox.set(outbox.len() as i64);
                        }
                        self.own.published.inc();
                        match confirmed {
                            Ok(true) => {}
                            Ok(false) => {
                                // In the stream (the other nodes read it now), but kept
                                // until a replica has it.
                                self.own.unconfirmed.inc();
                                if unconfirmed.is_empty() {
                                    since = std::time::Instant::now();
                                }
                                unconfirmed.push(message);
                            }
                            Err(why) => {
                                unconfirmed.push(message);
                                self.disconnected(&why.to_string());
                                connection = None;
                                break;
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        self.disconnected(&e.to_string());
                        connection = None;
                        break;
                    }
                    Err(_) => {
                        self.disconnected("XADD timed out");
                        connection = None;
                        break;
                    }
                }
            }
        }
    }

    /// Puts `unconfirmed` back at the front of the outbox, in order, to be sent again.
    fn resend(&self, unconfirmed: &mut Vec<PurgeMessage>) {
        if unconfirmed.is_empty() {
            return;
        }
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        for message in unconfirmed.drain(..).rev() {
            outbox.push_front(message);
        }
        self.own.outbox.set(outbox.len() as i64);
    }
}

impl PurgeBus {
    /// Whether what this connection wrote would survive a failover: a replica
    /// acknowledged it, or (outside Sentinel) the primary has no replica, so there is
    /// nothing to fail over to. Under Sentinel a primary without a replica may be one a
    /// failover demoted behind this connection's back: nothing is confirmed there.
    async fn replicated(&self, con: &mut Connection) -> Result<bool, BusError> {
        // A cluster fails over per slot, on its own: the append counts, as before.
        if matches!(self.client, Client::Cluster(_)) {
            return Ok(true);
        }
        let role = redis::cmd("ROLE").to_owned();
        let role: Vec<redis::Value> =
            match tokio::time::timeout(self.timeout, role.query_async(con)).await {
                Ok(Ok(role)) => role,
                // A server without ROLE (or a cluster's routing of it) says nothing of
                // replicas: as before, the append counts.
                Ok(Err(e)) if !e.is_io_error() && !e.is_connection_dropped() => return Ok(true),
                Ok(Err(source)) => {
                    return Err(BusError::Redis {
                        command: "ROLE",
                        source,
                    })
                }
                Err(_) => return Err(BusError::TimedOut("ROLE")),
            };
        let primary = match role.first() {
            Some(redis::Value::BulkString(r)) => r.as_slice() == b"master",
            Some(redis::Value::SimpleString(r)) => r == "master",
            _ => false,
        };
        if !primary {
            return Err(BusError::Redis {
                command: "ROLE",
                source: redis::RedisError::from((
                    redis::ErrorKind::ReadOnly,
                    "the server is no longer the primary",
                )),
            });
        }
        let replicas = match role.get(2) {
            Some(redis::Value::Array(list)) => list.len(),
            _ => 0,
        };
        if replicas == 0 {
            return Ok(!matches!(self.client, Client::Sentinel(_)));
        }
        let wait = self.timeout.max(Duration::from_millis(500));
        let acked = redis::cmd("WAIT")
            .arg(1)
            .arg(wait.as_millis() as u64)
            .to_owned();
        match tokio::time::timeout(wait + self.timeout, acked.query_async::<u64>(con)).await {
            Ok(Ok(n)) => Ok(n >= 1),
            Ok(Err(source)) => Err(BusError::Redis {
                command: "WAIT",
                source,
            }),
            Err(_) => Err(BusError::TimedOut("WAIT")),
        }
    }

    /// Whether purge `id` is applied here now (`false`: it was already).
    fn first_time(&self, id: u64) -> bool {
        /// Purge ids remembered: far more than a failover re-sends.
        const REMEMBERED: usize = 65_536;
        let mut ids = self.applied_ids.lock().unwrap_or_else(|p| p.into_inner());
        let (order, seen) = &mut *ids;
        if !seen.insert(id) {
            return false;
        }
        order.push_back(id);
        if order.len() > REMEMBERED {
            if let Some(oldest) = order.pop_front() {
                seen.remove(&oldest);
            }
        }
        true
    }
}

mod consumer;

/// Runs the publisher and the consumer for the life of the process; connects the shared
/// tier first, so the first requests after a start find it ready.
pub struct PurgeBusService(pub Arc<PurgeBus>, pub Option<Arc<SharedTier>>);

#[async_trait]
impl BackgroundService for PurgeBusService {
    async fn start(&self, shutdown: ShutdownWatch) {
        if let Some(shared) = &self.1 {
            shared.connect().await;
        }
        tokio::join!(
            self.0.publisher(shutdown.clone()),
            self.0.consumer(shutdown)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::consumer::missed;
    use super::*;

    #[test]
    fn a_jump_in_sequence_numbers_or_a_restart_is_a_gap() {
        assert!(!missed(41, 42));
        assert!(missed(41, 45));
        assert!(
            missed(41, 1),
            "Redis restarted empty: unread entries may be gone"
        );
        assert!(missed(41, 7), "restarted, and trimmed since");
    }

    #[test]
    fn entry_ids_order_as_redis_orders_them() {
        let a = EntryId::parse("1700000000000-0").expect("id");
        let b = EntryId::parse("1700000000000-5").expect("id");
        let c = EntryId::parse("1700000000001-0").expect("id");
        assert!(a < b && b < c);
        assert_eq!(c.to_string(), "1700000000001-0");
        assert_eq!(EntryId::parse("x-1"), None);
    }
}
