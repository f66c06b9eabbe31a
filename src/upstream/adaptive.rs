//! An origin's concurrency limit that follows its response times (AIMD, as TCP and
//! Netflix's concurrency-limits do): a slow or failed answer cuts the limit by a tenth,
//! each fast answer while the limit is in use adds 1/limit, about one per round.
//!
//! When the database slows down, PHP-FPM workers take longer per page; sending fewer at
//! once keeps every answer within time instead of all of them timing out together.

use std::time::{Duration, Instant};

/// Cuts are spaced so that one slow moment, seen by every request in flight at once,
/// counts once rather than collapsing the limit to its floor.
const MIN_CUT_INTERVAL: Duration = Duration::from_millis(250);
const CUT_FACTOR: f64 = 0.9;

#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    limit: f64,
    floor: f64,
    ceiling: f64,
    slow: Duration,
    last_cut: Option<Instant>,
}

impl AdaptiveLimit {
    pub fn new(floor: usize, ceiling: usize, slow: Duration) -> Self {
        Self {
            limit: ceiling as f64,
            floor: floor as f64,
            ceiling: ceiling as f64,
            slow,
            last_cut: None,
        }
    }

    /// New bounds from a reloaded configuration; the limit is kept within them.
    pub fn set_bounds(&mut self, floor: usize, ceiling: usize) {
        self.floor = floor as f64;
        self.ceiling = ceiling as f64;
        self.limit = self.limit.clamp(self.floor, self.ceiling);
    }

    pub fn current(&self) -> usize {
        self.limit as usize
    }

    /// One finished origin request: `latency` to its response header, or `None` if it
    /// failed; `in_flight` counts the origin's other requests still running.
    pub fn record(&mut self, latency: Option<Duration>, in_flight: usize, now: Instant) {
        let congested = latency.is_none_or(|l| l > self.slow);
        if congested {
            if self
                .last_cut
                .is_none_or(|at| now.duration_since(at) >= MIN_CUT_INTERVAL)
            {
                self.limit = (self.limit * CUT_FACTOR).max(self.floor);
                self.last_cut = Some(now);
            }
        } else if (in_flight + 1) as f64 * 2.0 >= self.limit {
            // Only grow while the limit is actually used: an idle shop proves nothing.
            self.limit = (self.limit + 1.0 / self.limit).min(self.ceiling);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_answers_shrink_to_the_floor_and_fast_ones_grow_back() {
        let mut limit = AdaptiveLimit::new(4, 32, Duration::from_millis(500));
        let mut now = Instant::now();
        for _ in 0..100 {
            now += MIN_CUT_INTERVAL;
            limit.record(Some(Duration::from_secs(2)), 31, now);
        }
        assert_eq!(limit.current(), 4);
        // Many slow answers within one interval cut once.
        let mut other = AdaptiveLimit::new(4, 32, Duration::from_millis(500));
        for _ in 0..50 {
            other.record(None, 31, now);
        }
        assert_eq!(other.current(), 28);

        for _ in 0..2000 {
            limit.record(Some(Duration::from_millis(50)), limit.current(), now);
        }
        assert_eq!(limit.current(), 32);
        // Idle origins do not grow it.
        let mut idle = AdaptiveLimit::new(4, 32, Duration::from_millis(500));
        idle.record(None, 0, now);
        for _ in 0..1000 {
            idle.record(Some(Duration::from_millis(50)), 0, now);
        }
        assert_eq!(idle.current(), 28);
    }
}
