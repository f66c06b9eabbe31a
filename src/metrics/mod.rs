//! Prometheus metrics: the process's one registry, and the helpers subsystems register
//! their own families with.
//!
//! Invariant: a leaf. Each subsystem defines, registers and records its own families
//! (`proxy::metrics` the requests, `upstream::metrics` the origin, `purge::metrics`,
//! `warm::metrics`, `esi::metrics`, `cache::metrics`, `admin::metrics` the
//! configuration, the purge bus and the shared tier theirs); this module knows none of
//! them. Names follow Prometheus conventions: `floodgate_` prefix, `_total` on counters
//! only, base units (seconds, bytes), and label values from fixed sets (outcomes, status
//! classes, priority classes, configured origins), so the series count stays bounded.
//! Gauges that mirror state are read at scrape time.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

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

/// Origin and wait times: from a cached fragment to Magento's 600 s first-byte timeout.
pub const SLOW_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Round trips to Redis and other quick exchanges: 100 µs to a second.
pub const FAST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The registry, and the one family that belongs to the process itself.
pub struct Metrics {
    registry: Registry,
    resident_memory: IntGauge,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let resident_memory = gauge(
            &registry,
            "floodgate_resident_memory_bytes",
            "Resident memory of the Floodgate process",
        )?;
        Ok(Self {
            registry,
            resident_memory,
        })
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

    /// The process's registry: each subsystem registers the families it owns in it.
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
