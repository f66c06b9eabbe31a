//! The files operators install: the systemd unit, the alert rules, the Grafana dashboard
//! and the Debian package's asset list must be valid and must match what Floodgate
//! actually exposes.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::*;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `floodgate_…` names in a text (PromQL), histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("floodgate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn alert_rules_pass_promtool() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo("packaging/prometheus/floodgate-alerts.yml"))
        .output()
        .expect("promtool (apt-get install prometheus) must be installed");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    // verify insists that ExecStart's binary exists: point it at the one just built.
    let unit = read("packaging/systemd/floodgate.service");
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("DynamicUser=yes") && unit.contains("NoNewPrivileges=yes"));
    assert!(unit.contains("ProtectSystem=strict") && unit.contains("LimitNOFILE="));
    let dir = common::floodgate::temp_dir("unit");
    let path = dir.join("floodgate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/floodgate", env!("CARGO_BIN_EXE_floodgate")),
    )
    .expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (apt-get install systemd) must be installed");
    let _ = std::fs::remove_dir_all(&dir);
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{complaints}");
    assert!(
        !complaints.contains("floodgate.service"),
        "warnings about the unit: {complaints}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_only_use_metrics_floodgate_exposes() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("packaging/grafana/floodgate-dashboard.json"))
            .expect("the dashboard is JSON");
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for wanted in [
        "Hit ratio",
        "Origin load vs limit",
        "Shedding",
        "Purge rate",
        "Memory",
    ] {
        assert!(titles.contains(&wanted), "panel {wanted} in {titles:?}");
    }
    let used: BTreeSet<String> = metric_names(&read("packaging/grafana/floodgate-dashboard.json"))
        .into_iter()
        .chain(metric_names(&read(
            "packaging/prometheus/floodgate-alerts.yml",
        )))
        .collect();

    let origin = TestOrigin::start().await;
    // With Redis, so the fleet's and the purge bus's families are there too.
    let redis = RedisServer::start().await;
    let fg = Floodgate::start_with(
        origin.addr,
        Settings::default().redis(&format!("url = \"{}\"", redis.url())),
    )
    .await;
    // Labelled series appear once used: make one origin request.
    get(&fg.url("/a.html")).await;
    let exposed = fg.metrics().await;
    let exposed: BTreeSet<String> = exposed
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    let missing: Vec<&String> = used.difference(&exposed).collect();
    assert!(missing.is_empty(), "not exposed: {missing:?}");
    assert!(used.len() > 15, "{used:?}");
}

#[test]
fn every_debian_package_asset_exists() {
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .expect("package.metadata.deb.assets");
    for asset in assets {
        let source = asset[0].as_str().expect("asset source");
        if source.starts_with("target/") {
            continue; // built by `cargo deb` itself
        }
        assert!(repo(source).exists(), "{source} is missing");
    }
    let installed: Vec<&str> = assets.iter().filter_map(|a| a[1].as_str()).collect();
    for wanted in ["usr/bin/", "etc/floodgate/floodgate.toml"] {
        assert!(installed.contains(&wanted), "{wanted} in {installed:?}");
    }
    // cargo-deb installs and enables the unit from its unit-scripts directory.
    let units = &manifest["package"]["metadata"]["deb"]["systemd-units"];
    let dir = units["unit-scripts"]
        .as_str()
        .expect("systemd-units.unit-scripts");
    let name = units["unit-name"]
        .as_str()
        .expect("systemd-units.unit-name");
    assert!(repo(&format!("{dir}/{name}.service")).exists());
    let scripts = manifest["package"]["metadata"]["deb"]["maintainer-scripts"]
        .as_str()
        .expect("maintainer-scripts, where cargo-deb writes the unit's snippets");
    assert!(repo(scripts).is_dir());
}
