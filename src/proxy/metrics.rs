//! The request path's metrics, registered and owned here: every client request counted
//! once by how it was served and its status class, the waits on another request's fetch,
//! background refreshes, purged copies served, and the 503s Floodgate wrote itself.
//! Recorded in `accounting` (Pingora's `logging` hook), where the route and the final
//! cache phase are both known.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec, Registry};

use crate::metrics::{counter, counter_vec, histogram, SLOW_BUCKETS};
use crate::upstream::Shed;

/// How a client request was served, the label of `floodgate_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    /// Served stale: within grace while refreshing, or because the origin failed.
    Stale,
    Miss,
    /// Looked up, but the response was not stored (or the key is hit-for-miss).
    Uncacheable,
    Pass,
    Tunnel,
    Purge,
    /// Answered 503 by Floodgate: the origin could not take it and nothing was stored.
    Shed,
}

impl Outcome {
    /// Every outcome, in declaration order (`Outcome as usize` indexes it).
    const ALL: [Outcome; 8] = [
        Outcome::Hit,
        Outcome::Stale,
        Outcome::Miss,
        Outcome::Uncacheable,
        Outcome::Pass,
        Outcome::Tunnel,
        Outcome::Purge,
        Outcome::Shed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Stale => "stale",
            Outcome::Miss => "miss",
            Outcome::Uncacheable => "uncacheable",
            Outcome::Pass => "pass",
            Outcome::Tunnel => "tunnel",
            Outcome::Purge => "purge",
            Outcome::Shed => "shed",
        }
    }
}

/// Why Floodgate answered a request itself: the label of `floodgate_unavailable_total`.
/// A shed request keeps the limiter's reason, the `reason` of `floodgate_shed_total` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The origin failed or broke its answer, and nothing was stored.
    OriginFailed,
    /// The origin could not take the request (`Shed` says why).
    Shed(Shed),
    /// 408: the request body did not arrive in time.
    BodyTimeout,
    /// The responses in flight hold `limits.response_buffer_bytes` already.
    ResponseMemory,
}

impl Unavailable {
    pub fn label(self) -> &'static str {
        match self {
            Self::OriginFailed => "origin_failed",
            Self::Shed(shed) => shed.label(),
            Self::BodyTimeout => "body_timeout",
            Self::ResponseMemory => "response_memory",
        }
    }
}

impl From<Shed> for Unavailable {
    fn from(shed: Shed) -> Self {
        Unavailable::Shed(shed)
    }
}

pub struct RequestMetrics {
    /// `floodgate_requests_total` by `Outcome as usize`, and `floodgate_responses_total`
    /// by status class: resolved once, so a request costs two atomic adds, not two
    /// label-hash lookups under a lock.
    requests: [IntCounter; Outcome::ALL.len()],
    responses: [IntCounter; 5],
    coalesced: IntCounter,
    coalesce_wait: Histogram,
    background_refreshes: IntCounter,
    purged_copies_served: IntCounter,
    unavailable: IntCounterVec,
    /// `floodgate_http_requests_total` by HTTP version: 1.0, 1.1, 2.
    versions: [IntCounter; 3],
}

impl RequestMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let requests = counter_vec(
            r,
            "floodgate_requests_total",
            "Client requests by how they were served: hit, stale, miss, uncacheable, pass, tunnel, purge, shed",
            &["outcome"],
        )?;
        let responses = counter_vec(
            r,
            "floodgate_responses_total",
            "Client responses by status class (1xx to 5xx)",
            &["status_class"],
        )?;
        let unavailable = counter_vec(
            r,
            "floodgate_unavailable_total",
            "503s Floodgate answered itself, by reason: origin_failed, queue_full, timeout, would_time_out, unhealthy, maintenance, client_cap, response_memory (and 408 body_timeout)",
            &["reason"],
        )?;
        let versions = counter_vec(
            r,
            "floodgate_http_requests_total",
            "Client requests by HTTP version (1.0, 1.1, 2)",
            &["version"],
        )?;
        // Fixed label sets appear from the start, at 0, so rates work before the first event.
        // The common reasons are declared at start, so their series show up at zero.
        unavailable.with_label_values(&[Unavailable::OriginFailed.label()]);
        for shed in Shed::DECLARED {
            unavailable.with_label_values(&[shed.label()]);
        }
        Ok(Self {
            requests: Outcome::ALL.map(|outcome| requests.with_label_values(&[outcome.label()])),
            responses: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|class| responses.with_label_values(&[class])),
            coalesced: counter(
                r,
                "floodgate_coalesced_total",
                "Requests that waited for another request's origin fetch instead of making their own",
            )?,
            coalesce_wait: histogram(
                r,
                "floodgate_coalesce_wait_seconds",
                "Time requests waited for another request's origin fetch of the same page",
                SLOW_BUCKETS,
            )?,
            background_refreshes: counter(
                r,
                "floodgate_background_refreshes_total",
                "Origin fetches that refreshed a stale object while it was being served",
            )?,
            purged_copies_served: counter(
                r,
                "floodgate_purged_copies_served_total",
                "Responses served from a purged page's copy kept as a last resort (purge.keep_purged_secs) instead of a 503",
            )?,
            unavailable,
            versions: ["1.0", "1.1", "2"].map(|v| versions.with_label_values(&[v])),
        })
    }

    /// The HTTP version a client request came in.
    pub fn http_version(&self, version: http::Version) {
        let index = match version {
            http::Version::HTTP_2 => 2,
            http::Version::HTTP_11 => 1,
            _ => 0,
        };
        self.versions[index].inc();
    }

    /// One client request: how it was served and the status it got (0 if none was sent).
    pub fn request(&self, outcome: Outcome, status: u16) {
        self.requests[outcome as usize].inc();
        if (100..600).contains(&status) {
            self.responses[usize::from(status / 100 - 1)].inc();
        }
    }

    pub fn coalesced(&self, waited: Duration) {
        self.coalesced.inc();
        self.coalesce_wait.observe(waited.as_secs_f64());
    }

    pub fn background_refresh(&self) {
        self.background_refreshes.inc();
    }

    /// A purged page's kept copy went out instead of a 503.
    pub fn purged_copy_served(&self) {
        self.purged_copies_served.inc();
    }

    /// A 503 (or 408) written by Floodgate; `reason` is `origin_failed` or a shed reason.
    pub fn unavailable(&self, reason: Unavailable) {
        self.unavailable.with_label_values(&[reason.label()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_index_their_own_counters() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i, "{}", outcome.label());
        }
    }
}
