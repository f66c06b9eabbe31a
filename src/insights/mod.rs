//! Why the cache misses, for the people on call: every miss, uncacheable answer and pass
//! counted by its reason, bounded top lists over a sliding window (the paths that miss
//! and why, uncacheable paths, tags purged most, query parameters that split a path
//! into many entries, the origin's slowest paths), the last hour second by second, and
//! a diagnosis in words. `GET /insights`, the status page and `floodgate top` show it.
//!
//! Invariant: the request path never waits here. A hit costs nothing; another outcome
//! costs one atomic add for its reason and one non-blocking send of an event, dropped
//! (and counted) when the queue is full. One background task owns the lists and the
//! samples; readers take a short lock on them, never a request.
//!
//! Memory is bounded whatever the traffic: `insights.tracked` keys per list per slice,
//! a 512-byte sketch per parameter, `insights.history_secs` samples.

pub mod diagnosis;
mod distinct;
pub mod metrics;
pub mod samples;
mod top;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::Registry;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::InsightsSection;
use crate::policy::route::PassReason;
use crate::policy::storability::NotCached;
use distinct::Distinct;
use metrics::InsightsMetrics;
use samples::{Gauges, Sample, Samples};
use top::{Entry, Extra, Windowed};

/// Why a lookup went to the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissReason {
    /// Never stored, or forgotten long ago.
    Cold,
    /// Stored, but past its TTL and grace.
    Expired,
    /// Removed by a purge.
    Purged,
    /// Evicted to make room (`cache.memory_bytes`).
    Evicted,
    /// The key is marked hit-for-miss: its last answer was uncacheable.
    HitForMiss,
}

impl MissReason {
    pub const ALL: [MissReason; 5] = [
        MissReason::Cold,
        MissReason::Expired,
        MissReason::Purged,
        MissReason::Evicted,
        MissReason::HitForMiss,
    ];

    pub fn label(self) -> &'static str {
        match self {
            MissReason::Cold => "cold",
            MissReason::Expired => "expired",
            MissReason::Purged => "purged",
            MissReason::Evicted => "evicted",
            MissReason::HitForMiss => "hit_for_miss",
        }
    }
}

/// The reason behind a request that was not a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Miss(MissReason),
    Uncacheable(NotCached),
    Pass(PassReason),
}

/// One request that was not a hit, as the top lists take it.
pub struct Request {
    /// The normalised URL (path and query).
    pub url: String,
    pub why: Why,
    /// How long the origin took, when it was asked.
    pub origin: Option<Duration>,
    /// The tag whose purge removed the page, for a purged miss.
    pub purged_by: Option<Arc<str>>,
}

enum Event {
    Request(Request),
    /// A purge: each tag with the objects it selected.
    Purge(Vec<(Arc<str>, u64)>),
}

/// Events waiting for the background task; beyond this they are dropped and counted
/// (taken every 50 ms: over 300,000 misses a second before any is dropped).
const QUEUE: usize = 16_384;
/// How often the aggregator takes the queued events.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// Slices a window is cut into: the window slides by a tenth.
const SLICES: usize = 10;
/// Longest path and parameter name kept (longer ones are cut), bytes.
const MAX_PATH: usize = 200;
const MAX_PARAM: usize = 64;
/// Parameters looked at per URL.
const MAX_PARAMS: usize = 16;

/// The origin's time on a path: fetches and the longest, beside the total (the count).
#[derive(Debug, Clone, Default)]
struct OriginTime {
    fetches: u64,
    max_ms: u64,
}

impl Extra for OriginTime {
    fn merge(&mut self, other: &Self) {
        self.fetches += other.fetches;
        self.max_ms = self.max_ms.max(other.max_ms);
    }
}

impl Extra for Distinct {
    fn merge(&mut self, other: &Self) {
        Distinct::merge(self, other);
    }
}

