//! Starts the real `floodgate` binary on a free loopback port with a generated config.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Config lines per section, appended to the harness's own.
#[derive(Default, Clone)]
pub struct Settings {
    pub server: Vec<String>,
    pub origin: Vec<String>,
    pub cache: Vec<String>,
    pub magento: Vec<String>,
    pub purge: Vec<String>,
    pub warm: Vec<String>,
    pub limits: Vec<String>,
    pub log: Vec<String>,
    pub redis: Vec<String>,
    pub esi: Vec<String>,
    pub tls: Vec<String>,
    pub insights: Vec<String>,
}

impl Settings {
    /// `[server]` lines beyond the harness's listeners.
    pub fn server(mut self, line: &str) -> Self {
        self.server.push(line.into());
        self
    }
    pub fn origin(mut self, line: &str) -> Self {
        self.origin.push(line.into());
        self
    }
    pub fn cache(mut self, line: &str) -> Self {
        self.cache.push(line.into());
        self
    }
    pub fn magento(mut self, line: &str) -> Self {
        self.magento.push(line.into());
        self
    }
    pub fn purge(mut self, line: &str) -> Self {
        self.purge.push(line.into());
        self
    }
    pub fn warm(mut self, line: &str) -> Self {
        self.warm.push(line.into());
        self
    }
    /// `[redis]` lines.
    pub fn redis(mut self, line: &str) -> Self {
        self.redis.push(line.into());
        self
    }
    /// `[esi]` lines.
    pub fn esi(mut self, line: &str) -> Self {
        self.esi.push(line.into());
        self
    }
    /// `[tls]` lines (`[[tls.certificates]]` tables may follow its keys).
    pub fn tls(mut self, line: &str) -> Self {
        self.tls.push(line.into());
        self
    }
    /// `[log]` lines; with any, the config's log level applies instead of RUST_LOG=warn.
    pub fn log(mut self, line: &str) -> Self {
        self.log.push(line.into());
        self
    }
    /// `[insights]` lines.
    pub fn insights(mut self, line: &str) -> Self {
        self.insights.push(line.into());
        self
    }
    /// `[limits]` comes last, so `[[limits.class]]` tables may follow its keys.
    pub fn limits(mut self, line: &str) -> Self {
        self.limits.push(line.into());
        self
    }
}

pub struct Floodgate {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    dir: PathBuf,
    origins: String,
}

fn config_text(
    addr: SocketAddr,
    admin: SocketAddr,
    origins: &str,
    dir: &std::path::Path,
    settings: &Settings,
) -> String {
    format!(
        "[server]\nlisten = [\"{addr}\"]\nadmin_listen = \"{admin}\"\nthreads = 2\nruntime_dir = \"{dir}\"\n{}\n\n\
         [origin]\naddresses = [{origins}]\n{}\n\n\
         [log]\n{}\n\n[redis]\n{}\n\n[esi]\n{}\n\n[cache]\n{}\n\n[magento]\n{}\n\n[purge]\n{}\n\n[warm]\n{}\n\n[tls]\n{}\n\n[insights]\n{}\n\n[limits]\n{}\n",
        settings.server.join("\n"),
        {
            // Fast probes unless a test sets its own interval.
            let mut origin = settings.origin.clone();
            if !origin.iter().any(|l| l.starts_with("health_check_interval_secs")) {
                origin.push("health_check_interval_secs = 1".into());
            }
            origin.join("\n")
        },
        settings.log.join("\n"),
        settings.redis.join("\n"),
        settings.esi.join("\n"),
        {
            // 256 MiB unless the test sets its own.
            let mut cache = settings.cache.clone();
            if !cache.iter().any(|l| l.starts_with("memory_bytes")) {
                cache.push("memory_bytes = 268435456".into());
            }
            cache.join("\n")
        },
        settings.magento.join("\n"),
        settings.purge.join("\n"),
        settings.warm.join("\n"),
        settings.tls.join("\n"),
        settings.insights.join("\n"),
        settings.limits.join("\n"),
        dir = dir.display(),
    )
}

/// Ports for the processes the suite starts and may restart on the same address.
///
/// They come from below the kernel's ephemeral range (32768–60999 by default), from one
/// counter per test process. Why: a port the kernel hands out for `bind(0)` or an
/// outgoing connection can be handed out again the moment its listener closes, so a
/// Floodgate restarted on its old port could find it taken by another test's process.
/// Below that range only this counter hands ports out, and never the same one twice.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries run one after another; a start per process keeps their ports apart.
    let start = std::process::id().wrapping_mul(2_654_435_761) % COUNT;
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % COUNT) as u16;
        // Something outside the suite may hold it: then the next one.
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free loopback port between {FIRST} and {}",
        FIRST + COUNT
    )
}

