//! A real `redis-server` on a free loopback port, without persistence, stopped on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::floodgate::free_port;

pub struct RedisServer {
    pub addr: SocketAddr,
    child: Option<Child>,
    /// With TLS: the directory holding the CA and the server's certificate.
    tls: Option<PathBuf>,
}

/// The ACL user the TLS server accepts (the default user is off there).
pub const TLS_USER: &str = "floodgate";
pub const TLS_PASSWORD: &str = "s3cret";

impl RedisServer {
    pub async fn start() -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut server = RedisServer {
            addr,
            child: None,
            tls: None,
        };
        server.restart().await;
        server
    }

    /// A TLS-only server with a private CA and an ACL user (`TLS_USER`), the default
    /// user disabled.
    pub async fn start_tls() -> Self {
        // The test CA signs the server's certificate, saved as server.pem/server.key
        // beside ca.pem in the CA's directory.
        let ca = super::certs::TestCa::new();
        ca.leaf("server", &["127.0.0.1"]);
        let dir = ca.dir.clone();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut server = RedisServer {
            addr,
            child: None,
            tls: Some(dir),
        };
        server.restart().await;
        server
    }

    /// The CA certificate of a TLS server.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|d| d.join("ca.pem"))
    }

    /// `rediss://user:password@…` for a TLS server.
    pub fn tls_url(&self, password: &str) -> String {
        format!("rediss://{TLS_USER}:{password}@{}", self.addr)
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Kills it at once, as a crash would (its data is gone: no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.addr.port().to_string();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1"]).args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]);
        match &self.tls {
            None => {
                command.args(["--port", &port]);
            }
            Some(dir) => {
                let file = |name: &str| dir.join(name).display().to_string();
                command
                    .args(["--port", "0", "--tls-port", &port])
                    .args(["--tls-cert-file", &file("server.pem")])
                    .args(["--tls-key-file", &file("server.key")])
                    .args(["--tls-ca-cert-file", &file("ca.pem")])
                    .args(["--tls-auth-clients", "no"])
                    .args(["--user", "default", "off"])
                    .args(["--user", TLS_USER, "on"])
                    .arg(format!(">{TLS_PASSWORD}"))
                    .args(["~*", "&*", "+@all"]);
            }
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server) must be installed");
        self.child = Some(child);
        let addr = self.addr;
        assert!(
            crate::common::until(Duration::from_secs(10), || async {
                tokio::net::TcpStream::connect(addr).await.is_ok()
            })
            .await,
            "redis-server did not listen on {addr}"
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.tls {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A real Redis Cluster of three masters on loopback, stopped on drop.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    dir: PathBuf,
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    pub async fn start() -> Self {
        let dir = super::floodgate::temp_dir("redis-cluster");
        let ports: Vec<u16> = (0..3).map(|_| free_cluster_port()).collect();
        let mut children = Vec::new();
        for port in &ports {
            let port = port.to_string();
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{port}.conf")))
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed");
            children.push(child);
        }
        let cluster = RedisCluster {
            ports,
            children,
            dir,
        };
        for port in &cluster.ports {
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            assert!(
                crate::common::until(Duration::from_secs(10), || async {
                    tokio::net::TcpStream::connect(addr).await.is_ok()
                })
                .await,
                "redis-server did not listen on {addr}"
            );
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ports = &cluster.ports;
        assert!(
            crate::common::until(Duration::from_secs(20), || async {
                ports.iter().all(|port| {
                    Command::new("redis-cli")
                        .args(["-p", &port.to_string(), "cluster", "info"])
                        .output()
                        .is_ok_and(|o| {
                            String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok")
                        })
                })
            })
            .await,
            "the cluster did not become ok"
        );
        cluster
    }

    /// The seed list Floodgate takes in `redis.url`.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
