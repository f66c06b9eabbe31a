//! What Floodgate remembers about one request between Pingora's hooks.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use pingora::cache::key::HashBinary;

use super::runtime::Runtime;
use crate::cache::variants::VarySpec;
use crate::cache::{Removal, Tags};
use crate::esi::Role;
use crate::policy::key::Variant;
use crate::policy::route::Route;
use crate::policy::storability::{Decision, NotCached};
use crate::upstream::limiter::Permit;
use crate::upstream::{ClassId, ClientPermit, Shed, StaleReason};

pub struct RequestCtx {
    /// The configuration this request runs under, from start to end.
    pub rt: Arc<Runtime>,
    pub route: Route,
    /// The normalised URL: the cache key's and the origin's.
    pub url: String,
    pub variant: Variant,
    /// The storage decision for the origin response, taken where its headers may still
    /// be changed (Set-Cookie stripping) and applied where Pingora asks for cacheability.
    pub decision: Option<Decision>,
    pub tags: Tags,
    /// The response was (or would have been) refused by the cache.
    pub uncacheable: bool,
    /// Why the response was not stored, when it was not.
    pub not_cached: Option<NotCached>,
    /// The key was marked hit-for-miss when the request arrived.
    pub marked: bool,
    /// The lookup found a copy too old to serve: a miss then is an expired one.
    pub found_expired: bool,
    /// That copy is a purged page's kept copy (`purge.keep_purged_secs`).
    pub purged_copy: bool,
    /// Why the page was not in memory when the lookup missed, if the store knows.
    pub removal: Option<Removal>,
    /// When the request left for the origin, for the upstream latency histogram.
    pub upstream_sent: Option<Instant>,
    /// The same moment as wall-clock time: purges after it make the response unstorable.
    pub fetch_started: Option<SystemTime>,
    /// How long the origin took for the whole response, for the access log.
    pub origin_time: Option<std::time::Duration>,
    /// When the request arrived, to tell who was waiting for a fetch that was shed.
    pub arrived: Instant,
    /// The cache key's hash, for lookups.
    pub key: Option<HashBinary>,
    /// The cache key itself, worked out before Pingora asks for it.
    pub cache_key: Option<pingora::cache::CacheKey>,
    /// Its priority at the origin, once needed.
    pub class: Option<ClassId>,
    /// Its slot at the origin, held until the origin's answer is complete.
    pub permit: Option<Permit>,
    /// Why the limiter refused it, if it did.
    pub shed: Option<Shed>,
    /// Why a stale copy was served without asking the origin.
    pub stale_reason: Option<StaleReason>,
    /// What this request is for when Floodgate made it for ESI (a page or a fragment).
    pub esi_role: Option<Role>,
    /// Pingora's background refresh of a stale object: nobody reads its response.
    pub background: bool,
    /// The GET made to answer a client's HEAD (`head_fill`): the client's request in
    /// every respect but its body, which nobody reads.
    pub head_fill: bool,
    /// Answered as a fresh hit in `request_filter`, without Pingora's cache path.
    pub fresh_hit: bool,
    /// The stored hit is an ESI template that this request assembles.
    pub esi_hit: bool,
    /// Served by running the request again as a subrequest and assembling its response;
    /// that subrequest reports the request.
    pub wrapped: bool,
    /// The client's address (behind trusted proxies, the one they name). A subrequest
    /// made on a visitor's behalf (a HEAD's GET, an ESI page or fragment) carries its
    /// visitor's; `None` for Floodgate's own (background refreshes, re-warms).
    pub client: Option<std::net::IpAddr>,
    /// The client's connection is TLS that Floodgate terminated.
    pub tls: bool,
    /// The page's key before `Vary` splits it, and the `Vary` known when it was keyed.
    pub page_key: Option<HashBinary>,
    pub vary: Option<Arc<VarySpec>>,
    /// The client's share of origin slots, held with `permit`.
    pub client_permit: Option<ClientPermit>,
    /// A request body streamed to the origin (too large to read first) must be complete
    /// by then.
    pub body_deadline: Option<Instant>,
}

impl RequestCtx {
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self {
            rt,
            route: Route::Pass(crate::policy::route::PassReason::Method),
            url: String::new(),
            variant: Variant::default(),
            decision: None,
            tags: Tags::default(),
            uncacheable: false,
            not_cached: None,
            marked: false,
            found_expired: false,
            purged_copy: false,
            removal: None,
            upstream_sent: None,
            fetch_started: None,
            origin_time: None,
            arrived: Instant::now(),
            key: None,
            cache_key: None,
            class: None,
            permit: None,
            shed: None,
            stale_reason: None,
            esi_role: None,
            background: false,
            head_fill: false,
            fresh_hit: false,
            esi_hit: false,
            wrapped: false,
            client: None,
            tls: false,
            page_key: None,
            vary: None,
            client_permit: None,
            body_deadline: None,
        }
    }

    /// How many includes deep the document this request returns is (0 for a page).
    pub fn esi_depth(&self) -> u8 {
        self.esi_role.as_ref().map_or(0, Role::depth)
    }

    /// Whether this request assembles the ESI of its own response: not when a wrapper
    /// assembles it (a page subrequest), nor when nobody reads it (a background refresh,
    /// the GET of a HEAD).
    pub fn assembles_esi(&self) -> bool {
        self.rt.config.esi.enabled
            && !self.background
            && !self.head_fill
            && !matches!(self.esi_role, Some(Role::Page { .. }))
    }
}
