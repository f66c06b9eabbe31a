//! Prometheus metrics: what an operator replacing varnishstat watches.
//!
//! One registry per process, owned here and exposed by `admin`. The families of the
//! request path live here; a subsystem with metrics of its own (the purge bus, the
//! shared tier) registers and owns them, with the helpers below. Names follow Prometheus
//! conventions: `floodgate_` prefix, `_total` on counters only, base units (seconds,
//! bytes), and label values from fixed sets (outcomes, status classes, priority classes,
//! configured origins), so the series count stays bounded. Request counters are recorded
//! once per client request in the proxy's `logging` hook, where the route and the final
//! cache phase are both known; gauges that mirror state are read at scrape time.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// How a client request was served, the label of `floodgate_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    /// Served stale: within grace while refreshing, or because the origin failed.
    Stale,
    Miss,
    /// Looked up, but the response was not stored (or the key is hit-for-miss).
    Uncacheable,
    Pass,
    Tunnel,
    Purge,
    /// Answered 503 by Floodgate: the origin could not take it and nothing was stored.
    Shed,
}

impl Outcome {
    /// Every outcome, in declaration order (`Outcome as usize` indexes it).
    const ALL: [Outcome; 8] = [
        Outcome::Hit,
        Outcome::Stale,
        Outcome::Miss,
        Outcome::Uncacheable,
        Outcome::Pass,
        Outcome::Tunnel,
        Outcome::Purge,
        Outcome::Shed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Stale => "stale",
            Outcome::Miss => "miss",
            Outcome::Uncacheable => "uncacheable",
            Outcome::Pass => "pass",
            Outcome::Tunnel => "tunnel",
            Outcome::Purge => "purge",
            Outcome::Shed => "shed",
        }
    }
}

/// What one re-warm request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmResult {
    /// It was missing and is stored now.
    Fetched,
    /// Someone else had already filled it.
    AlreadyWarm,
    Failed,
}

impl WarmResult {
    fn label(self) -> &'static str {
        match self {
            WarmResult::Fetched => "fetched",
            WarmResult::AlreadyWarm => "already_warm",
            WarmResult::Failed => "failed",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    /// `floodgate_requests_total` by `Outcome as usize`, and `floodgate_responses_total`
    /// by status class: resolved once, so a request costs two atomic adds, not two
    /// label-hash lookups under a lock.
    requests: [IntCounter; Outcome::ALL.len()],
    responses: [IntCounter; 5],
    coalesced: IntCounter,
    coalesce_wait: Histogram,
    background_refreshes: IntCounter,
    purged_copies_served: IntCounter,
    unavailable: IntCounterVec,
    origin_first_byte: Histogram,
    origin_response: Histogram,
    purge_requests: IntCounterVec,
    purged_objects: IntCounter,
    purged_tags: IntCounter,
    purge_time: Histogram,
    warmed: IntCounterVec,
    warm_queue_depth: IntGauge,
    warm_dropped: IntCounter,
    cache_objects: IntGauge,
    cache_bytes: IntGauge,
    resident_memory: IntGauge,
    cache_evictions: IntCounter,
    origin_healthy: IntGauge,
    origin_inflight: IntGaugeVec,
    origin_inflight_by_class: IntGaugeVec,
    origin_limit: IntGaugeVec,
    origin_queued: IntGaugeVec,
    origin_wait: HistogramVec,
    shed: IntCounterVec,
    maintenance: IntGauge,
    config_reloads: IntCounterVec,
    config_info: IntGaugeVec,
    purged_remote_objects: IntCounter,
    esi_fragments: [IntCounter; 3],
}

/// What became of one ESI include.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentResult {
    /// Served from the cache (fresh or stale).
    Cached = 0,
    /// Fetched from the origin (miss, pass or refresh).
    Fetched = 1,
    /// Left out of the page: error status, failure, timeout, depth or count limit.
    Failed = 2,
}

impl FragmentResult {
    const ALL: [FragmentResult; 3] = [Self::Cached, Self::Fetched, Self::Failed];

    pub fn label(self) -> &'static str {
        match self {
            Self::Cached => "cached",
            Self::Fetched => "fetched",
            Self::Failed => "failed",
        }
    }
}

/// Registers a new family in `registry` (each subsystem registers its own).
pub fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let metric = IntCounter::new(name, help)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// Registers a new family in `registry` (each subsystem registers its own).
pub fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// Registers a new family in `registry` (each subsystem registers its own).
pub fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let metric = IntGauge::new(name, help)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// Registers a new family in `registry` (each subsystem registers its own).
pub fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// Registers a new family in `registry` (each subsystem registers its own).
pub fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> prometheus::Result<Histogram> {
    let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// Why Floodgate answered a request itself: the label of `floodgate_unavailable_total`
/// (every one but `OriginFailed` and `BodyTimeout` is also a reason the limiter sheds, the
/// `reason` of `floodgate_shed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The origin failed or broke its answer, and nothing was stored.
    OriginFailed,
    QueueFull,
    Timeout,
    WouldTimeOut,
    Unhealthy,
    Maintenance,
    ClientCap,
    /// 408: the request body did not arrive in time.
    BodyTimeout,
}

