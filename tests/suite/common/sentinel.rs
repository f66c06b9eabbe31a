//! A Redis primary, its replica and three sentinels on loopback (`redis-server
//! --sentinel`), as a shop with a failover runs them; stopped on drop. The primary can be
//! killed with -9 or paused with SIGSTOP, and the test waits until the sentinels have
//! promoted the replica and the old primary is back as the new one's replica.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::floodgate::{free_port, temp_dir};

pub const MASTER: &str = "fg";

pub struct SentinelSet {
    /// The two data servers' ports; either may be the primary.
    pub ports: [u16; 2],
    servers: [Option<Child>; 2],
    sentinels: Vec<(u16, Child)>,
    dir: PathBuf,
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn server(port: u16, replica_of: Option<u16>) -> Child {
    let mut command = Command::new("redis-server");
    command
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"]);
    if let Some(primary) = replica_of {
        command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
    }
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed")
}

async fn listening(port: u16) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    assert!(
        crate::common::until(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await,
        "nothing listens on {addr}"
    );
}

impl SentinelSet {
    pub async fn start() -> Self {
        let dir = temp_dir("sentinel");
        let ports = [free_port(), free_port()];
        let servers = [
            Some(server(ports[0], None)),
            Some(server(ports[1], Some(ports[0]))),
        ];
        for port in ports {
            listening(port).await;
        }
        let mut set = SentinelSet {
            ports,
            servers,
            sentinels: Vec::new(),
            dir,
        };
        set.until_replicated(ports[0]).await;
        for i in 0..3 {
            let port = free_port();
            let conf = set.dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 4000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    set.dir.display(),
                    ports[0]
                ),
            )
            .expect("sentinel config");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel");
            listening(port).await;
            set.sentinels.push((port, child));
        }
        // Every sentinel knows the replica before anything fails.
        let sentinels: Vec<u16> = set.sentinels.iter().map(|(p, _)| *p).collect();
        assert!(
            crate::common::until(Duration::from_secs(20), || async {
                sentinels
                    .iter()
                    .all(|p| redis_cli(*p, &["SENTINEL", "replicas", MASTER]).contains("slave"))
            })
            .await,
            "the sentinels did not find the replica"
        );
        set
    }

    /// `redis+sentinel://…/fg` for Floodgate.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// The primary's port, as the first sentinel names it.
    pub fn primary(&self) -> u16 {
        let named = redis_cli(
            self.sentinels[0].0,
            &["SENTINEL", "get-master-addr-by-name", MASTER],
        );
        named
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .expect("the sentinel names a primary")
    }

    /// Waits until `primary` has its replica connected and in sync, and every sentinel
    /// sees that replica's link up (a replica it thinks disconnected is never promoted).
    async fn until_replicated(&self, primary: u16) {
        assert!(
            crate::common::until(Duration::from_secs(30), || async {
                let info = redis_cli(primary, &["INFO", "replication"]);
                info.contains("role:master") && info.contains("state=online")
            })
            .await,
            "the replica of 127.0.0.1:{primary} did not come online: {}",
            redis_cli(primary, &["INFO", "replication"])
        );
        let sentinels: Vec<u16> = self.sentinels.iter().map(|(p, _)| *p).collect();
        assert!(
            crate::common::until(Duration::from_secs(30), || async {
                sentinels.iter().all(|p| {
                    let named = redis_cli(*p, &["SENTINEL", "get-master-addr-by-name", MASTER]);
                    let replicas = redis_cli(*p, &["SENTINEL", "replicas", MASTER]);
                    named.lines().nth(1).map(str::trim) == Some(primary.to_string().as_str())
                        && replicas.contains("master-link-status\nok")
                        && !replicas.contains("s_down")
                        && !replicas.contains("disconnected")
                })
            })
            .await,
            "the sentinels do not see the replica of 127.0.0.1:{primary} in sync"
        );
    }

    /// Kills the primary with -9, waits for the sentinels to promote the replica,
    /// starts the old one again (empty) and waits until it replicates the new primary.
    pub async fn kill_primary(&mut self) {
        let old = self.primary();
        let i = usize::from(self.ports[1] == old);
        if let Some(mut child) = self.servers[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let new = self.until_failed_over(old).await;
        self.servers[i] = Some(server(old, Some(new)));
        listening(old).await;
        self.until_replicated(new).await;
    }

    /// Pauses the primary (SIGSTOP) until the sentinels have promoted the replica, then
    /// lets it go on: it finds itself demoted and replicates the new primary.
    pub async fn pause_primary(&mut self) {
        let old = self.primary();
        let i = usize::from(self.ports[1] == old);
        let pid = self.servers[i].as_ref().expect("running").id().to_string();
        let signal = |sig: &str| {
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .expect("kill")
        };
        signal("-STOP");
        let new = self.until_failed_over(old).await;
        signal("-CONT");
        self.until_replicated(new).await;
    }

    async fn until_failed_over(&self, old: u16) -> u16 {
        let sentinel = self.sentinels[0].0;
        let mut promoted = None;
        let found = crate::common::until(Duration::from_secs(30), || {
            let named = redis_cli(sentinel, &["SENTINEL", "get-master-addr-by-name", MASTER]);
            let port = named
                .lines()
                .nth(1)
                .and_then(|p| p.trim().parse::<u16>().ok());
            promoted = port.filter(|p| *p != old);
            std::future::ready(promoted.is_some())
        })
        .await;
        assert!(found, "the sentinels did not fail over from {old}");
        promoted.expect("promoted")
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        for child in self.servers.iter_mut().flatten() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
