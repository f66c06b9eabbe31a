//! The disk tier's metrics, registered and owned here.

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::metrics::{counter, counter_vec, gauge};

pub struct DiskMetrics {
    pub open: IntGauge,
    pub objects: IntGauge,
    pub bytes: IntGauge,
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub writes: IntCounter,
    pub syncs: IntCounter,
    pub durable_writes: IntGauge,
    pub dropped: IntCounter,
    pub evictions: IntCounter,
    pub corrupt: IntCounter,
    pub errors: IntCounterVec,
    pub recovery_seconds: Gauge,
    pub recovered_objects: IntGauge,
}

impl DiskMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let lookups = counter_vec(
            r,
            "floodgate_disk_lookups_total",
            "Memory misses looked up on the disk tier, by result (hit, miss)",
            &["result"],
        )?;
        let recovery_seconds = Gauge::with_opts(Opts::new(
            "floodgate_disk_recovery_seconds",
            "Time the disk tier took to open at start-up: crash repair and the index rebuilt",
        ))?;
        r.register(Box::new(recovery_seconds.clone()))?;
        Ok(Self {
            open: gauge(
                r,
                "floodgate_disk_open",
                "1 while the disk tier is open and serving, 0 while it opens or after it failed",
            )?,
            objects: gauge(r, "floodgate_disk_objects", "Objects on the disk tier")?,
            bytes: gauge(
                r,
                "floodgate_disk_bytes",
                "Bytes of objects on the disk tier (records, not the file's size)",
            )?,
            hits: lookups.with_label_values(&["hit"]),
            misses: lookups.with_label_values(&["miss"]),
            writes: counter(
                r,
                "floodgate_disk_writes_total",
                "Objects written to the disk tier",
            )?,
            syncs: counter(
                r,
                "floodgate_disk_syncs_total",
                "Durable commits of the fills written since the previous one (about one a second while filling)",
            )?,
            durable_writes: gauge(
                r,
                "floodgate_disk_durable_writes",
                "floodgate_disk_writes_total as of the last durable commit: the writes since are what a crash now could lose",
            )?,
            dropped: counter(
                r,
                "floodgate_disk_writes_dropped_total",
                "Fills not written to disk because the write queue was full (the disk is slower than the fills)",
            )?,
            evictions: counter(
                r,
                "floodgate_disk_evictions_total",
                "Objects evicted from the disk tier to stay within cache.disk_bytes",
            )?,
            corrupt: counter(
                r,
                "floodgate_disk_corrupt_total",
                "Records that failed their checksum on read (not served; removed)",
            )?,
            errors: counter_vec(
                r,
                "floodgate_disk_errors_total",
                "Disk-tier operations that failed, by operation (open, read, write, purge)",
                &["operation"],
            )?,
            recovery_seconds,
            recovered_objects: gauge(
                r,
                "floodgate_disk_recovered_objects",
                "Objects found on disk at start-up and served from it",
            )?,
        })
    }
}
