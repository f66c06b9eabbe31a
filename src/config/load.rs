//! Reading, overriding and validating the configuration.

use std::net::ToSocketAddrs;
use std::path::Path;

/// The least `limits.response_buffer_bytes`: one inflating response's share.
pub const MIN_RESPONSE_BUFFER_BYTES: usize = 64 * 1024;

use super::{Config, OriginEntry};

/// What can be wrong with a configuration. Every message names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}` is invalid: {reason}")]
    Invalid { key: String, reason: String },
}

/// The error for `key`, invalid because of `reason`; also for what `Runtime::compile`
/// finds when it builds the objects the configuration describes.
pub fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Command-line flags that take precedence over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub origin: Option<String>,
    pub admin: Option<String>,
}

/// Loads `path` (or the built-in defaults when `None`), applies `overrides` and validates.
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let mut config = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            toml::from_str::<Config>(&text).map_err(|e| ConfigError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?
        }
        None => Config::default(),
    };
    if let Some(listen) = &overrides.listen {
        config.server.listen = vec![listen.clone()];
    }
    if let Some(admin) = &overrides.admin {
        config.server.admin_listen = admin.clone();
    }
    if let Some(origin) = &overrides.origin {
        config.origin.addresses = origin.split(',').map(|s| s.trim().to_string()).collect();
    }
    config.validate()?;
    Ok(config)
}

