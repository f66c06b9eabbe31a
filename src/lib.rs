//! Floodgate: a caching reverse proxy for Magento 2 on Cloudflare Pingora.
//!
//! The modules follow a request's way through the proxy: `config` → `policy` (Magento's
//! rules) → `cache` (store, tags, hit-for-miss, the shared tier) → `upstream` (origins,
//! their health, the limiter) → `purge` and `warm`, with `proxy` wiring them into
//! Pingora's hooks, `cluster` reaching the Redis the nodes share, `metrics`/`admin`
//! reporting and operating, and `server` assembling the process.

pub mod admin;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod esi;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod purge;
pub mod server;
pub mod upstream;
pub mod warm;