struct Lists {
    /// Paths that missed, with the count of each miss reason.
    misses: Windowed<[u64; MissReason::ALL.len()]>,
    /// Paths whose answer was not stored, with the count of each reason.
    uncacheable: Windowed<[u64; NotCached::ALL.len()]>,
    /// Tags purged, counted per purge, with the objects they selected.
    purged_tags: Windowed<u64>,
    /// Tags whose purge the misses followed.
    misses_after_purge: Windowed<()>,
    /// `path?param` of misses, with the distinct values the parameter took.
    params: Windowed<Distinct>,
    /// Paths by the origin's total time on them, milliseconds.
    origin: Windowed<OriginTime>,
    /// Every reason's count, per slice, for the window's totals.
    reasons: std::collections::VecDeque<Reasons>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Reasons {
    miss: [u64; MissReason::ALL.len()],
    uncacheable: [u64; NotCached::ALL.len()],
    pass: [u64; PassReason::ALL.len()],
}

impl Lists {
    fn new(tracked: usize) -> Self {
        let mut reasons = std::collections::VecDeque::with_capacity(SLICES);
        reasons.push_back(Reasons::default());
        Self {
            misses: Windowed::new(tracked, SLICES),
            uncacheable: Windowed::new(tracked, SLICES),
            purged_tags: Windowed::new(tracked, SLICES),
            misses_after_purge: Windowed::new(tracked, SLICES),
            params: Windowed::new(tracked, SLICES),
            origin: Windowed::new(tracked, SLICES),
            reasons,
        }
    }

    fn rotate(&mut self) {
        self.misses.rotate();
        self.uncacheable.rotate();
        self.purged_tags.rotate();
        self.misses_after_purge.rotate();
        self.params.rotate();
        self.origin.rotate();
        self.reasons.push_back(Reasons::default());
        while self.reasons.len() > SLICES {
            self.reasons.pop_front();
        }
    }

    fn record(&mut self, event: Event) {
        match event {
            Event::Request(r) => self.request(r),
            Event::Purge(tags) => {
                for (tag, objects) in tags {
                    self.purged_tags.add(cut(&tag, MAX_PATH), 1).extra += objects;
                }
            }
        }
    }

    fn request(&mut self, r: Request) {
        let (path, query) = match r.url.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (r.url.as_str(), None),
        };
        let path = cut(path, MAX_PATH);
        let reasons = self
            .reasons
            .back_mut()
            .expect("the window always has its newest slice");
        match r.why {
            Why::Miss(reason) => {
                reasons.miss[reason as usize] += 1;
                self.misses.add(path, 1).extra[reason as usize] += 1;
                if let Some(tag) = &r.purged_by {
                    self.misses_after_purge.add(cut(tag, MAX_PATH), 1);
                }
                // A parameter that takes many values on one path makes one entry each.
                if let Some(query) = query {
                    for (name, value) in form_urlencoded::parse(query.as_bytes()).take(MAX_PARAMS) {
                        let key = format!("{path}?{}", cut(&name, MAX_PARAM));
                        self.params.add(&key, 1).extra.add(&value);
                    }
                }
            }
            Why::Uncacheable(reason) => {
                reasons.uncacheable[reason as usize] += 1;
                self.uncacheable.add(path, 1).extra[reason as usize] += 1;
            }
            Why::Pass(reason) => reasons.pass[reason as usize] += 1,
        }
        if let Some(took) = r.origin {
            let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
            let entry = self.origin.add(path, ms.max(1));
            entry.extra.fetches += 1;
            entry.extra.max_ms = entry.extra.max_ms.max(ms);
        }
    }

    fn window_reasons(&self) -> Reasons {
        let mut total = Reasons::default();
        for slice in &self.reasons {
            total.miss.merge(&slice.miss);
            total.uncacheable.merge(&slice.uncacheable);
            total.pass.merge(&slice.pass);
        }
        total
    }
}

/// Each label with its count, most first (ties keep the labels' order).
fn named(labels: &[&'static str], counts: &[u64]) -> Vec<(&'static str, u64)> {
    let mut v: Vec<_> = labels.iter().copied().zip(counts.iter().copied()).collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.1));
    v
}

/// A list of paths with reason counts, as the report shows it: the main reason is the
/// most frequent one, on a tie the later in declaration order, the more telling (a page
/// missed once cold and once after a purge: purged).
fn path_reasons<const N: usize>(
    list: &Windowed<[u64; N]>,
    n: usize,
    labels: &[&'static str; N],
) -> Vec<PathReasons>
where
    [u64; N]: Extra,
{
    list.top(n, None)
        .into_iter()
        .map(|(path, e)| PathReasons {
            reason: labels
                .iter()
                .zip(&e.extra)
                .filter(|(_, n)| **n > 0)
                .max_by_key(|(_, n)| **n)
                .map_or("", |(l, _)| *l),
            reasons: named(labels, &e.extra)
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .collect(),
            count: e.count,
            path,
        })
        .collect()
}

/// The longest prefix of `s` within `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct State {
    lists: Lists,
    samples: Samples,
}

