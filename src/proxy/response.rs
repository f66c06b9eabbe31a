//! The origin's response, decided: stored (and with what beside it), hit-for-miss, or
//! not stored; what `X-Magento-Cache-Debug` and `Grace` say about the answer.
//!
//! Invariant: a response is stored only on a `Store` decision taken on its own header,
//! and a response varying on credentials is never stored.

use std::time::{Duration, SystemTime};

use pingora::cache::RespCacheable;
use pingora::cache::{CacheMeta, CachePhase, NoCacheReason};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::{Floodgate, RequestCtx};
use crate::cache::hit_for_miss::REASON_NOT_STORED;
use crate::cache::{Derive, FetchStarted, VariantVerdict, VisitorFetch};
use crate::esi::{self};
use crate::policy::delivery::{CacheDebug, Grace};
use crate::policy::route::Route;
use crate::policy::storability::HitForMiss;
use crate::policy::storability::{decide, Decision, NotCached, Storability};
use crate::policy::vary::{self, Vary};
use crate::upstream::StaleReason;
use crate::warm::worker::WARM_HEADER;

impl Floodgate {
    /// The origin's `Vary` applied to a storage decision: never stored when it varies on
    /// credentials, stored per variant (bounded) when it varies on another header.
    pub(super) fn apply_vary(
        &self,
        decision: Decision,
        headers: &http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Decision {
        if !matches!(decision.storability, Storability::Store { .. }) {
            return decision;
        }
        let keyed = ctx.rt.rules.keyed_headers(&ctx.variant);
        let names = match vary::of(headers, &keyed) {
            Vary::Credentials => {
                return Decision {
                    storability: Storability::HitForMiss(HitForMiss::Uncacheable),
                    strip_set_cookie: false,
                    why: Some(NotCached::Vary),
                }
            }
            Vary::Nothing => Vec::new(),
            Vary::Headers(names) => names,
        };
        let (Some(page), Some(key)) = (ctx.page_key, ctx.key) else {
            return decision;
        };
        let max = ctx.rt.config.cache.max_variants;
        match self
            .variants
            .settle(page, ctx.vary.as_ref(), &names, key, max)
        {
            VariantVerdict::Store => decision,
            // The page's Vary was learnt just now, or it has too many variants already.
            VariantVerdict::Relearnt | VariantVerdict::TooMany => Decision {
                storability: Storability::NotStored(NotCached::Variants),
                strip_set_cookie: decision.strip_set_cookie,
                why: Some(NotCached::Variants),
            },
        }
    }

    /// Whether and how the origin's response is stored, from the decision taken on its
    /// header (`upstream_response_filter`); what a stored object carries beside it.
    pub(super) fn cacheability(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        // A 304 revalidation arrives here with the stored header merged in, undecided.
        let decision = ctx.decision.take().unwrap_or_else(|| {
            let decided = decide(
                resp.status,
                &resp.headers,
                &ctx.variant,
                Duration::from_secs(ctx.rt.config.cache.default_ttl_secs),
                SystemTime::now(),
            );
            Decision {
                strip_set_cookie: false,
                ..decided
            }
        });
        ctx.not_cached = decision.why;
        match decision.storability {
            Storability::Store { ttl } => {
                let now = SystemTime::now();
                let cache = &ctx.rt.config.cache;
                let mut meta = CacheMeta::new(
                    now + ttl,
                    now,
                    cache.grace_secs,
                    cache.keep_secs,
                    resp.clone(),
                );
                meta.extensions_mut().insert(ctx.tags.clone());
                meta.extensions_mut()
                    .insert(FetchStarted(ctx.fetch_started.unwrap_or(now)));
                if let Some(identity) = self.identity(session, ctx) {
                    meta.extensions_mut().insert(identity);
                }
                // The warmer's own fetches do not make a page hot.
                if !session.req_header().headers.contains_key(WARM_HEADER) {
                    meta.extensions_mut().insert(VisitorFetch);
                }
                if ctx.rt.config.esi.enabled && esi::applies_to(resp) {
                    meta.extensions_mut()
                        .insert(Derive(ctx.rt.config.cache.max_object_bytes));
                }
                Ok(RespCacheable::Cacheable(meta))
            }
            Storability::HitForMiss(kind) => {
                ctx.uncacheable = true;
                if let Some(key) = ctx.key {
                    self.store.fetch_ended_unstored(key);
                }
                Ok(RespCacheable::Uncacheable(kind.reason()))
            }
            Storability::NotStored(_) => {
                ctx.uncacheable = true;
                if let Some(key) = ctx.key {
                    self.store.fetch_ended_unstored(key);
                }
                Ok(RespCacheable::Uncacheable(NoCacheReason::Custom(
                    REASON_NOT_STORED,
                )))
            }
        }
    }

    pub(super) fn verdict(
        &self,
        session: &Session,
        ctx: &RequestCtx,
    ) -> (CacheDebug, Option<Grace>) {
        if ctx.route != Route::Lookup {
            return (CacheDebug::Uncacheable, None);
        }
        let unlimited = |reason: Option<StaleReason>| match reason {
            Some(StaleReason::Overloaded) => Grace::Overloaded,
            Some(StaleReason::Maintenance) => Grace::Maintenance,
            Some(StaleReason::Unhealthy) | None => Grace::Unhealthy,
        };
        if ctx.stale_reason.is_some() {
            return (CacheDebug::Hit, Some(unlimited(ctx.stale_reason)));
        }
        match session.cache.phase() {
            CachePhase::Hit | CachePhase::Revalidated => (CacheDebug::Hit, Some(Grace::None)),
            CachePhase::StaleUpdating => (CacheDebug::Hit, Some(Grace::Normal)),
            CachePhase::Stale => (
                CacheDebug::Hit,
                Some(unlimited(ctx.shed.map(StaleReason::from))),
            ),
            _ if ctx.uncacheable => (CacheDebug::Uncacheable, None),
            _ => (CacheDebug::Miss, None),
        }
    }
}
