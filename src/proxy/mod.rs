//! The request path: Pingora's `ProxyHttp` hooks, each handing its decision to `policy`,
//! `cache` or `upstream`. Read top to bottom, the hooks are in the order Pingora calls them.

mod ctx;
mod fresh_fragments;
mod head_fill;
pub mod proxy_protocol;
mod respond;
pub mod runtime;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pingora::cache::key::CacheHashKey;
use pingora::cache::lock::CacheKeyLockImpl;
use pingora::cache::RespCacheable;
use pingora::cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, HitHandler,
    NoCacheReason,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::compression::ResponseCompression;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

pub use ctx::RequestCtx;
use fresh_fragments::FreshFragments;
pub use runtime::Runtime;

use arc_swap::ArcSwap;

use crate::cache::hit_for_miss::REASON_NOT_STORED;
use crate::cache::{
    Derive, FetchStarted, HitForMissMarks, MemoryStore, RequestIdentity, StoredHit, Tags,
    VariantVerdict, Variants, VisitorFetch, PURGED_COPY_HEADER,
};
use crate::esi::{self, Assembly, Role};
use crate::metrics::{Metrics, Outcome, PurgeRefusal, Unavailable};
use crate::policy::client::{forwarded_chain, real_client};
use crate::policy::delivery::{prepare_for_client, CacheDebug, Grace};
use crate::policy::key::{cache_key, with_variance};
use crate::policy::route::{has_bearer, Route};
use crate::policy::storability::HitForMiss;
use crate::policy::storability::{decide, Decision, Storability};
use crate::policy::vary::{self, Vary};
use crate::purge::Purger;
use crate::upstream::{ClassId, ClientSlots, Origins, Shed, ShedFanout, StaleReason};
use crate::warm::worker::WARM_HEADER;

/// Compression level for bodies compressed before they are stored.
const STORE_GZIP_LEVEL: u32 = 6;

/// The proxy. Its cache parts are `'static` because Pingora's cache API takes them so;
/// they are created once per process.
pub struct Floodgate {
    runtime: Arc<ArcSwap<Runtime>>,
    store: &'static MemoryStore,
    marks: &'static HitForMissMarks,
    lock: &'static CacheKeyLockImpl,
    origins: Arc<Origins>,
    metrics: Arc<Metrics>,
    purger: Arc<Purger>,
    shed_fanout: ShedFanout,
    variants: Arc<Variants>,
    client_slots: Arc<ClientSlots>,
}

/// The parts the proxy shares with the rest of the process, built once in `server`.
#[derive(Clone)]
pub struct Shared {
    pub store: &'static MemoryStore,
    pub marks: &'static HitForMissMarks,
    pub lock: &'static CacheKeyLockImpl,
    pub origins: Arc<Origins>,
    pub metrics: Arc<Metrics>,
    pub purger: Arc<Purger>,
    /// The reloadable configuration, shared with the reloader.
    pub runtime: Arc<ArcSwap<Runtime>>,
    /// What each page's origin varies on (`Vary`), and its stored variants.
    pub variants: Arc<Variants>,
    /// Origin slots held per client address.
    pub client_slots: Arc<ClientSlots>,
}

impl Floodgate {
    pub fn new(shared: Shared) -> Self {
        Self {
            shed_fanout: ShedFanout::new(),
            runtime: shared.runtime,
            store: shared.store,
            marks: shared.marks,
            lock: shared.lock,
            origins: shared.origins,
            metrics: shared.metrics,
            purger: shared.purger,
            variants: shared.variants,
            client_slots: shared.client_slots,
        }
    }