pub struct Insights {
    metrics: InsightsMetrics,
    /// `None` when `insights.enabled` is off: reasons are counted, nothing else.
    events: Option<mpsc::Sender<Event>>,
    state: Arc<Mutex<State>>,
    window_secs: u64,
    shown: usize,
}

/// The background task that owns the lists: takes events, samples the registry each
/// second and slides the window.
pub struct Aggregator {
    events: mpsc::Receiver<Event>,
    state: Arc<Mutex<State>>,
    registry: Registry,
    slice: Duration,
}

impl Insights {
    pub fn new(
        registry: &Registry,
        config: &InsightsSection,
    ) -> prometheus::Result<(Arc<Self>, Option<Aggregator>)> {
        let metrics = InsightsMetrics::register(registry)?;
        let state = Arc::new(Mutex::new(State {
            lists: Lists::new(config.tracked),
            samples: Samples::new(config.history_secs),
        }));
        let (events, aggregator) = if config.enabled {
            let (tx, rx) = mpsc::channel(QUEUE);
            let aggregator = Aggregator {
                events: rx,
                state: state.clone(),
                registry: registry.clone(),
                slice: Duration::from_secs((config.window_secs / SLICES as u64).max(1)),
            };
            (Some(tx), Some(aggregator))
        } else {
            (None, None)
        };
        Ok((
            Arc::new(Self {
                metrics,
                events,
                state,
                window_secs: config.window_secs,
                shown: config.shown,
            }),
            aggregator,
        ))
    }

    /// A client request that was not a hit: its reason counted, the rest queued.
    pub fn request(&self, request: Request) {
        self.metrics.count(request.why);
        self.send(Event::Request(request));
    }

    /// A purge: each tag it named (or matched) with the objects it selected.
    pub fn purged(&self, tags: Vec<(Arc<str>, u64)>) {
        if !tags.is_empty() {
            self.send(Event::Purge(tags));
        }
    }

    /// Whether the top lists are kept (`insights.enabled`).
    pub fn enabled(&self) -> bool {
        self.events.is_some()
    }

