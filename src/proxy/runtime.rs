//! The configuration as the request path uses it: compiled once, swapped whole on reload.
//! Each request takes the current one when it starts and keeps it to the end, so a
//! reload never gives one request two different rule sets.

use crate::config::Config;
use crate::policy::Rules;
use crate::purge::PurgeAcl;
use crate::upstream::ShedPages;

pub struct Runtime {
    pub config: Config,
    pub rules: Rules,
    pub purge_acl: PurgeAcl,
    /// Peers whose `X-Forwarded-For` is believed (`server.trusted_proxies`).
    pub trusted_proxies: PurgeAcl,
    pub pages: ShedPages,
}

impl Runtime {
    /// Compiles a validated configuration; errors name the key at fault.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        Ok(Self {
            rules: Rules::new(&config)?,
            purge_acl: PurgeAcl::new(&config.purge.allow)
                .map_err(|e| anyhow::anyhow!("purge.allow: {e}"))?,
            trusted_proxies: PurgeAcl::new(&config.server.trusted_proxies)
                .map_err(|e| anyhow::anyhow!("server.trusted_proxies: {e}"))?,
            pages: ShedPages::load(&config.limits)
                .map_err(|(key, reason)| anyhow::anyhow!("{key}: {reason}"))?,
            config,
        })
    }
}
