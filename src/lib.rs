//! Floodgate: a caching reverse proxy for Magento 2 on Cloudflare Pingora.
//!
//! # Layout
//!
//! The modules follow a request's way through the proxy. Dependencies run one way, down
//! this list: a module imports only modules below it (`config` and `metrics` import none).
//!
//! | module | job |
//! |---|---|
//! | `server` | assembles the process: listeners, services, the parts below, wired once |
//! | `admin`, `cli` | the admin API (metrics, health, purge, warm, reload, `GET /cache`) and the commands that call it |
//! | `proxy` | Pingora's `ProxyHttp` hooks, and the proxy's own rooms (`proxy/mod.rs` lists them) |
//! | `esi` | ESI: templates parsed at store time, fragments fetched and spliced, pages streamed |
//! | `purge` | tag, pool and regex purges of the store and the shared tier; the purge bus |
//! | `warm` | the re-warm queue and worker, sitemaps |
//! | `upstream` | origins, health probes, the limiter and its priority queue, shedding |
//! | `cache` | the memory store (object, store and index, hit, miss), tags, hit-for-miss, variants, the shared tier |
//! | `cluster` | the Redis client (one node or a cluster) |
//! | `insights` | why the cache misses: reasons counted, bounded top lists, the last hour per second, a diagnosis |
//! | `tls` | TLS termination: certificates by SNI, swapped by a reload |
//! | `policy` | Magento's rules: route, key, storability, Vary, what the client gets |
//! | `config`, `metrics` | leaves: the file format and its checks; the registry |
//!
//! # A request's path
//!
//! 1. `proxy::hooks::request_filter`: `proxy::request` cleans the request (real client,
//!    stripped headers); `policy` classifies it (lookup, pass, tunnel, PURGE) and
//!    normalises its URL. A PURGE is answered by `proxy::purge` through `purge::Purger`.
//! 2. `request_cache_filter`: the key (`policy::key`, split by a learnt `Vary`); the cache
//!    is enabled on `cache::MemoryStore` with the coalescing lock, unless the key is
//!    marked hit-for-miss.
//! 3. Lookup: `cache::store` finds the object (or asks the shared tier); `cache::hit`
//!    serves it, through `esi::assembly` when it has ESI. A stale object within grace is
//!    served while one background refresh runs; past it, with the origin down, busy or in
//!    maintenance (`upstream::Origins::stale_reason`), it is served rather than a 503.
//! 4. Miss: `proxy::admission` takes the client's share and an origin slot from
//!    `upstream::limiter` (or sheds with a reason); concurrent misses wait on the lock.
//! 5. The origin's answer: `proxy::response` decides (`policy::storability`), strips
//!    `Set-Cookie` where Magento's VCL does, records the tags; `cache::miss` stores the
//!    body when it is complete; an ESI page is assembled on its way out.
//! 6. Failure: `proxy::failure` answers 503 with `Retry-After` (never 502).
//! 7. `logging`: `proxy::accounting` counts the request once and writes its access line.
//!
//! Magento's side of the protocol (what it sends, what it expects) is written down in
//! `docs/magento-cache-protocol.md`; comments and tests cite its sections.

pub mod admin;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod esi;
pub mod insights;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod purge;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod warm;
