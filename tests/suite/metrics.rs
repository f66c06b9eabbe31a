//! The admin listener's Prometheus metrics count what clients actually got.

use crate::common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_outcome() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/nc.html",
        Page::cacheable("x").header("cache-control", "no-store"),
    );
    let fg = Floodgate::start(origin.addr).await;
    get(&fg.url("/a.html")).await; // miss
    get(&fg.url("/a.html")).await; // hit
    get(&fg.url("/a.html")).await; // hit
    get(&fg.url("/checkout/cart/")).await; // pass
    get(&fg.url("/nc.html")).await; // uncacheable
    send(client().request(
        reqwest::Method::from_bytes(b"PROPFIND").unwrap(),
        fg.url("/dav"),
    ))
    .await;
    assert_eq!(
        fg.metric("floodgate_requests_total{outcome=\"miss\"}")
            .await,
        1.0
    );
    assert_eq!(
        fg.metric("floodgate_requests_total{outcome=\"hit\"}").await,
        2.0
    );
    assert_eq!(
        fg.metric("floodgate_requests_total{outcome=\"pass\"}")
            .await,
        1.0
    );
    assert_eq!(
        fg.metric("floodgate_requests_total{outcome=\"uncacheable\"}")
            .await,
        1.0
    );
    assert_eq!(
        fg.metric("floodgate_requests_total{outcome=\"tunnel\"}")
            .await,
        1.0
    );
    assert_eq!(
        fg.metric("floodgate_requests_total{outcome=\"stale\"}")
            .await,
        0.0
    );
    assert_eq!(fg.metric("floodgate_cache_objects").await, 1.0);
    assert!(fg.metric("floodgate_cache_bytes").await > 0.0);
    assert_eq!(fg.metric("floodgate_origin_healthy").await, 1.0);
    // miss + pass + uncacheable + tunnel went to the origin
    assert_eq!(
        fg.metric("floodgate_origin_first_byte_seconds_count").await,
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_stale_and_unavailable_are_counted() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/slow.html",
        Page::cacheable("s").delay(Duration::from_millis(500)),
    );
    origin.set(
        "/short.html",
        Page::cacheable("v1").header("cache-control", "public, max-age=1"),
    );
    let fg = Floodgate::start(origin.addr).await;
    burst(&fg.url("/slow.html"), 10).await;
    assert_eq!(origin.hits("/slow.html"), 1);
    assert_eq!(fg.metric("floodgate_coalesced_total").await, 9.0);

    get(&fg.url("/short.html")).await;
    fg.until_stored("/short.html", &["grace"], Duration::from_secs(10))
        .await;
    // Served within grace, which starts one background refresh.
    let stale = get(&fg.url("/short.html")).await;
    assert_eq!(stale.header("grace"), Some("normal (healthy server)"));
    assert_eq!(
        fg.metric("floodgate_requests_total{outcome=\"stale\"}")
            .await,
        1.0
    );
    assert!(eventually(Duration::from_secs(3), || origin.hits("/short.html") == 2).await);
    assert!(until_metric(
        &fg,
        "floodgate_background_refreshes_total",
        1.0,
        Duration::from_secs(5)
    )
    .await
    .is_some());
    assert_eq!(fg.metric("floodgate_background_refreshes_total").await, 1.0);

    origin.stop();
    assert_eq!(get(&fg.url("/never.html")).await.status, 503);
    assert_eq!(
        fg.metric("floodgate_unavailable_total{reason=\"origin_failed\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_mix_moves_each_counter_by_exactly_its_amount_and_promtool_accepts_the_output() {
    let origin = TestOrigin::start().await;
    for n in 1..=3 {
        origin.set(
            &format!("/m{n}.html"),
            Page::cacheable(format!("m{n}")).header("x-magento-tags", &format!("cat_p_{n}")),
        );
    }
    origin.set(
        "/hold.html",
        Page::cacheable("hold").delay(Duration::from_millis(1500)),
    );
    let settings = Settings::default()
        .warm("enabled = false")
        .limits("max_inflight = 1")
        .limits("max_wait_ms = 200");
    let fg = Floodgate::start_with(origin.addr, settings).await;
    let purge = |pattern: &str| {
        client()
            .request(reqwest::Method::from_bytes(b"PURGE").unwrap(), fg.url("/"))
            .header("X-Magento-Tags-Pattern", pattern.to_string())
    };

    for n in 1..=3 {
        assert_eq!(
            get(&fg.url(&format!("/m{n}.html"))).await.cache_debug(),
            "MISS"
        );
    }
    for n in [1, 2, 3, 3] {
        assert_eq!(
            get(&fg.url(&format!("/m{n}.html"))).await.cache_debug(),
            "HIT"
        );
    }
    for _ in 0..2 {
        assert_eq!(get(&fg.url("/checkout/cart/")).await.status, 200);
    }
    assert_eq!(
        send(purge("((^|,)cat_p_1(,|$))|((^|,)cat_p_2(,|$))"))
            .await
            .status,
        200
    );
    assert_eq!(send(purge("(")).await.status, 400);
    let hold = {
        let url = fg.url("/hold.html");
        tokio::spawn(async move { get(&url).await })
    };
    assert!(eventually(Duration::from_secs(5), || origin.hits("/hold.html") == 1).await);
    assert_eq!(get(&fg.url("/new.html")).await.status, 503);
    assert_eq!(hold.await.expect("hold").status, 200);

    let expected = [
        ("floodgate_requests_total{outcome=\"miss\"}", 4.0),
        ("floodgate_requests_total{outcome=\"hit\"}", 4.0),
        ("floodgate_requests_total{outcome=\"pass\"}", 2.0),
        ("floodgate_requests_total{outcome=\"purge\"}", 2.0),
        ("floodgate_requests_total{outcome=\"shed\"}", 1.0),
        ("floodgate_requests_total{outcome=\"stale\"}", 0.0),
        ("floodgate_responses_total{status_class=\"2xx\"}", 11.0),
        ("floodgate_responses_total{status_class=\"4xx\"}", 1.0),
        ("floodgate_responses_total{status_class=\"5xx\"}", 1.0),
        ("floodgate_purge_requests_total{result=\"ok\"}", 1.0),
        ("floodgate_purge_requests_total{result=\"invalid\"}", 1.0),
        ("floodgate_purged_objects_total", 2.0),
        ("floodgate_purged_tags_total", 2.0),
        (
            "floodgate_shed_total{class=\"pages\",reason=\"timeout\"}",
            1.0,
        ),
        ("floodgate_unavailable_total{reason=\"timeout\"}", 1.0),
        ("floodgate_origin_first_byte_seconds_count", 6.0),
        ("floodgate_origin_response_seconds_count", 6.0),
        ("floodgate_coalesced_total", 0.0),
        ("floodgate_cache_objects", 2.0),
        ("floodgate_config_reloads_total{result=\"ok\"}", 0.0),
    ];
    let text = fg.metrics().await;
    for (sample, value) in expected {
        let got = text
            .lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse::<f64>().ok());
        assert_eq!(got, Some(value), "{sample}");
    }

    // Prometheus's own linter, from Debian's `prometheus` package.
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus) must be installed to run this test");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = promtool.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_json_line_per_request_with_outcome_class_and_origin_time() {
    let origin = TestOrigin::start().await;
    let settings = Settings::default()
        .log("access = true")
        .log("format = \"json\"")
        .log("level = \"warn,floodgate::access=info\"");
    let fg = Floodgate::start_with(origin.addr, settings).await;
    get(&fg.url("/logged.html")).await;
    get(&fg.url("/logged.html")).await;
    send(
        client()
            .get(fg.url("/logged.html"))
            .header("user-agent", "Googlebot/2.1"),
    )
    .await;

    let access_lines = || {
        fg.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["target"] == "floodgate::access")
            .collect::<Vec<_>>()
    };
    eventually(Duration::from_secs(3), || access_lines().len() >= 3).await;
    let lines = access_lines();
    assert_eq!(lines.len(), 3, "{}", fg.log());
    let miss = &lines[0];
    assert_eq!(miss["url"], "/logged.html");
    assert_eq!(miss["method"], "GET");
    assert_eq!(miss["status"], 200);
    assert_eq!(miss["outcome"], "miss");
    assert_eq!(miss["class"], "pages");
    assert!(miss["origin_ms"].as_f64().is_some(), "{miss}");
    assert!(miss["duration_ms"].as_f64().is_some(), "{miss}");
    assert_eq!(lines[1]["outcome"], "hit");
    assert!(lines[1]["origin_ms"].is_null(), "a hit has no origin time");
    assert_eq!(lines[2]["outcome"], "hit");
}
