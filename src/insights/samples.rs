//! The last hour, second by second: a ring of samples read from the metrics registry
//! once a second, for the status page's charts and `floodgate top`.
//!
//! Read from the registry, not from the subsystems: their metric names and labels are
//! the public contract (dashboards and alerts rely on them), so this sees exactly what
//! Prometheus sees and imports none of the layers above it.
//!
//! Invariant: the ring never holds more than `history_secs` samples.

use std::collections::VecDeque;

use prometheus::proto::MetricFamily;
use serde::Serialize;

/// The outcomes of `floodgate_requests_total`, in the order a sample keeps them.
pub const OUTCOMES: [&str; 8] = [
    "hit",
    "stale",
    "miss",
    "uncacheable",
    "pass",
    "tunnel",
    "purge",
    "shed",
];

/// One second.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// Unix time, seconds.
    pub at: u64,
    /// Requests by outcome in that second, in `OUTCOMES` order.
    pub outcomes: [u32; 8],
    pub origin_in_flight: u32,
    pub origin_limit: u32,
    pub queued: u32,
    /// Origin requests shed in that second.
    pub shed: u32,
    /// Purge requests applied in that second.
    pub purges: u32,
}

impl Sample {
    /// Lookups served from the cache (hit or stale) and all lookups, in that second.
    pub fn lookups(&self) -> (u64, u64) {
        let o = self.outcomes.map(u64::from);
        let served = o[0] + o[1];
        (served, served + o[2] + o[3] + o[7])
    }
}

/// Counters as read last time, to turn totals into per-second figures.
#[derive(Debug, Clone, Default)]
struct Totals {
    outcomes: [u64; 8],
    shed: u64,
    purges: u64,
}

/// What the registry says now, beside the counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Gauges {
    pub origin_in_flight: u64,
    pub origin_limit: u64,
    /// Requests waiting for an origin slot, by priority class.
    pub queued: Vec<(String, u64)>,
    /// In flight at the origin, by priority class.
    pub in_flight_by_class: Vec<(String, u64)>,
    pub maintenance: bool,
    pub origin_healthy: bool,
}

pub struct Samples {
    ring: VecDeque<Sample>,
    capacity: usize,
    last: Option<Totals>,
    pub gauges: Gauges,
}

impl Samples {
    pub fn new(history_secs: usize) -> Self {
        Self {
            ring: VecDeque::with_capacity(history_secs),
            capacity: history_secs.max(1),
            last: None,
            gauges: Gauges::default(),
        }
    }

    /// Adds one sample from the registry's families, gathered at `at` (the first
    /// only sets the baseline).
    pub fn take(&mut self, families: &[MetricFamily], at: u64) {
        let (totals, gauges) = read(families);
        if let Some(last) = &self.last {
            let delta = |now: u64, before: u64| {
                u32::try_from(now.saturating_sub(before)).unwrap_or(u32::MAX)
            };
            let mut outcomes = [0; 8];
            for (i, o) in outcomes.iter_mut().enumerate() {
                *o = delta(totals.outcomes[i], last.outcomes[i]);
            }
            let sample = Sample {
                at,
                outcomes,
                origin_in_flight: gauges.origin_in_flight.try_into().unwrap_or(u32::MAX),
                origin_limit: gauges.origin_limit.try_into().unwrap_or(u32::MAX),
                queued: gauges
                    .queued
                    .iter()
                    .map(|(_, n)| *n)
                    .sum::<u64>()
                    .try_into()
                    .unwrap_or(u32::MAX),
                shed: delta(totals.shed, last.shed),
                purges: delta(totals.purges, last.purges),
            };
            if self.ring.len() == self.capacity {
                self.ring.pop_front();
            }
            self.ring.push_back(sample);
        }
        self.last = Some(totals);
        self.gauges = gauges;
    }