    fn send(&self, event: Event) {
        if let Some(events) = &self.events {
            if events.try_send(event).is_err() {
                self.metrics.dropped.inc();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while the lists were held leaves them usable: counts, nothing more.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Everything `GET /insights` answers.
    pub fn report(&self) -> Report {
        let state = self.lock();
        let lists = &state.lists;
        let n = self.shown;
        let reasons = lists.window_reasons();
        let miss_labels = MissReason::ALL.map(MissReason::label);
        let uncacheable_labels = NotCached::ALL.map(NotCached::label);
        let pass_labels = PassReason::ALL.map(PassReason::label);
        let misses = path_reasons(&lists.misses, n, &miss_labels);
        let uncacheable = path_reasons(&lists.uncacheable, n, &uncacheable_labels);
        let purged_tags = lists
            .purged_tags
            .top(n, None)
            .into_iter()
            .map(|(tag, e)| PurgedTag {
                objects_per_purge: e.extra.checked_div(e.count).unwrap_or(0),
                objects: e.extra,
                purges: e.count,
                tag,
            })
            .collect();
        let misses_after_purge = lists
            .misses_after_purge
            .top(n, None)
            .into_iter()
            .map(|(tag, e)| TagMisses {
                tag,
                misses: e.count,
            })
            .collect();
        let by_distinct: &dyn Fn(&Entry<Distinct>) -> u64 = &|e| e.extra.estimate();
        let splitting_params = lists
            .params
            .top(n, Some(by_distinct))
            .into_iter()
            .filter(|(_, e)| e.extra.estimate() > 1)
            .map(|(key, e)| {
                let (path, param) = key.split_once('?').unwrap_or((key.as_str(), ""));
                SplittingParam {
                    path: path.to_string(),
                    param: param.to_string(),
                    distinct_values: e.extra.estimate(),
                    misses: e.count,
                }
            })
            .collect();
        let slowest_origin = lists
            .origin
            .top(n, None)
            .into_iter()
            .map(|(path, e)| OriginPath {
                avg_ms: e.count.checked_div(e.extra.fetches).unwrap_or(0),
                max_ms: e.extra.max_ms,
                fetches: e.extra.fetches,
                total_ms: e.count,
                path,
            })
            .collect();
        let (mut hits, mut lookups) = (0, 0);
        for sample in state.samples.last(self.window_secs as usize) {
            let (served, all) = sample.lookups();
            hits += served;
            lookups += all;
        }
        let last_minute: Vec<&Sample> = state.samples.last(60).collect();
        let now = Now::from_samples(&last_minute, &state.samples.gauges);
        let mut report = Report {
            enabled: self.enabled(),
            window_secs: self.window_secs,
            now,
            reasons: WindowReasons {
                lookups,
                hits,
                miss: named(&miss_labels, &reasons.miss),
                uncacheable: named(&uncacheable_labels, &reasons.uncacheable),
                pass: named(&pass_labels, &reasons.pass),
            },
            top: Top {
                misses,
                uncacheable,
                purged_tags,
                misses_after_purge,
                splitting_params,
                slowest_origin,
            },
            diagnosis: Vec::new(),
            events_dropped: self.metrics.dropped.get(),
        };
        report.diagnosis = diagnosis::diagnose(&report);
        report
    }

    /// The history in `points` buckets, for charts; and the gauges now.
    pub fn history(&self, points: usize) -> (Vec<Sample>, Gauges, usize) {
        let state = self.lock();
        (
            state.samples.buckets(points),
            state.samples.gauges.clone(),
            state.samples.len(),
        )
    }
}

impl Aggregator {
    /// Runs until the process shuts down: events as they come, a sample each second,
    /// the window slid each slice.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut slice = tokio::time::interval(self.slice);
        slice.tick().await;
        // Events are taken on a tick, not as they come: a receiver waiting on the channel
        // is woken by every send, and on a proxy pinned to one core that woken thread
        // preempted the request that sent (a fifth of a purge's round trip). Nothing
        // waits for the lists to be current to the millisecond.
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = drain.tick() => {
                    let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    loop {
                        match self.events.try_recv() {
                            Ok(event) => state.lists.record(event),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => return,
                        }
                    }
                }
                _ = second.tick() => {
                    let at = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    // Gathered before the lock: the registry walk is the slow part.
                    let families = self.registry.gather();
                    let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    state.samples.take(&families, at);
                }
                _ = slice.tick() => {
                    self.state.lock().unwrap_or_else(|p| p.into_inner()).lists.rotate();
                }
            }
        }
    }
}

/// `GET /insights`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Whether the top lists are kept (`insights.enabled`).
    pub enabled: bool,
    pub window_secs: u64,
    pub now: Now,
    /// Each reason's count in the window, most first.
    pub reasons: WindowReasons,
    pub top: Top,
    /// What stands out, in words, with what to do about it.
    pub diagnosis: Vec<String>,
    pub events_dropped: u64,
}