impl Config {
    /// Checks everything that would otherwise fail later, on the request path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.listen.is_empty() {
            return Err(invalid("server.listen", "at least one address is needed"));
        }
        for addr in &self.server.listen {
            check_socket_addr("server.listen", addr)?;
        }
        if !self.server.admin_listen.is_empty() {
            check_socket_addr("server.admin_listen", &self.server.admin_listen)?;
        }
        for addr in &self.server.tls_listen {
            check_socket_addr("server.tls_listen", addr)?;
        }
        if !self.server.tls_listen.is_empty() && self.tls.certificates.is_empty() {
            return Err(invalid(
                "tls.certificates",
                "server.tls_listen needs at least one [[tls.certificates]] (cert_file, key_file)",
            ));
        }
        if self.server.redirect_http_to_https && self.server.tls_listen.is_empty() {
            return Err(invalid(
                "server.redirect_http_to_https",
                "redirects to HTTPS need a server.tls_listen to redirect to",
            ));
        }
        for (key, secs) in [
            (
                "server.header_timeout_secs",
                self.server.header_timeout_secs,
            ),
            (
                "server.handshake_timeout_secs",
                self.server.handshake_timeout_secs,
            ),
            (
                "server.h2_idle_timeout_secs",
                self.server.h2_idle_timeout_secs,
            ),
            ("server.send_timeout_secs", self.server.send_timeout_secs),
        ] {
            if !(1..=3600).contains(&secs) {
                return Err(invalid(key, "must be between 1 and 3600 seconds"));
            }
        }
        // One response's share (`cache::inflate::CHARGE`, which a test holds to this).
        if self.limits.response_buffer_bytes < MIN_RESPONSE_BUFFER_BYTES {
            return Err(invalid(
                "limits.response_buffer_bytes",
                format!("must be at least {MIN_RESPONSE_BUFFER_BYTES} (one response's share)"),
            ));
        }
        // Two years is the longest max-age browsers' preload lists ask for.
        if self.server.hsts_max_age_secs > 63_072_000 {
            return Err(invalid(
                "server.hsts_max_age_secs",
                "must be at most 63072000 (two years)",
            ));
        }
        let insights = &self.insights;
        if !(10..=86_400).contains(&insights.window_secs) {
            return Err(invalid(
                "insights.window_secs",
                "must be between 10 and 86400 seconds",
            ));
        }
        // A newcomer to a full list replaces its least counted key, found by a scan:
        // beyond 10,000 keys that scan costs more than the list is worth.
        if !(10..=10_000).contains(&insights.tracked) {
            return Err(invalid("insights.tracked", "must be between 10 and 10000"));
        }
        if insights.shown == 0 || insights.shown > insights.tracked {
            return Err(invalid(
                "insights.shown",
                "must be at least 1 and at most insights.tracked",
            ));
        }
        if !(60..=86_400).contains(&insights.history_secs) {
            return Err(invalid(
                "insights.history_secs",
                "must be between 60 and 86400 seconds",
            ));
        }
        if self.origin.addresses.is_empty() {
            return Err(invalid("origin.addresses", "at least one origin is needed"));
        }
        for addr in &self.origin.addresses {
            OriginEntry::parse(addr.trim()).map_err(|e| invalid("origin.addresses", e))?;
        }
        if !(1..=3600).contains(&self.origin.resolve_secs) {
            return Err(invalid(
                "origin.resolve_secs",
                "must be between 1 and 3600 seconds",
            ));
        }
        for (key, value) in [
            (
                "origin.connect_timeout_secs",
                self.origin.connect_timeout_secs,
            ),
            (
                "origin.first_byte_timeout_secs",
                self.origin.first_byte_timeout_secs,
            ),
            (
                "origin.health_check_interval_secs",
                self.origin.health_check_interval_secs,
            ),
            (
                "origin.health_check_timeout_secs",
                self.origin.health_check_timeout_secs,
            ),
            ("cache.coalesce_wait_secs", self.cache.coalesce_wait_secs),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1 second"));
            }
        }
        if !self.origin.health_check_url.starts_with('/') {
            return Err(invalid(
                "origin.health_check_url",
                "must be a path starting with '/'",
            ));
        }
        if self.origin.health_window == 0 || self.origin.health_window > 64 {
            return Err(invalid(
                "origin.health_window",
                "must be between 1 and 64 probes",
            ));
        }
        if self.origin.health_threshold == 0
            || self.origin.health_threshold > self.origin.health_window
        {
            return Err(invalid(
                "origin.health_threshold",
                format!(
                    "must be between 1 and health_window ({})",
                    self.origin.health_window
                ),
            ));
        }
        if self.cache.memory_bytes < 1 << 20 {
            return Err(invalid(
                "cache.memory_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if !self.cache.disk_dir.is_empty() && self.cache.disk_bytes < 16 << 20 {
            return Err(invalid(
                "cache.disk_bytes",
                "must be at least 16777216 (16 MiB) when cache.disk_dir is set",
            ));
        }
        if self.cache.max_object_bytes == 0
            || self.cache.max_object_bytes as u64 > self.cache.memory_bytes
            || self.cache.max_object_bytes > u32::MAX as usize / 2
        {
            return Err(invalid(
                "cache.max_object_bytes",
                "must be above 0, at most cache.memory_bytes and at most 2 GiB",
            ));
        }
        if self.cache.default_ttl_secs == 0 {
            return Err(invalid(
                "cache.default_ttl_secs",
                "must be at least 1 second",
            ));
        }
        http::HeaderName::from_bytes(self.magento.ssl_offload_header.as_bytes()).map_err(|_| {
            invalid(
                "magento.ssl_offload_header",
                format!(
                    "`{}` is not a valid header name",
                    self.magento.ssl_offload_header
                ),
            )
        })?;
        for param in &self.magento.marketing_params {
            let name = param.strip_suffix('*').unwrap_or(param);
            if name.is_empty() || name.contains(['&', '=', '?', '*']) {
                return Err(invalid(
                    "magento.marketing_params",
                    format!("`{param}` is not a parameter name (a trailing `*` is allowed)"),
                ));
            }
        }
        if self.purge.keep_purged_secs > 86_400 {
            return Err(invalid(
                "purge.keep_purged_secs",
                "must be at most 86400 (a day): a purged copy is a last resort, not a cache",
            ));
        }
        if !(self.warm.rate_per_sec > 0.0 && self.warm.rate_per_sec <= 100_000.0) {
            return Err(invalid(
                "warm.rate_per_sec",
                "must be above 0 and at most 100000",
            ));
        }
        if self.warm.concurrency == 0 {
            return Err(invalid("warm.concurrency", "must be at least 1"));
        }
        if self.warm.queue_size == 0 {
            return Err(invalid("warm.queue_size", "must be at least 1"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", format!("`{}`: {e}", self.log.level)))?;
        if !self.redis.url.is_empty() {
            if self.redis.coalesce && self.redis.coalesce_wait_ms == 0 {
                return Err(invalid("redis.coalesce_wait_ms", "must be at least 1 ms"));
            }
            if self.redis.timeout_ms == 0 {
                return Err(invalid("redis.timeout_ms", "must be at least 1 ms"));
            }
            if self.redis.stream_max_len == 0 || self.redis.outbox_size == 0 {
                return Err(invalid(
                    "redis.stream_max_len",
                    "stream_max_len and outbox_size must be at least 1",
                ));
            }
        }
        if self.esi.enabled && self.esi.fragment_timeout_ms == 0 {
            return Err(invalid("esi.fragment_timeout_ms", "must be at least 1 ms"));
        }
        if self.esi.enabled && self.esi.max_depth > 10 {
            return Err(invalid(
                "esi.max_depth",
                "must be at most 10: each level multiplies the fragments a page can fetch",
            ));
        }
        let limits = &self.limits;
        if limits.max_inflight == 0 {
            return Err(invalid(
                "limits.max_inflight",
                "must be at least 1 (PHP-FPM's pm.max_children)",
            ));
        }
        if limits.max_wait_ms == 0 {
            return Err(invalid("limits.max_wait_ms", "must be at least 1 ms"));
        }
        if limits.adaptive
            && (limits.min_inflight == 0 || limits.min_inflight > limits.max_inflight)
        {
            return Err(invalid(
                "limits.min_inflight",
                format!(
                    "must be between 1 and limits.max_inflight ({})",
                    limits.max_inflight
                ),
            ));
        }
        if limits.adaptive && limits.slow_response_ms == 0 {
            return Err(invalid("limits.slow_response_ms", "must be at least 1 ms"));
        }
        for pattern in &self.magento.pass_url_patterns {
            regex::Regex::new(pattern)
                .map_err(|e| invalid("magento.pass_url_patterns", format!("`{pattern}`: {e}")))?;
        }
        for name in &self.magento.strip_request_headers {
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                invalid(
                    "magento.strip_request_headers",
                    format!("`{name}` is not a valid header name"),
                )
            })?;
        }
        for addr in &self.server.proxy_protocol_listen {
            check_socket_addr("server.proxy_protocol_listen", addr)?;
        }
        if !self.server.proxy_protocol_listen.is_empty() && self.server.trusted_proxies.is_empty() {
            return Err(invalid(
                "server.proxy_protocol_listen",
                "needs server.trusted_proxies: the PROXY header is believed only from them",
            ));
        }
        if !self.server.admin_token_file.is_empty() {
            read_token(&self.server.admin_token_file)
                .map_err(|e| invalid("server.admin_token_file", e.to_string()))?;
        }
        if limits.request_body_buffer_bytes > 65_536 {
            return Err(invalid(
                "limits.request_body_buffer_bytes",
                "must be at most 65536 (Pingora replays at most 64 KiB of a request body)",
            ));
        }
        if limits.request_body_timeout_secs == 0 {
            return Err(invalid(
                "limits.request_body_timeout_secs",
                "must be at least 1 second",
            ));
        }
        if self.cache.max_variants == 0 {
            return Err(invalid("cache.max_variants", "must be at least 1"));
        }
        if self.esi.enabled && self.esi.max_includes_per_view == 0 {
            return Err(invalid("esi.max_includes_per_view", "must be at least 1"));
        }
        for (i, exception) in self.magento.design_exceptions.iter().enumerate() {
            regex::Regex::new(&exception.user_agent).map_err(|e| {
                invalid(
                    &format!("magento.design_exceptions[{i}].user_agent"),
                    format!("`{}`: {e}", exception.user_agent),
                )
            })?;
        }
        Ok(())
    }

    /// The effective configuration as TOML, for `floodgate check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Why the admin token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} must hold a token of at least 16 printable characters on its first line")]
    TooWeak { path: String },
}

/// The admin token in `path`: its first line, at least 16 characters.
pub fn read_token(path: &str) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Unreadable {
        path: path.to_string(),
        source,
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::TooWeak {
            path: path.to_string(),
        });
    }
    Ok(token)
}

