//! The `floodgate` command: run the proxy, check a configuration, or try the demo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pingora::services::listening::Service;

use floodgate::cli;
use floodgate::config::{self, LogFormat, Overrides};
use floodgate::demo::DemoOrigin;
use floodgate::proxy::Runtime;

// The hit path allocates many small header strings; mimalloc handles that pattern
// markedly better than glibc malloc (measured with bench/run.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Asks the kernel not to back this process with transparent huge pages. mimalloc
/// commits its arena eagerly, and where the kernel's THP setting allows it each touched
/// 2 MB region became a whole huge page: an idle proxy held 36 MB instead of 22, and a
/// cache's resident size should follow what it stores (`bench/memory.sh`). Best effort:
/// a kernel without the call leaves things as they were.
fn without_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches no memory of
    // ours; its result is only a status.
    let status = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if status != 0 {
        eprintln!("floodgate: transparent huge pages could not be turned off for this process; memory use may be higher than measured");
    }
}

#[derive(Parser)]
#[command(
    name = "floodgate",
    version,
    about = "A caching reverse proxy for Magento 2, in place of Varnish"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (like `varnishd -F`).
    Run {
        /// Configuration file; without one, the built-in defaults apply.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Listen address for client traffic, overriding `server.listen`.
        #[arg(long)]
        listen: Option<String>,
        /// Origin address(es), comma-separated, overriding `origin.addresses`.
        #[arg(long)]
        origin: Option<String>,
        /// Admin listener (/metrics, /health), overriding `server.admin_listen`.
        #[arg(long)]
        admin: Option<String>,
        /// Take the listening sockets over from the running Floodgate (same config);
        /// then send that one SIGQUIT. See "Upgrade" in the README.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Purge by tags, everything, a pattern or a pool, as Magento does.
    Purge {
        /// Comma-separated tags, e.g. cat_p_1,cat_c_5.
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["all", "pattern"])]
        tags: Vec<String>,
        /// Every object that carries a tag (Magento's "Flush Magento Cache").
        #[arg(long, conflicts_with = "pattern")]
        all: bool,
        /// Every object, tagged or not, on every node (an emergency: Varnish's
        /// `ban req.url ~ .`). Through the admin API only.
        #[arg(long, conflicts_with_all = ["pattern", "all", "tags", "pool", "url", "soft"])]
        everything: bool,
        /// A regular expression over tags.
        #[arg(long)]
        pattern: Option<String>,
        /// An X-Pool value (regular expression).
        #[arg(long)]
        pool: Option<String>,
        /// Expire instead of remove: served stale while one refresh runs.
        #[arg(long)]
        soft: bool,
        /// Floodgate's admin listener, which the purge goes through.
        #[arg(long, default_value = "http://127.0.0.1:6085")]
        admin: String,
        /// The admin token (server.admin_token_file), when one is configured.
        #[arg(long)]
        token_file: Option<String>,
        /// Send Magento's PURGE request to this proxy address instead (from an address
        /// in `purge.allow`), exactly as Magento does.
        #[arg(long)]
        url: Option<String>,
    },
    /// Pre-warm the cache from a Magento sitemap.xml (a file, or a URL fetched through Floodgate).
    Warm {
        #[arg(long)]
        sitemap: String,
        /// Requests per second at most.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Requests in flight at most.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Floodgate's address.
        #[arg(long, default_value = "http://127.0.0.1:6081")]
        url: String,
        /// Header the TLS terminator sets for https pages (part of the cache key).
        #[arg(long, default_value = "X-Forwarded-Proto")]
        offload_header: String,
    },
    /// Switch maintenance mode: stale pages for everything cached, the maintenance page
    /// (503) for the rest, without a restart. Without an argument, print the state.
    Maintenance {
        #[arg(value_enum)]
        state: Option<Switch>,
        /// Floodgate's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:6085")]
        admin: String,
        /// The admin token (server.admin_token_file), when one is configured.
        #[arg(long)]
        token_file: Option<String>,
    },
    /// A live view of a running Floodgate in the terminal, refreshed every second: hit
    /// ratio, requests by outcome, the origin against its limit, the queue, purges, the
    /// diagnosis and the top lists (from `GET /insights`). q to quit.
    Top {
        /// Floodgate's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:6085")]
        admin: String,
        /// The admin token (server.admin_token_file), when one is configured.
        #[arg(long)]
        token_file: Option<String>,
        /// Refresh interval, milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Run Floodgate in front of a built-in Magento-like origin on loopback.
    Demo {
        /// Where Floodgate listens.
        #[arg(long, default_value = "127.0.0.1:6081")]
        listen: String,
        /// Where the demo origin listens.
        #[arg(long, default_value = "127.0.0.1:6091")]
        origin: String,
        /// Where the admin listener (/metrics, /health) listens.
        #[arg(long, default_value = "127.0.0.1:6085")]
        admin: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

/// Logs to stderr (journald under systemd); `RUST_LOG` overrides the configured filter.
fn init_logs(level: &str, format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(HarmlessPingoraErrors);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
    }
}

/// Pingora logs at ERROR what is no error. "failed to acquire reusable stream": its
/// connection pool found an idle upstream connection still held by the task that
/// watches idle connections (a race inside `pingora_core::connectors`, seen 303 times in
/// four quiet minutes); it then opens a new connection, and the request goes on
/// unharmed. "Downstream handshake error/timeout": a client gave up its TLS handshake (a
/// scanner, a closed tab, a client with no cipher or version in common); that is the
/// client's failure, counted as `floodgate_tls_client_hellos_total` less
/// `floodgate_tls_handshakes_total`, and one bot could fill the log with them. An ERROR
/// line tells an operator to act, so these are left out.
struct HarmlessPingoraErrors;

/// How the messages of those lines begin.
const HARMLESS: &[&str] = &[
    "failed to acquire reusable stream",
    "Downstream handshake error",
    "Downstream handshake timeout",
];

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for HarmlessPingoraErrors {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if *event.metadata().level() != tracing::Level::ERROR {
            return true;
        }
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    let text = format!("{value:?}");
                    let text = text.trim_matches('"');
                    self.0 |= HARMLESS.iter().any(|h| text.starts_with(h));
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" {
                    self.0 |= HARMLESS.iter().any(|h| value.starts_with(h));
                }
            }
        }
        let mut message = Message(false);
        event.record(&mut message);
        !message.0
    }
}

