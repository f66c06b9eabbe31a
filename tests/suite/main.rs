//! Floodgate's tests: each talks HTTP to a real Floodgate process (the binary this package
//! builds) in front of a real test origin, and, where they need them, a real
//! `redis-server`, real files and real signals. One test binary, so the harness in
//! `common` is compiled and linked once; each module below is one area of the contract
//! (docs/magento-cache-protocol.md) or of operations.

mod common;

mod admin;
mod cli;
mod cluster;
mod coalescing;
mod compression;
mod delivery;
mod disk;
mod esi;
mod failover;
mod faults;
mod fleet;
mod front_door;
mod hostile;
mod insights;
mod limits;
mod metrics;
mod origins;
mod packaging;
mod purge;
mod reload;
mod requests;
mod responses;
mod stale;
mod tls;
mod upgrade;
