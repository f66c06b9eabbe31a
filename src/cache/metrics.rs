//! The memory store's metrics, registered and owned here: objects and bytes held, and
//! evictions. Mirrored from the store when `/metrics` is read rather than kept up to
//! date on every insert.

use prometheus::{IntCounter, IntGauge, Registry};

use super::MemoryStore;
use crate::metrics::{counter, gauge};

pub struct CacheMetrics {
    objects: IntGauge,
    bytes: IntGauge,
    evictions: IntCounter,
}

impl CacheMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            objects: gauge(r, "floodgate_cache_objects", "Objects in the memory store")?,
            bytes: gauge(
                r,
                "floodgate_cache_bytes",
                "Bytes held by the memory store (bodies, headers, tags, bookkeeping)",
            )?,
            evictions: counter(
                r,
                "floodgate_cache_evictions_total",
                "Objects evicted to make room (not expired, not purged)",
            )?,
        })
    }

    /// Reads the store's state into the gauges (objects past their usable time dropped
    /// first, so the gauges count what may still be served).
    pub async fn scrape(&self, store: &MemoryStore) {
        store.sync().await;
        let (objects, bytes) = store.usage();
        self.objects.set(objects as i64);
        self.bytes.set(bytes as i64);
        self.evictions
            .inc_by(store.evictions().saturating_sub(self.evictions.get()));
    }
}
