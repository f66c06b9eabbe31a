//! The Redis the nodes share (purge bus and shared tier): one way to reach it, standalone,
//! Redis Cluster or a primary watched by Redis Sentinel, so TLS and credentials are
//! configured once.
//!
//! With Sentinel, every connection is made to the primary the sentinels name at that
//! moment (checked with `ROLE`): after a failover, the next connection after an error
//! goes to the new primary. A managed endpoint whose DNS name moves is a standalone URL:
//! each new connection resolves the name again.
//!
//! Why our own Sentinel lookup (one `SENTINEL get-master-addr-by-name` and a `ROLE`)
//! rather than redis-rs's `SentinelClient`: that one cannot take a private CA for the
//! data nodes (`redis.tls_ca_file`), and the primary's connection must be made exactly
//! like a standalone one (ACL user, TLS) so the rest of Floodgate does not tell them apart.

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, TlsCertificates, Value};

use crate::config::{invalid, ConfigError, RedisSection};

/// A standalone Redis (one URL) or a Redis Cluster (several seed URLs, comma-separated).
#[derive(Clone)]
pub enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
    /// A primary named by sentinels.
    Sentinel(std::sync::Arc<Sentinels>),
}

/// The sentinels and how to reach the primary they name.
pub struct Sentinels {
    /// Each sentinel, `host:port`, asked in turn (the last one that answered first).
    addresses: Vec<String>,
    master_name: String,
    /// `redis://` or `rediss://`, with `user:password@` when set.
    scheme_and_user: String,
    db: Option<u32>,
    certs: Option<TlsCertificates>,
    /// The sentinel that answered last.
    last: std::sync::atomic::AtomicUsize,
}

impl Sentinels {
    /// The primary now: asked of the sentinels in turn, connected, and checked.
    async fn connect_primary(&self) -> RedisResult<MultiplexedConnection> {
        let first = self.last.load(std::sync::atomic::Ordering::Relaxed);
        let mut last_error = None;
        for i in 0..self.addresses.len() {
            let at = (first + i) % self.addresses.len();
            match self.ask(&self.addresses[at]).await {
                Ok(con) => {
                    self.last.store(at, std::sync::atomic::Ordering::Relaxed);
                    return Ok(con);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::IoError, "no sentinel configured"))
        }))
    }

    async fn ask(&self, sentinel: &str) -> RedisResult<MultiplexedConnection> {
        let mut asked = redis::Client::open(format!("redis://{sentinel}"))?
            .get_multiplexed_async_connection()
            .await?;
        let (host, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master_name)
            .query_async(&mut asked)
            .await?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let db = self.db.map_or_else(String::new, |db| format!("/{db}"));
        let url = format!("{}{host}:{port}{db}", self.scheme_and_user);
        let client = match &self.certs {
            None => redis::Client::open(url)?,
            Some(certs) => redis::Client::build_with_tls(url, certs.clone())?,
        };
        let mut con = client.get_multiplexed_async_connection().await?;
        // A sentinel that has not seen the failover yet names the old primary, which may
        // be a replica by now: only a primary is used.
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut con).await?;
        match role.first() {
            Some(Value::BulkString(r)) if r.as_slice() == b"master" => Ok(con),
            Some(Value::SimpleString(r)) if r == "master" => Ok(con),
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::ReadOnly,
                "the server the sentinel named is not a primary (a failover in progress)",
            ))),
        }
    }
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
            Client::Sentinel(sentinels) => {
                sentinels.connect_primary().await.map(Connection::Single)
            }
        }
    }

    /// Keys that one script touches must share a cluster slot: `{…}` pins them.
    pub fn slot_tag(&self, key: &str) -> String {
        match self {
            Client::Single(_) | Client::Sentinel(_) => key.to_string(),
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
    if let Some(sentinels) = sentinels(&config.url, certs.clone())? {
        return Ok(Client::Sentinel(std::sync::Arc::new(sentinels)));
    }
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

/// `redis+sentinel://[user:password@]host:port[,host:port…]/master_name[/db]` (and
/// `rediss+sentinel://`, TLS to the primary); `None` for any other URL.
fn sentinels(url: &str, certs: Option<TlsCertificates>) -> Result<Option<Sentinels>, ConfigError> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
        (true, rest)
    } else {
        return Ok(None);
    };
    let bad = |why: &str| {
        invalid(
            "redis.url",
            format!(
                "{why}: redis+sentinel://[user:password@]host:port[,host:port…]/master_name[/db]"
            ),
        )
    };
    let (user, rest) = match rest.rsplit_once('@') {
        Some((user, rest)) => (Some(user), rest),
        None => (None, rest),
    };
    let (hosts, path) = rest.split_once('/').ok_or_else(|| bad("no master name"))?;
    let addresses: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    if addresses.is_empty() {
        return Err(bad("no sentinel address"));
    }
    let mut parts = path.split('/');
    let master_name = parts
        .next()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("no master name"))?;
    let db = match parts.next().filter(|d| !d.is_empty()) {
        Some(db) => Some(
            db.parse::<u32>()
                .map_err(|_| bad("the db is not a number"))?,
        ),
        None => None,
    };
    let scheme = if tls { "rediss://" } else { "redis://" };
    Ok(Some(Sentinels {
        addresses,
        master_name: master_name.to_string(),
        scheme_and_user: match user {
            Some(user) => format!("{scheme}{user}@"),
            None => scheme.to_string(),
        },
        db,
        certs,
        last: std::sync::atomic::AtomicUsize::new(0),
    }))
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

