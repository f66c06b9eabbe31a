//! Pingora's `ProxyHttp` hooks, in the order Pingora calls them. Each hands its decision
//! to `policy`, `cache` or `upstream`, or to the proxy's own rooms beside this file.

use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pingora::cache::key::CacheHashKey;
use pingora::cache::RespCacheable;
use pingora::cache::{CacheKey, CacheMeta, CachePhase};
use pingora::cache::{CacheOptionOverrides, ForcedFreshness, HitHandler};
use pingora::http::RequestHeader;
use pingora::http::ResponseHeader;
use pingora::modules::http::compression::ResponseCompression;
use pingora::prelude::*;
use pingora::proxy::ProxyHttp;
use pingora::proxy::{FailToProxy, Session};
use pingora::{ErrorSource, ErrorType};

use super::fresh_fragments::FreshFragments;
use super::head_fill;
use super::STORE_GZIP_LEVEL;
use super::{Floodgate, RequestCtx};
use crate::cache::PURGED_COPY_HEADER;
use crate::cache::{StoredHit, Tags};
use crate::esi::{self, Role};
use crate::policy::delivery::CacheDebug;
use crate::policy::route::Route;
use crate::policy::storability::decide;
use crate::upstream::StaleReason;

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
                ctx.tls = fill.tls;
                ctx.client = fill.client;
            }
            // Made on a visitor's behalf: it counts against that visitor's share of origin
            // slots (a background refresh is nobody's: the warm class's).
            if let Some(role) = &ctx.esi_role {
                ctx.client = role.client();
            }
            ctx.background = ctx.esi_role.is_none() && head_fill.is_none();
        } else if session.as_mut().is_http2() {
            // An HTTP/2 stream that takes no byte of its response for this long is
            // dropped, and what its response held with it (a stream waits on its own flow
            // control, which the connection's writes do not see). HTTP/1 connections get
            // the same from `front_door`, without a timer per write.
            let send = Duration::from_secs(ctx.rt.config.server.send_timeout_secs);
            session.as_mut().set_write_timeout(Some(send));
        }
        if let Some(Role::Page {
            arrived,
            client_tls,
            ..
        }) = &ctx.esi_role
        {
            ctx.arrived = *arrived;
            ctx.tls = *client_tls;
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
            if let Err(refused) = self.clean_request(session, ctx, peer)? {
                let body = format!("bad request: {refused}\n");
                super::respond::plain(session, 400, &body, &[]).await?;
                return Ok(true);
            }
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
        if peer.is_some() && self.redirects_to_https(session, ctx) {
            self.redirect_to_https(session, ctx).await?;
            return Ok(true);
        }
        if peer.is_some() && !session.as_mut().is_body_empty() {
            return self.read_body_first(session, ctx).await;
        }
        if peer.is_some() {
            return self.serve_fresh_hit(session, ctx).await;
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
        // The key is needed now: a key marked hit-for-miss takes no lock. The fresh-hit
        // path may have worked it out already.
        let key = match ctx.cache_key.take() {
            Some(key) => key,
            None => self.key_for(session, ctx),
        };
        let marked = self.marks.is_marked(&key.primary_bin());
        ctx.marked = marked;
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

    fn cache_miss(&self, session: &mut Session, ctx: &mut RequestCtx) {
        // Asked before the fill stores the page again: why it was not there (a miss
        // only, never on a hit).
        if ctx.removal.is_none() {
            ctx.removal = ctx.key.and_then(|key| self.store.removed(&key));
        }
        session.cache.cache_miss();
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        if let Some(hit) = hit_handler.as_any_mut().downcast_mut::<StoredHit>() {
            if ctx.assembles_esi() && hit.derived().and_then(esi::stored_template).is_some() {
                hit.will_assemble();
                ctx.esi_hit = true;
            }
            // A client without gzip may get the body inflated: no ranges of its gzip bytes.
            if super::inflate::module_would_inflate(session, meta.response_header()) {
                hit.no_seek();
            }
        }
        // A stale copy now beats a wait for an origin that cannot take the request:
        // overloaded, down or in maintenance, the visitor gets the stale copy at once.
        if is_fresh {
            return Ok(None);
        }
        ctx.found_expired = true;
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
        // it cannot answer at all, or when a visitor waited `purge.keep_purged_wait_ms`
        // for a slot (`kept_copy_after_wait`); otherwise a busy origin queues the request,
        // and only if the limiter sheds it does the copy go out instead of the 503.
        let purged_copy = meta.headers().contains_key(PURGED_COPY_HEADER);
        ctx.purged_copy = purged_copy;
        ctx.stale_reason = self
            .origins
            .stale_reason(class)
            .filter(|reason| !purged_copy || *reason != StaleReason::Overloaded);
        if ctx.stale_reason.is_none()
            && purged_copy
            && self.kept_copy_after_wait(session, ctx, class).await
        {
            ctx.stale_reason = Some(StaleReason::Overloaded);
        }
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
            head_fill::serve(session, ctx.arrived, ctx.client, ctx.tls).await?;
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
        self.admit(session, ctx).await
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
            self.origins.metrics().first_byte(sent.elapsed());
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
                self.origins.metrics().response(sent.elapsed());
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
        self.cacheability(session, resp, ctx)
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
        super::for_client(resp, ctx, verdict, grace)?;
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
            self.requests.purged_copy_served();
        }
        if ctx.esi_hit && serves_stored_body {
            self.assemble_hit(session, resp, ctx).await;
        } else if serves_stored_body {
            self.inflate_hit(session, resp, ctx)?;
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
        self.answer_failure(session, e, ctx).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.account(session, e, ctx);
    }
}
