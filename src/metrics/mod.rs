//! Prometheus metrics: what an operator replacing varnishstat watches.
//!
//! One registry per process, owned here and exposed by `admin`. Counters are recorded
//! once per client request in the proxy's `logging` hook, where the request's route and
//! final cache phase are both known.

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
    fn label(self) -> &'static str {
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
    requests: IntCounterVec,
    coalesced: IntCounter,
    background_refreshes: IntCounter,
    origin_unavailable: IntCounter,
    upstream_latency: Histogram,
    purged_objects: IntCounter,
    purge_time: Histogram,
    warmed: IntCounterVec,
    pub warm_queue_depth: IntGauge,
    pub warm_dropped: IntGauge,
    pub cache_objects: IntGauge,
    pub cache_bytes: IntGauge,
    pub origin_healthy: IntGauge,
    pub origin_inflight: IntGaugeVec,
    pub origin_limit: IntGaugeVec,
    pub origin_queued: IntGaugeVec,
    pub origin_wait: HistogramVec,
    shed: IntCounterVec,
    pub maintenance: IntGauge,
    config_reloads: IntCounterVec,
    config_info: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "floodgate_requests_total",
                "Client requests by how they were served",
            ),
            &["outcome"],
        )?;
        let coalesced = IntCounter::new(
            "floodgate_coalesced_total",
            "Requests that waited for another request's origin fetch instead of making their own",
        )?;
        let background_refreshes = IntCounter::new(
            "floodgate_background_refreshes_total",
            "Origin fetches that refreshed a stale object while it was being served",
        )?;
        let origin_unavailable = IntCounter::new(
            "floodgate_origin_unavailable_total",
            "Client requests answered 503 because the origin failed (refused, timed out) and nothing was stored",
        )?;
        let upstream_latency = Histogram::with_opts(
            HistogramOpts::new(
                "floodgate_upstream_response_seconds",
                "Time from sending a request to the origin to its response header",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )?;
        let purged_objects = IntCounter::new(
            "floodgate_purged_objects_total",
            "Objects removed or expired by PURGE requests",
        )?;
        let purge_time = Histogram::with_opts(
            HistogramOpts::new(
                "floodgate_purge_seconds",
                "Time a PURGE took to find and invalidate its objects",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
            ]),
        )?;
        let warmed = IntCounterVec::new(
            Opts::new(
                "floodgate_warm_requests_total",
                "Re-warm fetches of purged hot pages by result",
            ),
            &["result"],
        )?;
        let warm_queue_depth = IntGauge::new(
            "floodgate_warm_queue_depth",
            "Pages waiting to be re-warmed",
        )?;
        let warm_dropped = IntGauge::new(
            "floodgate_warm_dropped_total",
            "Pages dropped from the full re-warm queue (the coldest go first)",
        )?;
        let cache_objects =
            IntGauge::new("floodgate_cache_objects", "Objects in the memory store")?;
        let cache_bytes = IntGauge::new(
            "floodgate_cache_bytes",
            "Bytes held by the memory store (bodies, headers, tags, bookkeeping)",
        )?;
        let origin_healthy = IntGauge::new(
            "floodgate_origin_healthy",
            "1 while at least one origin passes its health probe",
        )?;
        let origin_inflight = IntGaugeVec::new(
            Opts::new(
                "floodgate_origin_inflight",
                "Requests the origin server is working on (never above its limit)",
            ),
            &["origin"],
        )?;
        let origin_limit = IntGaugeVec::new(
            Opts::new(
                "floodgate_origin_limit",
                "Requests allowed in flight at the origin server (moves in adaptive mode)",
            ),
            &["origin"],
        )?;
        let origin_queued = IntGaugeVec::new(
            Opts::new(
                "floodgate_origin_queued",
                "Requests waiting for an origin slot, by priority class",
            ),
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
        let shed = IntCounterVec::new(
            Opts::new(
                "floodgate_shed_total",
                "Origin requests refused by Floodgate, by priority class and reason (queue_full, timeout, would_time_out, unhealthy, maintenance); the visitor got stale or a 503",
            ),
            &["class", "reason"],
        )?;
        let maintenance = IntGauge::new("floodgate_maintenance", "1 while maintenance mode is on")?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "floodgate_config_reloads_total",
                "Configuration reloads by result (ok, failed); a failed one changed nothing",
            ),
            &["result"],
        )?;
        let config_info = IntGaugeVec::new(
            Opts::new(
                "floodgate_config_info",
                "1 for the hash of the configuration in force",
            ),
            &["hash"],
        )?;
        for result in ["ok", "failed"] {
            config_reloads.with_label_values(&[result]);
        }
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_info.clone()))?;
        registry.register(Box::new(origin_inflight.clone()))?;
        registry.register(Box::new(origin_limit.clone()))?;
        registry.register(Box::new(origin_queued.clone()))?;
        registry.register(Box::new(origin_wait.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        registry.register(Box::new(maintenance.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(coalesced.clone()))?;
        registry.register(Box::new(background_refreshes.clone()))?;
        registry.register(Box::new(origin_unavailable.clone()))?;
        registry.register(Box::new(upstream_latency.clone()))?;
        registry.register(Box::new(purged_objects.clone()))?;
        registry.register(Box::new(purge_time.clone()))?;
        registry.register(Box::new(warmed.clone()))?;
        registry.register(Box::new(warm_queue_depth.clone()))?;
        registry.register(Box::new(warm_dropped.clone()))?;
        registry.register(Box::new(cache_objects.clone()))?;
        registry.register(Box::new(cache_bytes.clone()))?;
        registry.register(Box::new(origin_healthy.clone()))?;
        // Every outcome appears from the start, at 0, so rates work before the first event.
        for outcome in [
            Outcome::Hit,
            Outcome::Stale,
            Outcome::Miss,
            Outcome::Uncacheable,
            Outcome::Pass,
            Outcome::Tunnel,
            Outcome::Purge,
            Outcome::Shed,
        ] {
            requests.with_label_values(&[outcome.label()]);
        }
        for result in [
            WarmResult::Fetched,
            WarmResult::AlreadyWarm,
            WarmResult::Failed,
        ] {
            warmed.with_label_values(&[result.label()]);
        }
        Ok(Self {
            registry,
            requests,
            coalesced,
            background_refreshes,
            origin_unavailable,
            upstream_latency,
            purged_objects,
            purge_time,
            warmed,
            warm_queue_depth,
            warm_dropped,
            cache_objects,
            cache_bytes,
            origin_healthy,
            origin_inflight,
            origin_limit,
            origin_queued,
            origin_wait,
            shed,
            maintenance,
            config_reloads,
            config_info,
        })
    }

    pub fn request(&self, outcome: Outcome) {
        self.requests.with_label_values(&[outcome.label()]).inc();
    }

    pub fn coalesced(&self) {
        self.coalesced.inc();
    }

    pub fn background_refresh(&self) {
        self.background_refreshes.inc();
    }

    pub fn origin_unavailable(&self) {
        self.origin_unavailable.inc();
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

    pub fn shed(&self, class: &str, reason: &str) {
        self.shed.with_label_values(&[class, reason]).inc();
    }

    pub fn purged(&self, objects: usize, took: Duration) {
        self.purged_objects.inc_by(objects as u64);
        self.purge_time.observe(took.as_secs_f64());
    }

    pub fn warmed(&self, result: WarmResult) {
        self.warmed.with_label_values(&[result.label()]).inc();
    }

    pub fn upstream_latency(&self, elapsed: Duration) {
        self.upstream_latency.observe(elapsed.as_secs_f64());
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            out.extend_from_slice(format!("# metrics encoding failed: {e}\n").as_bytes());
        }
        out
    }
}
