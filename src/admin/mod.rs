//! The admin listener, separate from client traffic and private by default (it answers
//! anyone who can reach it): Prometheus metrics, health and readiness for load balancers
//! and orchestrators, and the operations as a small JSON API that the CLI uses too.
//!
//! | | |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` (`/health`) | 200 while the process runs |
//! | `GET /readyz` | 200 when the proxy listener accepts and an origin is healthy, else 503 |
//! | `POST /purge` | `{"tags": [..]}`, `{"pattern": ".."}`, `{"all": true}`, `{"everything": true}`, `{"pool": ".."}`, `"soft": true` |
//! | `POST /warm` | `{"urls": ["https://shop/page.html", ..]}` queued for the re-warmer |
//! | `GET /maintenance`, `POST /maintenance/on`, `POST /maintenance/off` | maintenance mode |
//! | `POST /reload` | re-read the config file |
//! | `GET /cache?url=/path` | what is stored for that URL: each variant's state (fresh, grace, stale_if_error), age, TTL left |
//! | `GET /insights` | why the cache misses: reasons, top lists over a window, a diagnosis in words (JSON) |
//! | `GET /` | the status page: the last hour's charts, the diagnosis and the top lists (HTML) |
//!
//! Every operation (all but `/metrics` and the health checks) passes `guard` first: JSON
//! only, no cross-site browser requests, a known `Host`, and the token when configured.

mod guard;
mod inspect;
pub mod metrics;
mod operations;
pub mod reload;
pub mod status_page;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::BytesMut;
use http::{Method, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use reload::Reloader;

use crate::cache::metrics::CacheMetrics;
use crate::cache::MemoryStore;
use crate::insights::Insights;
use crate::metrics::Metrics;
use crate::proxy::Runtime;
use crate::purge::{PurgeBus, Purger};
use crate::upstream::Origins;
use crate::warm::metrics::WarmMetrics;
use crate::warm::WarmQueue;

/// Largest JSON body the admin API reads.
const MAX_BODY: usize = 4 << 20;

pub struct Admin {
    /// The registry and the process's own family; each subsystem's families follow.
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) cache_metrics: CacheMetrics,
    pub(crate) warm_metrics: Arc<WarmMetrics>,
    pub(crate) store: &'static MemoryStore,
    pub(crate) origins: Arc<Origins>,
    pub(crate) warm_queue: Option<Arc<WarmQueue>>,
    pub(crate) reloader: Arc<Reloader>,
    pub(crate) purger: Arc<Purger>,
    pub(crate) runtime: Arc<ArcSwap<Runtime>>,
    /// The proxy listener as reachable from here, for `/readyz`.
    pub(crate) proxy_addr: String,
    /// The purge bus, when nodes share Redis.
    pub(crate) bus: Option<Arc<PurgeBus>>,
    /// What `GET /insights`, the status page and `floodgate top` show.
    pub(crate) insights: Arc<Insights>,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if !guard::is_open(&path) {
            let rt = self.runtime.load();
            if let Err(guard::Refusal(status, why)) =
                guard::check(session.req_header(), &rt.config.server)
            {
                return json_reply(status, json!({ "error": why }));
            }
        }
        match (method, path.as_str()) {
            (Method::GET, "/metrics") => self.metrics_text().await,
            (Method::GET, "/healthz" | "/health") => reply(200, "text/plain", b"ok\n".to_vec()),
            (Method::GET, "/readyz") => self.readiness().await,
            (Method::GET, "/maintenance") => self.maintenance_state(),
            (Method::GET, "/cache") => self.inspect(session.req_header().uri.query()),
            (Method::GET, "/insights") => self.insights(),
            (Method::GET, "/") => self.status_page(),
            (Method::POST, "/maintenance/on") => self.set_maintenance(true),
            (Method::POST, "/maintenance/off") => self.set_maintenance(false),
            (Method::POST, "/reload") => self.reload().await,
            (Method::POST, "/purge") => match read_body(session).await {
                Ok(body) => self.purge(&body).await,
                Err(e) => e,
            },
            (Method::POST, "/warm") => match read_body(session).await {
                Ok(body) => self.warm(&body),
                Err(e) => e,
            },
            (
                _,
                "/metrics" | "/healthz" | "/health" | "/readyz" | "/maintenance"
                | "/maintenance/on" | "/maintenance/off" | "/reload" | "/purge" | "/warm"
                | "/cache" | "/insights" | "/",
            ) => json_reply(
                405,
                json!({ "error": format!("wrong method for {path}: operations are POST, reads are GET") }),
            ),
            _ => json_reply(
                404,
                json!({ "error": format!("no {path} here: try / (the status page), /insights, /metrics, /healthz, /readyz, /purge, /warm, /cache, /maintenance, /reload") }),
            ),
        }
    }
}