impl Unavailable {
    /// Declared at start, so the common series show up at zero.
    const DECLARED: [Unavailable; 6] = [
        Self::OriginFailed,
        Self::QueueFull,
        Self::Timeout,
        Self::WouldTimeOut,
        Self::Unhealthy,
        Self::Maintenance,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::OriginFailed => "origin_failed",
            Self::QueueFull => "queue_full",
            Self::Timeout => "timeout",
            Self::WouldTimeOut => "would_time_out",
            Self::Unhealthy => "unhealthy",
            Self::Maintenance => "maintenance",
            Self::ClientCap => "client_cap",
            Self::BodyTimeout => "body_timeout",
        }
    }
}

/// Why a purge request was not applied, the label of `floodgate_purge_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeRefusal {
    /// Not allowed (the ACL).
    Refused,
    /// Bad input: no header, a bad regex.
    Invalid,
}

impl PurgeRefusal {
    fn label(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Invalid => "invalid",
        }
    }
}

/// Origin and wait times: from a cached fragment to Magento's 600 s first-byte timeout.
const SLOW_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let requests = counter_vec(
            &r,
            "floodgate_requests_total",
            "Client requests by how they were served: hit, stale, miss, uncacheable, pass, tunnel, purge, shed",
            &["outcome"],
        )?;
        let responses = counter_vec(
            &r,
            "floodgate_responses_total",
            "Client responses by status class (1xx to 5xx)",
            &["status_class"],
        )?;
        let coalesced = counter(
            &r,
            "floodgate_coalesced_total",
            "Requests that waited for another request's origin fetch instead of making their own",
        )?;
        let coalesce_wait = histogram(
            &r,
            "floodgate_coalesce_wait_seconds",
            "Time requests waited for another request's origin fetch of the same page",
            SLOW_BUCKETS,
        )?;
        let background_refreshes = counter(
            &r,
            "floodgate_background_refreshes_total",
            "Origin fetches that refreshed a stale object while it was being served",
        )?;
        let purged_copies_served = counter(
            &r,
            "floodgate_purged_copies_served_total",
            "Responses served from a purged page's copy kept as a last resort (purge.keep_purged_secs) instead of a 503",
        )?;
        let unavailable = counter_vec(
            &r,
            "floodgate_unavailable_total",
            "503s Floodgate answered itself, by reason: origin_failed, queue_full, timeout, would_time_out, unhealthy, maintenance",
            &["reason"],
        )?;
        let origin_first_byte = histogram(
            &r,
            "floodgate_origin_first_byte_seconds",
            "Time from sending a request to the origin to its response header (time to first byte)",
            SLOW_BUCKETS,
        )?;
        let origin_response = histogram(
            &r,
            "floodgate_origin_response_seconds",
            "Time from sending a request to the origin to the end of its response body",
            SLOW_BUCKETS,
        )?;
        let purge_requests = counter_vec(
            &r,
            "floodgate_purge_requests_total",
            "Purge requests (PURGE or the admin API) by result: ok, refused (ACL), invalid",
            &["result"],
        )?;
        let purged_objects = counter(
            &r,
            "floodgate_purged_objects_total",
            "Objects removed or expired by purges",
        )?;
        let purged_tags = counter(
            &r,
            "floodgate_purged_tags_total",
            "Tags purged (named in a purge, or known tags a pattern matched)",
        )?;
        let purge_time = histogram(
            &r,
            "floodgate_purge_seconds",
            "Time a purge took to find and invalidate its objects",
            &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0],
        )?;
        let warmed = counter_vec(
            &r,
            "floodgate_warm_requests_total",
            "Re-warm fetches of purged hot pages by result: fetched, already_warm, failed",
            &["result"],
        )?;
        let warm_queue_depth = gauge(
            &r,
            "floodgate_warm_queue_depth",
            "Pages waiting to be re-warmed",
        )?;
        let warm_dropped = counter(
            &r,
            "floodgate_warm_dropped_total",
            "Pages dropped from the full re-warm queue (the coldest go first)",
        )?;
        let cache_objects = gauge(&r, "floodgate_cache_objects", "Objects in the memory store")?;
        let cache_bytes = gauge(
            &r,
            "floodgate_cache_bytes",
            "Bytes held by the memory store (bodies, headers, tags, bookkeeping)",
        )?;
        let resident_memory = gauge(
            &r,
            "floodgate_resident_memory_bytes",
            "Resident memory of the Floodgate process",
        )?;
        let cache_evictions = counter(
            &r,
            "floodgate_cache_evictions_total",
            "Objects evicted to make room (not expired, not purged)",
        )?;
        let origin_healthy = gauge(
            &r,
            "floodgate_origin_healthy",
            "1 while at least one origin passes its health probe",
        )?;
        let origin_inflight = gauge_vec(
            &r,
            "floodgate_origin_inflight",
            "Requests the origin server is working on (never above its limit)",
            &["origin"],
        )?;
        let origin_inflight_by_class = gauge_vec(
            &r,
            "floodgate_origin_inflight_by_class",
            "Requests at the origins, by priority class",
            &["class"],
        )?;
        let origin_limit = gauge_vec(
            &r,
            "floodgate_origin_limit",
            "Requests allowed in flight at the origin server (moves in adaptive mode)",
            &["origin"],
        )?;
        let origin_queued = gauge_vec(
            &r,
            "floodgate_origin_queued",
            "Requests waiting for an origin slot, by priority class",
            &["class"],
        )?;
        let origin_wait = HistogramVec::new(
            HistogramOpts::new(
                "floodgate_origin_wait_seconds",
                "Time requests waited for an origin slot before being let through",
            )
            .buckets(vec![
                0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["class"],
        )?;
        r.register(Box::new(origin_wait.clone()))?;
        let shed = counter_vec(
            &r,
            "floodgate_shed_total",
            "Origin requests refused by Floodgate, by priority class and reason (queue_full, timeout, would_time_out, unhealthy, maintenance); the visitor got stale or a 503",
            &["class", "reason"],
        )?;
        let maintenance = gauge(
            &r,
            "floodgate_maintenance",
            "1 while maintenance mode is on",
        )?;
        let config_reloads = counter_vec(
            &r,
            "floodgate_config_reloads_total",
            "Configuration reloads by result (ok, failed); a failed one changed nothing",
            &["result"],
        )?;
        let config_info = gauge_vec(
            &r,
            "floodgate_config_info",
            "1 for the hash of the configuration in force",
            &["hash"],
        )?;
        let purged_remote_objects = counter(
            &r,
            "floodgate_purged_remote_objects_total",
            "Objects removed or expired here by purges from other nodes",
        )?;
        let esi_fragments = counter_vec(
            &r,
            "floodgate_esi_fragments_total",
            "ESI includes by result: cached, fetched (from the origin), failed (left out of the page)",
            &["result"],
        )?;
        let esi_fragments =
            FragmentResult::ALL.map(|result| esi_fragments.with_label_values(&[result.label()]));
        // Fixed label sets appear from the start, at 0, so rates work before the first event.
        let requests = Outcome::ALL.map(|outcome| requests.with_label_values(&[outcome.label()]));
        let responses =
            ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| responses.with_label_values(&[class]));
        for result in [
            WarmResult::Fetched,
            WarmResult::AlreadyWarm,
            WarmResult::Failed,
        ] {
            warmed.with_label_values(&[result.label()]);
        }
        for reason in Unavailable::DECLARED {
            unavailable.with_label_values(&[reason.label()]);
        }
        for result in ["ok", "refused", "invalid"] {
            purge_requests.with_label_values(&[result]);
        }
        for result in ["ok", "failed"] {
            config_reloads.with_label_values(&[result]);
        }
        Ok(Self {
            registry: r,
            requests,
            responses,
            coalesced,
            coalesce_wait,
            background_refreshes,
            purged_copies_served,
            unavailable,
            origin_first_byte,
            origin_response,
            purge_requests,
            purged_objects,
            purged_tags,
            purge_time,
            warmed,
            warm_queue_depth,
            warm_dropped,
            cache_objects,
            cache_bytes,
            resident_memory,
            cache_evictions,
            origin_healthy,
            origin_inflight,
            origin_inflight_by_class,
            origin_limit,
            origin_queued,
            origin_wait,
            shed,
            maintenance,
            config_reloads,
            config_info,
            purged_remote_objects,
            esi_fragments,
        })
    }

    pub fn esi_fragment(&self, result: FragmentResult) {
        self.esi_fragments[result as usize].inc();
    }

    /// One client request: how it was served and the status it got (0 if none was sent).
    pub fn request(&self, outcome: Outcome, status: u16) {
        self.requests[outcome as usize].inc();
        if (100..600).contains(&status) {
            self.responses[usize::from(status / 100 - 1)].inc();
        }
    }

    pub fn coalesced(&self, waited: Duration) {
        self.coalesced.inc();
        self.coalesce_wait.observe(waited.as_secs_f64());
    }

    pub fn background_refresh(&self) {
        self.background_refreshes.inc();
    }

    /// A purged page's kept copy went out instead of a 503.
    pub fn purged_copy_served(&self) {
        self.purged_copies_served.inc();
    }

    /// A 503 written by Floodgate; `reason` is `origin_failed` or a shed reason.
    pub fn unavailable(&self, reason: Unavailable) {
        let reason = reason.label();
        self.unavailable.with_label_values(&[reason]).inc();
    }

    pub fn config_reloaded(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    /// Marks `hash` as the configuration in force (the only series of the info metric).
    pub fn config_loaded(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
    }

    /// Makes a priority class's shed series exist, at 0, before its first shed.
    /// The gauges of one priority class, `(queued, in flight)`; its shed series are
    /// declared too, so every class shows up at zero before anything happens.
    pub fn class_gauges(&self, class: &str) -> (IntGauge, IntGauge) {
        for reason in &Unavailable::DECLARED[1..] {
            self.shed.with_label_values(&[class, reason.label()]);
        }
        (
            self.origin_queued.with_label_values(&[class]),
            self.origin_inflight_by_class.with_label_values(&[class]),
        )
    }

    /// The gauges of one origin server, `(in flight, limit)`.
    pub fn origin_gauges(&self, origin: &str) -> (IntGauge, IntGauge) {
        (
            self.origin_inflight.with_label_values(&[origin]),
            self.origin_limit.with_label_values(&[origin]),
        )
    }

    /// A request of `class` got an origin slot after waiting `waited`.
    pub fn origin_waited(&self, class: &str, waited: Duration) {
        self.origin_wait
            .with_label_values(&[class])
            .observe(waited.as_secs_f64());
    }

    /// State mirrored into gauges when `/metrics` is read.
    pub fn scraped(&self, cache_objects: u64, cache_bytes: u64, origin_healthy: bool) {
        self.cache_objects.set(cache_objects as i64);
        self.cache_bytes.set(cache_bytes as i64);
        self.origin_healthy.set(i64::from(origin_healthy));
    }

    pub fn warm_queue_depth(&self, depth: usize) {
        self.warm_queue_depth.set(depth as i64);
    }

    pub fn maintenance(&self, on: bool) {
        self.maintenance.set(i64::from(on));
    }

    pub fn shed(&self, class: &str, reason: Unavailable) {
        self.shed.with_label_values(&[class, reason.label()]).inc();
    }

    /// A purge request that was refused (`refused`: not allowed; `invalid`: bad input).
    pub fn purge_refused(&self, result: PurgeRefusal) {
        let result = result.label();
        self.purge_requests.with_label_values(&[result]).inc();
    }

    pub fn purged(&self, objects: usize, tags: usize, took: Duration) {
        self.purge_requests.with_label_values(&["ok"]).inc();
        self.purged_objects.inc_by(objects as u64);
        self.purged_tags.inc_by(tags as u64);
        self.purge_time.observe(took.as_secs_f64());
    }

    /// A purge from another node, applied here.
    pub fn purged_remote(&self, objects: usize, tags: usize, took: Duration) {
        self.purged_remote_objects.inc_by(objects as u64);
        self.purged_tags.inc_by(tags as u64);
        self.purge_time.observe(took.as_secs_f64());
    }

    pub fn warmed(&self, result: WarmResult) {
        self.warmed.with_label_values(&[result.label()]).inc();
    }

    pub fn origin_first_byte(&self, elapsed: Duration) {
        self.origin_first_byte.observe(elapsed.as_secs_f64());
    }

    pub fn origin_response(&self, elapsed: Duration) {
        self.origin_response.observe(elapsed.as_secs_f64());
    }

    /// Brings counters kept elsewhere as running totals (the store's evictions, the warm
    /// queue's drops) up to date at scrape time.
    pub fn sync_totals(&self, evictions: u64, warm_dropped: u64) {
        let behind = |counter: &IntCounter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        behind(&self.cache_evictions, evictions);
        behind(&self.warm_dropped, warm_dropped);
    }

    /// Reads the process's resident memory (Linux), at scrape time.
    pub fn sync_resident_memory(&self) {
        // statm's second field is resident pages; a hand-read of one number rather than
        // the `procfs` crate for it.
        let resident_pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok());
        // SAFETY: sysconf has no preconditions; it only reads a system constant.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if let Some(pages) = resident_pages {
            self.resident_memory.set(pages * page_size.max(1) as i64);
        }
    }

    /// The process's registry: subsystems register the families they own in it (the
    /// purge bus, the shared tier).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            out.extend_from_slice(format!("# metrics encoding failed: {e}\n").as_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_index_their_own_counters() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i, "{}", outcome.label());
        }
    }
}
