//! Assembles the Pingora server: the proxy service, the origin health probe and, for the
//! demo, a Magento-like origin in the same process.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::Duration;

use crate::cache::disk::{DiskMetrics, DiskTier};
use pingora::apps::HttpServerOptions;
use pingora::cache::key::HashBinary;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::proxy::http_proxy;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::reload::{ReloadOnHangup, Reloader};
use crate::admin::Admin;
use crate::cache::metrics::CacheMetrics;
use crate::cache::shared_tier::SharedTier;
use crate::cache::{HitForMissMarks, MemoryStore, Variants};
use crate::config::Overrides;
use crate::esi::metrics::EsiMetrics;
use crate::insights::{Aggregator, Insights};
use crate::metrics::Metrics;
use crate::proxy::front_door::{DoorMetrics, FrontDoor, HelloDeadline};
use crate::proxy::metrics::RequestMetrics;
use crate::proxy::proxy_protocol::ProxyProtocolService;
use crate::proxy::{Floodgate, Runtime, Shared};
use crate::purge::bus::PurgeBusService;
use crate::purge::metrics::PurgeMetrics;
use crate::purge::{PurgeBus, Purger};
use crate::tls::metrics::TlsMetrics;
use crate::tls::{CertResolver, HandshakeCounter};
use crate::upstream::fleet::Fleet;
use crate::upstream::{ClientSlots, Origins};
use crate::warm::claims::WarmClaims;
use crate::warm::metrics::WarmMetrics;
use crate::warm::{WarmQueue, Warmer};
use pingora::listeners::tls::TlsSettings;

/// Keys remembered as hit-for-miss at most (about 100 bytes each).
const HIT_FOR_MISS_CAPACITY: u64 = 1_000_000;

