//! One origin budget for the whole fleet: every node sharing a Redis (same `redis.url`
//! and `redis.key_prefix`) admits a request to an origin server only while the fleet
//! together has fewer than the budget in flight there, and a better waiter on any node
//! gets a freed slot before a worse one anywhere.
//!
//! Invariant: every origin request of a node with a fleet holds a lease, a member of the
//! origin's holder set in Redis whose score is its expiry. A node renews its leases every
//! `RENEW`; a node that dies stops renewing and its slots are free again after `LEASE`.
//! Redis counts the holders and admits in one script, so two nodes can never both take
//! the last slot. While Redis cannot be reached a node admits on its own, up to its
//! fallback share (`budget / live nodes`, the nodes it last saw, at least two), never the
//! whole budget; back on Redis it keeps that share for one lease more, until every node
//! has put its holders back, then the fleet budget applies again. Right after losing
//! Redis the others' requests are still in flight: for a drain (twice the origin's recent
//! service time, 1 to 30 s) a node holds no more than it held when Redis went, so the
//! fleet stays within what Redis last admitted; only then does it fill its share.
//!
//! Why a semaphore in Redis (one round trip per origin request) rather than a share per
//! node: a share leaves slots idle on a quiet node while another queues, and cannot put
//! a checkout on node A ahead of a crawler on node B; the round trip (~0.1 ms on a LAN)
//! is nothing beside PHP's 100+ ms, and cache hits never make it. Each node keeps its
//! own priority queue and registers its best waiter (class, then arrival) in Redis; the
//! script admits a request only if fewer waiters elsewhere are ahead of it than there
//! are free slots.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{Histogram, IntCounter, IntGauge, IntGaugeVec, Registry};
use tokio::sync::Notify;

use crate::cluster::{Client, Link, LinkError};
use crate::metrics::{counter_vec, gauge, gauge_vec, histogram, FAST_BUCKETS};

/// How long a lease (a held slot, a registered waiter, a node's presence) lasts unless
/// renewed: a node killed with -9 gives its slots back within this.
pub const LEASE: Duration = Duration::from_secs(3);
/// How often a node renews its leases and learns the fleet.
pub const RENEW: Duration = Duration::from_secs(1);

/// Counts holders and admits. KEYS: waiters (by priority), waiter leases, then one holder
/// set per candidate origin. ARGV: now, lease, node, priority, next priority ('' for
/// none), holder, then one budget per candidate. Returns {candidate index (0: none),
/// holders at the first candidate after this}.
const ACQUIRE: &str = r"
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local node = ARGV[3]
local prio = tonumber(ARGV[4])
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #dead > 0 then
  redis.call('ZREM', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[2], unpack(dead))
end
local ahead = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ARGV[4])
local own = redis.call('ZSCORE', KEYS[1], node)
if own and tonumber(own) < prio then ahead = ahead - 1 end
local first = 0
for i = 3, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  local used = redis.call('ZCARD', KEYS[i])
  if i == 3 then first = used end
  local budget = tonumber(ARGV[4 + i])
  if used < budget and ahead < budget - used then
    redis.call('ZADD', KEYS[i], now + lease, ARGV[6])
    if ARGV[5] == '' then
      redis.call('ZREM', KEYS[1], node)
      redis.call('ZREM', KEYS[2], node)
    else
      redis.call('ZADD', KEYS[1], tonumber(ARGV[5]), node)
      redis.call('ZADD', KEYS[2], now + lease, node)
    end
    return {i - 2, used + 1}
  end
end
redis.call('ZADD', KEYS[1], prio, node)
redis.call('ZADD', KEYS[2], now + lease, node)
return {0, first}
";

/// Gives a slot back. KEYS: the origin's holder set. ARGV: the holder.
const RELEASE: &str = r"
return redis.call('ZREM', KEYS[1], ARGV[1])
";

/// Withdraws this node's waiter. KEYS: waiters, waiter leases. ARGV: node.
const WITHDRAW: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('ZREM', KEYS[2], ARGV[1])
";

/// Renews this node's presence, waiter and holders (putting them back after a Redis
/// restart), and counts the fleet. KEYS: nodes, waiters, waiter leases, then `ARGV[4]`
/// holder sets to count, then one holder set per held slot. ARGV: now, lease, node,
/// count of sets to count, then one holder per held slot. Returns {live nodes, holders
/// per counted set...}.
const RENEW_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local node = ARGV[3]
local counted = tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], now + lease, node)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[2], node) then
  redis.call('ZADD', KEYS[3], now + lease, node)
