//! The Redis the nodes share (purge bus and shared tier): one way to reach it, standalone
//! or Redis Cluster, so TLS and credentials are configured once.

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, TlsCertificates, Value};

use crate::config::{invalid, ConfigError, RedisSection};

/// A standalone Redis (one URL) or a Redis Cluster (several seed URLs, comma-separated).
#[derive(Clone)]
pub enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// A multiplexed connection to either: cheap to clone, concurrent commands share it.
#[derive(Clone)]
pub enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Client {
    pub async fn connect(&self) -> RedisResult<Connection> {
        match self {
            Client::Single(client) => client
                .get_multiplexed_async_connection()
                .await
                .map(Connection::Single),
            Client::Cluster(client) => client.get_async_connection().await.map(Connection::Cluster),
        }
    }

    /// Keys that one script touches must share a cluster slot: `{…}` pins them.
    pub fn slot_tag(&self, key: &str) -> String {
        match self {
            Client::Single(_) => key.to_string(),
            Client::Cluster(_) => format!("{{{key}}}"),
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(con) => con.req_packed_command(cmd),
            Connection::Cluster(con) => con.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(con) => con.req_packed_commands(cmd, offset, count),
            Connection::Cluster(con) => con.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(con) => con.get_db(),
            Connection::Cluster(con) => con.get_db(),
        }
    }
}

/// A client for `redis.url`: `redis://` or `rediss://` (TLS), with `user:password@` for
/// an ACL user; several URLs, comma-separated, are the seed nodes of a Redis Cluster.
/// With `redis.tls_ca_file`, the server's certificate must chain to that CA (a private
/// one); otherwise to the system's trusted roots.
pub fn client(config: &RedisSection) -> Result<Client, ConfigError> {
    let certs = if config.tls_ca_file.is_empty() {
        None
    } else {
        let root_cert = std::fs::read(&config.tls_ca_file).map_err(|e| {
            invalid(
                "redis.tls_ca_file",
                format!("cannot read {}: {e}", config.tls_ca_file),
            )
        })?;
        Some(TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        })
    };
    let urls: Vec<&str> = config.url.split(',').map(str::trim).collect();
    if urls.len() == 1 {
        let client = match certs {
            None => redis::Client::open(urls[0]),
            Some(certs) => redis::Client::build_with_tls(urls[0], certs),
        };
        return client
            .map(Client::Single)
            .map_err(|e| invalid("redis.url", e.to_string()));
    }
    let mut builder = redis::cluster::ClusterClientBuilder::new(urls);
    if let Some(certs) = certs {
        builder = builder.certs(certs);
    }
    builder
        .build()
        .map(Client::Cluster)
        .map_err(|e| invalid("redis.url", format!("cluster seeds: {e}")))
}

/// Why a batch of commands (`each`) did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("Redis refused a command: {0}")]
    Refused(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    #[error("a Redis command's task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs independent commands concurrently on one multiplexed connection (it pipelines
/// them) and returns their replies in order. Unlike a pipeline, the commands may touch
/// keys in different cluster slots.
pub async fn each(
    connection: &Connection,
    commands: Vec<Cmd>,
    limit: std::time::Duration,
) -> Result<Vec<Value>, BatchError> {
    let mut tasks = tokio::task::JoinSet::new();
    let count = commands.len();
    for (i, command) in commands.into_iter().enumerate() {
        let mut con = connection.clone();
        tasks.spawn(async move { (i, command.query_async::<Value>(&mut con).await) });
    }
    let mut replies = vec![Value::Nil; count];
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            let (i, reply) = joined?;
            replies[i] = reply?;
        }
        Ok::<(), BatchError>(())
    };
    match tokio::time::timeout(limit, collect).await {
        Ok(result) => result.map(|()| replies),
        Err(_) => Err(BatchError::TimedOut(limit)),
    }
}
