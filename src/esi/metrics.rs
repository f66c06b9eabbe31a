//! ESI's metrics, registered and owned here: includes by what became of them.

use prometheus::{IntCounter, Registry};

use crate::metrics::counter_vec;

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

pub struct EsiMetrics {
    /// By `FragmentResult as usize`, resolved once.
    fragments: [IntCounter; 3],
}

impl EsiMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let fragments = counter_vec(
            r,
            "floodgate_esi_fragments_total",
            "ESI includes by result: cached, fetched (from the origin), failed (left out of the page)",
            &["result"],
        )?;
        Ok(Self {
            fragments: FragmentResult::ALL
                .map(|result| fragments.with_label_values(&[result.label()])),
        })
    }

    pub fn fragment(&self, result: FragmentResult) {
        self.fragments[result as usize].inc();
    }
}
