//! The re-warmer's metrics, registered and owned here: re-warm fetches by result, the
//! queue's depth, and the pages dropped from a full queue.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

use crate::metrics::{counter, counter_vec, gauge};

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
    pub fn label(self) -> &'static str {
        match self {
            WarmResult::Fetched => "fetched",
            WarmResult::AlreadyWarm => "already_warm",
            WarmResult::Failed => "failed",
        }
    }
}

pub struct WarmMetrics {
    warmed: IntCounterVec,
    queue_depth: IntGauge,
    dropped: IntCounter,
}

impl WarmMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let warmed = counter_vec(
            r,
            "floodgate_warm_requests_total",
            "Re-warm fetches of purged hot pages by result: fetched, already_warm, failed",
            &["result"],
        )?;
        for result in [
            WarmResult::Fetched,
            WarmResult::AlreadyWarm,
            WarmResult::Failed,
        ] {
            warmed.with_label_values(&[result.label()]);
        }
        Ok(Self {
            warmed,
            queue_depth: gauge(
                r,
                "floodgate_warm_queue_depth",
                "Pages waiting to be re-warmed",
            )?,
            dropped: counter(
                r,
                "floodgate_warm_dropped_total",
                "Pages dropped from the full re-warm queue (the coldest go first)",
            )?,
        })
    }

    pub fn warmed(&self, result: WarmResult) {
        self.warmed.with_label_values(&[result.label()]).inc();
    }

    pub fn queue_depth(&self, depth: usize) {
        self.queue_depth.set(depth as i64);
    }

    /// Brings the drop counter up to the queue's running total, at scrape time.
    pub fn dropped_total(&self, total: u64) {
        self.dropped
            .inc_by(total.saturating_sub(self.dropped.get()));
    }
}
