//! Assembles the Pingora server: the proxy service, the origin health probe and, for the
//! demo, a Magento-like origin in the same process.

use std::time::Duration;

use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use std::sync::Arc;

use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::cache::{HitForMissMarks, MemoryStore};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Floodgate;
use crate::upstream::Origins;

/// Keys remembered as hit-for-miss at most (about 100 bytes each).
const HIT_FOR_MISS_CAPACITY: u64 = 1_000_000;

/// Builds a ready-to-run server for `config`; services may still be added before `run`.
pub fn build(config: Config) -> anyhow::Result<Server> {
    let threads = match config.server.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let runtime_dir = std::path::Path::new(&config.server.runtime_dir);
    let port = config
        .server
        .listen
        .first()
        .map_or("0", |l| l.rsplit(':').next().unwrap_or("0"));
    let conf = ServerConf {
        threads,
        pid_file: runtime_dir
            .join(format!("floodgate-{port}.pid"))
            .display()
            .to_string(),
        upgrade_sock: runtime_dir
            .join(format!("floodgate-{port}-upgrade.sock"))
            .display()
            .to_string(),
        // Pingora's default waits 300 s after a graceful upgrade even when idle.
        grace_period_seconds: Some(10),
        graceful_shutdown_timeout_seconds: Some(5),
        // One runtime per thread: a hit never moves between threads, which saves the
        // cross-thread wake-ups that dominated the hit path in profiles.
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let (origins, health_probe) = Origins::new(&config.origin)?;
    let origins = Arc::new(origins);
    server.add_service(health_probe);
    let metrics = Arc::new(Metrics::new()?);

    // Pingora's cache API takes `&'static`; these live for the whole process anyway.
    let store: &'static MemoryStore =
        Box::leak(Box::new(MemoryStore::new(config.cache.memory_bytes)));
    let marks: &'static HitForMissMarks = Box::leak(Box::new(HitForMissMarks::new(
        HIT_FOR_MISS_CAPACITY,
        Duration::from_secs(config.cache.uncacheable_ttl_secs),
        Duration::from_secs(config.cache.private_uncacheable_ttl_secs),
    )));
    // A fetch that holds the lock longer than the origin may take is presumed dead.
    let lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(Duration::from_secs(
        config.origin.first_byte_timeout_secs,
    )));

    if !config.server.admin_listen.is_empty() {
        let admin = Admin::new(metrics.clone(), store, origins.clone());
        let mut admin_service = Service::new("admin".to_string(), admin);
        admin_service.add_tcp(&config.server.admin_listen);
        admin_service.threads = Some(1);
        server.add_service(admin_service);
    }

    let listen = config.server.listen.clone();
    let proxy = Floodgate::new(config, origins, store, marks, lock, metrics)?;
    let mut service = http_proxy_service(&server.configuration, proxy);
    for addr in &listen {
        service.add_tcp(addr);
    }
    service.threads = Some(threads);
    server.add_service(service);
    Ok(server)
}