end
for i = 4 + counted, #KEYS do
  redis.call('ZADD', KEYS[i], now + lease, ARGV[i + 1 - counted])
end
local out = {redis.call('ZCARD', KEYS[1])}
for i = 4, 3 + counted do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  out[#out + 1] = redis.call('ZCARD', KEYS[i])
end
return out
";

/// Where this node stands with the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Redis not reached yet since the start: the fallback share.
    Joining,
    /// Admissions through Redis, against the fleet's budget.
    Fleet,
    /// Redis unreachable: the fallback share, on this node's own count; until `drain`
    /// has passed since `since`, no more than the `held` slots it had then.
    Fallback { since: Instant, held: usize },
    /// Back on Redis: both the fleet's budget and the fallback share, until every node
    /// has had a renewal to put its holders back.
    Rejoining { until: Instant },
}

/// The answer to an admission.
pub enum Admission {
    /// A slot at this origin (the candidate's index), leased.
    Admitted(usize, Lease),
    /// The fleet has no slot for it now: it waits (and is registered as waiting).
    Denied,
    /// Redis could not say: the caller admits on its own, within the fallback share.
    Unavailable,
}

/// A held slot; given back to the fleet when dropped.
pub struct Lease {
    fleet: Arc<Fleet>,
    origin: SocketAddr,
    member: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.fleet.release(self.origin, &self.member);
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({} at {})", self.member, self.origin)
    }
}

struct State {
    mode: Mode,
    /// Live nodes Redis counted at the last renewal, this one included.
    nodes: usize,
    /// Held slots: holder -> origin.
    held: HashMap<String, SocketAddr>,
    /// Holders at each origin, fleet-wide, as Redis last counted them.
    used: HashMap<SocketAddr, usize>,
    /// Origins whose holders are counted at each renewal.
    origins: Vec<SocketAddr>,
    /// This node has a waiter registered in Redis.
    registered: bool,
}

struct Keys {
    nodes: String,
    waiting: String,
    waiting_leases: String,
    prefix: String,
}

impl Keys {
    fn holders(&self, origin: SocketAddr) -> String {
        format!("{}holders:{origin}", self.prefix)
    }
}

struct FleetMetrics {
    nodes: IntGauge,
    fallback: IntGauge,
    share: IntGauge,
    in_flight: IntGaugeVec,
    admitted: IntCounter,
    denied: IntCounter,
    unavailable: IntCounter,
    round_trip: Histogram,
}

impl FleetMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        let results = counter_vec(
            r,
            "floodgate_fleet_admissions_total",
            "Origin admissions asked of the fleet's budget in Redis: admitted, denied (the request waits), unavailable (Redis could not say: admitted within the fallback share)",
            &["result"],
        )?;
        Ok(Self {
            nodes: gauge(
                r,
                "floodgate_fleet_nodes",
                "Live nodes sharing this node's origin budget, as Redis counted them at the last renewal (this one included)",
            )?,
            fallback: gauge(
                r,
                "floodgate_fleet_fallback",
                "1 while this node admits origin requests on its fallback share (Redis unreachable, or not reached yet), 0 on the fleet's budget",
            )?,
            share: gauge(
                r,
                "floodgate_fleet_share",
                "Origin slots this node may hold on its own: the fallback share (budget / live nodes, at least two) while on it, the whole budget otherwise",
            )?,
            in_flight: gauge_vec(
                r,
                "floodgate_fleet_in_flight",
                "Requests in flight at each origin server from the whole fleet, as Redis counted them",
                &["origin"],
            )?,
            admitted: results.with_label_values(&["admitted"]),
            denied: results.with_label_values(&["denied"]),
            unavailable: results.with_label_values(&["unavailable"]),
            round_trip: histogram(
                r,
                "floodgate_fleet_admission_seconds",
                "Time an admission took in Redis (one script, one round trip)",
                FAST_BUCKETS,
            )?,
        })
    }
}

