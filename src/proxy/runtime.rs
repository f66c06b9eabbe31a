//! The configuration as the request path uses it: compiled once, swapped whole on reload.
//! Each request takes the current one when it starts and keeps it to the end, so a
//! reload never gives one request two different rule sets, priority classes included
//! (the limiter is handed the same classes when the runtime is swapped).

use std::sync::Arc;

use crate::cluster;
use crate::config::{invalid, Config, ConfigError};
use crate::policy::Rules;
use crate::purge::PurgeAcl;
use crate::tls::Certificates;
use crate::upstream::{Classes, ShedPages};

pub struct Runtime {
    pub config: Config,
    pub rules: Rules,
    pub purge_acl: PurgeAcl,
    /// Peers whose `X-Forwarded-For` is believed (`server.trusted_proxies`).
    pub trusted_proxies: PurgeAcl,
    pub pages: ShedPages,
    /// The origin's priority classes (`limits.class`).
    pub classes: Arc<Classes>,
    /// The client for `redis.url`; `None` without Redis.
    pub redis: Option<cluster::Client>,
    /// The certificates of `[[tls.certificates]]`, read from their files by this
    /// compile (a reload re-reads them); `None` without any.
    pub certificates: Option<Arc<Certificates>>,
    /// Floodgate terminates TLS itself (`server.tls_listen`): the plain listeners' peers
    /// are visitors, whose SSL-offload header is not believed.
    pub terminates_tls: bool,
    /// `Strict-Transport-Security` for HTTPS responses (`server.hsts_max_age_secs`),
    /// made once rather than per response.
    pub hsts: Option<http::HeaderValue>,
}

impl Runtime {
    /// Builds everything `config` describes, once; an error names the key at fault.
    /// `floodgate check-config`, the start and every reload go through here.
    pub fn compile(config: Config) -> Result<Self, ConfigError> {
        let limits = &config.limits;
        Ok(Self {
            rules: Rules::new(&config)?,
            purge_acl: PurgeAcl::new(&config.purge.allow)
                .map_err(|e| invalid("purge.allow", e.to_string()))?,
            trusted_proxies: PurgeAcl::new(&config.server.trusted_proxies)
                .map_err(|e| invalid("server.trusted_proxies", e.to_string()))?,
            pages: ShedPages::load(limits)?,
            classes: Arc::new(Classes::new(limits)?),
            redis: match config.redis.url.is_empty() {
                true => None,
                false => Some(cluster::client(&config.redis)?),
            },
            certificates: match config.tls.certificates.is_empty() {
                true => None,
                false => Some(Arc::new(Certificates::load(&config.tls)?)),
            },
            terminates_tls: !config.server.tls_listen.is_empty(),
            hsts: match config.server.hsts_max_age_secs {
                0 => None,
                secs => http::HeaderValue::try_from(format!("max-age={secs}")).ok(),
            },
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<Runtime, ConfigError> {
        let config: Config = toml::from_str(text).expect("parses");
        Runtime::compile(config)
    }

    #[test]
    fn what_the_file_describes_is_built_once_and_errors_name_the_key() {
        let runtime = compile("").expect("the defaults compile");
        assert!(runtime.redis.is_none());
        assert!(runtime.classes.name(runtime.classes.warm()) == "warm");
        for (text, key) in [
            ("[purge]\nallow = [\"10.0.0.0/33\"]\n", "purge.allow"),
            (
                "[server]\ntrusted_proxies = [\"x\"]\n",
                "server.trusted_proxies",
            ),
            (
                "[[limits.class]]\nname = \"x\"\nuser_agents = [\"[\"]\n",
                "limits.class[0].user_agents",
            ),
            ("[redis]\nurl = \"nope\"\n", "redis.url"),
            (
                "[[tls.certificates]]\ncert_file = \"/nonexistent.pem\"\nkey_file = \"/nonexistent.key\"\n",
                "tls.certificates[0]",
            ),
        ] {
            match compile(text) {
                Err(ConfigError::Invalid { key: named, .. }) => assert_eq!(named, key, "{text}"),
                Err(other) => panic!("{text}: {other}"),
                Ok(_) => panic!("{text}: compiled"),
            }
        }
    }
}
