//! The insights' metrics, registered and owned here: every miss, uncacheable answer and
//! pass counted by its reason (bounded labels, every series declared at zero), and the
//! events the top lists dropped because their queue was full.

use prometheus::{IntCounter, Registry};

use super::MissReason;
use crate::metrics::{counter, counter_vec};
use crate::policy::route::PassReason;
use crate::policy::storability::NotCached;

pub struct InsightsMetrics {
    /// Resolved once: counting a reason is one atomic add, no label lookup.
    miss: [IntCounter; MissReason::ALL.len()],
    uncacheable: [IntCounter; NotCached::ALL.len()],
    pass: [IntCounter; PassReason::ALL.len()],
    pub(super) dropped: IntCounter,
}

impl InsightsMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let reasons = counter_vec(
            r,
            "floodgate_outcome_reasons_total",
            "Why requests missed (cold, expired, purged, evicted, hit_for_miss), were not stored (status, private, no_store, ttl_zero, vary, sets_vary_cookie, graphql_id_mismatch, variants) or passed (method, customer_or_checkout, health_check, static_or_media, authenticated_graphql, configured_pattern)",
            &["outcome", "reason"],
        )?;
        Ok(Self {
            miss: MissReason::ALL.map(|r| reasons.with_label_values(&["miss", r.label()])),
            uncacheable: NotCached::ALL
                .map(|r| reasons.with_label_values(&["uncacheable", r.label()])),
            pass: PassReason::ALL.map(|r| reasons.with_label_values(&["pass", r.label()])),
            dropped: counter(
                r,
                "floodgate_insights_events_dropped_total",
                "Requests left out of the insights' top lists because their queue was full (the reason counters still count them)",
            )?,
        })
    }

    pub(super) fn count(&self, why: super::Why) {
        match why {
            super::Why::Miss(r) => self.miss[r as usize].inc(),
            super::Why::Uncacheable(r) => self.uncacheable[r as usize].inc(),
            super::Why::Pass(r) => self.pass[r as usize].inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_their_own_counters() {
        for (i, r) in MissReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in NotCached::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in PassReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
