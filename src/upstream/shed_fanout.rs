//! Visitors coalesced on one page share its shed answer.
//!
//! While one request fetches a page, the others for it wait on the cache lock. When
//! that fetch is shed, Pingora lets the waiters compete again, one new fetch at a time,
//! so each would queue and be shed in turn: a visitor could wait several times
//! `max_wait_ms`. Every request that arrived before the shed was waiting for that very
//! fetch, so it gets the same answer at once; later arrivals try afresh.

use std::time::{Duration, Instant};

use pingora::cache::key::HashBinary;

use super::limiter::Shed;

/// Pages remembered at most; one entry is about 50 bytes.
const CAPACITY: u64 = 100_000;
/// Longer than any request waits for another's fetch (`cache.coalesce_wait_secs` plus a
/// class's queue wait), so every waiter still finds the answer; only memory is at stake.
const REMEMBER: Duration = Duration::from_secs(600);

pub struct ShedFanout {
    recent: moka::sync::Cache<HashBinary, (Instant, Shed)>,
}

impl ShedFanout {
    pub fn new() -> Self {
        Self {
            recent: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(REMEMBER)
                .build(),
        }
    }

    pub fn record(&self, key: HashBinary, shed: Shed) {
        if matches!(shed, Shed::QueueFull | Shed::Timeout | Shed::WouldTimeOut) {
            self.recent.insert(key, (Instant::now(), shed));
        }
    }

    /// The answer shared with a request for `key` that arrived at `arrived`, if a fetch
    /// of `key` was shed after it arrived.
    pub fn shared(&self, key: &HashBinary, arrived: Instant) -> Option<Shed> {
        self.recent
            .get(key)
            .filter(|(at, _)| arrived <= *at)
            .map(|(_, shed)| shed)
    }
}

impl Default for ShedFanout {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_that_were_waiting_share_the_answer() {
        let fanout = ShedFanout::new();
        let waiting = Instant::now();
        fanout.record([1; 16], Shed::Timeout);
        let later = Instant::now() + Duration::from_millis(1);
        assert_eq!(fanout.shared(&[1; 16], waiting), Some(Shed::Timeout));
        assert_eq!(fanout.shared(&[1; 16], later), None);
        assert_eq!(fanout.shared(&[2; 16], waiting), None);
        fanout.record([3; 16], Shed::Unhealthy);
        assert_eq!(
            fanout.shared(&[3; 16], waiting),
            None,
            "no queue was involved"
        );
    }
}
