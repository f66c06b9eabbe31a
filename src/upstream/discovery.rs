//! Which origin servers there are: `origin.addresses`, each an address or a DNS name
//! resolved again every `origin.resolve_secs` (or at its records' TTL when that is
//! sooner), through Pingora's service discovery, so its load balancer, health probe and
//! the limiter all follow the same set.
//!
//! Invariant: the set is never empty because a name stopped resolving: a name that fails
//! keeps its last good addresses (counted in `floodgate_origin_resolve_failures_total`
//! and logged); one that never resolved yet contributes nothing until it does. Each
//! address found is an origin server of its own (slots, probe, metrics); an address that
//! goes gets no new requests, and the limiter drops it once its requests are done
//! (`Limiter::retain`). The list itself is replaced by a reload.
//!
//! Why hickory's resolver and not the system's (`getaddrinfo`): it gives each answer's
//! TTL, never blocks a runtime thread, and can be pointed at a resolver of the
//! operator's choosing (`origin.dns_servers`).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use prometheus::{IntCounterVec, IntGaugeVec};

use crate::config::{invalid, ConfigError, OriginEntry as Entry, OriginSection};

/// The entries of `origin.addresses`, each checked.
pub fn entries(origin: &OriginSection) -> Result<Vec<Entry>, ConfigError> {
    origin
        .addresses
        .iter()
        .map(|a| Entry::parse(a.trim()).map_err(|e| invalid("origin.addresses", e)))
        .collect()
}

/// Told the set of origin addresses after each discovery run.
pub type SetListener = Box<dyn Fn(&BTreeSet<SocketAddr>) + Send + Sync>;

/// What one name last resolved to, and until when that holds.
struct Resolved {
    addresses: Vec<SocketAddr>,
    until: Instant,
}

/// The origins' metrics that belong to discovery.
pub struct DiscoveryMetrics {
    failures: IntCounterVec,
    addresses: IntGaugeVec,
}

impl DiscoveryMetrics {
    pub fn register(r: &prometheus::Registry) -> prometheus::Result<Self> {
        Ok(Self {
            failures: crate::metrics::counter_vec(
                r,
                "floodgate_origin_resolve_failures_total",
                "Resolutions of an origin name (origin.addresses) that failed; its last good addresses stay in use",
                &["name"],
            )?,
            addresses: crate::metrics::gauge_vec(
                r,
                "floodgate_origin_addresses",
                "Addresses each origin name resolves to now (an address entry counts 1)",
                &["name"],
            )?,
        })
    }
}

/// Pingora's service discovery for `origin.addresses`.
pub struct OriginDiscovery {
    entries: ArcSwap<Vec<Entry>>,
    every: ArcSwap<Duration>,
    dns_servers: Vec<SocketAddr>,
    names: Mutex<HashMap<(String, u16), Resolved>>,
    /// Told the address set whenever discovery ran.
    on_set: Mutex<Option<SetListener>>,
    metrics: DiscoveryMetrics,
}

