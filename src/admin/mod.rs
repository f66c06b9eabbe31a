//! The admin listener: `/metrics` for Prometheus, `/health` for load balancers and
//! `/maintenance` to switch maintenance mode.
//! Keep it on a private address; it answers anyone who can reach it.

pub mod client;

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

impl Admin {
    fn maintenance_state(&self) -> Response<Vec<u8>> {
        let body = format!("{{\"maintenance\":{}}}\n", self.origins.in_maintenance());
        reply(200, "application/json", body.into_bytes())
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        match session.req_header().uri.path() {
            "/maintenance" if method == http::Method::GET => self.maintenance_state(),
            "/maintenance/on" | "/maintenance/off" if method == http::Method::POST => {
                let on = session.req_header().uri.path().ends_with("/on");
                self.origins.set_maintenance(on);
                self.metrics.maintenance.set(i64::from(on));
                tracing::warn!(on, "maintenance mode switched through the admin API");
                self.maintenance_state()
            }
            "/maintenance" | "/maintenance/on" | "/maintenance/off" => reply(
                405,
                "text/plain",
                b"use GET /maintenance, POST /maintenance/on or POST /maintenance/off\n".to_vec(),
            ),
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
                b"not found: try /metrics, /health or /maintenance\n".to_vec(),
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