    /// Answers Magento's PURGE (docs/magento-cache-protocol.md, section 3).
    async fn purge(
        &self,
        session: &mut Session,
        rt: &Runtime,
        client: Option<std::net::IpAddr>,
    ) -> Result<()> {
        if !client.is_some_and(|ip| rt.purge_acl.allows(ip)) {
            let who = client.map_or_else(|| "this client".to_string(), |ip| ip.to_string());
            let body = format!("PURGE is not allowed from {who}: add it to purge.allow\n");
            self.metrics.purge_refused(PurgeRefusal::Refused);
            return respond::plain(session, 405, &body, &[]).await;
        }
        let headers = &session.req_header().headers;
        let value = |name: &str| -> std::result::Result<Option<String>, String> {
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().map_err(|_| format!("{name} is not ASCII")))
                .collect::<std::result::Result<_, _>>()?;
            Ok((!values.is_empty()).then(|| values.join("|")))
        };
        let (pattern, pool) = match (value("x-magento-tags-pattern"), value("x-pool")) {
            (Ok(pattern), Ok(pool)) => (pattern, pool),
            (Err(reason), _) | (_, Err(reason)) => {
                self.metrics.purge_refused(PurgeRefusal::Invalid);
                return respond::plain(session, 400, &format!("{reason}\n"), &[]).await;
            }
        };
        if pattern.is_none() && pool.is_none() {
            let body = "PURGE needs an X-Magento-Tags-Pattern or X-Pool header\n";
            self.metrics.purge_refused(PurgeRefusal::Invalid);
            return respond::plain(session, 400, body, &[]).await;
        }
        let soft = rt.config.purge.soft
            || headers
                .get("x-floodgate-purge")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"soft"));
        match self
            .purger
            .purge(pattern.as_deref(), pool.as_deref(), soft)
            .await
        {
            Ok(report) => {
                self.metrics
                    .purged(report.objects, report.tags, report.took);
                let body = format!(
                    "{} {} objects, {} queued for re-warming, in {:.3} ms\n",
                    if soft { "expired" } else { "purged" },
                    report.objects,
                    report.queued_for_warming,
                    report.took.as_secs_f64() * 1000.0
                );
                respond::plain(session, 200, &body, &[]).await
            }
            Err(reason) => {
                self.metrics.purge_refused(PurgeRefusal::Invalid);
                respond::plain(
                    session,
                    400,
                    &format!("{reason}; nothing was purged\n"),
                    &[],
                )
                .await
            }
        }
    }

    /// The request a re-warm replays: only what chose this variant, never credentials.
    fn identity(&self, session: &Session, ctx: &RequestCtx) -> Option<Arc<RequestIdentity>> {
        let headers = &session.req_header().headers;
        if has_bearer(headers) {
            return None;
        }
        let mut replay = Vec::with_capacity(4);
        let mut copy = |name: &str| {
            if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
                replay.push((name.to_string(), value.to_string()));
            }
        };
        copy("host");
        copy(ctx.rt.rules.ssl_offload_header.as_str());
        if !ctx.rt.rules.design_exceptions.is_empty() {
            copy("user-agent");
        }
        if ctx.variant.is_graphql {
            copy("x-magento-cache-id");
            copy("store");
            copy("content-currency");
        }
        if let Some(vary) = &ctx.variant.vary_cookie {
            replay.push(("cookie".to_string(), format!("X-Magento-Vary={vary}")));
        }
        Some(Arc::new(RequestIdentity {
            url: ctx.url.clone(),
            headers: replay,
        }))
    }

    /// The request's priority at the origin, worked out only for requests that need the
    /// origin (fresh hits never do).
    fn class(&self, session: &Session, ctx: &mut RequestCtx) -> ClassId {
        if let Some(class) = ctx.class {
            return class;
        }
        let req = session.req_header();
        // The re-warmer and background refreshes yield to every visitor.
        let class = if ctx.background || req.headers.contains_key(WARM_HEADER) {
            ctx.rt.classes.warm()
        } else {
            let user_agent = req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            ctx.rt.classes.classify(&req.method, &ctx.url, user_agent)
        };
        ctx.class = Some(class);
        class
    }

    /// One line per client request, like varnishncsa, as text or JSON per `log.format`.
    fn access_log(&self, session: &Session, ctx: &RequestCtx, outcome: Outcome, status: u16) {
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

    fn outcome(&self, session: &Session, ctx: &RequestCtx) -> Outcome {
        match ctx.route {
            Route::Purge => Outcome::Purge,
            _ if ctx.stale_reason.is_some() => Outcome::Stale,
            _ if ctx.shed.is_some() && session.cache.phase() != CachePhase::Stale => Outcome::Shed,
            Route::Tunnel => Outcome::Tunnel,
            Route::Pass(_) => Outcome::Pass,
            Route::Lookup => match session.cache.phase() {
                CachePhase::Hit | CachePhase::Revalidated => Outcome::Hit,
                CachePhase::Stale | CachePhase::StaleUpdating => Outcome::Stale,
                _ if ctx.uncacheable => Outcome::Uncacheable,
                _ => Outcome::Miss,
            },
        }
    }

    /// What ESI needs of this request and of the configuration it runs under.
    fn esi_settings<'a>(
        &'a self,
        ctx: &RequestCtx,
        rt: &'a Runtime,
        cache: &'a FreshFragments<'a>,
    ) -> esi::Settings<'a> {
        esi::Settings {
            depth: ctx.esi_depth(),
            config: &rt.config.esi,
            max_bytes: rt.config.cache.max_object_bytes,
            metrics: &self.metrics,
            cache,
            // A fragment spends its page view's budget; a client's request starts one.
            budget: match &ctx.esi_role {
                Some(role) => role.budget().clone(),
                None => esi::ViewBudget::new(rt.config.esi.max_includes_per_view),
            },
        }
    }

    /// Starts a stored page's fragments and hands them to its hit handler, which Pingora
    /// reads the body from.
    async fn assemble_hit(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &RequestCtx,
    ) {
        let template = match session
            .cache
            .hit_handler()
            .as_any()
            .downcast_ref::<StoredHit>()
            .and_then(|hit| hit.derived())
            .and_then(esi::stored_template)
        {
            Some(template) => template,
            None => return,
        };
        let fresh = FreshFragments {
            rules: &ctx.rt.rules,
            store: self.store,
        };
        let settings = self.esi_settings(ctx, &ctx.rt, &fresh);
        let Some(assembly) = Assembly::for_response(session, resp, template, &settings).await
        else {
            return;
        };
        if let Some(hit) = session
            .cache
            .hit_handler()
            .as_any_mut()
            .downcast_mut::<StoredHit>()
        {
            hit.assemble(Box::new(assembly));
        }
    }

    /// The request's cache key: Magento's key, split further by the origin's `Vary`
    /// when one is known for the page.
    fn key_for(&self, session: &Session, ctx: &mut RequestCtx) -> CacheKey {
        let headers = &session.req_header().headers;
        let mut key = cache_key(&ctx.url, headers, &ctx.variant, &ctx.rt.rules);
        let page = key.combined_bin();
        ctx.page_key = Some(page);
        ctx.vary = self.variants.spec(&page);
        if let Some(spec) = &ctx.vary {
            key = with_variance(&key, &spec.names, headers);
        }
        ctx.key = Some(key.combined_bin());
        key
    }

    /// Request hygiene, before anything looks at the request: works out the real client,
    /// removes the headers that would change the origin's answer behind the key's back,
    /// leaves the SSL-offload header with the one value the key uses, and keeps only a
    /// trusted proxy's `X-Forwarded-For`.
    fn clean_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        peer: std::net::IpAddr,
    ) -> Result<()> {
        let rt = ctx.rt.clone();
        let trusted = |ip| rt.trusted_proxies.allows(ip);
        let req = session.req_header_mut();
        // This runs for every request, hits included: nothing is allocated or rewritten
        // unless the request carries what it cleans.
        if req.headers.contains_key("x-forwarded-for") {
            ctx.client = Some(real_client(peer, &req.headers, trusted));
            match forwarded_chain(&req.headers, trusted(peer)) {
                Some(chain) => req.insert_header("x-forwarded-for", chain)?,
                None => {
                    req.remove_header("x-forwarded-for");
                }
            }
        } else {
            ctx.client = Some(peer);
        }
        for name in &rt.rules.stripped_headers {
            if req.headers.contains_key(name) {
                req.remove_header(name);
            }
        }
        let offload = &rt.rules.ssl_offload_header;
        if req.headers.get_all(offload).iter().nth(1).is_some() {
            if let Some(first) = req.headers.get(offload).cloned() {
                req.insert_header(offload.clone(), first)?;
            }
        }
        Ok(())
    }

    /// Reads a request body whole before the request may take an origin slot, so a
    /// client that trickles it in holds a connection, not PHP-FPM. A body too large to
    /// hold is streamed later, but must be complete by the same deadline.
    async fn read_body_first(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let limits = &ctx.rt.config.limits;
        let timeout = Duration::from_secs(limits.request_body_timeout_secs);
        let deadline = ctx.arrived + timeout;
        let length = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        if length.is_none_or(|l| l > limits.request_body_buffer_bytes) {
            ctx.body_deadline = Some(deadline);
            session.set_read_timeout(Some(timeout));
            return Ok(false);
        }
        // Pingora replays what was read through this buffer when it proxies the request.
        session.as_mut().enable_retry_buffering();
        loop {
            match tokio::time::timeout_at(deadline.into(), session.read_request_body()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return Ok(false),
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    self.metrics.unavailable(Unavailable::BodyTimeout);
                    let body = format!(
                        "the request body did not arrive within {} s\n",
                        limits.request_body_timeout_secs
                    );
                    // The rest of the body may still come: the connection cannot be reused.
                    session.set_keepalive(None);
                    respond::plain(session, 408, &body, &[("connection", "close")]).await?;
                    return Ok(true);
                }
            }
        }
    }

    /// Takes one of the client's origin slots (`limits.max_inflight_per_client`).
    async fn client_share(&self, ctx: &mut RequestCtx, class: ClassId) -> Result<(), Shed> {
        let cap = ctx.rt.config.limits.max_inflight_per_client;
        let Some(client) = ctx.client.filter(|_| cap > 0) else {
            return Ok(());
        };
        let wait = ctx.rt.classes.max_wait(class);
        match self.client_slots.acquire(client, cap, wait).await {
            Some(permit) => {
                ctx.client_permit = Some(permit);
                Ok(())
            }
            None => Err(Shed::ClientCap),
        }
    }

    /// The origin's `Vary` applied to a storage decision: never stored when it varies on
    /// credentials, stored per variant (bounded) when it varies on another header.
    fn apply_vary(
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
                }
            }
            Vary::Nothing => Vec::new(),
            Vary::Headers(names) => names,
        };
        let (Some(page), Some(key)) = (ctx.page_key, ctx.key) else {
            return decision;
        };
        let max = ctx.rt.config.cache.max_variants;
        let reason = match self
            .variants
            .settle(page, ctx.vary.as_ref(), &names, key, max)
        {
            VariantVerdict::Store => return decision,
            VariantVerdict::Relearnt => "Vary learnt",
            VariantVerdict::TooMany => "cache.max_variants reached",
        };
        Decision {
            storability: Storability::NotStored(reason),
            strip_set_cookie: decision.strip_set_cookie,
        }
    }

    fn verdict(&self, session: &Session, ctx: &RequestCtx) -> (CacheDebug, Option<Grace>) {
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

#[async_trait]
impl ProxyHttp for Floodgate {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.runtime.load_full())
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(sub) = &session.subrequest_ctx {
            ctx.esi_role = sub
                .user_ctx()
                .and_then(|u| u.downcast_ref::<Role>())
                .cloned();
            let head_fill = sub
                .user_ctx()
                .and_then(|u| u.downcast_ref::<head_fill::HeadFill>())
                .copied();
            if let Some(fill) = head_fill {
                ctx.head_fill = true;
                ctx.arrived = fill.arrived;
            }
            ctx.background = ctx.esi_role.is_none() && head_fill.is_none();
        }
        if let Some(Role::Page { arrived, .. }) = &ctx.esi_role {
            ctx.arrived = *arrived;
        }
        // Bodies are stored gzipped; clients that do not accept gzip get them inflated.
        if let Some(compression) = session
            .downstream_modules_ctx
            .get_mut::<ResponseCompression>()
        {
            compression.adjust_decompression(true);
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if let Some(peer) = peer {
            self.clean_request(session, ctx, peer)?;
        }
        let req = session.req_header();
        let (url, route, variant) =
            ctx.rt
                .rules
                .classify(&req.method, req.raw_path(), &req.headers);
        ctx.route = route;
        ctx.variant = variant;
        ctx.url = url;
        if ctx.route == Route::Purge {
            let rt = ctx.rt.clone();
            self.purge(session, &rt, ctx.client).await?;
            return Ok(true);
        }
        if peer.is_some() && !session.as_mut().is_body_empty() {
            return self.read_body_first(session, ctx).await;
        }
        Ok(false)
    }

    fn allow_spawning_subrequest(&self, session: &Session, ctx: &RequestCtx) -> bool {
        ctx.rt.config.esi.enabled || session.req_header().method == http::Method::HEAD
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        if ctx.route != Route::Lookup {
            return Ok(());
        }
        // The key is needed now: a key marked hit-for-miss takes no lock.
        let key = self.key_for(session, ctx);
        let marked = self.marks.is_marked(&key.primary_bin());
        ctx.cache_key = Some(key);
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(Duration::from_secs(ctx.rt.config.cache.coalesce_wait_secs));
        // A page subrequest runs for a request that already holds this key's lock: it
        // must not wait for it. Others' requests keep waiting on that lock.
        // A HEAD's miss is filled by a GET subrequest (`head_fill`), which holds the
        // lock for it; the HEAD itself never does.
        let head = session.req_header().method == http::Method::HEAD;
        let lock = match ctx.esi_role {
            Some(Role::Page { .. }) => None,
            _ if marked || head => None,
            _ => Some(self.lock),
        };
        session
            .cache
            .enable(self.store, None, Some(self.marks), lock, Some(overrides));
        session
            .cache
            .set_max_file_size_bytes(ctx.rt.config.cache.max_object_bytes);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        Ok(match ctx.cache_key.take() {
            Some(key) => key,
            None => self.key_for(session, ctx),
        })
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        if ctx.assembles_esi() {
            if let Some(hit) = hit_handler.as_any_mut().downcast_mut::<StoredHit>() {
                if hit.derived().and_then(esi::stored_template).is_some() {
                    hit.will_assemble();
                    ctx.esi_hit = true;
                }
            }
        }
        // A stale copy now beats a wait for an origin that cannot take the request:
        // overloaded, down or in maintenance, the visitor gets the stale copy at once.
        if is_fresh {
            return Ok(None);
        }
        if matches!(
            ctx.esi_role,
            Some(Role::Page {
                stale_only: true,
                ..
            })
        ) {
            // The origin just broke this page's answer: its stale copy, as when it is down.
            ctx.stale_reason = Some(StaleReason::Unhealthy);
            return Ok(Some(ForcedFreshness::ForceFresh));
        }
        let class = self.class(session, ctx);
        // A purged page's kept copy is not served because the origin is busy, only when
        // it cannot answer at all: a busy origin queues the request, and only if the
        // limiter sheds it does the copy go out instead of the 503.
        let purged_copy = meta.headers().contains_key(PURGED_COPY_HEADER);
        ctx.stale_reason = self
            .origins
            .stale_reason(class)
            .filter(|reason| !purged_copy || *reason != StaleReason::Overloaded);
        Ok(ctx.stale_reason.map(|_| ForcedFreshness::ForceFresh))
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        match error {
            // Within grace: serve stale and refresh in the background, if the origin can answer.
            None => self.origins.any_healthy(),
            // The origin failed (down, timed out, 5xx): stale for as long as it is kept.
            Some(e) => e.esource() == &ErrorSource::Upstream,
        }
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        // A response from the origin may carry ESI, and only an async caller can wait for
        // its fragments: the request runs again as a subrequest and is assembled here.
        if matches!(
            ctx.esi_role,
            Some(Role::Page {
                stale_only: true,
                ..
            })
        ) {
            // No stale copy of a page whose origin answer just broke: the busy page.
            let mut e = Error::explain(
                ErrorType::ConnectNoRoute,
                "the origin broke its answer and no stale copy is kept",
            );
            e.esource = ErrorSource::Upstream;
            e.set_retry(false);
            return Err(e);
        }
        let req = session.req_header();
        if req.method == http::Method::HEAD
            && ctx.route == Route::Lookup
            && ctx.esi_role.is_none()
            && !ctx.background
            && session.subrequest_spawner.is_some()
        {
            // Answered from a GET read to its end, so the page is stored behind it.
            ctx.wrapped = true;
            head_fill::serve(session, ctx.arrived, ctx.client).await?;
            return Ok(false);
        }
        let wraps = ctx.assembles_esi()
            && req.method == http::Method::GET
            && !req.headers.contains_key(http::header::UPGRADE)
            && ctx.route != Route::Tunnel
            && session.subrequest_spawner.is_some();
        if !wraps {
            return Ok(true);
        }
        ctx.wrapped = true;
        let rt = ctx.rt.clone();
        let fresh = FreshFragments {
            rules: &rt.rules,
            store: self.store,
        };
        let settings = self.esi_settings(ctx, &rt, &fresh);
        esi::origin_page::serve(session, &settings, ctx.arrived).await?;
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let class = self.class(session, ctx);
        // A retry gives its slot back first, so it queues like any other request.
        ctx.permit = None;
        ctx.client_permit = None;
        let shared = ctx
            .key
            .and_then(|key| self.shed_fanout.shared(&key, ctx.arrived));
        let admitted = match shared {
            Some(shed) => Err(shed),
            None => match self.client_share(ctx, class).await {
                Err(shed) => Err(shed),
                Ok(()) => self.origins.admit(class).await,
            },
        };
        match admitted {
            Ok((peer, permit)) => {
                ctx.permit = Some(permit);
                Ok(Box::new(peer))
            }
            Err(shed) => {
                ctx.shed = Some(shed);
                if let (Some(key), None) = (ctx.key, shared) {
                    self.shed_fanout.record(key, shed);
                }
                self.metrics.shed(ctx.rt.classes.name(class), shed.into());
                let why = match shed {
                    Shed::QueueFull => "the origin's queue is full",
                    Shed::Timeout => "the request waited too long for a free origin slot",
                    Shed::WouldTimeOut => {
                        "the origin's queue would not reach the request within its wait"
                    }
                    Shed::Unhealthy => "no healthy origin: every origin fails its health probe",
                    Shed::Maintenance => "maintenance mode is on",
                    Shed::ClientCap => {
                        "this client holds limits.max_inflight_per_client origin slots already"
                    }
                };
                let mut e = Error::explain(ErrorType::ConnectNoRoute, why);
                // Upstream, so that a stale copy is served if one is kept.
                e.esource = ErrorSource::Upstream;
                e.set_retry(false);
                Err(e)
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The chain was cleaned in `request_filter`: the peer is appended to what a
        // trusted proxy said, or is all there is.
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = addr.ip().to_string();
            let forwarded = match upstream_request.headers.get("x-forwarded-for") {
                Some(prior) => format!("{}, {ip}", String::from_utf8_lossy(prior.as_bytes())),
                None => ip,
            };
            upstream_request.insert_header("x-forwarded-for", forwarded)?;
        }
        if ctx.route != Route::Lookup {
            ctx.upstream_sent = Some(Instant::now());
            return Ok(());
        }
        if upstream_request.raw_path() != ctx.url.as_bytes() {
            let uri = ctx.url.parse().map_err(|e| {
                Error::because(
                    ErrorType::InvalidHTTPHeader,
                    "normalised URL is not a URI",
                    e,
                )
            })?;
            upstream_request.set_uri(uri);
        }
        if ctx.rt.config.cache.store_gzip {
            upstream_request.insert_header(http::header::ACCEPT_ENCODING, "gzip")?;
            session.upstream_compression.adjust_level(STORE_GZIP_LEVEL);
        }
        ctx.upstream_sent = Some(Instant::now());
        ctx.fetch_started = Some(SystemTime::now());
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(deadline) = ctx.body_deadline.filter(|_| !end_of_stream) else {
            return Ok(());
        };
        // Each read may wait only for what is left of the body's deadline.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let mut e = Error::explain(
                ErrorType::ReadTimedout,
                "the request body did not arrive within limits.request_body_timeout_secs",
            );
            e.esource = ErrorSource::Downstream;
            return Err(e);
        }
        session.set_read_timeout(Some(left));
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(sent) = ctx.upstream_sent {
            self.metrics.origin_first_byte(sent.elapsed());
        }
        if let Some(permit) = &mut ctx.permit {
            permit.answered(resp.status.as_u16() < 500);
        }
        // nginx's own answer while PHP-FPM is away is not a page: the visitor gets the
        // stale copy or the busy page, never a raw gateway error.
        if matches!(resp.status.as_u16(), 502 | 504)
            && ctx.rt.config.origin.hide_gateway_errors
            && ctx.route != Route::Tunnel
        {
            let mut e = Error::explain(
                ErrorType::Custom("origin gateway error"),
                format!("the origin answered {}", resp.status),
            );
            e.esource = ErrorSource::Upstream;
            e.set_retry(false);
            return Err(e);
        }
        if ctx.route != Route::Lookup || resp.status.is_informational() || resp.status == 304 {
            return Ok(());
        }
        if resp.headers.contains_key("x-magento-debug") {
            if let Some(cc) = resp.headers.get(http::header::CACHE_CONTROL).cloned() {
                resp.insert_header("x-magento-cache-control", cc)?;
            }
        }
        let decision = decide(
            resp.status,
            &resp.headers,
            &ctx.variant,
            Duration::from_secs(ctx.rt.config.cache.default_ttl_secs),
            SystemTime::now(),
        );
        let decision = self.apply_vary(decision, &resp.headers, ctx);
        if decision.strip_set_cookie {
            resp.remove_header(&http::header::SET_COOKIE);
        }
        ctx.tags = Tags::from_headers(&resp.headers);
        resp.remove_header("x-magento-tags");
        ctx.decision = Some(decision);
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        // The origin is done: its slot can serve the next request while this one is
        // still being written to a slow client.
        if end_of_stream {
            ctx.permit = None;
            ctx.client_permit = None;
            if let Some(sent) = ctx.upstream_sent.take() {
                ctx.origin_time = Some(sent.elapsed());
                self.metrics.origin_response(sent.elapsed());
            }
        }
        Ok(None)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        // A 304 revalidation arrives here with the stored header merged in, undecided.
        let decision = ctx.decision.take().unwrap_or_else(|| Decision {
            storability: decide(
                resp.status,
                &resp.headers,
                &ctx.variant,
                Duration::from_secs(ctx.rt.config.cache.default_ttl_secs),
                SystemTime::now(),
            )
            .storability,
            strip_set_cookie: false,
        });
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

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A tunnelled request is piped as-is, as Varnish's `pipe` does.
        if ctx.route == Route::Tunnel {
            return Ok(());
        }
        let (verdict, grace) = self.verdict(session, ctx);
        prepare_for_client(resp, &ctx.url, verdict, grace);
        if matches!(ctx.esi_role, Some(Role::Fragment { .. })) && verdict == CacheDebug::Hit {
            resp.insert_header(esi::CACHED_HEADER, "1")?;
        }
        let serves_stored_body = matches!(
            session.cache.phase(),
            CachePhase::Hit
                | CachePhase::Stale
                | CachePhase::StaleUpdating
                | CachePhase::Revalidated
                | CachePhase::RevalidatedNoCache(_)
        );
        if serves_stored_body && resp.headers.contains_key(PURGED_COPY_HEADER) {
            self.metrics.purged_copy_served();
        }
        if ctx.esi_hit && serves_stored_body {
            self.assemble_hit(session, resp, ctx).await;
        }
        // A page's text goes to its wrapper as stored: the wrapper streams it in the
        // client's encoding itself, while Pingora's inflating would hold every chunk back
        // until the next one arrives.
        if matches!(ctx.esi_role, Some(Role::Page { .. }))
            && resp.status != http::StatusCode::PARTIAL_CONTENT
            && esi::applies_to(resp)
        {
            if let Some(compression) = session
                .downstream_modules_ctx
                .get_mut::<ResponseCompression>()
            {
                compression.adjust_decompression(false);
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        ctx.permit = None;
        ctx.client_permit = None;
        // Part of the response is out (an assembled page cut short): nothing can be added.
        if session.response_written().is_some() {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            // The origin is down, refused, or too slow: say when to come back, never 502.
            _ if e.esource() == &ErrorSource::Upstream => 503,
            _ if e.esource() == &ErrorSource::Downstream => match e.etype() {
                // The client did not send its body in time.
                ErrorType::ReadTimedout => 408,
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            _ => 500,
        };
        if code == 503 {
            let body = if ctx.shed == Some(Shed::Maintenance) {
                ctx.rt.pages.maintenance.clone()
            } else {
                ctx.rt.pages.busy.clone()
            };
            let reason = ctx
                .shed
                .map_or(Unavailable::OriginFailed, Unavailable::from);
            self.metrics.unavailable(reason);
            let _ = respond::page(
                session,
                503,
                "text/html; charset=utf-8",
                body,
                &[
                    ("retry-after", ctx.rt.pages.retry_after.as_str()),
                    ("x-floodgate-shed", reason.label()),
                ],
            )
            .await;
        } else if code > 0 {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map_or(0, |resp| resp.status.as_u16());
        // A background refresh is Floodgate's own request, not a client's; a fragment is
        // counted by the page that includes it; a wrapped request by its page subrequest.
        if ctx.background {
            self.metrics.background_refresh();
        } else if ctx.wrapped || matches!(ctx.esi_role, Some(Role::Fragment { .. })) {
        } else {
            let outcome = self.outcome(session, ctx);
            self.metrics.request(outcome, status);
            if let (Outcome::Hit, Some(waited)) = (outcome, session.cache.lock_duration()) {
                self.metrics.coalesced(waited);
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