    /// The samples of the last `secs` seconds, oldest first.
    pub fn last(&self, secs: usize) -> impl Iterator<Item = &Sample> {
        self.ring.iter().skip(self.ring.len().saturating_sub(secs))
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The history held in at most `points` buckets of equal length (sums; the
    /// gauges' maximum), for charts: oldest first, each bucket's end time.
    pub fn buckets(&self, points: usize) -> Vec<Sample> {
        let points = points.max(1);
        let per = self.ring.len().div_ceil(points).max(1);
        let samples: Vec<&Sample> = self.ring.iter().collect();
        samples
            .chunks(per)
            .map(|chunk| {
                let mut b = Sample::default();
                for s in chunk {
                    b.at = s.at;
                    for (o, n) in b.outcomes.iter_mut().zip(s.outcomes) {
                        *o = o.saturating_add(n);
                    }
                    b.origin_in_flight = b.origin_in_flight.max(s.origin_in_flight);
                    b.origin_limit = b.origin_limit.max(s.origin_limit);
                    b.queued = b.queued.max(s.queued);
                    b.shed = b.shed.saturating_add(s.shed);
                    b.purges = b.purges.saturating_add(s.purges);
                }
                b
            })
            .collect()
    }
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> Option<&'a str> {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
}

fn read(families: &[MetricFamily]) -> (Totals, Gauges) {
    let mut totals = Totals::default();
    let mut gauges = Gauges::default();
    for family in families {
        let metrics = family.get_metric();
        let counter = |m: &prometheus::proto::Metric| m.get_counter().get_value() as u64;
        let gauge = |m: &prometheus::proto::Metric| m.get_gauge().get_value().max(0.0) as u64;
        match family.name() {
            "floodgate_requests_total" => {
                for m in metrics {
                    if let Some(i) =
                        label(m, "outcome").and_then(|o| OUTCOMES.iter().position(|x| *x == o))
                    {
                        totals.outcomes[i] = counter(m);
                    }
                }
            }
            "floodgate_shed_total" => totals.shed = metrics.iter().map(counter).sum(),
            "floodgate_purge_requests_total" => {
                totals.purges = metrics
                    .iter()
                    .filter(|m| label(m, "result") == Some("ok"))
                    .map(counter)
                    .sum();
            }
            "floodgate_origin_inflight" => {
                gauges.origin_in_flight = metrics.iter().map(gauge).sum()
            }
            "floodgate_origin_limit" => gauges.origin_limit = metrics.iter().map(gauge).sum(),
            "floodgate_origin_queued" | "floodgate_origin_inflight_by_class" => {
                let by_class = metrics
                    .iter()
                    .map(|m| (label(m, "class").unwrap_or("").to_string(), gauge(m)))
                    .collect();
                if family.name() == "floodgate_origin_queued" {
                    gauges.queued = by_class;
                } else {
                    gauges.in_flight_by_class = by_class;
                }
            }
            "floodgate_maintenance" => gauges.maintenance = metrics.iter().any(|m| gauge(m) > 0),
            "floodgate_origin_healthy" => {
                gauges.origin_healthy = metrics.iter().any(|m| gauge(m) > 0)
            }
            _ => {}
        }
    }
    (totals, gauges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Registry;

    #[test]
    fn per_second_figures_from_the_registry_and_a_bounded_ring() {
        let registry = Registry::new();
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new("floodgate_requests_total", "requests"),
            &["outcome"],
        )
        .expect("counter");
        registry
            .register(Box::new(requests.clone()))
            .expect("register");
        let mut samples = Samples::new(60);
        samples.take(&registry.gather(), 0);
        assert!(samples.is_empty(), "the first read is the baseline");
        for at in 1..=100 {
            requests.with_label_values(&["hit"]).inc_by(3);
            requests.with_label_values(&["miss"]).inc();
            samples.take(&registry.gather(), at);
        }
        assert_eq!(samples.len(), 60);
        let newest = samples.last(1).next().expect("a sample");
        assert_eq!(
            (newest.at, newest.outcomes[0], newest.outcomes[2]),
            (100, 3, 1)
        );
        assert_eq!(newest.lookups(), (3, 4));
        let buckets = samples.buckets(6);
        assert_eq!(buckets.len(), 6);
        assert_eq!(buckets[0].outcomes[0], 30);
    }
}