fn check_socket_addr(key: &str, addr: &str) -> Result<(), ConfigError> {
    match addr.to_socket_addrs().map(|mut addrs| addrs.next()) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(invalid(key, format!("`{addr}` resolves to no address"))),
        Err(e) => Err(invalid(key, format!("`{addr}` is not host:port ({e})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("floodgate-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(format!("{}.toml", text.len()));
        std::fs::write(&path, text).expect("write temp config");
        load(Some(&path), &Overrides::default())
    }

    #[test]
    fn defaults_are_magentos() {
        let config = load(None, &Overrides::default()).expect("defaults are valid");
        assert_eq!(config.cache.grace_secs, 300);
        assert_eq!(config.cache.keep_secs, 3 * 86_400);
        assert_eq!(config.cache.default_ttl_secs, 120);
        assert_eq!(config.magento.ssl_offload_header, "X-Forwarded-Proto");
        assert_eq!(config.origin.health_check_url, "/health_check.php");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[cache]\ngrace_sec = 10\n").expect_err("typo must fail");
        assert!(err.to_string().contains("grace_sec"), "{err}");
    }

    #[test]
    fn bad_regex_is_named() {
        let err = parse("[magento]\npass_url_patterns = [\"(\"]\n").expect_err("bad regex");
        assert!(
            err.to_string().contains("magento.pass_url_patterns"),
            "{err}"
        );
    }

    #[test]
    fn bad_threshold_is_named() {
        let err = parse("[origin]\nhealth_threshold = 11\n").expect_err("threshold > window");
        assert!(err.to_string().contains("origin.health_threshold"), "{err}");
    }

    #[test]
    fn overrides_win_over_the_file() {
        let overrides = Overrides {
            listen: Some("127.0.0.1:7000".into()),
            origin: Some("127.0.0.1:7001,127.0.0.1:7002".into()),
            admin: Some(String::new()),
        };
        let config = load(None, &overrides).expect("valid");
        assert_eq!(config.server.listen, vec!["127.0.0.1:7000"]);
        assert_eq!(config.origin.addresses.len(), 2);
        assert_eq!(
            config.server.admin_listen, "",
            "an empty admin address disables it"
        );
    }

    #[test]
    fn shipped_config_file_is_valid_and_equals_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/floodgate.toml");
        let config = load(Some(&path), &Overrides::default()).expect("conf/floodgate.toml");
        assert_eq!(config, Config::default());
    }
}
