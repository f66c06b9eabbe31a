//! Each client request counted once and logged once, in Pingora's `logging` hook, where
//! the route and the final cache phase are both known.
//!
//! Invariant: a background refresh, an ESI fragment and a wrapped request's outer half
//! are not counted as client requests: one visitor request, one count.

use pingora::cache::CachePhase;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::metrics::Outcome;
use super::{Floodgate, RequestCtx};
use crate::cache::Removal;
use crate::esi::Role;
use crate::insights::{MissReason, Request, Why};
use crate::policy::route::Route;

impl Floodgate {
    pub(super) fn outcome(&self, session: &Session, ctx: &RequestCtx) -> Outcome {
        match ctx.route {
            Route::Purge => Outcome::Purge,
            _ if ctx.stale_reason.is_some() => Outcome::Stale,
            _ if ctx.shed.is_some() && session.cache.phase() != CachePhase::Stale => Outcome::Shed,
            Route::Tunnel => Outcome::Tunnel,
            Route::Pass(_) => Outcome::Pass,
            Route::Lookup if ctx.fresh_hit => Outcome::Hit,
            Route::Lookup => match session.cache.phase() {
                CachePhase::Hit | CachePhase::Revalidated => Outcome::Hit,
                CachePhase::Stale | CachePhase::StaleUpdating => Outcome::Stale,
                _ if ctx.uncacheable => Outcome::Uncacheable,
                _ => Outcome::Miss,
            },
        }
    }

    /// Why a request was not a hit, for the insights (nothing to do for a hit: the hit
    /// path stays as it was).
    fn explain(&self, outcome: Outcome, ctx: &RequestCtx) {
        let (why, purged_by) = match (outcome, ctx.route) {
            (Outcome::Miss, _) => {
                let (reason, by) = self.miss_reason(ctx);
                (Why::Miss(reason), by)
            }
            (Outcome::Uncacheable, _) => match ctx.not_cached {
                Some(reason) => (Why::Uncacheable(reason), None),
                None => return,
            },
            (Outcome::Pass, Route::Pass(reason)) => (Why::Pass(reason), None),
            _ => return,
        };
        self.insights.request(Request {
            url: ctx.url.clone(),
            why,
            origin: ctx.origin_time,
            purged_by,
        });
    }

    /// Why a lookup missed: the mark first (it skips the cache), then what the store
    /// remembers of the page's removal, then an expired copy found, else cold.
    fn miss_reason(&self, ctx: &RequestCtx) -> (MissReason, Option<std::sync::Arc<str>>) {
        if ctx.marked {
            return (MissReason::HitForMiss, None);
        }
        match &ctx.removal {
            Some(Removal::Purged(by)) => (MissReason::Purged, Some(by.clone())),
            _ if ctx.found_expired => (MissReason::Expired, None),
            Some(Removal::Evicted) => (MissReason::Evicted, None),
            Some(Removal::Expired) => (MissReason::Expired, None),
            None => (MissReason::Cold, None),
        }
    }

    /// One line per client request, like varnishncsa, as text or JSON per `log.format`.
    pub(super) fn access_log(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        outcome: Outcome,
        status: u16,
    ) {
        let req = session.req_header();
        let client = ctx.client.map(|ip| ip.to_string()).unwrap_or_default();
        let class = ctx
            .class
            .map(|c| ctx.rt.classes.name(c).to_string())
            .unwrap_or_default();
        tracing::info!(
            target: "floodgate::access",
            client,
            method = %req.method,
            url = %ctx.url,
            status,
            outcome = outcome.label(),
            class,
            origin_ms = ctx.origin_time.map(|t| t.as_secs_f64() * 1000.0),
            duration_ms = ctx.arrived.elapsed().as_secs_f64() * 1000.0,
            shed = ctx.shed.map(|s| s.label()),
        );
    }

    /// Counts the request once, where its route and final cache phase are both known,
    /// and writes its access log line.
    pub(super) fn account(&self, session: &Session, e: Option<&Error>, ctx: &RequestCtx) {
        let status = session
            .response_written()
            .map_or(0, |resp| resp.status.as_u16());
        // A background refresh is Floodgate's own request, not a client's; a fragment is
        // counted by the page that includes it; a wrapped request by its page subrequest.
        // The HTTP version is the client's connection's: counted by the request the client
        // sent, not by the HTTP/1.1 subrequest that stands in for it.
        let client_facing = !ctx.background && !ctx.head_fill && ctx.esi_role.is_none();
        if client_facing {
            self.requests.http_version(session.req_header().version);
        }
        if ctx.background {
            self.requests.background_refresh();
        } else if ctx.wrapped || matches!(ctx.esi_role, Some(Role::Fragment { .. })) {
        } else {
            let outcome = self.outcome(session, ctx);
            self.requests.request(outcome, status);
            self.explain(outcome, ctx);
            if let (Outcome::Hit, Some(waited)) = (outcome, session.cache.lock_duration()) {
                self.requests.coalesced(waited);
            }
            if ctx.rt.config.log.access {
                self.access_log(session, ctx, outcome, status);
            }
        }
        if let Some(e) = e {
            tracing::debug!(url = %ctx.url, error = %e, "request ended with an error");
        }
    }
}
