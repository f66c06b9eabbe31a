//! The request path: Pingora's `ProxyHttp` hooks (`hooks`), each handing its decision to
//! `policy`, `cache` or `upstream`, and the proxy's own work in a room per job:
//!
//! | file | job |
//! |---|---|
//! | `hooks` | the `ProxyHttp` impl, hooks in the order Pingora calls them |
//! | `front_door` | deadlines before a request exists: ClientHello, HTTP/2 preface, HTTP/1 header block |
//! | `fresh_hit` | a fresh hit in memory answered in the first hook, without Pingora's cache path |
//! | `request` | clean headers, real client, body read first, cache key, class, identity |
//! | `purge` | Magento's PURGE on the proxy listener |
//! | `admission` | the client's share and the origin slot, or the reason to shed |
//! | `response` | the origin's answer decided (store, hit-for-miss, not stored), debug verdict |
//! | `assemble` | a stored ESI page's fragments started on a hit |
//! | `head_fill` | a HEAD miss answered from a GET that fills the cache |
//! | `inflate` | a stored gzip page inflated by the hit, in bounded chunks, for a client without gzip |
//! | `failure` | what the visitor gets when proxying failed: 503 + Retry-After, never 502 |
//! | `accounting` | one count and one access-log line per client request |
//! | `ctx`, `runtime`, `respond`, `fresh_fragments`, `proxy_protocol` | per-request state, the compiled configuration, answers written by Floodgate, ESI's view of the store, PROXY protocol listener |

mod accounting;
mod admission;
mod assemble;
mod ctx;
mod failure;
mod fresh_fragments;
mod fresh_hit;
pub mod front_door;
mod head_fill;
mod hooks;
mod inflate;
pub mod metrics;
pub mod proxy_protocol;
mod purge;
mod request;
mod respond;
mod response;
pub mod runtime;

use std::sync::Arc;

use pingora::cache::lock::CacheKeyLockImpl;

pub use ctx::RequestCtx;
pub use runtime::Runtime;

use arc_swap::ArcSwap;

use crate::cache::inflate::ResponseBudget;
use crate::cache::{HitForMissMarks, MemoryStore, Variants};
use crate::esi::metrics::EsiMetrics;
use crate::insights::Insights;
use crate::purge::Purger;
use crate::upstream::{ClientSlots, Origins, ShedFanout};
use metrics::RequestMetrics;

/// What every response header gets on its way to the client, from the cache or the
/// origin: Magento's `vcl_deliver` edits with the cache's verdict, and HSTS on the
/// client's own TLS (a page subrequest carries its client's).
fn for_client(
    resp: &mut pingora::http::ResponseHeader,
    ctx: &RequestCtx,
    verdict: crate::policy::delivery::CacheDebug,
    grace: Option<crate::policy::delivery::Grace>,
) -> pingora::Result<()> {
    crate::policy::delivery::prepare_for_client(resp, &ctx.url, verdict, grace);
    if let Some(hsts) = hsts_for(ctx) {
        resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
    }
    Ok(())
}

/// `Strict-Transport-Security` for this request: configured, and the client came over
/// HTTPS.
fn hsts_for(ctx: &RequestCtx) -> Option<&http::HeaderValue> {
    ctx.rt.hsts.as_ref().filter(|_| ctx.tls)
}

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
    requests: Arc<RequestMetrics>,
    esi_metrics: Arc<EsiMetrics>,
    purger: Arc<Purger>,
    shed_fanout: ShedFanout,
    variants: Arc<Variants>,
    client_slots: Arc<ClientSlots>,
    insights: Arc<Insights>,
    response_budget: Arc<ResponseBudget>,
}

/// The parts the proxy shares with the rest of the process, built once in `server`.
#[derive(Clone)]
pub struct Shared {
    pub store: &'static MemoryStore,
    pub marks: &'static HitForMissMarks,
    pub lock: &'static CacheKeyLockImpl,
    pub origins: Arc<Origins>,
    /// The request path's metrics (one set for every listener's proxy).
    pub requests: Arc<RequestMetrics>,
    pub esi_metrics: Arc<EsiMetrics>,
    pub purger: Arc<Purger>,
    /// The reloadable configuration, shared with the reloader.
    pub runtime: Arc<ArcSwap<Runtime>>,
    /// What each page's origin varies on (`Vary`), and its stored variants.
    pub variants: Arc<Variants>,
    /// Origin slots held per client address.
    pub client_slots: Arc<ClientSlots>,
    /// Why requests were not hits: counted, and fed to the top lists.
    pub insights: Arc<Insights>,
    /// What responses in flight hold for their transformation, all listeners together.
    pub response_budget: Arc<ResponseBudget>,
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
            requests: shared.requests,
            esi_metrics: shared.esi_metrics,
            purger: shared.purger,
            variants: shared.variants,
            client_slots: shared.client_slots,
            insights: shared.insights,
            response_budget: shared.response_budget,
        }
    }
}
