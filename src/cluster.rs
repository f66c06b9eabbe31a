//! The Redis the nodes share (purge bus and shared tier): one way to reach it, so TLS and
//! credentials are configured once.

use crate::config::RedisSection;

/// A client for `redis.url`: `redis://` or `rediss://` (TLS), with
/// `user:password@` for an ACL user. With `redis.tls_ca_file`, the server's certificate
/// must chain to that CA (a private one); otherwise to the system's trusted roots.
pub fn client(config: &RedisSection) -> anyhow::Result<redis::Client> {
    if config.tls_ca_file.is_empty() {
        return redis::Client::open(config.url.as_str())
            .map_err(|e| anyhow::anyhow!("redis.url: {e}"));
    }
    let root_cert = std::fs::read(&config.tls_ca_file).map_err(|e| {
        anyhow::anyhow!("redis.tls_ca_file: cannot read {}: {e}", config.tls_ca_file)
    })?;
    redis::Client::build_with_tls(
        config.url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        },
    )
    .map_err(|e| anyhow::anyhow!("redis.url with redis.tls_ca_file: {e}"))
}