/// Builds a ready-to-run server for `runtime` (its configuration read from `path` with
/// `overrides`, which a reload applies again); services may still be added before `run`.
///
/// With `upgrade`, the listening sockets are taken over from the running Floodgate that
/// shares this configuration's `runtime_dir` once it receives SIGQUIT (Pingora's
/// graceful upgrade): no connection is refused during a binary upgrade.
pub fn build(
    runtime: Runtime,
    path: Option<PathBuf>,
    overrides: Overrides,
    upgrade: bool,
) -> anyhow::Result<Server> {
    let config = runtime.config.clone();
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
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let metrics = Arc::new(Metrics::new()?);
    // One origin budget for the nodes on this Redis.
    let fleet = match (&runtime.redis, config.redis.shared_limit) {
        (Some(client), true) => Some(Fleet::new(
            client.clone(),
            &config.redis.key_prefix,
            Duration::from_millis(config.redis.timeout_ms),
            metrics.registry(),
        )?),
        _ => None,
    };
    let (origins, health_probe) =
        Origins::new(&config, runtime.classes.clone(), &metrics, fleet.clone())?;
    let origins = Arc::new(origins);
    server.add_service(health_probe);
    if let Some(fleet) = fleet {
        fleet.show_share(config.limits.max_inflight);
        server.add_service(background_service(
            "fleet origin budget",
            FleetService(fleet, origins.limiter().clone()),
        ));
    }

    // Pingora's cache API takes `&'static`; these live for the whole process anyway.
    let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(
        config.cache.memory_bytes,
        // A fetch can run for the first-byte timeout, plus time for its body.
        Duration::from_secs(config.origin.first_byte_timeout_secs + 60),
    )));
    store.set_keep_purged_secs(config.purge.keep_purged_secs);
    // The store keeps each page's ESI template, parsed when it is stored.
    store.set_deriver(Arc::new(crate::esi::EsiDeriver));
    let marks: &'static HitForMissMarks = Box::leak(Box::new(HitForMissMarks::new(
        HIT_FOR_MISS_CAPACITY,
        Duration::from_secs(config.cache.uncacheable_ttl_secs),
        Duration::from_secs(config.cache.private_uncacheable_ttl_secs),
    )));
    // A fetch that holds the lock longer than the origin may take is presumed dead.
    let lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(Duration::from_secs(
        config.origin.first_byte_timeout_secs,
    )));

    let warm_metrics = Arc::new(WarmMetrics::register(metrics.registry())?);
    let warm_queue = config
        .warm
        .enabled
        .then(|| Arc::new(WarmQueue::new(config.warm.queue_size)));
    if let Some(queue) = &warm_queue {
        let warmer = Warmer::new(
            queue.clone(),
            format!("http://{}", loopback_for(&config.server.listen[0])),
            config.warm.rate_per_sec,
            config.warm.concurrency,
            warm_metrics.clone(),
        );
        server.add_service(background_service("re-warmer", warmer));
    }
    let (insights, aggregator) = Insights::new(metrics.registry(), &config.insights)?;
    if let Some(aggregator) = aggregator {
        server.add_service(background_service(
            "insights",
            InsightsService(std::sync::Mutex::new(Some(aggregator))),
        ));
    }
    let purger = Arc::new(Purger::new(
        store,
        warm_queue.clone(),
        Duration::from_secs(config.warm.hot_window_secs),
        PurgeMetrics::register(metrics.registry())?,
        insights.clone(),
    ));
    // Registered either way, so dashboards show the tier off rather than nothing.
    let disk_metrics = DiskMetrics::register(metrics.registry())?;
    if !config.cache.disk_dir.is_empty() {
        let disk = DiskTier::new(
            &config.cache.disk_dir,
            config.cache.disk_bytes,
            // With a purge bus, purges sent while this node was down cannot be known.
            runtime.redis.is_some(),
            disk_metrics,
        );
        store.attach_disk(disk.clone());
        server.add_service(background_service("disk tier", DiskService { disk, store }));
    }
    let bus = if let Some(client) = runtime.redis.clone() {
        let shared = if config.redis.shared_cache {
            let shared = SharedTier::new(&config.redis, client.clone(), &metrics)?;
            store.attach_shared(shared.clone());
            purger.attach_shared(shared.clone());
            Some(shared)
        } else {
            None
        };
        if config.warm.enabled {
            // One node of the fleet re-warms each purged hot page.
            purger.attach_claims(Arc::new(WarmClaims::new(
                client.clone(),
                &config.redis.key_prefix,
                Duration::from_millis(config.redis.timeout_ms),
                format!("{}", std::process::id()),
            )));
        }
        let bus = PurgeBus::new(&config.redis, client, purger.clone(), &metrics)?;
        purger.attach_bus(bus.clone());
        server.add_service(background_service(
            "purge bus",
            PurgeBusService(bus.clone(), shared),
        ));
        Some(bus)
    } else {
        None
    };

    // One resolver for every TLS listener, holding the certificates a reload re-reads.
    let tls = match (&runtime.certificates, config.server.tls_listen.is_empty()) {
        (Some(certificates), false) => {
            let tls_metrics = Arc::new(TlsMetrics::register(metrics.registry())?);
            for (i, names) in certificates.names().iter().enumerate() {
                tracing::info!(certificate = i, ?names, "TLS certificate loaded");
            }
            Some((
                Arc::new(CertResolver::new(certificates.clone(), tls_metrics.clone())),
                tls_metrics,
            ))
        }
        _ => None,
    };
    let runtime = Arc::new(ArcSwap::from_pointee(runtime));
    let reloader = Arc::new(Reloader::new(
        path,
        overrides,
        runtime.clone(),
        origins.clone(),
        store,
        tls.as_ref().map(|(resolver, _)| resolver.clone()),
        &metrics,
    )?);
    server.add_service(background_service(
        "reload on SIGHUP",
        ReloadOnHangup(reloader.clone()),
    ));

    if !config.server.admin_listen.is_empty() {
        let admin = Admin {
            metrics: metrics.clone(),
            cache_metrics: CacheMetrics::register(metrics.registry())?,
            warm_metrics,
            store,
            origins: origins.clone(),
            warm_queue,
            reloader,
            purger: purger.clone(),
            runtime: runtime.clone(),
            proxy_addr: loopback_for(&config.server.listen[0]),
            bus,
            insights: insights.clone(),
        };
        let mut admin_service = Service::new("admin".to_string(), admin);
        admin_service.add_tcp(&config.server.admin_listen);
        admin_service.threads = Some(1);
        server.add_service(admin_service);
    }

    let listen = config.server.listen.clone();
    let shared = Shared {
        store,
        marks,
        lock,
        origins,
        requests: Arc::new(RequestMetrics::register(metrics.registry())?),
        esi_metrics: Arc::new(EsiMetrics::register(metrics.registry())?),
        purger,
        runtime,
        variants: Arc::new(Variants::default()),
        client_slots: Arc::new(ClientSlots::default()),
        insights,
        response_budget: crate::cache::inflate::ResponseBudget::register(metrics.registry())?,
    };
    let door_metrics = DoorMetrics::register(metrics.registry())?;
    // Pingora's proxy for `shared`, behind the front door's deadlines.
    let server_conf = server.configuration.clone();
    let front_door = |shared: Shared| {
        let mut proxy = http_proxy(&server_conf, Floodgate::new(shared.clone()));
        let mut options = HttpServerOptions::default();
        options.h2_idle_timeout = Some(Duration::from_secs(config.server.h2_idle_timeout_secs));
        proxy.server_options = Some(options);
        FrontDoor::new(proxy, shared.runtime.clone(), door_metrics.clone())
    };
    if !config.server.proxy_protocol_listen.is_empty() {
        server.add_service(ProxyProtocolService::new(
            config.server.proxy_protocol_listen.clone(),
            front_door(shared.clone()),
            shared.runtime.clone(),
            threads,
        ));
    }
    let hello_deadline = Arc::new(HelloDeadline::new(
        shared.runtime.clone(),
        door_metrics.clone(),
    ));
    let mut service = Service::new("Floodgate proxy".to_string(), front_door(shared));
    for addr in &listen {
        service.add_tcp(addr);
    }
    if let Some((resolver, tls_metrics)) = &tls {
        for addr in &config.server.tls_listen {
            let mut settings =
                TlsSettings::with_callbacks(Box::new(HandshakeCounter(tls_metrics.clone())))?;
            settings.set_cert_resolver(resolver.clone());
            if config.tls.http2 {
                settings.enable_h2();
            }
            service.add_tls_with_settings(addr, None, settings);
        }
        service.endpoints().set_pre_tls_callback(hello_deadline);
    }
    service.threads = Some(threads);
    server.add_service(service);
    Ok(server)
}

/// Renews this node's leases in the fleet's budget and admits its waiters through it.
struct FleetService(Arc<Fleet>, Arc<crate::upstream::limiter::Limiter>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for FleetService {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        tokio::join!(
            self.0.clone().run(shutdown.clone()),
            self.1.clone().dispatch(shutdown),
        );
    }
}

/// Opens the disk tier and runs its writer until shutdown.
/// The insights' aggregator, run once (Pingora starts a background service by `&self`).
struct InsightsService(std::sync::Mutex<Option<Aggregator>>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for InsightsService {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        let aggregator = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(aggregator) = aggregator {
            aggregator.run(shutdown).await;
        }
    }
}

struct DiskService {
    disk: Arc<DiskTier>,
    store: &'static MemoryStore,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for DiskService {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        let store = self.store;
        self.disk
            .clone()
            .run(
                store.recent_purges(),
                Arc::new(move |key: &HashBinary| store.holds(key)),
                shutdown,
            )
            .await;
    }
}

/// Where Floodgate can reach its own listener: a wildcard address becomes loopback.
fn loopback_for(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => listen.to_string(),
    }
}
