//! Magento's health probe: `GET /health_check.php` every 5 s with a 2 s timeout, and an
//! origin is healthy while at least 5 of its last 10 probes succeeded.
//!
//! Pingora's `HttpHealthCheck` does the probing; it only knows "N in a row", so this
//! wraps it with the sliding window Varnish's probe uses. With a flip threshold of 1,
//! Pingora's health state simply follows the window's verdict.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::{Error, ErrorType, Result};

use crate::config::OriginSection;

/// The last `size` probe results as bits (1 = success), newest in bit 0.
#[derive(Debug, Clone, Copy)]
struct Window {
    bits: u64,
    seen: u32,
}

pub struct WindowedHealthCheck {
    probe: HttpHealthCheck,
    size: u32,
    threshold: u32,
    windows: Mutex<HashMap<String, Window>>,
}

impl WindowedHealthCheck {
    pub fn new(config: &OriginSection) -> anyhow::Result<Self> {
        let mut probe = HttpHealthCheck::new("localhost", false);
        let mut req = RequestHeader::build("GET", config.health_check_url.as_bytes(), None)?;
        req.insert_header("Host", "localhost")?;
        req.insert_header("User-Agent", "floodgate-health-probe")?;
        probe.req = req;
        let timeout = Duration::from_secs(config.health_check_timeout_secs);
        probe.peer_template.options.connection_timeout = Some(timeout);
        probe.peer_template.options.read_timeout = Some(timeout);
        probe.peer_template.options.total_connection_timeout = Some(timeout);
        Ok(Self {
            probe,
            size: config.health_window,
            threshold: config.health_threshold,
            windows: Mutex::new(HashMap::new()),
        })
    }

    /// Records one probe and says whether the origin now counts as healthy.
    fn record(&self, origin: &str, success: bool) -> bool {
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A new origin starts with a full window of successes, as Varnish's `.initial`.
        let window = windows.entry(origin.to_string()).or_insert(Window {
            bits: u64::MAX,
            seen: self.size,
        });
        let mask = if self.size >= 64 {
            u64::MAX
        } else {
            (1u64 << self.size) - 1
        };
        window.bits = ((window.bits << 1) | u64::from(success)) & mask;
        window.seen = (window.seen + 1).min(self.size);
        window.bits.count_ones() >= self.threshold
    }
}

#[async_trait]
impl HealthCheck for WindowedHealthCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        let probe = self.probe.check(target).await;
        let origin = target.addr.to_string();
        if self.record(&origin, probe.is_ok()) {
            Ok(())
        } else {
            let cause = probe.err().map(|e| e.to_string()).unwrap_or_default();
            Error::e_explain(
                ErrorType::ConnectError,
                format!(
                    "origin {origin} failed more than {} of its last {} health probes (last: {cause})",
                    self.size - self.threshold,
                    self.size
                ),
            )
        }
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_of_ten_keeps_an_origin_healthy() {
        let check = WindowedHealthCheck::new(&OriginSection::default()).expect("check");
        // Starts healthy; five failures in a row still leave five successes.
        for _ in 0..5 {
            assert!(check.record("o", false));
        }
        assert!(!check.record("o", false), "the sixth failure tips it");
        for _ in 0..4 {
            assert!(!check.record("o", true));
        }
        assert!(
            check.record("o", true),
            "five successes in the window again"
        );
    }
}