/// A new directory of its own. Why not a port in the name: two tests running at once
/// once got the same name, and one overwrote the other's configuration and log.
pub fn temp_dir(label: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "floodgate-test-{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    // Left by an earlier process that had the same id.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

impl Floodgate {
    pub async fn start(origin: SocketAddr) -> Self {
        Self::start_with(origin, Settings::default()).await
    }

    pub async fn start_with(origin: SocketAddr, settings: Settings) -> Self {
        Self::start_with_origins(&[origin], settings).await
    }

    pub async fn start_with_origins(origins: &[SocketAddr], settings: Settings) -> Self {
        let entries: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
        Self::start_with_origin_entries(&entries, settings).await
    }

    /// `origin.addresses` as written: addresses, or `name:port` entries.
    pub async fn start_with_origin_entries(origins: &[String], settings: Settings) -> Self {
        // A port picked free can be taken by another test before Floodgate binds it;
        // then Floodgate exits at once and gets fresh ports.
        for _ in 0..3 {
            if let Some(floodgate) = Self::try_start(origins, &settings).await {
                return floodgate;
            }
        }
        panic!("floodgate exited at start three times; see the logs above");
    }

    async fn try_start(origins: &[String], settings: &Settings) -> Option<Self> {
        let origins = quoted(origins);
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let dir = temp_dir("proxy");
        let config = config_text(addr, admin, &origins, &dir, settings);
        let config_path = dir.join("floodgate.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.join("floodgate.log")).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_floodgate"));
        if settings.log.is_empty() {
            command.env("RUST_LOG", "warn");
        } else {
            command.env_remove("RUST_LOG");
        }
        let child = command
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn floodgate");
        let mut floodgate = Floodgate {
            addr,
            admin,
            child,
            dir,
            origins,
        };
        floodgate.wait_listening().await.then_some(floodgate)
    }

    /// Kills the process with SIGKILL, as a crash would; it stays down.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process and starts it again on the same configuration and ports.
    /// `kill`: SIGKILL, a crash with no chance to write anything; otherwise SIGTERM and
    /// Pingora's graceful exit, as `systemctl restart` does.
    pub async fn restart(&mut self, kill: bool) {
        self.stop(kill).await;
        self.start_again().await;
    }

    /// Stops the process (SIGKILL with `kill`, else SIGTERM) and waits for it to exit;
    /// `start_again` brings it back on the same configuration and ports.
    pub async fn stop(&mut self, kill: bool) {
        if kill {
            let _ = self.child.kill();
        } else {
            self.signal("TERM");
        }
        let child = &mut self.child;
        let exited = crate::common::until(Duration::from_secs(30), || {
            std::future::ready(matches!(child.try_wait(), Ok(Some(_))))
        })
        .await;
        assert!(
            exited,
            "floodgate did not exit within 30 s:\n{}",
            self.log()
        );
    }

    /// Starts the stopped process again on the same configuration and ports.
    pub async fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_floodgate"));
        command.env("RUST_LOG", "warn");
        self.child = command
            .arg("run")
            .arg("-c")
            .arg(self.dir.join("floodgate.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn floodgate again");
        assert!(
            self.wait_listening().await,
            "floodgate did not start again:\n{}",
            self.log()
        );
    }

    /// Waits until both listeners accept; false if the process exited first.
    async fn wait_listening(&mut self) -> bool {
        let (addr, admin) = (self.addr, self.admin);
        let this = &*self;
        let settled = crate::common::until(Duration::from_secs(30), || async move {
            this.has_exited()
                || (tokio::net::TcpStream::connect(addr).await.is_ok()
                    && tokio::net::TcpStream::connect(admin).await.is_ok())
        })
        .await;
        if let Ok(Some(status)) = self.child.try_wait() {
            eprintln!("floodgate exited at start ({status}):\n{}", self.log());
            return false;
        }
        if settled {
            return true;
        }
        panic!(
            "floodgate did not listen on {} within 30 s:\n{}",
            self.addr,
            self.log()
        );
    }

    /// The Prometheus text from the admin listener.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("admin listener answers")
            .text()
            .await
            .expect("metrics text")
    }

    /// One sample's value from `/metrics`, e.g. `floodgate_requests_total{outcome="hit"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
    }

    /// One sample's value, 0 while it does not exist yet (a labelled series appears on
    /// its first use).
    pub async fn metric_or_zero(&self, sample: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The sum of every series of the metric family `name` (all its labels).
    pub async fn metric_sum(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?;
                let value = match rest.strip_prefix('{') {
                    Some(labelled) => labelled.split_once("} ")?.1,
                    None => rest.strip_prefix(' ')?,
                };
                value.trim().parse::<f64>().ok()
            })
            .sum()
    }

    /// How each copy the store holds for `path` may be served now (`fresh`, `grace`,
    /// `stale_if_error`), from the admin API's `GET /cache`.
    pub async fn stored(&self, path: &str) -> Vec<String> {
        self.inspect(path).await["objects"]
            .as_array()
            .expect("GET /cache lists objects")
            .iter()
            .map(|o| o["state"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The admin's `GET /cache?url=path`: every copy of `path` the store holds.
    pub async fn inspect(&self, path: &str) -> serde_json::Value {
        crate::common::client()
            .get(self.admin_url("/cache"))
            .query(&[("url", path)])
            .send()
            .await
            .expect("admin listener answers")
            .json()
            .await
            .expect("GET /cache answers JSON")
    }

    /// Waits until every copy of `path` the store holds is in one of `states` (`fresh`,
    /// `grace`, `stale_if_error`; `absent` allows none at all): the fact a test about
    /// expiry starts from, instead of the clock. Panics if that takes over `limit`.
    pub async fn until_stored(&self, path: &str, states: &[&str], limit: Duration) {
        let reached = crate::common::until(limit, || async {
            let stored = self.stored(path).await;
            if stored.is_empty() {
                states.contains(&"absent")
            } else {
                stored.iter().all(|state| states.contains(&state.as_str()))
            }
        })
        .await;
        assert!(
            reached,
            "{path} not {states:?} within {limit:?}: {:?}",
            self.stored(path).await
        );
    }

    /// Waits until `path` has expired in Floodgate's own view (its TTL ran out).
    pub async fn until_expired(&self, path: &str) {
        self.until_stored(
            path,
            &["grace", "stale_if_error", "absent"],
            Duration::from_secs(10),
        )
        .await;
    }

    /// Waits until a fresh copy of `path` is stored (a refresh or re-warm has finished).
    pub async fn until_fresh(&self, path: &str) {
        self.until_stored(path, &["fresh"], Duration::from_secs(10))
            .await;
    }

    /// Rewrites the config file with `settings` (same listeners and origins); the
    /// running process does not see it until it reloads.
    pub fn rewrite_config(&self, settings: &Settings) {
        let text = config_text(self.addr, self.admin, &self.origins, &self.dir, settings);
        std::fs::write(self.dir.join("floodgate.toml"), text).expect("rewrite config");
    }

    /// Rewrites the config file with other `origin.addresses` (and `settings`); the
    /// running process sees it at its next reload.
    pub fn rewrite_config_with_origins(&self, origins: &[String], settings: &Settings) {
        let text = config_text(self.addr, self.admin, &quoted(origins), &self.dir, settings);
        std::fs::write(self.dir.join("floodgate.toml"), text).expect("rewrite config");
    }

    /// Writes `text` as the config file, valid or not.
    pub fn write_config_raw(&self, text: &str) {
        std::fs::write(self.dir.join("floodgate.toml"), text).expect("write config");
    }

    /// Starts a second Floodgate on the same config with `--upgrade`: it takes the
    /// listeners over once this one gets SIGQUIT. Killed when the guard drops.
    pub fn spawn_upgrade(&self) -> ChildGuard {
        let log = std::fs::File::create(self.dir.join("floodgate-upgrade.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_floodgate"))
            .arg("run")
            .arg("-c")
            .arg(self.dir.join("floodgate.toml"))
            .arg("--upgrade")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn the upgrading floodgate");
        ChildGuard(child)
    }

    /// The socket the upgrading process receives the listeners on.
    pub fn upgrade_socket(&self) -> PathBuf {
        self.dir
            .join(format!("floodgate-{}-upgrade.sock", self.addr.port()))
    }

    /// The process id of the running proxy.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (a zombie not reaped yet counts), without `&mut`.
    pub fn has_exited(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) {
            // The state follows the command name's closing parenthesis.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
            Err(_) => true,
        }
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("floodgate.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("floodgate.log")).unwrap_or_default()
    }
}

impl Drop for Floodgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- floodgate log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process killed when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `["a", "b"]` as the TOML list's inside: `"a", "b"`.
fn quoted(entries: &[String]) -> String {
    entries
        .iter()
        .map(|o| format!("\"{o}\""))
        .collect::<Vec<_>>()
        .join(", ")
}
