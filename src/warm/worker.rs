//! The re-warmer: a background service that refills purged hot pages hottest first, at a
//! bounded rate and concurrency, through Floodgate's own listener, so each refill takes
//! the normal cache path (coalescing, storage rules, tags) and the origin sees a
//! controlled trickle instead of a stampede.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::Semaphore;

use super::metrics::{WarmMetrics, WarmResult};
use super::WarmQueue;
use crate::cache::RequestIdentity;

/// Marks Floodgate's own warming requests (in logs and at the origin).
pub const WARM_HEADER: &str = "x-floodgate-warm";

pub struct Warmer {
    queue: Arc<WarmQueue>,
    /// `http://host:port` of Floodgate's own listener.
    target: String,
    rate_per_sec: f64,
    concurrency: usize,
    metrics: Arc<WarmMetrics>,
}

impl Warmer {
    pub fn new(
        queue: Arc<WarmQueue>,
        target: String,
        rate_per_sec: f64,
        concurrency: usize,
        metrics: Arc<WarmMetrics>,
    ) -> Self {
        Self {
            queue,
            target,
            rate_per_sec,
            concurrency,
            metrics,
        }
    }
}

#[async_trait]
impl BackgroundService for Warmer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = match reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                tracing::error!("re-warmer disabled: cannot build its HTTP client: {e}");
                return;
            }
        };
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / self.rate_per_sec));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let page = loop {
                self.metrics.queue_depth(self.queue.len());
                if let Some(page) = self.queue.pop() {
                    break page;
                }
                tokio::select! {
                    _ = self.queue.wait() => {}
                    _ = shutdown.changed() => return,
                }
            };
            tokio::select! {
                _ = pace.tick() => {}
                _ = shutdown.changed() => return,
            }
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
                _ = shutdown.changed() => return,
            };
            let (client, target, metrics) =
                (client.clone(), self.target.clone(), self.metrics.clone());
            tokio::spawn(async move {
                let result = fetch(&client, &target, &page).await;
                metrics.warmed(result);
                drop(slot);
            });
        }
    }
}

/// Requests one page the way its visitors did.
pub async fn fetch(client: &reqwest::Client, target: &str, page: &RequestIdentity) -> WarmResult {
    let mut request = client
        .get(format!("{target}{}", page.url))
        .header(WARM_HEADER, "1")
        .header("accept-encoding", "gzip");
    for (name, value) in page.headers.iter() {
        request = request.header(name.as_str(), value.as_str());
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => {
            let verdict = response
                .headers()
                .get("x-magento-cache-debug")
                .map(|v| v.as_bytes().to_vec());
            // Read the body so the connection is reused and the fill completes.
            let _ = response.bytes().await;
            match verdict.as_deref() {
                Some(b"HIT") => WarmResult::AlreadyWarm,
                _ => WarmResult::Fetched,
            }
        }
        Ok(response) => {
            tracing::debug!(url = %page.url, status = %response.status(), "re-warm got an error status");
            WarmResult::Failed
        }
        Err(e) => {
            tracing::debug!(url = %page.url, "re-warm failed: {e}");
            WarmResult::Failed
        }
    }
}