/// The last minute, and the gauges now.
#[derive(Debug, Serialize, Default)]
pub struct Now {
    /// Lookups served from the cache (hit or stale) over all lookups, the last minute;
    /// `None` without lookups.
    pub hit_ratio: Option<f64>,
    pub requests_per_sec: f64,
    /// Requests per second by outcome, the last minute.
    pub outcomes: Vec<(&'static str, f64)>,
    pub origin_in_flight: u64,
    pub origin_limit: u64,
    pub queued: Vec<(String, u64)>,
    pub shed_per_sec: f64,
    pub purges_per_sec: f64,
    pub maintenance: bool,
    pub origin_healthy: bool,
    /// Seconds the figures cover (less than 60 just after a start).
    pub seconds: usize,
    /// The fleet this node shares its origin budget with, when it has one.
    pub fleet: Option<FleetNow>,
}

/// This node's part in the fleet's origin budget, as the admin API shows it.
#[derive(Debug, Serialize, Default, Clone)]
pub struct FleetNow {
    /// This node's name in the fleet.
    pub node: String,
    /// `fleet` (admitting on the fleet's budget), `fallback` (Redis unreachable: the
    /// fallback share), `joining` or `rejoining`.
    pub mode: &'static str,
    /// Live nodes, this one included, at the last renewal.
    pub nodes: usize,
    /// Slots this node may hold on its own now: the budget, or its fallback share.
    pub share: usize,
    pub budget: usize,
    /// Requests in flight at each origin server from the whole fleet, as Redis counted.
    pub in_flight: Vec<(String, usize)>,
}

impl Now {
    fn from_samples(samples: &[&Sample], gauges: &Gauges) -> Self {
        let secs = samples.len().max(1) as f64;
        let mut outcomes = [0u64; 8];
        let (mut served, mut lookups, mut shed, mut purges) = (0, 0, 0, 0);
        for s in samples {
            for (o, n) in outcomes.iter_mut().zip(s.outcomes) {
                *o += u64::from(n);
            }
            let (a, b) = s.lookups();
            served += a;
            lookups += b;
            shed += u64::from(s.shed);
            purges += u64::from(s.purges);
        }
        Self {
            hit_ratio: (lookups > 0).then(|| served as f64 / lookups as f64),
            requests_per_sec: outcomes.iter().sum::<u64>() as f64 / secs,
            outcomes: samples::OUTCOMES
                .iter()
                .zip(outcomes)
                .map(|(o, n)| (*o, n as f64 / secs))
                .collect(),
            origin_in_flight: gauges.origin_in_flight,
            origin_limit: gauges.origin_limit,
            queued: gauges.queued.clone(),
            shed_per_sec: shed as f64 / secs,
            purges_per_sec: purges as f64 / secs,
            maintenance: gauges.maintenance,
            origin_healthy: gauges.origin_healthy,
            seconds: samples.len(),
            fleet: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct WindowReasons {
    /// Lookups in the window, and those served from the cache (hit or stale).
    pub lookups: u64,
    pub hits: u64,
    pub miss: Vec<(&'static str, u64)>,
    pub uncacheable: Vec<(&'static str, u64)>,
    pub pass: Vec<(&'static str, u64)>,
}

#[derive(Debug, Serialize)]
pub struct Top {
    pub misses: Vec<PathReasons>,
    pub uncacheable: Vec<PathReasons>,
    pub purged_tags: Vec<PurgedTag>,
    pub misses_after_purge: Vec<TagMisses>,
    pub splitting_params: Vec<SplittingParam>,
    pub slowest_origin: Vec<OriginPath>,
}

#[derive(Debug, Serialize)]
pub struct PathReasons {
    pub path: String,
    pub count: u64,
    /// The most frequent reason.
    pub reason: &'static str,
    pub reasons: Vec<(&'static str, u64)>,
}

#[derive(Debug, Serialize)]
pub struct PurgedTag {
    pub tag: String,
    pub purges: u64,
    pub objects: u64,
    pub objects_per_purge: u64,
}

#[derive(Debug, Serialize)]
pub struct TagMisses {
    pub tag: String,
    pub misses: u64,
}

#[derive(Debug, Serialize)]
pub struct SplittingParam {
    pub path: String,
    pub param: String,
    /// Distinct values seen on misses (estimated above 64).
    pub distinct_values: u64,
    pub misses: u64,
}

#[derive(Debug, Serialize)]
pub struct OriginPath {
    pub path: String,
    pub fetches: u64,
    pub total_ms: u64,
    pub avg_ms: u64,
    pub max_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists() -> Lists {
        Lists::new(50)
    }

    fn miss(url: &str, why: MissReason) -> Event {
        Event::Request(Request {
            url: url.to_string(),
            why: Why::Miss(why),
            origin: Some(Duration::from_millis(100)),
            purged_by: None,
        })
    }

    #[test]
    fn a_parameter_with_many_values_is_found_on_its_path() {
        let mut l = lists();
        for i in 0..300 {
            l.record(miss(
                &format!("/p/shoe.html?ref=c{i}&color=red"),
                MissReason::Cold,
            ));
        }
        let top = l
            .params
            .top(5, Some(&|e: &Entry<Distinct>| e.extra.estimate()));
        assert_eq!(top[0].0, "/p/shoe.html?ref");
        assert!(top[0].1.extra.estimate() > 150);
        let color = top
            .iter()
            .find(|(k, _)| k.ends_with("?color"))
            .expect("color");
        assert_eq!(color.1.extra.estimate(), 1);
        let misses = l.misses.top(5, None);
        assert_eq!(
            (misses[0].0.as_str(), misses[0].1.count),
            ("/p/shoe.html", 300)
        );
        assert_eq!(l.origin.top(1, None)[0].1.extra.fetches, 300);
    }

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        let long = "é".repeat(300);
        assert!(cut(&long, MAX_PATH).len() <= MAX_PATH);
        assert!(cut(&long, MAX_PATH).chars().all(|c| c == 'é'));
    }
}