impl Admin {
    async fn metrics_text(&self) -> Response<Vec<u8>> {
        // Gauges are read at scrape time rather than kept up to date per request.
        self.cache_metrics.scrape(self.store).await;
        self.origins.metrics().healthy(self.origins.any_healthy());
        if let Some(queue) = &self.warm_queue {
            self.warm_metrics.queue_depth(queue.len());
            self.warm_metrics.dropped_total(queue.dropped());
        }
        self.metrics.sync_resident_memory();
        reply(200, "text/plain; version=0.0.4", self.metrics.render())
    }

    /// The report, with the health read now (the registry's gauge is set at scrapes).
    fn report(&self) -> crate::insights::Report {
        let mut report = self.insights.report();
        report.now.origin_healthy = self.origins.any_healthy();
        report.now.maintenance = self.origins.in_maintenance();
        report.now.fleet = self
            .origins
            .limiter()
            .fleet()
            .map(|fleet| fleet.view(self.runtime.load().config.limits.max_inflight));
        report
    }

    fn insights(&self) -> Response<Vec<u8>> {
        match serde_json::to_value(self.report()) {
            Ok(value) => json_reply(200, value),
            Err(e) => json_reply(
                500,
                json!({ "error": format!("cannot write the report: {e}") }),
            ),
        }
    }

    fn status_page(&self) -> Response<Vec<u8>> {
        let report = self.report();
        let (history, mut gauges, seconds) = self.insights.history(status_page::POINTS);
        gauges.origin_healthy = report.now.origin_healthy;
        gauges.maintenance = report.now.maintenance;
        let html = status_page::render(&report, &history, &gauges, seconds);
        reply(200, "text/html; charset=utf-8", html.into_bytes())
    }

    async fn readiness(&self) -> Response<Vec<u8>> {
        let listening = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            tokio::net::TcpStream::connect(&self.proxy_addr),
        )
        .await
        .is_ok_and(|c| c.is_ok());
        let origin_healthy = self.origins.any_healthy();
        let ready = listening && origin_healthy;
        // Without Redis a node still serves and purges locally: degraded, not unready.
        let redis = self.bus.as_ref().map(|bus| bus.connected());
        json_reply(
            if ready { 200 } else { 503 },
            json!({
                "ready": ready,
                "listening": listening,
                "config_loaded": true,
                "origin_healthy": origin_healthy,
                "maintenance": self.origins.in_maintenance(),
                "redis_connected": redis,
                "degraded": redis == Some(false),
            }),
        )
    }
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(json_reply(
                        413,
                        json!({ "error": format!("the body is over {MAX_BODY} bytes") }),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.to_vec()),
            Err(e) => {
                return Err(json_reply(
                    400,
                    json!({ "error": format!("cannot read the request body: {e}") }),
                ))
            }
        }
    }
}

pub(crate) fn json_reply(status: u16, value: serde_json::Value) -> Response<Vec<u8>> {
    reply(
        status,
        "application/json",
        format!("{value}\n").into_bytes(),
    )
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
