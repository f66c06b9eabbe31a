//! The admin API's operations: purge, warm, maintenance and reload, each answering JSON.

use std::sync::Arc;

use http::Response;
use serde::Deserialize;
use serde_json::json;

use super::{json_reply, Admin};
use crate::purge::pattern::magento_pattern;
use crate::warm::sitemap;

/// `POST /purge`: what to invalidate, as the CLI's flags say it.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PurgeRequest {
    tags: Vec<String>,
    pattern: Option<String>,
    all: bool,
    /// Every object, tagged or not, on every node.
    everything: bool,
    pool: Option<String>,
    soft: bool,
}

/// `POST /warm`: absolute page URLs, as in a sitemap.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct WarmRequest {
    urls: Vec<String>,
}

/// Queue position of pages an operator asked for: after hot purged pages.
const OPERATOR_HEAT: u32 = 1;

impl Admin {
    pub(super) async fn purge(&self, body: &[u8]) -> Response<Vec<u8>> {
        let request: PurgeRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return json_reply(
                    400,
                    json!({ "error": format!("invalid purge request: {e}") }),
                )
            }
        };
        if request.everything {
            let report = match self.purger.everything().await {
                Ok(report) => report,
                Err(reason) => {
                    return json_reply(
                        503,
                        json!({ "error": format!("memory was flushed, but not everything: {reason}") }),
                    )
                }
            };
            self.purger.metrics().purged(report.objects, 0, report.took);
            return json_reply(
                200,
                json!({
                    "objects": report.objects,
                    "everything": true,
                    "soft": false,
                    "queued_for_warming": 0,
                    "took_ms": report.took.as_secs_f64() * 1000.0,
                }),
            );
        }
        let pattern = if request.all {
            Some(".*".to_string())
        } else if !request.tags.is_empty() {
            Some(magento_pattern(&request.tags))
        } else {
            request.pattern
        };
        if pattern.is_none() && request.pool.is_none() {
            return json_reply(
                400,
                json!({ "error": "say what to purge: tags, pattern, all, everything or pool" }),
            );
        }
        let soft = request.soft || self.runtime.load().config.purge.soft;
        match self
            .purger
            .purge(pattern.as_deref(), request.pool.as_deref(), soft)
            .await
        {
            Ok(report) => {
                self.purger
                    .metrics()
                    .purged(report.objects, report.tags, report.took);
                self.purger.settle();
                json_reply(
                    200,
                    json!({
                        "objects": report.objects,
                        "soft": soft,
                        "queued_for_warming": report.queued_for_warming,
                        "took_ms": report.took.as_secs_f64() * 1000.0,
                    }),
                )
            }
            Err(reason) => {
                self.purger.metrics().refused(reason.refusal());
                json_reply(reason.status(), json!({ "error": reason.answer() }))
            }
        }
    }

    pub(super) fn warm(&self, body: &[u8]) -> Response<Vec<u8>> {
        let Some(queue) = &self.warm_queue else {
            return json_reply(
                409,
                json!({ "error": "the re-warmer is off (warm.enabled = false)" }),
            );
        };
        let request: WarmRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return json_reply(
                    400,
                    json!({ "error": format!("invalid warm request: {e}") }),
                )
            }
        };
        let offload = self
            .runtime
            .load()
            .config
            .magento
            .ssl_offload_header
            .clone();
        // All or nothing: one bad URL queues none.
        let pages = match request
            .urls
            .iter()
            .map(|url| sitemap::identity(url, &offload))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(pages) => pages,
            Err(reason) => return json_reply(400, json!({ "error": reason.to_string() })),
        };
        let queued = pages.len();
        for page in pages {
            queue.push(Arc::new(page), OPERATOR_HEAT);
        }
        json_reply(200, json!({ "queued": queued, "queue_depth": queue.len() }))
    }

    pub(super) fn maintenance_state(&self) -> Response<Vec<u8>> {
        json_reply(200, json!({ "maintenance": self.origins.in_maintenance() }))
    }

    pub(super) fn set_maintenance(&self, on: bool) -> Response<Vec<u8>> {
        self.origins.set_maintenance(on);
        tracing::warn!(on, "maintenance mode switched through the admin API");
        self.maintenance_state()
    }

    pub(super) async fn reload(&self) -> Response<Vec<u8>> {
        let reloader = self.reloader.clone();
        let result = tokio::task::spawn_blocking(move || reloader.reload())
            .await
            .map_err(|e| format!("the reload task failed: {e}"))
            .and_then(|reloaded| reloaded.map_err(|e| e.to_string()));
        match result {
            Ok(done) => json_reply(
                200,
                json!({ "reloaded": true, "hash": done.hash, "needs_restart": done.needs_restart }),
            ),
            Err(reason) => json_reply(400, json!({ "reloaded": false, "error": reason })),
        }
    }
}
