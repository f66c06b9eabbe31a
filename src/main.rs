//! The `floodgate` command: run the proxy, check a configuration, or try the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pingora::services::listening::Service;

use floodgate::config::{self, Overrides};
use floodgate::demo::DemoOrigin;

// The hit path allocates many small header strings; mimalloc handles that pattern
// markedly better than glibc malloc (measured with bench/run.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    },
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run {
            config,
            listen,
            origin,
            admin,
        } => {
            let overrides = Overrides {
                listen,
                origin,
                admin,
            };
            run(config, &overrides, false)
        }
        Command::CheckConfig { config } => match config::load(Some(&config), &Overrides::default())
        {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("floodgate: {e}");
                ExitCode::from(2)
            }
        },
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
            run(None, &overrides, true)
        }
    }
}

fn run(path: Option<PathBuf>, overrides: &Overrides, demo: bool) -> ExitCode {
    let config = match config::load(path.as_deref(), overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("floodgate: {e}");
            return ExitCode::from(2);
        }
    };
    let listen = config.server.listen[0].clone();
    let origin = config.origin.addresses[0].clone();
    let admin = config.server.admin_listen.clone();
    let mut server = match floodgate::server::build(config) {
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
  curl -s http://{admin}/metrics | grep floodgate_requests_total                     # hits, misses, passes so far

Stop with Ctrl-C."
    );
}
