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
use super::fleet::Fleet;
use super::health::WindowedHealthCheck;
use super::limiter::{Limiter, Permit, Pick, Shed};
use super::metrics::OriginMetrics;
use crate::config::{invalid, Config, ConfigError, LimitsSection};
use crate::metrics::Metrics;

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
    maintenance: AtomicBool,
    metrics: Arc<OriginMetrics>,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
}

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
        let metrics = Arc::new(OriginMetrics::register(metrics.registry())?);
        let origin = &config.origin;
        let mut balancer = LoadBalancer::<RoundRobin>::try_from_iter(origin.addresses.iter())
            .map_err(|e| invalid("origin.addresses", e.to_string()))?;
        balancer.set_health_check(Box::new(WindowedHealthCheck::new(origin)?));
        balancer.health_check_frequency =
            Some(Duration::from_secs(origin.health_check_interval_secs));
        balancer.parallel_health_check = true;
        let service = background_service("origin health probe", balancer);
        let balancer = Arc::new(Balancer(service.task()));
        let limiter = Limiter::new(
            &config.limits,
            classes,
            balancer.clone(),
            metrics.clone(),
            fleet,
        );
        Ok((
            Self {
                balancer,
                limiter,
                maintenance: AtomicBool::new(false),
                metrics,
                connect_timeout: Duration::from_secs(origin.connect_timeout_secs),
                first_byte_timeout: Duration::from_secs(origin.first_byte_timeout_secs),
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
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.first_byte_timeout);
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
