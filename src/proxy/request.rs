//! What the proxy works out from the client's request before any cache or origin sees
//! it: the real client and clean headers, the body read before a slot is taken, the
//! cache key, the priority class, and the identity a re-warm replays.
//!
//! Invariant: a header that would change the origin's answer without being in the key
//! never reaches the origin; an identity never carries credentials.

use std::sync::Arc;
use std::time::Duration;

use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheKey;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::metrics::Unavailable;
use super::{respond, Floodgate, RequestCtx};
use crate::cache::RequestIdentity;
use crate::policy::client::{forwarded_chain, real_client};
use crate::policy::forward::{self, Refused};
use crate::policy::key::{cache_key, with_variance};
use crate::policy::normalize::host_from_authority;
use crate::policy::route::has_bearer;
use crate::upstream::ClassId;
use crate::warm::worker::WARM_HEADER;

impl Floodgate {
    /// Whether a plain-HTTP request is to be sent to HTTPS instead
    /// (`server.redirect_http_to_https`): not a PURGE (answered before this), not one a
    /// trusted proxy marked as HTTPS already (a visitor's mark was removed).
    pub(super) fn redirects_to_https(&self, session: &Session, ctx: &RequestCtx) -> bool {
        if ctx.tls || !ctx.rt.config.server.redirect_http_to_https {
            return false;
        }
        let offload = &ctx.rt.rules.ssl_offload_header;
        !session
            .req_header()
            .headers
            .get(offload)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
    }

    /// The same URL over HTTPS: 301 for GET and HEAD, 308 (method and body kept) for
    /// the rest. The Host must be a valid authority: a redirect never leads anywhere a
    /// malformed Host could make up.
    pub(super) async fn redirect_to_https(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
    ) -> Result<()> {
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok());
        let Some(host) = host else {
            return respond::plain(
                session,
                400,
                "a valid Host header is needed to redirect to HTTPS\n",
                &[],
            )
            .await;
        };
        // The TLS listener's port, left out when it is HTTPS's own.
        let port = ctx
            .rt
            .config
            .server
            .tls_listen
            .first()
            .and_then(|addr| addr.rsplit_once(':'))
            .map(|(_, port)| port)
            .filter(|port| *port != "443");
        // Only an origin-form target (`/path?query`) is a path on this host: `@evil.test/x`
        // would make the host a user name, `*` and absolute forms no path at all.
        let raw = req.raw_path();
        if !raw.starts_with(b"/") {
            return respond::plain(
                session,
                400,
                "the request target must be a path (origin-form) to redirect to HTTPS\n",
                &[],
            )
            .await;
        }
        let path = String::from_utf8_lossy(raw);
        let location = match port {
            Some(port) => format!("https://{}:{port}{path}", host.host()),
            None => format!("https://{}{path}", host.host()),
        };
        let status = match req.method {
            http::Method::GET | http::Method::HEAD => 301,
            _ => 308,
        };
        respond::plain(
            session,
            status,
            &format!("moved to {location}\n"),
            &[("location", location.as_str())],
        )
        .await
    }

    /// Request hygiene, before anything looks at the request: works out the real client,
    /// removes the headers that would change the origin's answer behind the key's back,
    /// sets the SSL-offload header to the truth where Floodgate knows it (`https` on its
    /// own TLS; absent from a visitor on a plain listener when it terminates TLS itself),
    /// else leaves it with the one value the key uses, and keeps only a trusted proxy's
    /// `X-Forwarded-For`.
    ///
    /// `Err(Refused)` inside: the request cannot be forwarded as the key would see it
    /// (`policy::forward`); the caller answers 400.
    pub(super) fn clean_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        peer: std::net::IpAddr,
    ) -> Result<std::result::Result<(), Refused>> {
        let rt = ctx.rt.clone();
        let trusted = |ip| rt.trusted_proxies.allows(ip);
        ctx.tls = session
            .digest()
            .is_some_and(|digest| digest.ssl_digest.is_some());
        let req = session.req_header_mut();
        if req.version == http::Version::HTTP_2 {
            host_from_authority(req);
        }
        // First: the key below, and everything else, reads what Magento will receive.
        if let Err(refused) = forward::prepare(req) {
            return Ok(Err(refused));
        }
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
        if ctx.tls {
            // Whatever the client claims, this connection is HTTPS: the key and Magento
            // see the truth.
            req.insert_header(offload.clone(), http::HeaderValue::from_static("https"))?;
        } else if rt.terminates_tls && !trusted(peer) {
            // A visitor on a plain listener of a Floodgate that terminates TLS itself:
            // its claim to be HTTPS is not believed.
            if req.headers.contains_key(offload) {
                req.remove_header(offload);
            }
        } else if req.headers.get_all(offload).iter().nth(1).is_some() {
            if let Some(first) = req.headers.get(offload).cloned() {
                req.insert_header(offload.clone(), first)?;
            }
        }
        Ok(Ok(()))
    }

    /// Reads a request body whole before the request may take an origin slot, so a
    /// client that trickles it in holds a connection, not PHP-FPM. A body too large to
    /// hold is streamed later, but must be complete by the same deadline.
    pub(super) async fn read_body_first(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
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
                    self.requests.unavailable(Unavailable::BodyTimeout);
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

    /// The request's cache key: Magento's key, split further by the origin's `Vary`
    /// when one is known for the page.
    pub(super) fn key_for(&self, session: &Session, ctx: &mut RequestCtx) -> CacheKey {
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

    /// The request's priority at the origin, worked out only for requests that need the
    /// origin (fresh hits never do).
    pub(super) fn class(&self, session: &Session, ctx: &mut RequestCtx) -> ClassId {
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

    /// The request a re-warm replays: only what chose this variant, never credentials.
    pub(super) fn identity(
        &self,
        session: &Session,
        ctx: &RequestCtx,
    ) -> Option<Arc<RequestIdentity>> {
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
        Some(Arc::new(RequestIdentity::new(ctx.url.clone(), replay)))
    }
}

/// `policy::forward` edits Pingora's request through its own methods, which keep the
/// header names' case map in step.
impl forward::EditHeaders for pingora::http::RequestHeader {
    fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &http::HeaderName) {
        self.remove_header(name);
    }
    fn set(&mut self, name: http::HeaderName, value: http::HeaderValue) {
        // Only fails for a name or value that is not valid, and these are.
        let _ = self.insert_header(name, value);
    }
}
