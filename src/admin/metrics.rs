//! The configuration's metrics, registered and owned by the reloader: reloads by result
//! and the hash of the configuration in force.

use prometheus::{IntCounterVec, IntGaugeVec, Registry};

use crate::metrics::{counter_vec, gauge_vec};

pub struct ConfigMetrics {
    reloads: IntCounterVec,
    info: IntGaugeVec,
}

impl ConfigMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let reloads = counter_vec(
            r,
            "floodgate_config_reloads_total",
            "Configuration reloads by result (ok, failed); a failed one changed nothing",
            &["result"],
        )?;
        for result in ["ok", "failed"] {
            reloads.with_label_values(&[result]);
        }
        Ok(Self {
            reloads,
            info: gauge_vec(
                r,
                "floodgate_config_info",
                "1 for the hash of the configuration in force",
                &["hash"],
            )?,
        })
    }

    pub fn reloaded(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    /// Marks `hash` as the configuration in force (the only series of the info metric).
    pub fn loaded(&self, hash: &str) {
        self.info.reset();
        self.info.with_label_values(&[hash]).set(1);
    }
}