impl OriginDiscovery {
    pub fn new(origin: &OriginSection, metrics: DiscoveryMetrics) -> Result<Self, ConfigError> {
        let dns_servers = origin
            .dns_servers
            .iter()
            .map(|s| {
                s.parse::<SocketAddr>()
                    .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        invalid(
                            "origin.dns_servers",
                            format!("`{s}` is not an IP address (with an optional :port)"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            entries: ArcSwap::from_pointee(entries(origin)?),
            every: ArcSwap::from_pointee(Duration::from_secs(origin.resolve_secs)),
            dns_servers,
            names: Mutex::new(HashMap::new()),
            on_set: Mutex::new(None),
            metrics,
        })
    }

    /// A reloaded `origin` section: its list and interval apply from the next run.
    pub fn reconfigure(&self, origin: &OriginSection) -> Result<(), ConfigError> {
        self.entries.store(Arc::new(entries(origin)?));
        self.every
            .store(Arc::new(Duration::from_secs(origin.resolve_secs)));
        Ok(())
    }

    /// `f` is told the set of addresses after every run.
    pub fn on_set(&self, f: SetListener) {
        *lock(&self.on_set) = Some(f);
    }

    /// A resolver for one round: made in the runtime that resolves (the first round
    /// runs before the server's runtimes exist), reading `/etc/resolv.conf` afresh.
    fn resolver(&self) -> Result<TokioResolver, String> {
        let builder = if self.dns_servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?
        } else {
            let servers = self
                .dns_servers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let mut builder = builder;
        // Floodgate keeps its own copy of each answer for its TTL; the resolver's cache
        // would only delay a change.
        builder.options_mut().cache_size = 0;
        builder
            .build()
            .map_err(|e| format!("cannot start the resolver: {e}"))
    }

    /// The addresses of `name`: resolved again when due, else the ones it had.
    async fn resolve(&self, name: &str, port: u16) -> Vec<SocketAddr> {
        let key = (name.to_string(), port);
        let now = Instant::now();
        if let Some(known) = lock(&self.names).get(&key).filter(|r| r.until > now) {
            return known.addresses.clone();
        }
        let every = **self.every.load();
        let answer = match self.resolver() {
            Ok(resolver) => {
                // A name is absolute: no search domains appended.
                let fqdn = if name.ends_with('.') {
                    name.to_string()
                } else {
                    format!("{name}.")
                };
                resolver
                    .lookup_ip(fqdn.as_str())
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        let mut names = lock(&self.names);
        match answer {
            Ok(found) => {
                let mut addresses: Vec<SocketAddr> =
                    found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
                addresses.sort();
                addresses.dedup();
                if addresses.is_empty() {
                    return self.failed(&mut names, key, "the answer held no address", every);
                }
                let ttl = found.valid_until().saturating_duration_since(now);
                let until = now + every.min(ttl.max(Duration::from_secs(1)));
                if names
                    .get(&key)
                    .is_none_or(|known| known.addresses != addresses)
                {
                    tracing::info!(name, port, ?addresses, "origin name resolved");
                }
                self.metrics
                    .addresses
                    .with_label_values(&[name])
                    .set(addresses.len() as i64);
                names.insert(
                    key,
                    Resolved {
                        addresses: addresses.clone(),
                        until,
                    },
                );
                addresses
            }
            Err(e) => self.failed(&mut names, key, &e, every),
        }
    }

    /// A name that did not resolve keeps its last good addresses, asked again at the
    /// next interval.
    fn failed(
        &self,
        names: &mut HashMap<(String, u16), Resolved>,
        key: (String, u16),
        why: &str,
        every: Duration,
    ) -> Vec<SocketAddr> {
        self.metrics.failures.with_label_values(&[&key.0]).inc();
        let retry = Instant::now() + every.min(Duration::from_secs(5));
        match names.get_mut(&key) {
            Some(known) => {
                tracing::warn!(name = %key.0, error = why, kept = ?known.addresses, "origin name did not resolve: its last good addresses stay in use");
                known.until = retry;
                known.addresses.clone()
            }
            None => {
                tracing::warn!(name = %key.0, error = why, "origin name did not resolve, and never has: no origin from it yet");
                Vec::new()
            }
        }
    }

    /// The current set, every name resolved as due.
    pub async fn addresses(&self) -> BTreeSet<SocketAddr> {
        let entries = self.entries.load_full();
        let mut set = BTreeSet::new();
        for entry in entries.iter() {
            match entry {
                Entry::Address(addr) => {
                    set.insert(*addr);
                }
                Entry::Name(name, port) => set.extend(self.resolve(name, *port).await),
            }
        }
        // Names no longer listed are forgotten, with their series.
        let listed: Vec<(String, u16)> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Name(n, p) => Some((n.clone(), *p)),
                Entry::Address(_) => None,
            })
            .collect();
        lock(&self.names).retain(|key, _| {
            let keep = listed.contains(key);
            if !keep {
                let _ = self.metrics.addresses.remove_label_values(&[&key.0]);
            }
            keep
        });
        set
    }
}

#[async_trait]
impl ServiceDiscovery for OriginDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let set = self.addresses().await;
        if let Some(f) = lock(&self.on_set).as_ref() {
            f(&set);
        }
        let backends = set
            .into_iter()
            .map(|addr| Backend {
                addr: PeerAddr::Inet(addr),
                weight: 1,
                ext: http::Extensions::new(),
            })
            .collect();
        Ok((backends, HashMap::new()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
