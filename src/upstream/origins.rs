//! The Magento origins behind Floodgate, balanced round-robin and probed in the background.

use std::sync::Arc;
use std::time::Duration;

use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::services::background::{background_service, GenBackgroundService};
use pingora::upstreams::peer::HttpPeer;

use super::health::WindowedHealthCheck;
use crate::config::OriginSection;

pub struct Origins {
    balancer: Arc<LoadBalancer<RoundRobin>>,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
}

impl Origins {
    /// Builds the balancer and the background service that runs its health probes; the
    /// caller adds the service to the server.
    pub fn new(
        config: &OriginSection,
    ) -> anyhow::Result<(Self, GenBackgroundService<LoadBalancer<RoundRobin>>)> {
        let mut balancer = LoadBalancer::<RoundRobin>::try_from_iter(config.addresses.iter())
            .map_err(|e| anyhow::anyhow!("origin.addresses: {e}"))?;
        balancer.set_health_check(Box::new(WindowedHealthCheck::new(config)?));
        balancer.health_check_frequency =
            Some(Duration::from_secs(config.health_check_interval_secs));
        balancer.parallel_health_check = true;
        let service = background_service("origin health probe", balancer);
        Ok((
            Self {
                balancer: service.task(),
                connect_timeout: Duration::from_secs(config.connect_timeout_secs),
                first_byte_timeout: Duration::from_secs(config.first_byte_timeout_secs),
            },
            service,
        ))
    }

    /// A healthy origin for the next request, or `None` when every origin is down.
    pub fn select(&self) -> Option<HttpPeer> {
        let backend = self.balancer.select(b"", 256)?;
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.first_byte_timeout);
        Some(peer)
    }

    /// Whether at least one origin passes its health probe (Varnish's `std.healthy`).
    pub fn any_healthy(&self) -> bool {
        let backends = self.balancer.backends();
        backends.get_backend().iter().any(|b| backends.ready(b))
    }
}
