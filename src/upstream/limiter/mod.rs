//! The origin's front door: at most `max_inflight` requests at each origin server, a
//! bounded queue in front, highest class first, and a deadline on every wait.
//!
//! Written here rather than taken from a crate: `pingora-limits` estimates rates and
//! counts but neither queues nor orders, and tokio's `Semaphore` queues strictly FIFO.
//! PHP-FPM's own backlog is FIFO too, which is why a checkout waits behind crawlers there.
//!
//! A slot is held by a [`Permit`] for as long as the origin works on the request; dropping
//! the permit hands the slot straight to the first waiter of the highest class.
//!
//! With a fleet (`upstream::fleet`), the budget is the whole fleet's: while Redis is
//! reached, a slot is granted only once the fleet admits it (a request with nobody ahead
//! here asks at once; waiters are admitted by `dispatch`, in this queue's order, as the
//! fleet frees slots anywhere), and every permit holds a lease. Without Redis the node
//! grants on its own, up to its fallback share.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tokio::sync::oneshot;

use super::adaptive::AdaptiveLimit;
use super::classes::{ClassId, Classes};
use super::fleet::{self, Admission, Fleet, Lease};
use super::metrics::OriginMetrics;
use crate::config::LimitsSection;

/// Weight of the newest slot-holding time in the moving average.
const SERVICE_WEIGHT: f64 = 0.05;

/// Why a request was not let through to the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The queue was full of requests of this class or higher.
    QueueFull,
    /// It waited its class's longest wait.
    Timeout,
    /// The queue ahead of it would take longer than its class's longest wait to drain,
    /// so it is answered at once rather than after waiting for nothing.
    WouldTimeOut,
    /// No origin passes its health probe.
    Unhealthy,
    /// The operator switched maintenance mode on.
    Maintenance,
    /// Its client address holds `limits.max_inflight_per_client` slots already, and
    /// none came free within its class's wait.
    ClientCap,
}

impl Shed {
    /// The reasons whose series are declared at start (at zero); a client's cap shows up
    /// only where `limits.max_inflight_per_client` is used.
    pub const DECLARED: [Shed; 5] = [
        Shed::QueueFull,
        Shed::Timeout,
        Shed::WouldTimeOut,
        Shed::Unhealthy,
        Shed::Maintenance,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Shed::QueueFull => "queue_full",
            Shed::Timeout => "timeout",
            Shed::WouldTimeOut => "would_time_out",
            Shed::Unhealthy => "unhealthy",
            Shed::Maintenance => "maintenance",
            Shed::ClientCap => "client_cap",
        }
    }
}

/// Chooses among the origins; implemented by the load balancer in `origins`.
pub trait Pick: Send + Sync {
    /// The next healthy origin, in the balancer's order, that `accept` takes.
    fn pick(&self, accept: &dyn Fn(SocketAddr) -> bool) -> Option<SocketAddr>;
    fn any_ready(&self) -> bool;
}

struct Slots {
    in_flight: usize,
    /// No longer discovered: no new requests; dropped once `in_flight` is 0.
    draining: bool,
    fixed: usize,
    adaptive: Option<AdaptiveLimit>,
    in_flight_gauge: IntGauge,
    limit_gauge: IntGauge,
}

impl Slots {
    fn limit(&self) -> usize {
        self.adaptive.as_ref().map_or(self.fixed, |a| a.current())
    }
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Permit>,
    /// Its place among the fleet's waiters of its class.
    arrived: std::time::SystemTime,
}

struct State {
    origins: HashMap<SocketAddr, Slots>,
    /// One FIFO per class, index 0 served first.
    queues: Vec<VecDeque<Waiter>>,
    queued: usize,
    next_id: u64,
    /// How long the origin holds a slot, on average (moving), in seconds.
    service_secs: f64,
    /// The limits and classes in force; replaced on reload.
    settings: LimitsSection,
    classes: Arc<Classes>,
    queued_gauges: Vec<IntGauge>,
    in_flight_gauges: Vec<IntGauge>,
}

