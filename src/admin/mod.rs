//! The admin listener: `/metrics` for Prometheus, `/health` for load balancers and
//! `/maintenance` to switch maintenance mode.
//! Keep it on a private address; it answers anyone who can reach it.

pub mod client;
pub mod reload;

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use reload::Reloader;

use crate::cache::MemoryStore;
use crate::metrics::Metrics;
use crate::upstream::Origins;
use crate::warm::WarmQueue;

pub struct Admin {
    metrics: Arc<Metrics>,
    store: &'static MemoryStore,
    origins: Arc<Origins>,
    warm_queue: Option<Arc<WarmQueue>>,
    reloader: Arc<Reloader>,
}

impl Admin {
    pub fn new(
        metrics: Arc<Metrics>,
        store: &'static MemoryStore,
        origins: Arc<Origins>,
        warm_queue: Option<Arc<WarmQueue>>,
        reloader: Arc<Reloader>,
    ) -> Self {
        Self {
            metrics,
            store,
            origins,
            warm_queue,
            reloader,
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
            "/reload" if method == http::Method::POST => {
                let reloader = self.reloader.clone();
                let result = tokio::task::spawn_blocking(move || reloader.reload())
                    .await
                    .unwrap_or_else(|e| Err(format!("the reload task failed: {e}")));
                match result {
                    Ok(done) => {
                        let restart = done
                            .needs_restart
                            .iter()
                            .map(|k| format!("\"{k}\""))
                            .collect::<Vec<_>>()
                            .join(",");
                        let body = format!(
                            "{{\"reloaded\":true,\"hash\":\"{}\",\"needs_restart\":[{restart}]}}\n",
                            done.hash
                        );
                        reply(200, "application/json", body.into_bytes())
                    }
                    Err(reason) => {
                        let body = serde_json::json!({ "reloaded": false, "error": reason });
                        reply(400, "application/json", format!("{body}\n").into_bytes())
                    }
                }
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
