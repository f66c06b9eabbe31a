//! The origin side's metrics, registered and owned here: time to first byte and to the
//! end of a response, health, slots in flight and queued per origin and per priority
//! class, the wait for a slot, and what was shed. Labels come from fixed sets (the
//! configured origins and classes, `Shed`), so the series count stays bounded.

use std::time::Duration;

use prometheus::Registry;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec};

use super::Shed;
use crate::metrics::{counter_vec, gauge, gauge_vec, histogram, SLOW_BUCKETS};

pub struct OriginMetrics {
    first_byte: Histogram,
    response: Histogram,
    healthy: IntGauge,
    inflight: IntGaugeVec,
    inflight_by_class: IntGaugeVec,
    limit: IntGaugeVec,
    queued: IntGaugeVec,
    wait: HistogramVec,
    shed: IntCounterVec,
    maintenance: IntGauge,
}

impl OriginMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let wait = HistogramVec::new(
            HistogramOpts::new(
                "floodgate_origin_wait_seconds",
                "Time requests waited for an origin slot before being let through",
            )
            .buckets(vec![
                0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["class"],
        )?;
        r.register(Box::new(wait.clone()))?;
        Ok(Self {
            first_byte: histogram(
                r,
                "floodgate_origin_first_byte_seconds",
                "Time from sending a request to the origin to its response header (time to first byte)",
                SLOW_BUCKETS,
            )?,
            response: histogram(
                r,
                "floodgate_origin_response_seconds",
                "Time from sending a request to the origin to the end of its response body",
                SLOW_BUCKETS,
            )?,
            healthy: gauge(
                r,
                "floodgate_origin_healthy",
                "1 while at least one origin passes its health probe",
            )?,
            inflight: gauge_vec(
                r,
                "floodgate_origin_inflight",
                "Requests the origin server is working on (never above its limit)",
                &["origin"],
            )?,
            inflight_by_class: gauge_vec(
                r,
                "floodgate_origin_inflight_by_class",
                "Requests at the origins, by priority class",
                &["class"],
            )?,
            limit: gauge_vec(
                r,
                "floodgate_origin_limit",
                "Requests allowed in flight at the origin server (moves in adaptive mode)",
                &["origin"],
            )?,
            queued: gauge_vec(
                r,
                "floodgate_origin_queued",
                "Requests waiting for an origin slot, by priority class",
                &["class"],
            )?,
            wait,
            shed: counter_vec(
                r,
                "floodgate_shed_total",
                "Origin requests refused by Floodgate, by priority class and reason (queue_full, timeout, would_time_out, unhealthy, maintenance, client_cap); the visitor got stale or a 503",
                &["class", "reason"],
            )?,
            maintenance: gauge(
                r,
                "floodgate_maintenance",
                "1 while maintenance mode is on",
            )?,
        })
    }

    /// The gauges of one priority class, `(queued, in flight)`; its shed series are
    /// declared too, so every class shows up at zero before anything happens.
    pub fn class_gauges(&self, class: &str) -> (IntGauge, IntGauge) {
        for reason in Shed::DECLARED {
            self.shed.with_label_values(&[class, reason.label()]);
        }
        (
            self.queued.with_label_values(&[class]),
            self.inflight_by_class.with_label_values(&[class]),
        )
    }

    /// The gauges of one origin server, `(in flight, limit)`.
    pub fn origin_gauges(&self, origin: &str) -> (IntGauge, IntGauge) {
        (
            self.inflight.with_label_values(&[origin]),
            self.limit.with_label_values(&[origin]),
        )
    }

    /// An origin server that is gone (no longer discovered, its requests done): its
    /// series go with it.
    pub fn forget_origin(&self, origin: &str) {
        let _ = self.inflight.remove_label_values(&[origin]);
        let _ = self.limit.remove_label_values(&[origin]);
    }

    /// A request of `class` got an origin slot after waiting `waited`.
    pub fn waited(&self, class: &str, waited: Duration) {
        self.wait
            .with_label_values(&[class])
            .observe(waited.as_secs_f64());
    }

    /// A request of `class` was refused an origin slot.
    pub fn shed(&self, class: &str, reason: Shed) {
        self.shed.with_label_values(&[class, reason.label()]).inc();
    }

    pub fn first_byte(&self, elapsed: Duration) {
        self.first_byte.observe(elapsed.as_secs_f64());
    }

    pub fn response(&self, elapsed: Duration) {
        self.response.observe(elapsed.as_secs_f64());
    }

    /// Mirrors the health state, at scrape time.
    pub fn healthy(&self, healthy: bool) {
        self.healthy.set(i64::from(healthy));
    }

    pub fn maintenance(&self, on: bool) {
        self.maintenance.set(i64::from(on));
    }
}
