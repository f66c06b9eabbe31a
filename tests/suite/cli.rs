//! The `floodgate` command line: check-config and the demo a newcomer runs first.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::floodgate::{free_port, temp_dir};
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_floodgate");

#[test]
fn check_config_prints_the_effective_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/floodgate.toml");
    let out = Command::new(BIN)
        .args(["check-config", "-c", path])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("grace_secs = 300"), "{text}");
    assert!(
        text.contains("ssl_offload_header = \"X-Forwarded-Proto\""),
        "{text}"
    );
}

#[test]
fn check_config_names_the_bad_key_and_fails() {
    let dir = temp_dir("cli");
    let cases = [
        ("[cache]\ngrace = 1\n", "grace"),
        ("[origin]\naddresses = [\"no-port\"]\n", "origin.addresses"),
        (
            "[magento]\ndesign_exceptions = [{ user_agent = \"(\", value = \"x\" }]\n",
            "magento.design_exceptions[0].user_agent",
        ),
        ("[cache]\nmemory_bytes = 10\n", "cache.memory_bytes"),
        (
            "[server]\nheader_timeout_secs = 0\n",
            "server.header_timeout_secs",
        ),
        (
            "[limits]\nresponse_buffer_bytes = 1000\n",
            "limits.response_buffer_bytes",
        ),
        (
            "[cache]\ndisk_dir = \"/var/lib/floodgate/cache\"\ndisk_bytes = 1000\n",
            "cache.disk_bytes",
        ),
        // Found when what the file describes is built (Runtime::compile).
        ("[purge]\nallow = [\"not-an-ip\"]\n", "purge.allow"),
        (
            "[[limits.class]]\nname = \"x\"\npaths = [\"(\"]\n",
            "limits.class[0].paths",
        ),
        (
            "[redis]\nurl = \"redis://127.0.0.1:1\"\ntls_ca_file = \"/nonexistent/ca.pem\"\n",
            "redis.tls_ca_file",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .arg("check-config")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(key),
            "error for {text:?} must name {key}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn run_refuses_a_bad_config_without_starting() {
    let out = Command::new(BIN)
        .args(["run", "--listen", "not-an-address"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.listen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_a_miss_then_a_hit_from_its_built_in_origin() {
    let listen = format!("127.0.0.1:{}", free_port());
    let origin = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let dir = temp_dir("demo");
    let mut child = Command::new(BIN)
        .args([
            "demo", "--listen", &listen, "--origin", &origin, "--admin", &admin,
        ])
        .env("TMPDIR", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let url = format!("http://{listen}/product-1.html");
    let listening = until(Duration::from_secs(15), || async {
        tokio::net::TcpStream::connect(&listen).await.is_ok()
    })
    .await;
    assert!(listening, "the demo did not listen on {listen}");
    let first = get(&url)
        .await
        .header("x-magento-cache-debug")
        .map(str::to_owned);
    let second = get(&url).await;
    assert!(
        second.text().contains("<nav><ul><li>Category 1</li>"),
        "the demo's top menu is an ESI include, spliced in: {}",
        second.text()
    );
    let checkout = get(&format!("http://{listen}/checkout/cart/")).await;
    let metrics = get(&format!("http://{admin}/metrics")).await.text();
    let _ = child.kill();
    let output = child.wait_with_output().expect("demo output");
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(first.as_deref(), Some("MISS"));
    assert_eq!(second.cache_debug(), "HIT");
    assert_eq!(checkout.cache_debug(), "UNCACHEABLE");
    assert!(
        metrics.contains("floodgate_requests_total{outcome=\"hit\"} 1"),
        "{metrics}"
    );
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains(&format!("curl -si http://{listen}/product-1.html")),
        "{help}"
    );
}

#[test]
fn a_port_in_use_ends_the_start_at_once_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let admin = format!("127.0.0.1:{}", free_port());
    let started = std::time::Instant::now();
    let out = Command::new(BIN)
        .args(["run", "--listen", &addr.to_string(), "--admin", &admin])
        .args(["--origin", "127.0.0.1:9"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it waited for the port"
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr.to_string()) && err.contains("server.listen"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    drop(taken);
}

/// The proxy turns transparent huge pages off for itself: with them, each touched 2 MB of
/// its allocator's arena became resident whole, and an idle proxy held 36 MB instead of
/// 22 (bench/memory.sh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_runs_without_transparent_huge_pages() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", fg.pid())).expect("process status");
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "{status}");
}