/// A connection kept for a background user of Redis (the fleet's origin budget): never
/// waited for on a request's path. Without one, `connection` starts connecting in the
/// background (at most every `RECONNECT_AFTER`) and the caller treats Redis as absent.
pub struct Link {
    client: Client,
    slot: std::sync::Arc<std::sync::Mutex<LinkState>>,
    timeout: std::time::Duration,
}

#[derive(Default)]
struct LinkState {
    connection: Option<Connection>,
    last_attempt: Option<std::time::Instant>,
}

/// How long after a failed or dropped connection a new one is tried.
const RECONNECT_AFTER: std::time::Duration = std::time::Duration::from_millis(250);
/// Longest wait for a connection to be made.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why an exchange over a `Link` gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("no connection to Redis (connecting in the background)")]
    NotConnected,
    #[error("Redis did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    #[error("Redis refused the command: {0}")]
    Refused(#[from] redis::RedisError),
}

impl Link {
    pub fn new(client: Client, timeout: std::time::Duration) -> Self {
        Self {
            client,
            slot: Default::default(),
            timeout,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection, if there is one; never waits.
    pub fn connection(&self) -> Option<Connection> {
        let mut state = self.state();
        if let Some(con) = &state.connection {
            return Some(con.clone());
        }
        if state
            .last_attempt
            .is_some_and(|at| at.elapsed() < RECONNECT_AFTER)
        {
            return None;
        }
        state.last_attempt = Some(std::time::Instant::now());
        let (client, slot) = (self.client.clone(), self.slot.clone());
        tokio::spawn(async move {
            if let Ok(Ok(con)) = tokio::time::timeout(CONNECT_TIMEOUT, client.connect()).await {
                slot.lock().unwrap_or_else(|p| p.into_inner()).connection = Some(con);
            }
        });
        None
    }

    /// Drops the connection: the next use makes a new one.
    pub fn broken(&self) {
        let mut state = self.state();
        state.connection = None;
        state.last_attempt = Some(std::time::Instant::now());
    }

    /// Runs a script within the link's timeout; a connection that failed is replaced.
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, LinkError> {
        let mut con = self.connection().ok_or(LinkError::NotConnected)?;
        match tokio::time::timeout(self.timeout, invocation.invoke_async::<T>(&mut con)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    self.broken();
                }
                Err(LinkError::Refused(e))
            }
            Err(_) => {
                self.broken();
                Err(LinkError::TimedOut(self.timeout))
            }
        }
    }
}
