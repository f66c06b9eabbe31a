//! The Magento origins behind Floodgate: balanced round-robin, probed in the background,
//! and entered only through the limiter.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::services::background::{background_service, GenBackgroundService};
use pingora::upstreams::peer::HttpPeer;

use super::classes::{ClassId, Classes};
use super::discovery::{DiscoveryMetrics, OriginDiscovery};
use super::fleet::Fleet;
use super::health::SharedHealthCheck;
use super::health::WindowedHealthCheck;
use super::limiter::{Limiter, Permit, Pick, Shed};
use super::metrics::OriginMetrics;
use crate::config::{invalid, Config, ConfigError, LimitsSection, OriginSection};
use crate::metrics::Metrics;
use pingora::lb::Backends;

/// Why a stale copy is served without asking the origin (the `Grace` header says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    Unhealthy,
    Overloaded,
    Maintenance,
}

impl From<Shed> for StaleReason {
    fn from(shed: Shed) -> Self {
        match shed {
            Shed::QueueFull | Shed::Timeout | Shed::WouldTimeOut | Shed::ClientCap => {
                StaleReason::Overloaded
            }
            Shed::Unhealthy => StaleReason::Unhealthy,
            Shed::Maintenance => StaleReason::Maintenance,
        }
    }
}

struct Balancer(Arc<LoadBalancer<RoundRobin>>);

impl Pick for Balancer {
    fn pick(&self, accept: &dyn Fn(SocketAddr) -> bool) -> Option<SocketAddr> {
        self.0
            .select_with(b"", 256, |backend, healthy| {
                healthy && backend.addr.as_inet().is_some_and(|a| accept(*a))
            })
            .and_then(|backend| backend.addr.as_inet().copied())
    }

    fn any_ready(&self) -> bool {
        let backends = self.0.backends();
        backends.get_backend().iter().any(|b| backends.ready(b))
    }
}

pub struct Origins {
    balancer: Arc<Balancer>,
    limiter: Arc<Limiter>,
    discovery: Arc<OriginDiscovery>,
    health: Arc<WindowedHealthCheck>,
    maintenance: AtomicBool,
    metrics: Arc<OriginMetrics>,
    /// (connect, first byte), replaced by a reload.
    timeouts: arc_swap::ArcSwap<(Duration, Duration)>,
}

/// Pingora's service discovery over the shared `OriginDiscovery` (the load balancer owns
/// its discovery; the reload needs to reach it too).
struct Discover(Arc<OriginDiscovery>);

#[async_trait::async_trait]
impl pingora::lb::discovery::ServiceDiscovery for Discover {
    async fn discover(
        &self,
    ) -> pingora::Result<(
        std::collections::BTreeSet<pingora::lb::Backend>,
        std::collections::HashMap<u64, bool>,
    )> {
        self.0.discover().await
    }
}

/// How often the balancer asks discovery: each name is resolved again only when due
/// (`origin.resolve_secs`, or its TTL), so this bounds how late a change is seen.
const DISCOVERY_EVERY: Duration = Duration::from_secs(1);

