//! The purge subsystem's metrics, registered and owned here: purge requests by result,
//! objects and tags purged, the time a purge took, and purges applied from other nodes.
//! Recorded by the `Purger`, which every purge goes through (PURGE, the admin API, the
//! bus), and by the callers that refuse one before it gets there.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec, Registry};

use crate::metrics::{counter, counter_vec, histogram};

/// Why a purge request was not applied, the label of `floodgate_purge_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeRefusal {
    /// Not allowed (the ACL).
    Refused,
    /// Bad input: no header, a bad regex.
    Invalid,
    /// Applied in memory but not made durable on disk (the disk tier refused it).
    Failed,
}

impl PurgeRefusal {
    fn label(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Invalid => "invalid",
            Self::Failed => "failed",
        }
    }
}

pub struct PurgeMetrics {
    requests: IntCounterVec,
    objects: IntCounter,
    tags: IntCounter,
    time: Histogram,
    remote_objects: IntCounter,
}

impl PurgeMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let requests = counter_vec(
            r,
            "floodgate_purge_requests_total",
            "Purge requests (PURGE or the admin API) by result: ok, refused (ACL), invalid, failed (the disk tier could not make it durable)",
            &["result"],
        )?;
        for result in ["ok", "refused", "invalid", "failed"] {
            requests.with_label_values(&[result]);
        }
        Ok(Self {
            requests,
            objects: counter(
                r,
                "floodgate_purged_objects_total",
                "Objects removed or expired by purges",
            )?,
            tags: counter(
                r,
                "floodgate_purged_tags_total",
                "Tags purged (named in a purge, or known tags a pattern matched)",
            )?,
            time: histogram(
                r,
                "floodgate_purge_seconds",
                "Time a purge took to find and invalidate its objects",
                &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0],
            )?,
            remote_objects: counter(
                r,
                "floodgate_purged_remote_objects_total",
                "Objects removed or expired here by purges from other nodes",
            )?,
        })
    }

    /// A purge request that was refused (`refused`: not allowed; `invalid`: bad input).
    pub fn refused(&self, result: PurgeRefusal) {
        self.requests.with_label_values(&[result.label()]).inc();
    }

    pub fn purged(&self, objects: usize, tags: usize, took: Duration) {
        self.requests.with_label_values(&["ok"]).inc();
        self.objects.inc_by(objects as u64);
        self.tags.inc_by(tags as u64);
        self.time.observe(took.as_secs_f64());
    }

    /// A purge from another node, applied here.
    pub fn purged_remote(&self, objects: usize, tags: usize, took: Duration) {
        self.remote_objects.inc_by(objects as u64);
        self.tags.inc_by(tags as u64);
        self.time.observe(took.as_secs_f64());
    }
}
