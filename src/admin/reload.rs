//! Hot reload: re-read the config file on SIGHUP or `POST /reload`, compile it, and swap
//! what the request path uses without dropping a connection or the cache.
//!
//! Which keys apply at once and which need a restart is stated on the model
//! (`Config::restart_only_changes`); those are reported, not applied. A file that does
//! not load, validate or compile changes nothing: the old configuration keeps serving,
//! and the failure is logged and counted.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::metrics::ConfigMetrics;
use crate::cache::MemoryStore;
use crate::config::{self, Config, Overrides};
use crate::metrics::Metrics;
use crate::proxy::Runtime;
use crate::tls::CertResolver;
use crate::upstream::Origins;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload: Floodgate was started without -c")]
    NoFile,
    /// The file does not load, validate or compile; it names the key.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// What a successful reload did.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// Hash of the effective configuration now in force.
    pub hash: String,
    /// Keys that changed in the file but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

pub struct Reloader {
    path: Option<PathBuf>,
    overrides: Overrides,
    runtime: Arc<ArcSwap<Runtime>>,
    origins: Arc<Origins>,
    store: &'static MemoryStore,
    /// Hands the listeners the certificates each reload re-reads (`server.tls_listen`).
    tls: Option<Arc<CertResolver>>,
    metrics: ConfigMetrics,
    /// The configuration the process started with: restart-only keys are compared to it.
    started_with: Config,
    /// One reload at a time.
    busy: Mutex<()>,
}

impl Reloader {
    pub fn new(
        path: Option<PathBuf>,
        overrides: Overrides,
        runtime: Arc<ArcSwap<Runtime>>,
        origins: Arc<Origins>,
        store: &'static MemoryStore,
        tls: Option<Arc<CertResolver>>,
        metrics: &Metrics,
    ) -> prometheus::Result<Self> {
        let started_with = runtime.load().config.clone();
        let metrics = ConfigMetrics::register(metrics.registry())?;
        metrics.loaded(&config_hash(&started_with));
        Ok(Self {
            path,
            overrides,
            runtime,
            origins,
            store,
            tls,
            metrics,
            started_with,
            busy: Mutex::new(()),
        })
    }

    /// Re-reads the file; on any error nothing changes and the reason is returned.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.try_reload();
        match &result {
            Ok(done) => {
                self.metrics.reloaded(true);
                self.metrics.loaded(&done.hash);
                tracing::info!(hash = %done.hash, needs_restart = ?done.needs_restart, "configuration reloaded");
            }
            Err(reason) => {
                self.metrics.reloaded(false);
                tracing::error!(%reason, "configuration reload refused; the previous configuration stays in force");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<Reloaded, ReloadError> {
        let Some(path) = &self.path else {
            return Err(ReloadError::NoFile);
        };
        let config = config::load(Some(path), &self.overrides)?;
        let runtime = Runtime::compile(config.clone())?;
        // The origins first: a list that cannot be used refuses the whole reload.
        self.origins.reconfigure_origin(&config.origin)?;
        self.origins
            .reconfigure(&config.limits, runtime.classes.clone());
        self.store
            .set_keep_purged_secs(config.purge.keep_purged_secs);
        // Handshakes from now on get the certificates just read; open connections keep
        // the ones they were made with.
        if let (Some(resolver), Some(certificates)) = (&self.tls, &runtime.certificates) {
            resolver.replace(certificates.clone());
        }
        self.runtime.store(Arc::new(runtime));
        Ok(Reloaded {
            hash: config_hash(&config),
            needs_restart: self.started_with.restart_only_changes(&config),
        })
    }
}

/// A short, stable fingerprint of an effective configuration, for the info metric.
pub fn config_hash(config: &Config) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    config.to_toml().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Reloads on SIGHUP, as `systemctl reload` sends it.
pub struct ReloadOnHangup(pub Arc<Reloader>);

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(signal) => signal,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload through the admin listener instead");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => {
                    let reloader = self.0.clone();
                    // Reading and compiling the config is blocking work.
                    let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_and_pools_are_reported_as_needing_a_restart() {
        let old = Config::default();
        let mut new = Config::default();
        new.server.threads = 7;
        new.limits.max_inflight = 3;
        new.magento.pass_url_patterns = vec!["^/x".into()];
        assert_eq!(old.restart_only_changes(&new), vec!["server"]);
        assert_ne!(config_hash(&old), config_hash(&new));
        assert_eq!(config_hash(&old), config_hash(&Config::default()));
    }
}