fn main() -> ExitCode {
    without_transparent_huge_pages();
    let cli = Cli::parse();
    // `run` and `demo` log as their configuration says, once it is loaded.
    if !matches!(cli.command, Command::Run { .. } | Command::Demo { .. }) {
        init_logs("info", LogFormat::Text);
    }
    match cli.command {
        Command::Run {
            config,
            listen,
            origin,
            admin,
            upgrade,
        } => {
            let overrides = Overrides {
                listen,
                origin,
                admin,
            };
            run(config, &overrides, false, upgrade)
        }
        Command::CheckConfig { config } => match load(Some(&config), &Overrides::default()) {
            Ok(runtime) => {
                print!("{}", runtime.config.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("floodgate: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Purge {
            tags,
            all,
            everything,
            pattern,
            pool,
            soft,
            admin,
            token_file,
            url,
        } => {
            let Some(url) = url else {
                let token = match cli::admin::token(token_file.as_deref()) {
                    Ok(token) => token,
                    Err(e) => {
                        eprintln!("floodgate: --token-file: {e:#}");
                        return ExitCode::from(2);
                    }
                };
                let request = cli::admin::PurgeRequest {
                    tags,
                    pattern,
                    all,
                    everything,
                    pool,
                    soft,
                };
                if !request.all
                    && !request.everything
                    && request.tags.is_empty()
                    && request.pattern.is_none()
                    && request.pool.is_none()
                {
                    eprintln!("floodgate: say what to purge: --tags, --all, --everything, --pattern or --pool");
                    return ExitCode::from(2);
                }
                return match block_on(cli::admin::purge(&admin, token.as_deref(), &request)) {
                    Ok(summary) => {
                        print!("{summary}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("floodgate: {e:#}");
                        ExitCode::from(1)
                    }
                };
            };
            let pattern = if all {
                Some(".*".to_string())
            } else if !tags.is_empty() {
                Some(cli::magento_pattern(&tags))
            } else {
                pattern
            };
            if pattern.is_none() && pool.is_none() {
                eprintln!("floodgate: say what to purge: --tags, --all, --pattern or --pool");
                return ExitCode::from(2);
            }
            let result = block_on(cli::purge(&url, pattern.as_deref(), pool.as_deref(), soft));
            match result {
                Ok((200, body)) => {
                    print!("{body}");
                    ExitCode::SUCCESS
                }
                Ok((status, body)) => {
                    eprint!("floodgate: purge refused ({status}): {body}");
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("floodgate: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Warm {
            sitemap,
            rate,
            concurrency,
            url,
            offload_header,
        } => match block_on(cli::warm(
            &url,
            &sitemap,
            rate,
            concurrency,
            &offload_header,
        )) {
            Ok(summary) => {
                println!(
                    "fetched {}, already warm {}, failed {}",
                    summary.fetched, summary.already_warm, summary.failed
                );
                if summary.failed > 0 {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("floodgate: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Top {
            admin,
            token_file,
            interval_ms,
        } => {
            let token = match cli::admin::token(token_file.as_deref()) {
                Ok(token) => token,
                Err(e) => {
                    eprintln!("floodgate: --token-file: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let interval = std::time::Duration::from_millis(interval_ms.max(100));
            match cli::top::run(&admin, token.as_deref(), interval) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("floodgate: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Maintenance {
            state,
            admin,
            token_file,
        } => {
            let on = state.map(|s| matches!(s, Switch::On));
            let token = match cli::admin::token(token_file.as_deref()) {
                Ok(token) => token,
                Err(e) => {
                    eprintln!("floodgate: --token-file: {e:#}");
                    return ExitCode::from(2);
                }
            };
            match block_on(cli::admin::maintenance(&admin, token.as_deref(), on)) {
                Ok(body) => {
                    print!("{body}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("floodgate: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo {
            listen,
            origin,
            admin,
        } => {
            let overrides = Overrides {
                listen: Some(listen),
                origin: Some(origin),
                admin: Some(admin),
            };
            run(None, &overrides, true, false)
        }
    }
}

/// The configuration at `path` (or the defaults) with `overrides`, checked and compiled:
/// everything it describes is built once, or the error names the key at fault.
fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Runtime, config::ConfigError> {
    config::load(path, overrides).and_then(Runtime::compile)
}

fn run(path: Option<PathBuf>, overrides: &Overrides, demo: bool, upgrade: bool) -> ExitCode {
    let runtime = match load(path.as_deref(), overrides) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("floodgate: {e:#}");
            return ExitCode::from(2);
        }
    };
    let config = runtime.config.clone();
    init_logs(&config.log.level, config.log.format);
    // Pingora retries a bind that fails for half a minute and then leaves a process that
    // serves nothing; a listener that cannot be had ends the start at once instead (an
    // upgrade binds nothing: it takes the old process's sockets).
    if !upgrade {
        let mut wanted: Vec<(&str, &str)> = Vec::new();
        wanted.extend(
            config
                .server
                .listen
                .iter()
                .map(|a| ("server.listen", a.as_str())),
        );
        if !config.server.admin_listen.is_empty() {
            wanted.push(("server.admin_listen", config.server.admin_listen.as_str()));
        }
        if demo {
            wanted.push((
                "the demo origin (--origin)",
                config.origin.addresses[0].as_str(),
            ));
        }
        for (key, addr) in wanted {
            if let Err(e) = std::net::TcpListener::bind(addr) {
                eprintln!(
                    "floodgate: cannot listen on {addr} ({key}): {e}. Is another Floodgate, \
                     Varnish or other server running there? Stop it or choose another address."
                );
                return ExitCode::from(1);
            }
        }
    }
    let listen = config.server.listen[0].clone();
    let origin = config.origin.addresses[0].clone();
    let admin = config.server.admin_listen.clone();
    let mut server = match floodgate::server::build(runtime, path, overrides.clone(), upgrade) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("floodgate: cannot start: {e:#}");
            return ExitCode::from(1);
        }
    };
    if demo {
        let mut demo_origin = Service::new("demo origin".to_string(), DemoOrigin::default());
        demo_origin.add_tcp(&origin);
        server.add_service(demo_origin);
        print_demo_help(&listen, &origin, &admin);
    }
    tracing::info!(%listen, %origin, "floodgate starting");
    server.run_forever()
}

fn print_demo_help(listen: &str, origin: &str, admin: &str) {
    let base = format!("http://{listen}");
    println!(
        "Floodgate demo: proxy on {base}, Magento-like demo origin on http://{origin} (150 ms per page).

Try, in another terminal:
  curl -si {base}/product-1.html | grep -iE 'x-magento-cache-debug|x-demo-render'   # MISS (rendered by the origin)
  curl -si {base}/product-1.html | grep -iE 'x-magento-cache-debug|grace'           # HIT, from memory
  curl -si '{base}/product-1.html?utm_source=mail' | grep -i x-magento-cache-debug  # HIT: marketing parameters are ignored
  curl -si {base}/checkout/cart/ | grep -i x-magento-cache-debug                    # UNCACHEABLE: checkout always passes
  curl -s -o /dev/null -w '%{{time_total}}s\\n' {base}/category-7.html             # first time ~0.15 s, then ~0.001 s
  curl -s -X PURGE -H 'X-Magento-Tags-Pattern: ((^|,)cat_p_1(,|$))' {base}/            # what Magento sends on a product save
  curl -si {base}/product-1.html | grep -i x-magento-cache-debug                    # HIT again: it was hot, so it was re-warmed
  curl -s {base}/product-1.html | grep -o '<nav>.*</nav>'                           # the top menu: an ESI fragment, cached once for all pages
  curl -s -X PURGE -H 'X-Magento-Tags-Pattern: ((^|,)cat_c_2(,|$))' {base}/            # a category save: the menu (and category 2) refresh
  curl -s {base}/product-1.html | grep -o '<nav>.*</nav>'                           # a new menu render in the same cached product page
  curl -s http://{admin}/metrics | grep -E 'floodgate_(requests|purged|warm|esi)'    # hits, misses, purges, re-warms, fragments so far

Stop with Ctrl-C."
    );
}

/// The CLI's own small runtime for the commands that speak HTTP.
fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start a runtime: {e}"))?
        .block_on(work)
}