/// This node's part in the fleet's origin budget.
pub struct Fleet {
    link: Link,
    node: String,
    keys: Keys,
    acquire: redis::Script,
    release_script: redis::Script,
    withdraw_script: redis::Script,
    renew_script: redis::Script,
    state: Mutex<State>,
    sequence: AtomicU64,
    /// The configured budget, for the share gauge.
    budget: std::sync::atomic::AtomicUsize,
    metrics: FleetMetrics,
    /// Wakes the limiter's dispatcher: a slot may be free.
    pub wake: Notify,
}

impl Fleet {
    pub fn new(
        client: Client,
        key_prefix: &str,
        timeout: Duration,
        registry: &Registry,
    ) -> prometheus::Result<Arc<Self>> {
        let prefix = format!("{key_prefix}{}:", client.slot_tag("fleet"));
        let node = format!(
            "{}-{}-{}",
            hostname(),
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros())
        );
        let metrics = FleetMetrics::register(registry)?;
        metrics.fallback.set(1);
        Ok(Arc::new(Self {
            link: Link::new(client, timeout),
            node,
            keys: Keys {
                nodes: format!("{prefix}nodes"),
                waiting: format!("{prefix}waiting"),
                waiting_leases: format!("{prefix}waiting-leases"),
                prefix,
            },
            acquire: redis::Script::new(ACQUIRE),
            release_script: redis::Script::new(RELEASE),
            withdraw_script: redis::Script::new(WITHDRAW),
            renew_script: redis::Script::new(RENEW_SCRIPT),
            state: Mutex::new(State {
                mode: Mode::Joining,
                nodes: 0,
                held: HashMap::new(),
                used: HashMap::new(),
                origins: Vec::new(),
                registered: false,
            }),
            sequence: AtomicU64::new(0),
            budget: std::sync::atomic::AtomicUsize::new(0),
            metrics,
            wake: Notify::new(),
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's name in the fleet.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn mode(&self) -> Mode {
        self.state().mode
    }

    /// Live nodes at the last renewal (0 before the first).
    pub fn nodes(&self) -> usize {
        self.state().nodes
    }

    /// Whether admissions go through Redis now.
    pub fn on_redis(&self) -> bool {
        matches!(self.state().mode, Mode::Fleet | Mode::Rejoining { .. })
    }

    /// The slots this node may hold at an origin whose budget is `budget`: all of them
    /// on the fleet's budget, its fallback share otherwise, and within `drain` of losing
    /// Redis no more than it held then.
    pub fn local_cap(&self, budget: usize, drain: Duration) -> usize {
        let state = self.state();
        match state.mode {
            Mode::Fleet => budget,
            Mode::Fallback { since, held } if since.elapsed() < drain => {
                share(budget, state.nodes).min(held)
            }
            _ => share(budget, state.nodes),
        }
    }

    /// What the admin API shows of this node's part in the fleet, for a configured
    /// `budget`.
    pub fn view(&self, budget: usize) -> crate::insights::FleetNow {
        let state = self.state();
        let mode = match state.mode {
            Mode::Fleet => "fleet",
            Mode::Fallback { .. } => "fallback",
            Mode::Joining => "joining",
            Mode::Rejoining { .. } => "rejoining",
        };
        let mut in_flight: Vec<(String, usize)> = state
            .used
            .iter()
            .map(|(origin, used)| (origin.to_string(), *used))
            .collect();
        in_flight.sort();
        crate::insights::FleetNow {
            node: self.node.clone(),
            mode,
            nodes: state.nodes,
            share: match state.mode {
                Mode::Fleet => budget,
                _ => share(budget, state.nodes),
            },
            budget,
            in_flight,
        }
    }

    /// Holders at `origin` fleet-wide when Redis last counted them.
    pub fn used(&self, origin: SocketAddr) -> Option<usize> {
        self.state().used.get(&origin).copied()
    }

    /// Counts `origin` at every renewal from now on.
    pub fn know(&self, origin: SocketAddr) {
        let mut state = self.state();
        if !state.origins.contains(&origin) {
            state.origins.push(origin);
        }
    }

    /// `origin` is gone: no longer counted or shown.
    pub fn forget(&self, origin: SocketAddr) {
        let mut state = self.state();
        state.origins.retain(|o| *o != origin);
        state.used.remove(&origin);
        drop(state);
        let _ = self
            .metrics
            .in_flight
            .remove_label_values(&[&origin.to_string()]);
    }

    fn member(&self) -> String {
        format!(
            "{}/{}",
            self.node,
            self.sequence.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A slot at `origin` taken without Redis (on the fallback share): leased all the
    /// same, so Redis counts it once it is back.
    pub fn local_lease(self: &Arc<Self>, origin: SocketAddr) -> Lease {
        let member = self.member();
        self.state().held.insert(member.clone(), origin);
        Lease {
            fleet: self.clone(),
            origin,
            member,
        }
    }

    /// Asks Redis for a slot at the first of `candidates` (origin, budget) with room,
    /// for a request of `priority` (lower is served first); `next` is this node's next
    /// waiter's priority, registered in its place when this one is admitted.
    pub async fn admit(
        self: &Arc<Self>,
        candidates: &[(SocketAddr, usize)],
        priority: u64,
        next: Option<u64>,
    ) -> Admission {
        if candidates.is_empty() {
            return Admission::Denied;
        }
        let member = self.member();
        let mut invocation = self.acquire.key(&self.keys.waiting);
        invocation.key(&self.keys.waiting_leases);
        for (origin, _) in candidates {
            invocation.key(self.keys.holders(*origin));
        }
        invocation
            .arg(now_ms())
            .arg(LEASE.as_millis() as u64)
            .arg(&self.node)
            .arg(priority)
            .arg(next.map_or_else(String::new, |p| p.to_string()))
            .arg(&member);
        for (_, budget) in candidates {
            invocation.arg(*budget);
        }
        let started = Instant::now();
        let answer: Result<(usize, usize), LinkError> = self.link.invoke(&invocation).await;
        self.metrics
            .round_trip
            .observe(started.elapsed().as_secs_f64());
        match answer {
            Ok((0, used)) => {
                self.metrics.denied.inc();
                let mut state = self.state();
                state.registered = true;
                state.used.insert(candidates[0].0, used);
                Admission::Denied
            }
            Ok((index, used)) => {
                self.metrics.admitted.inc();
                let Some((origin, _)) = candidates.get(index - 1).copied() else {
                    return Admission::Unavailable;
                };
                let mut state = self.state();
                state.registered = next.is_some();
                state.used.insert(origin, used);
                state.held.insert(member.clone(), origin);
                drop(state);
                Admission::Admitted(
                    index - 1,
                    Lease {
                        fleet: self.clone(),
                        origin,
                        member,
                    },
                )
            }
            Err(e) => {
                self.metrics.unavailable.inc();
                self.lost(&e);
                Admission::Unavailable
            }
        }
    }

    /// This node has nobody waiting any more: its registration goes, so nodes with
    /// worse waiters are not held back.
    pub async fn withdraw(&self) {
        if !std::mem::take(&mut self.state().registered) {
            return;
        }
        let mut invocation = self.withdraw_script.key(&self.keys.waiting);
        invocation.key(&self.keys.waiting_leases).arg(&self.node);
        if let Err(e) = self.link.invoke::<i64>(&invocation).await {
            // Its lease runs out on its own.
            tracing::debug!(error = %e, "fleet: the waiter could not be withdrawn");
        }
    }

    fn release(self: &Arc<Self>, origin: SocketAddr, member: &str) {
        {
            let mut state = self.state();
            if state.held.remove(member).is_none() {
                return;
            }
            // Until the next count, one fewer at that origin.
            if let Some(used) = state.used.get_mut(&origin) {
                *used = used.saturating_sub(1);
            }
        }
        self.wake.notify_one();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let fleet = self.clone();
        let member = member.to_string();
        runtime.spawn(async move {
            let mut invocation = fleet.release_script.key(fleet.keys.holders(origin));
            invocation.arg(&member);
            // Not given back now: its lease runs out.
            if let Err(e) = fleet.link.invoke::<i64>(&invocation).await {
                tracing::debug!(error = %e, "fleet: a slot could not be given back; its lease runs out");
            }
        });
    }

    /// Redis could not be used: the fallback share from now on.
    fn lost(&self, error: &LinkError) {
        let mut state = self.state();
        if matches!(state.mode, Mode::Fallback { .. }) {
            return;
        }
        let was_joining = state.mode == Mode::Joining;
        let held = state.held.len();
        state.mode = Mode::Fallback {
            since: Instant::now(),
            held,
        };
        state.registered = false;
        let nodes = state.nodes;
        drop(state);
        self.metrics.fallback.set(1);
        self.update_share();
        if !was_joining {
            tracing::warn!(
                error = %error,
                live_nodes = nodes.max(1),
                "fleet: Redis is unreachable; admitting on this node's fallback share of each origin's budget until it is back"
            );
        }
    }

    /// Renews this node's leases and learns the fleet; moves between the modes.
    pub async fn renew(&self) {
        let (origins, held) = {
            let state = self.state();
            let held: Vec<(String, SocketAddr)> =
                state.held.iter().map(|(m, o)| (m.clone(), *o)).collect();
            (state.origins.clone(), held)
        };
        let mut invocation = self.renew_script.key(&self.keys.nodes);
        invocation
            .key(&self.keys.waiting)
            .key(&self.keys.waiting_leases);
        for origin in &origins {
            invocation.key(self.keys.holders(*origin));
        }
        for (_, origin) in &held {
            invocation.key(self.keys.holders(*origin));
        }
        invocation
            .arg(now_ms())
            .arg(LEASE.as_millis() as u64)
            .arg(&self.node)
            .arg(origins.len());
        for (member, _) in &held {
            invocation.arg(member);
        }
        let answer: Result<Vec<usize>, LinkError> = self.link.invoke(&invocation).await;
        let counts = match answer {
            Ok(counts) => counts,
            Err(e) => {
                self.lost(&e);
                return;
            }
        };
        let counted = counts.first().copied().unwrap_or(1).max(1);
        let mut state = self.state();
        // Coming back to a Redis that restarted empty, the others have not put their
        // presence back yet: the count seen before stands until the fleet's budget
        // applies again, or the shares would add up to more than the budget.
        let nodes = match state.mode {
            Mode::Fleet => counted,
            _ => counted.max(state.nodes),
        };
        state.nodes = nodes;
        for (origin, used) in origins.iter().zip(counts.iter().skip(1)) {
            state.used.insert(*origin, *used);
            self.metrics
                .in_flight
                .with_label_values(&[&origin.to_string()])
                .set(*used as i64);
        }
        let now = Instant::now();
        state.mode = match state.mode {
            Mode::Joining | Mode::Fallback { .. } => {
                if matches!(state.mode, Mode::Fallback { .. }) {
                    tracing::info!(
                        live_nodes = nodes,
                        "fleet: Redis is back; the fleet's budget applies again after one lease"
                    );
                }
                Mode::Rejoining {
                    until: now + LEASE + RENEW,
                }
            }
            Mode::Rejoining { until } if now >= until => Mode::Fleet,
            mode => mode,
        };
        let fleet = state.mode == Mode::Fleet;
        drop(state);
        self.metrics.nodes.set(nodes as i64);
        self.metrics.fallback.set(i64::from(!fleet));
        self.update_share();
        self.wake.notify_one();
    }

    /// The configured budget (`limits.max_inflight`), for the share gauge.
    pub fn show_share(&self, budget: usize) {
        self.budget.store(budget, Ordering::Relaxed);
        let state = self.state();
        let share = match state.mode {
            Mode::Fleet => budget,
            _ => share(budget, state.nodes),
        };
        drop(state);
        self.metrics.share.set(share as i64);
    }

    fn update_share(&self) {
        self.show_share(self.budget.load(Ordering::Relaxed));
    }

    /// Renews until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(RENEW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.renew().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// A node's own share of `budget` among `nodes` live nodes: never the whole budget,
/// since a node cut off from Redis cannot know who else is.
pub fn share(budget: usize, nodes: usize) -> usize {
    (budget / nodes.max(2)).max(1)
}

/// The priority a waiter is registered with: its class, then its arrival (earlier
/// first). Lower is served first; exact as a Redis score (below 2^53).
pub fn priority(class: usize, arrived: SystemTime) -> u64 {
    let ms = arrived
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        & ((1 << 44) - 1);
    ((class.min(255) as u64) << 44) | ms
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "node".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_never_the_whole_budget() {
        assert_eq!(share(8, 0), 4, "before the fleet is known");
        assert_eq!(share(8, 1), 4, "alone, as far as it knows");
        assert_eq!(share(8, 3), 2);
        assert_eq!(share(8, 20), 1, "at least one slot");
    }

    #[test]
    fn priority_orders_by_class_then_arrival() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let later = t + Duration::from_millis(5);
        assert!(priority(0, later) < priority(1, t), "a better class first");
        assert!(priority(1, t) < priority(1, later), "then the earlier");
        assert!(priority(255, later) < 1 << 53, "exact as a score");
    }
}
