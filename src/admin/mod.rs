//! The admin listener: `/metrics` for Prometheus and `/health` for load balancers.
//! Keep it on a private address; it answers anyone who can reach it.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::cache::MemoryStore;
use crate::metrics::Metrics;
use crate::upstream::Origins;
use crate::warm::WarmQueue;

pub struct Admin {
    metrics: Arc<Metrics>,
    store: &'static MemoryStore,
    origins: Arc<Origins>,
    warm_queue: Option<Arc<WarmQueue>>,
}

impl Admin {
    pub fn new(
        metrics: Arc<Metrics>,
        store: &'static MemoryStore,
        origins: Arc<Origins>,
        warm_queue: Option<Arc<WarmQueue>>,
    ) -> Self {
        Self {
            metrics,
            store,
            origins,
            warm_queue,
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => {
                // Gauges are read at scrape time rather than kept up to date per request.
                self.store.sync().await;
                let (objects, bytes) = self.store.usage();
                self.metrics.cache_objects.set(objects as i64);
                self.metrics.cache_bytes.set(bytes as i64);
                self.metrics
                    .origin_healthy
                    .set(i64::from(self.origins.any_healthy()));
                if let Some(queue) = &self.warm_queue {
                    self.metrics.warm_queue_depth.set(queue.len() as i64);
                    self.metrics.warm_dropped.set(queue.dropped() as i64);
                }
                reply(200, "text/plain; version=0.0.4", self.metrics.render())
            }
            "/health" => reply(200, "text/plain", b"ok\n".to_vec()),
            _ => reply(
                404,
                "text/plain",
                b"not found: try /metrics or /health\n".to_vec(),
            ),
        }
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let len = body.len();
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", len)
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}
