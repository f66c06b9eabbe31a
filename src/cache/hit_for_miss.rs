//! Hit-for-miss marks: Magento's "uncacheable for 120 s / 24 h".
//!
//! Pingora's own `Predictor` forgets only by LRU, while Magento's marks expire after a
//! time that depends on why the response was uncacheable, so this implements Pingora's
//! `CacheablePredictor` on a moka cache with a per-entry lifetime. A marked key skips the
//! cache lock (the proxy asks `is_marked` and enables the cache without one, so nobody
//! queues behind an uncacheable page) but is still looked up and filled, as Varnish's
//! hit-for-miss object is: the first cacheable response clears the mark and is stored
//! at once. The prediction itself therefore always says "cacheable".

use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::predictor::CacheablePredictor;
use pingora::cache::{CacheKey, NoCacheReason};

use crate::policy::storability::HitForMiss;

/// The `NoCacheReason::Custom` labels the proxy uses, so the predictor can tell them apart.
pub const REASON_UNCACHEABLE: &str = "hit-for-miss";
pub const REASON_PRIVATE: &str = "hit-for-miss-private";
/// Not stored, but not remembered either (Magento's `ttl = 0s`).
pub const REASON_NOT_STORED: &str = "not-stored";

impl HitForMiss {
    pub fn reason(self) -> NoCacheReason {
        NoCacheReason::Custom(match self {
            HitForMiss::Uncacheable => REASON_UNCACHEABLE,
            HitForMiss::Private => REASON_PRIVATE,
        })
    }
}

#[derive(Clone, Copy)]
struct Mark {
    lifetime: Duration,
}

struct MarkExpiry;

impl Expiry<HashBinary, Mark> for MarkExpiry {
    fn expire_after_create(&self, _: &HashBinary, mark: &Mark, _: Instant) -> Option<Duration> {
        Some(mark.lifetime)
    }
    fn expire_after_update(
        &self,
        _: &HashBinary,
        mark: &Mark,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(mark.lifetime)
    }
}

pub struct HitForMissMarks {
    marks: Cache<HashBinary, Mark>,
    uncacheable_for: Duration,
    private_for: Duration,
}

impl HitForMissMarks {
    /// `capacity` bounds the number of remembered keys (the oldest are forgotten first).
    pub fn new(capacity: u64, uncacheable_for: Duration, private_for: Duration) -> Self {
        Self {
            marks: Cache::builder()
                .max_capacity(capacity)
                .expire_after(MarkExpiry)
                .build(),
            uncacheable_for,
            private_for,
        }
    }

    /// Whether `key` is marked uncacheable now: its requests take no cache lock.
    pub fn is_marked(&self, key: &HashBinary) -> bool {
        self.marks.contains_key(key)
    }

    fn lifetime(&self, reason: NoCacheReason) -> Option<Duration> {
        match reason {
            NoCacheReason::Custom(REASON_PRIVATE) => Some(self.private_for),
            NoCacheReason::Custom(REASON_NOT_STORED) => None,
            NoCacheReason::Custom(_)
            | NoCacheReason::OriginNotCache
            | NoCacheReason::ResponseTooLarge => Some(self.uncacheable_for),
            // Errors, lock time-outs and deferrals say nothing about the page itself.
            _ => None,
        }
    }
}

impl CacheablePredictor for HitForMissMarks {
    fn cacheable_prediction(&self, _key: &CacheKey) -> bool {
        // Never bypass: a bypassed fetch is not stored even when it turns cacheable.
        true
    }

    fn mark_cacheable(&self, key: &CacheKey) -> bool {
        self.marks.remove(&key.primary_bin()).is_some()
    }

    fn mark_uncacheable(&self, key: &CacheKey, reason: NoCacheReason) -> Option<bool> {
        let lifetime = self.lifetime(reason)?;
        let hash = key.primary_bin();
        let fresh = !self.marks.contains_key(&hash);
        self.marks.insert(hash, Mark { lifetime });
        Some(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_expire_by_reason_and_clear_on_cacheable() {
        let marks = HitForMissMarks::new(100, Duration::from_millis(50), Duration::from_secs(60));
        let a = CacheKey::new("a", "");
        let b = CacheKey::new("b", "");
        assert!(!marks.is_marked(&a.primary_bin()));
        assert_eq!(
            marks.mark_uncacheable(&a, HitForMiss::Uncacheable.reason()),
            Some(true)
        );
        assert_eq!(
            marks.mark_uncacheable(&b, HitForMiss::Private.reason()),
            Some(true)
        );
        assert!(marks.is_marked(&a.primary_bin()));
        assert!(
            marks.cacheable_prediction(&a),
            "marked keys are still looked up"
        );
        // Waits on the fact (the short mark gone), bounded; the long one must outlive it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while marks.is_marked(&a.primary_bin()) {
            assert!(
                std::time::Instant::now() < deadline,
                "120 s-style mark must expire"
            );
            std::thread::yield_now();
        }
        assert!(
            marks.is_marked(&b.primary_bin()),
            "private mark lives longer"
        );
        assert!(marks.mark_cacheable(&b));
        assert!(!marks.is_marked(&b.primary_bin()));
        assert_eq!(
            marks.mark_uncacheable(&a, NoCacheReason::Custom(REASON_NOT_STORED)),
            None
        );
        assert_eq!(
            marks.mark_uncacheable(&a, NoCacheReason::UpstreamError),
            None
        );
    }
}
