//! Magento's health probe: `GET /health_check.php` every 5 s with a 2 s timeout, and an
//! origin is healthy while at least 5 of its last 10 probes succeeded.
//!
//! Pingora's `HttpHealthCheck` does the probing; it only knows "N in a row", so this
//! wraps it with the sliding window Varnish's probe uses. With a flip threshold of 1,
//! Pingora's health state simply follows the window's verdict.
//!
//! A sick origin is probed every half second until its next scheduled probe, not every
//! `health_check_interval_secs`: with Varnish's 5-of-10 window at 5 s, a PHP-FPM that
//! came back waited 25 s for its first visitor; now it waits about 2.5 s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::{Error, ErrorType, Result};

use crate::config::{invalid, ConfigError, OriginSection};

/// The last `size` probe results as bits (1 = success), newest in bit 0.
#[derive(Debug, Clone, Copy)]
struct Window {
    bits: u64,
    seen: u32,
}

pub struct WindowedHealthCheck {
    /// The probe and its window, replaced by a reload.
    settings: arc_swap::ArcSwap<Settings>,
    windows: Mutex<HashMap<String, Window>>,
}

/// What a reload can change.
pub struct Settings {
    probe: HttpHealthCheck,
    size: u32,
    threshold: u32,
    /// Time between scheduled probes.
    interval: Duration,
}

/// How often a sick origin is probed.
const SICK_PROBE_EVERY: Duration = Duration::from_millis(500);

impl WindowedHealthCheck {
    pub fn new(config: &OriginSection) -> Result<Self, ConfigError> {
        Ok(Self {
            settings: arc_swap::ArcSwap::from_pointee(Self::probe_for(config)?),
            windows: Mutex::new(HashMap::new()),
        })
    }

    /// A reloaded `origin` section's probe (from `probe_for`); windows are kept.
    pub fn reconfigure(&self, _config: &OriginSection, settings: Settings) {
        self.settings.store(std::sync::Arc::new(settings));
    }

    /// The probe `config` describes; `Err` names the bad key.
    pub fn probe_for(config: &OriginSection) -> Result<Settings, ConfigError> {
        let mut probe = HttpHealthCheck::new("localhost", false);
        let bad_url = |e: Box<pingora::Error>| invalid("origin.health_check_url", e.to_string());
        let mut req = RequestHeader::build("GET", config.health_check_url.as_bytes(), None)
            .map_err(bad_url)?;
        req.insert_header("Host", "localhost").map_err(bad_url)?;
        req.insert_header("User-Agent", "floodgate-health-probe")
            .map_err(bad_url)?;
        probe.req = req;
        let timeout = Duration::from_secs(config.health_check_timeout_secs);
        probe.peer_template.options.connection_timeout = Some(timeout);
        probe.peer_template.options.read_timeout = Some(timeout);
        probe.peer_template.options.total_connection_timeout = Some(timeout);
        Ok(Settings {
            probe,
            size: config.health_window,
            threshold: config.health_threshold,
            interval: Duration::from_secs(config.health_check_interval_secs),
        })
    }

    /// Records one probe and says whether the origin now counts as healthy.
    fn record(&self, origin: &str, success: bool) -> bool {
        let settings = self.settings.load();
        let (size, threshold) = (settings.size, settings.threshold);
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A new origin starts with a full window of successes, as Varnish's `.initial`.
        let window = windows.entry(origin.to_string()).or_insert(Window {
            bits: u64::MAX,
            seen: size,
        });
        let mask = if size >= 64 {
            u64::MAX
        } else {
            (1u64 << size) - 1
        };
        window.bits = ((window.bits << 1) | u64::from(success)) & mask;
        window.seen = (window.seen + 1).min(size);
        window.bits.count_ones() >= threshold
    }
}

#[async_trait]
impl HealthCheck for WindowedHealthCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        let origin = target.addr.to_string();
        let started = Instant::now();
        let settings = self.settings.load_full();
        loop {
            let probe = settings.probe.check(target).await;
            if self.record(&origin, probe.is_ok()) {
                return Ok(());
            }
            // Sick: probe again soon, up to the next scheduled probe; the verdict is
            // returned (and the origin used again) as soon as the window says healthy.
            if started.elapsed() + SICK_PROBE_EVERY < settings.interval {
                tokio::time::sleep(SICK_PROBE_EVERY).await;
                continue;
            }
            let cause = probe.err().map(|e| e.to_string()).unwrap_or_default();
            return Error::e_explain(
                ErrorType::ConnectError,
                format!(
                    "origin {origin} failed more than {} of its last {} health probes (last: {cause})",
                    settings.size - settings.threshold,
                    settings.size
                ),
            );
        }
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

/// The probe as the load balancer holds it, shared with the reload.
pub struct SharedHealthCheck(pub std::sync::Arc<WindowedHealthCheck>);

#[async_trait]
impl HealthCheck for SharedHealthCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        self.0.check(target).await
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.0.health_threshold(success)
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