/// Why the origins could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OriginsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot register the origin metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Origins {
    /// Builds the balancer and the background service that runs its health probes; the
    /// caller adds the service to the server.
    pub fn new(
        config: &Config,
        classes: Arc<Classes>,
        metrics: &Metrics,
        fleet: Option<Arc<Fleet>>,
    ) -> Result<(Self, GenBackgroundService<LoadBalancer<RoundRobin>>), OriginsError> {
        let discovery = Arc::new(OriginDiscovery::new(
            &config.origin,
            DiscoveryMetrics::register(metrics.registry())?,
        )?);
        let metrics = Arc::new(OriginMetrics::register(metrics.registry())?);
        let origin = &config.origin;
        let mut balancer = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(
            Discover(discovery.clone()),
        )));
        let health = Arc::new(WindowedHealthCheck::new(origin)?);
        balancer.set_health_check(Box::new(SharedHealthCheck(health.clone())));
        balancer.health_check_frequency =
            Some(Duration::from_secs(origin.health_check_interval_secs));
        balancer.parallel_health_check = true;
        balancer.update_frequency = Some(DISCOVERY_EVERY);
        // The first set now, before the server starts: requests at start find origins.
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| invalid("origin.addresses", format!("cannot resolve at start: {e}")))?
            .block_on(balancer.update());
        if let Err(e) = first {
            tracing::warn!(error = %e, "origins: the first discovery failed; retrying in the background");
        }
        let service = background_service("origin health probe", balancer);
        let balancer = Arc::new(Balancer(service.task()));
        let limiter = Limiter::new(
            &config.limits,
            classes,
            balancer.clone(),
            metrics.clone(),
            fleet,
        );
        let follower = Arc::downgrade(&limiter);
        discovery.on_set(Box::new(move |set| {
            if let Some(limiter) = follower.upgrade() {
                limiter.retain(set);
            }
        }));
        Ok((
            Self {
                balancer,
                limiter,
                discovery,
                health,
                maintenance: AtomicBool::new(false),
                metrics,
                timeouts: arc_swap::ArcSwap::from_pointee((
                    Duration::from_secs(origin.connect_timeout_secs),
                    Duration::from_secs(origin.first_byte_timeout_secs),
                )),
            },
            service,
        ))
    }

    /// Applies reloaded limits and priority classes (the reloaded runtime's) to requests
    /// from now on, and to those already queued. Called before the runtime is swapped:
    /// the limiter learns the new classes before any request can be classified by them;
    /// a request classified by the old list meanwhile is clamped to it.
    pub fn reconfigure(&self, limits: &LimitsSection, classes: Arc<Classes>) {
        self.limiter.reconfigure(limits, classes);
    }

    /// Applies a reloaded `origin` section: the list (discovery follows it within a
    /// second; removed servers drain), the probe's URL, timeout and window, and the
    /// timeouts. Only `health_check_interval_secs` waits for a restart. `Err` leaves
    /// the section in force unchanged.
    pub fn reconfigure_origin(&self, origin: &OriginSection) -> Result<(), ConfigError> {
        let probe = WindowedHealthCheck::probe_for(origin)?;
        self.discovery.reconfigure(origin)?;
        self.health.reconfigure(origin, probe);
        self.timeouts.store(Arc::new((
            Duration::from_secs(origin.connect_timeout_secs),
            Duration::from_secs(origin.first_byte_timeout_secs),
        )));
        Ok(())
    }

    /// The limiter: its fleet's dispatcher runs as a background service.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// The origin side's metrics (owned here, recorded by the proxy where it sees the
    /// origin's answer).
    pub fn metrics(&self) -> &OriginMetrics {
        &self.metrics
    }

    /// Waits for a slot at a healthy origin, at most `wait` when given (else the class's
    /// longest wait); the permit must live until the origin is done.
    pub async fn admit(
        &self,
        class: ClassId,
        wait: Option<Duration>,
    ) -> Result<(HttpPeer, Permit), Shed> {
        if self.in_maintenance() {
            return Err(Shed::Maintenance);
        }
        let permit = self.limiter.acquire_within(class, wait).await?;
        let mut peer = HttpPeer::new(permit.origin, false, String::new());
        let (connect, first_byte) = **self.timeouts.load();
        peer.options.connection_timeout = Some(connect);
        peer.options.read_timeout = Some(first_byte);
        Ok((peer, permit))
    }

    /// Why a request of `class` holding a stale copy should get it now instead of
    /// waiting for the origin; `None` when the origin can take it.
    pub fn stale_reason(&self, class: ClassId) -> Option<StaleReason> {
        if self.in_maintenance() {
            Some(StaleReason::Maintenance)
        } else if !self.any_healthy() {
            Some(StaleReason::Unhealthy)
        } else if self.limiter.would_wait(class) {
            Some(StaleReason::Overloaded)
        } else {
            None
        }
    }

    /// Whether a request of `class` would have to queue for a slot now.
    pub fn would_wait(&self, class: ClassId) -> bool {
        self.limiter.would_wait(class)
    }

    /// Whether at least one origin passes its health probe (Varnish's `std.healthy`).
    pub fn any_healthy(&self) -> bool {
        self.balancer.any_ready()
    }

    pub fn in_maintenance(&self) -> bool {
        self.maintenance.load(Ordering::Relaxed)
    }

    pub fn set_maintenance(&self, on: bool) {
        self.maintenance.store(on, Ordering::Relaxed);
        self.metrics.maintenance(on);
    }
}