pub struct Limiter {
    state: Mutex<State>,
    picker: Arc<dyn Pick>,
    metrics: Arc<OriginMetrics>,
    fleet: Option<Arc<Fleet>>,
}

impl Limiter {
    pub fn new(
        config: &LimitsSection,
        classes: Arc<Classes>,
        picker: Arc<dyn Pick>,
        metrics: Arc<OriginMetrics>,
        fleet: Option<Arc<Fleet>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                origins: HashMap::new(),
                queues: (0..classes.len()).map(|_| VecDeque::new()).collect(),
                queued: 0,
                next_id: 0,
                service_secs: 0.0,
                settings: config.clone(),
                queued_gauges: class_gauges(&metrics, &classes).0,
                in_flight_gauges: class_gauges(&metrics, &classes).1,
                classes,
            }),
            picker,
            metrics,
            fleet,
        })
    }

    /// The fleet this node shares its origins' budgets with, if any.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// Whether grants wait for the fleet's admission now (Redis reached).
    fn through_fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref().filter(|f| f.on_redis())
    }

    /// Applies reloaded limits and classes. Waiters keep their place; with fewer classes
    /// they move to the lowest remaining visitor class (the warm class stays last).
    pub fn reconfigure(self: &Arc<Self>, config: &LimitsSection, classes: Arc<Classes>) {
        let mut state = self.lock();
        let old_len = state.queues.len();
        let new_len = classes.len();
        if old_len != new_len {
            let old = std::mem::take(&mut state.queues);
            state.queues = (0..new_len).map(|_| VecDeque::new()).collect();
            for (i, queue) in old.into_iter().enumerate() {
                let to = if i + 1 == old_len {
                    new_len - 1
                } else {
                    i.min(new_len.saturating_sub(2))
                };
                state.queues[to].extend(queue);
            }
        }
        for gauge in &state.queued_gauges {
            gauge.set(0);
        }
        // Permits already out keep decrementing the gauge they incremented.
        (state.queued_gauges, state.in_flight_gauges) = class_gauges(&self.metrics, &classes);
        let lengths: Vec<usize> = state.queues.iter().map(VecDeque::len).collect();
        for (gauge, len) in state.queued_gauges.iter().zip(lengths) {
            gauge.set(len as i64);
        }
        state.classes = classes;
        state.settings = config.clone();
        if let Some(fleet) = &self.fleet {
            fleet.show_share(config.max_inflight);
        }
        for slots in state.origins.values_mut() {
            slots.fixed = config.max_inflight;
            slots.adaptive = match slots.adaptive.take() {
                Some(mut adaptive) if config.adaptive => {
                    adaptive.set_bounds(config.min_inflight, config.max_inflight);
                    Some(adaptive)
                }
                _ => adaptive_for(config),
            };
            slots.limit_gauge.set(slots.limit() as i64);
        }
        self.hand_over(&mut state);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a slot at an origin, behind every waiter of this class or a higher one.
    pub async fn acquire(self: &Arc<Self>, class: ClassId) -> Result<Permit, Shed> {
        self.acquire_within(class, None).await
    }

    /// `acquire`, waiting at most `wait` when that is shorter than the class's wait.
    pub async fn acquire_within(
        self: &Arc<Self>,
        class: ClassId,
        wait: Option<Duration>,
    ) -> Result<Permit, Shed> {
        if !self.picker.any_ready() {
            return Err(Shed::Unhealthy);
        }
        let started = Instant::now();
        let arrived = std::time::SystemTime::now();
        if let Some(fleet) = self.through_fleet() {
            // Nobody ahead here: the fleet is asked at once.
            let asked = {
                let mut state = self.lock();
                let class = ClassId(class.0.min(state.queues.len() - 1));
                let ahead: usize = state.queues[..=class.0].iter().map(VecDeque::len).sum();
                (ahead == 0).then(|| (class, self.candidates(&mut state)))
            };
            if let Some((class, candidates)) = asked.filter(|(_, c)| !c.is_empty()) {
                let priority = fleet::priority(class.0, arrived);
                if let Admission::Admitted(index, lease) =
                    fleet.admit(&candidates, priority, None).await
                {
                    let mut state = self.lock();
                    let classes = state.classes.clone();
                    self.waited(&classes, class, started);
                    return Ok(self.grant_leased(&mut state, candidates[index].0, class, lease));
                }
            }
        }
        let (rx, id, max_wait, classes) = {
            let mut state = self.lock();
            let classes = state.classes.clone();
            let class = ClassId(class.0.min(state.queues.len() - 1));
            let ahead: usize = state.queues[..=class.0].iter().map(VecDeque::len).sum();
            if ahead == 0 && self.through_fleet().is_none() {
                if let Some(origin) = self.free_origin(&mut state) {
                    self.waited(&classes, class, started);
                    return Ok(self.grant(&mut state, origin, class));
                }
            }
            let max_wait = wait.map_or(classes.max_wait(class), |w| w.min(classes.max_wait(class)));
            if self.expected_wait(&state, ahead) > max_wait {
                return Err(Shed::WouldTimeOut);
            }
            if state.queued >= state.settings.queue_size && !self.displace_below(&mut state, class)
            {
                return Err(Shed::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            let id = state.next_id;
            state.next_id += 1;
            state.queues[class.0].push_back(Waiter { id, tx, arrived });
            state.queued += 1;
            state.queued_gauges[class.0].inc();
            (rx, id, max_wait, classes)
        };
        if let Some(fleet) = &self.fleet {
            // The dispatcher registers it with the fleet and asks for its slot.
            fleet.wake.notify_one();
        }
        match tokio::time::timeout(max_wait, rx).await {
            Ok(Ok(permit)) => {
                self.waited(&classes, class, started);
                Ok(permit)
            }
            // A request of a higher class took its place in the full queue.
            Ok(Err(_)) => Err(Shed::QueueFull),
            Err(_) => {
                // If a permit was handed over in the meantime it was dropped with the
                // receiver, which gave its slot back.
                // A reload may have moved it to another class's queue.
                let mut state = self.lock();
                let found =
                    state.queues.iter().enumerate().find_map(|(c, queue)| {
                        queue.iter().position(|w| w.id == id).map(|at| (c, at))
                    });
                if let Some((c, at)) = found {
                    state.queues[c].remove(at);
                    state.queued -= 1;
                    state.queued_gauges[c].dec();
                }
                Err(Shed::Timeout)
            }
        }
    }

    fn waited(&self, classes: &Classes, class: ClassId, since: Instant) {
        self.metrics.waited(classes.name(class), since.elapsed());
    }

    /// Whether a request of `class` would have to queue right now.
    pub fn would_wait(&self, class: ClassId) -> bool {
        let mut state = self.lock();
        // A class id taken before a reload that shortened the list is clamped, as in
        // `acquire`: the slice would otherwise panic.
        let class = class.0.min(state.queues.len() - 1);
        let ahead: usize = state.queues[..=class].iter().map(VecDeque::len).sum();
        ahead > 0 || self.free_origin(&mut state).is_none()
    }

    /// Requests in flight at all origins together.
    pub fn in_flight(&self) -> usize {
        self.lock().origins.values().map(|s| s.in_flight).sum()
    }

    /// How long `ahead` queued requests take to drain through every origin's slots, at
    /// the origins' recent pace. Zero until the pace is known.
    fn expected_wait(&self, state: &State, ahead: usize) -> Duration {
        let slots: usize = state.origins.values().map(Slots::limit).sum();
        if ahead == 0 || slots == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(ahead as f64 / slots as f64 * state.service_secs)
    }

    /// Drops the newest waiter of the lowest class below `class`, if there is one.
    fn displace_below(&self, state: &mut State, class: ClassId) -> bool {
        let Some(lowest) = (class.0 + 1..state.queues.len())
            .rev()
            .find(|&c| !state.queues[c].is_empty())
        else {
            return false;
        };
        // Dropping its sender wakes it with "queue full".
        state.queues[lowest].pop_back();
        state.queued -= 1;
        state.queued_gauges[lowest].dec();
        true
    }

    /// The slots this node may hold at an origin of `limit`: all of them alone or on
    /// the fleet's budget, its fallback share while Redis is away.
    fn cap(&self, limit: usize, service_secs: f64) -> usize {
        // Long enough for most requests the others had in flight to end.
        let drain = Duration::from_secs_f64((2.0 * service_secs).clamp(1.0, 30.0));
        self.fleet
            .as_ref()
            .map_or(limit, |f| f.local_cap(limit, drain))
    }

    /// Whether `slots` has room here, and (with a fleet, as Redis last counted) in the
    /// fleet.
    fn has_room(&self, addr: SocketAddr, slots: Option<&Slots>, service_secs: f64) -> bool {
        let Some(slots) = slots else {
            return self.cap(1, service_secs) > 0;
        };
        let limit = slots.limit();
        slots.in_flight < self.cap(limit, service_secs)
            && self
                .through_fleet()
                .and_then(|f| f.used(addr))
                .is_none_or(|used| used < limit)
    }

    fn free_origin(&self, state: &mut State) -> Option<SocketAddr> {
        let (origins, service) = (&state.origins, state.service_secs);
        let origin = self
            .picker
            .pick(&|addr| self.has_room(addr, origins.get(&addr), service))?;
        self.known(state, origin);
        Some(origin)
    }

    /// The origin servers discovery found now (`discovery`): the others get no new
    /// request (the balancer no longer names them) and are forgotten, with their metric
    /// series, once their requests are done.
    pub fn retain(&self, found: &std::collections::BTreeSet<SocketAddr>) {
        let mut state = self.lock();
        let mut gone = Vec::new();
        state.origins.retain(|addr, slots| {
            slots.draining = !found.contains(addr);
            let keep = !slots.draining || slots.in_flight > 0;
            if !keep {
                gone.push(*addr);
            }
            keep
        });
        drop(state);
        for addr in gone {
            self.forget(addr);
        }
    }

    fn forget(&self, origin: SocketAddr) {
        self.metrics.forget_origin(&origin.to_string());
        if let Some(fleet) = &self.fleet {
            fleet.forget(origin);
        }
        tracing::info!(%origin, "origin server removed: it is no longer discovered and its requests are done");
    }

    /// Resolved addresses are only known once the balancer names them.
    fn known(&self, state: &mut State, origin: SocketAddr) {
        if !state.origins.contains_key(&origin) {
            let slots = self.new_slots(origin, &state.settings);
            state.origins.insert(origin, slots);
            if let Some(fleet) = &self.fleet {
                fleet.know(origin);
            }
        }
    }

    /// The healthy origins with room here, in the balancer's order, each with its
    /// budget: what the fleet is asked for.
    fn candidates(&self, state: &mut State) -> Vec<(SocketAddr, usize)> {
        let mut found: Vec<SocketAddr> = Vec::new();
        loop {
            let (origins, service) = (&state.origins, state.service_secs);
            let next = self.picker.pick(&|addr| {
                !found.contains(&addr)
                    && origins
                        .get(&addr)
                        .is_none_or(|slots| slots.in_flight < self.cap(slots.limit(), service))
            });
            match next {
                Some(origin) if found.len() < 16 => found.push(origin),
                _ => break,
            }
        }
        found
            .into_iter()
            .map(|origin| {
                self.known(state, origin);
                let limit = state
                    .origins
                    .get(&origin)
                    .map_or(state.settings.max_inflight, Slots::limit);
                (origin, limit)
            })
            .collect()
    }

    fn new_slots(&self, origin: SocketAddr, settings: &LimitsSection) -> Slots {
        let name = origin.to_string();
        let (in_flight_gauge, limit_gauge) = self.metrics.origin_gauges(&name);
        limit_gauge.set(settings.max_inflight as i64);
        Slots {
            in_flight: 0,
            draining: false,
            fixed: settings.max_inflight,
            adaptive: adaptive_for(settings),
            in_flight_gauge,
            limit_gauge,
        }
    }

    /// A slot granted here without the fleet's admission (alone, or on the fallback
    /// share): with a fleet it is leased all the same, so Redis counts it once back.
    fn grant(self: &Arc<Self>, state: &mut State, origin: SocketAddr, class: ClassId) -> Permit {
        let lease = self.fleet.as_ref().map(|f| f.local_lease(origin));
        self.grant_with(state, origin, class, lease)
    }

    fn grant_leased(
        self: &Arc<Self>,
        state: &mut State,
        origin: SocketAddr,
        class: ClassId,
        lease: Lease,
    ) -> Permit {
        self.known(state, origin);
        self.grant_with(state, origin, class, Some(lease))
    }

    fn grant_with(
        self: &Arc<Self>,
        state: &mut State,
        origin: SocketAddr,
        class: ClassId,
        lease: Option<Lease>,
    ) -> Permit {
        if let Some(slots) = state.origins.get_mut(&origin) {
            slots.in_flight += 1;
            slots.in_flight_gauge.inc();
        }
        let class_gauge = state.in_flight_gauges[class.0].clone();
        class_gauge.inc();
        Permit {
            limiter: Some(self.clone()),
            origin,
            admitted: Instant::now(),
            latency: None,
            class_gauge,
            lease,
        }
    }

    /// Gives `origin`'s slot back and hands free slots to the waiters, highest class first.
    fn release(self: &Arc<Self>, origin: SocketAddr, held: Duration, latency: Option<Duration>) {
        let mut state = self.lock();
        let held = held.as_secs_f64();
        state.service_secs = if state.service_secs == 0.0 {
            held
        } else {
            state.service_secs * (1.0 - SERVICE_WEIGHT) + held * SERVICE_WEIGHT
        };
        let mut gone = false;
        if let Some(slots) = state.origins.get_mut(&origin) {
            slots.in_flight = slots.in_flight.saturating_sub(1);
            slots.in_flight_gauge.dec();
            let in_flight = slots.in_flight;
            if let Some(adaptive) = &mut slots.adaptive {
                adaptive.record(latency, in_flight, Instant::now());
                slots.limit_gauge.set(adaptive.current() as i64);
            }
            gone = slots.draining && in_flight == 0;
        }
        if gone {
            state.origins.remove(&origin);
            self.forget(origin);
        }
        // Through the fleet, a freed slot is the fleet's to give: the dispatcher asks.
        if self.through_fleet().is_none() {
            self.hand_over(&mut state);
        }
    }

    /// Admits this node's waiters through the fleet, best first, as the fleet frees
    /// slots: woken by a slot given back here, a waiter queued here, a renewal, and
    /// every `POLL` while anyone waits (a slot freed on another node). Without Redis it
    /// hands slots over here, within the fallback share.
    pub async fn dispatch(self: Arc<Self>, mut shutdown: pingora::server::ShutdownWatch) {
        /// How often waiters ask the fleet again for slots freed on other nodes.
        const POLL: Duration = Duration::from_millis(20);
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        loop {
            let waiting = self.lock().queued > 0;
            let pause = if waiting {
                POLL
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = fleet.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
            if !fleet.on_redis() {
                let mut state = self.lock();
                self.hand_over(&mut state);
                continue;
            }
            loop {
                let next = {
                    let mut state = self.lock();
                    let mut best = state
                        .queues
                        .iter()
                        .enumerate()
                        .flat_map(|(class, queue)| queue.iter().map(move |w| (class, w)))
                        .map(|(class, w)| (class, w.id, fleet::priority(class, w.arrived)));
                    match best.next() {
                        None => None,
                        Some(head) => {
                            let after = best.next().map(|(_, _, p)| p);
                            Some((head, after, self.candidates(&mut state)))
                        }
                    }
                };
                let Some(((class, id, priority), after, candidates)) = next else {
                    fleet.withdraw().await;
                    break;
                };
                if candidates.is_empty() {
                    break;
                }
                match fleet.admit(&candidates, priority, after).await {
                    Admission::Admitted(index, lease) => {
                        let mut state = self.lock();
                        let origin = candidates[index].0;
                        // The waiter it was asked for, or (if that one gave up) the best
                        // one now; with nobody left the lease goes back with the permit.
                        let queue = state.queues[class].iter().position(|w| w.id == id);
                        let pick = match queue {
                            Some(at) => Some((class, at)),
                            None => state
                                .queues
                                .iter()
                                .position(|q| !q.is_empty())
                                .map(|c| (c, 0)),
                        };
                        let permit = self.grant_leased(&mut state, origin, ClassId(class), lease);
                        if let Some((c, at)) = pick {
                            if let Some(waiter) = state.queues[c].remove(at) {
                                state.queued -= 1;
                                state.queued_gauges[c].dec();
                                // One that gave up a moment ago: the permit drops here.
                                let _ = waiter.tx.send(permit);
                            }
                        }
                    }
                    Admission::Denied => break,
                    Admission::Unavailable => {
                        let mut state = self.lock();
                        self.hand_over(&mut state);
                        break;
                    }
                }
            }
        }
    }

    fn hand_over(self: &Arc<Self>, state: &mut State) {
        while let Some(class) = state.queues.iter().position(|q| !q.is_empty()) {
            let Some(origin) = self.free_origin(state) else {
                return;
            };
            let Some(waiter) = state.queues[class].pop_front() else {
                return;
            };
            state.queued -= 1;
            state.queued_gauges[class].dec();
            let permit = self.grant(state, origin, ClassId(class));
            if let Err(mut permit) = waiter.tx.send(permit) {
                // It gave up a moment ago; take the slot back without re-entering the lock.
                permit.limiter = None;
                if let Some(slots) = state.origins.get_mut(&origin) {
                    slots.in_flight -= 1;
                    slots.in_flight_gauge.dec();
                }
            }
        }
    }
}

/// One gauge of `family` per class, in class order; declares the class's other series.
/// Each class's `(queued, in flight)` gauges, in class order.
fn class_gauges(metrics: &OriginMetrics, classes: &Classes) -> (Vec<IntGauge>, Vec<IntGauge>) {
    (0..classes.len())
        .map(|i| metrics.class_gauges(classes.name(ClassId(i))))
        .unzip()
}

fn adaptive_for(settings: &LimitsSection) -> Option<AdaptiveLimit> {
    settings.adaptive.then(|| {
        AdaptiveLimit::new(
            settings.min_inflight,
            settings.max_inflight,
            Duration::from_millis(settings.slow_response_ms),
        )
    })
}

/// A slot at one origin, given back when dropped.
pub struct Permit {
    limiter: Option<Arc<Limiter>>,
    pub origin: SocketAddr,
    admitted: Instant,
    latency: Option<Duration>,
    class_gauge: IntGauge,
    /// The fleet's count of this slot, given back with it.
    lease: Option<Lease>,
}

impl Permit {
    /// The origin answered with its header: how long it took feeds the adaptive limit.
    /// A permit dropped without an answer counts as a failure.
    pub fn answered(&mut self, ok: bool) {
        if ok {
            self.latency = Some(self.admitted.elapsed());
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.class_gauge.dec();
        if let Some(limiter) = self.limiter.take() {
            limiter.release(self.origin, self.admitted.elapsed(), self.latency);
        }
        // After the local slot, so the dispatcher woken by the lease finds it free.
        drop(self.lease.take());
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("origin", &self.origin)
            .finish()
    }
}

#[cfg(test)]
mod tests;
