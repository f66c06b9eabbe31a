//! Why the cache misses (`GET /insights`, the status page, `floodgate top`), against the
//! real binary with a scripted workload: a private page, a parameter with many values,
//! a tag purged again and again, a page behind a hit-for-miss mark, a checkout pass. The
//! reasons and top lists must come out as the workload made them; the status page is
//! rendered by headless Chromium and its screenshot read back; `floodgate top` runs in a
//! real terminal under tmux.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::{client, get, purge_request, raw, tags_pattern, until, Floodgate, Settings};
use crate::common::{Page, TestOrigin as Origin};

const LIMIT: Duration = Duration::from_secs(20);

async fn insights(fg: &Floodgate) -> Value {
    client()
        .get(fg.admin_url("/insights"))
        .send()
        .await
        .expect("GET /insights")
        .json()
        .await
        .expect("/insights is JSON")
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|e| e[key] == value)
}

fn reason(list: &Value, name: &str) -> u64 {
    list.as_array()
        .and_then(|a| a.iter().find(|p| p[0] == name))
        .and_then(|p| p[1].as_u64())
        .unwrap_or(0)
}

/// The workload every test here runs; returns how many cacheable requests it made.
async fn workload(fg: &Floodgate, origin: &Origin) -> u64 {
    let mut lookups = 0;
    // A page a layout block made private: uncacheable, every time.
    origin.set(
        "/private.html",
        Page::cacheable("<html>mini cart</html>").header("cache-control", "private, max-age=600"),
    );
    for _ in 0..6 {
        assert_eq!(
            get(&fg.url("/private.html")).await.cache_debug(),
            "UNCACHEABLE"
        );
        lookups += 1;
    }
    // One category page under 40 values of a tracking parameter: 40 entries.
    for i in 0..40 {
        let got = get(&fg.url(&format!("/category.html?ref=mail{i}&color=red"))).await;
        assert_eq!(got.cache_debug(), "MISS");
        lookups += 1;
    }
    // A product page whose tag an indexer purges again and again, visited between.
    for round in 0..6 {
        let got = get(&fg.url("/p-7.html")).await;
        assert_eq!(got.cache_debug(), "MISS", "round {round}");
        lookups += 1;
        let purged = purge_request(fg, &tags_pattern(&["cat_p_7"]))
            .send()
            .await
            .expect("purge");
        assert_eq!(purged.status(), 200);
    }
    // A page that answered 404, then came back: its key is marked hit-for-miss.
    origin.set("/back.html", Page::cacheable("gone").status(404));
    get(&fg.url("/back.html")).await;
    origin.set("/back.html", Page::cacheable("<html>back</html>"));
    assert_eq!(get(&fg.url("/back.html")).await.cache_debug(), "MISS");
    lookups += 2;
    // And a checkout page, passed by Magento's rule.
    get(&fg.url("/checkout/cart")).await;
    lookups
}

#[tokio::test]
async fn the_reasons_and_top_lists_come_out_as_the_workload_made_them() {
    let origin = Origin::start().await;
    let fg = Floodgate::start_with(
        origin.addr,
        Settings::default()
            .insights("window_secs = 600")
            .warm("enabled = false"),
    )
    .await;
    let lookups = workload(&fg, &origin).await;

    // Counted in /metrics by reason, at once.
    let m = |outcome: &str, reason: &str| {
        format!("floodgate_outcome_reasons_total{{outcome=\"{outcome}\",reason=\"{reason}\"}}")
    };
    assert_eq!(fg.metric(&m("uncacheable", "private")).await, 6.0);
    assert_eq!(fg.metric(&m("uncacheable", "status")).await, 1.0);
    // 40 category entries, the first product fetch, the page that came back... no: that
    // one is behind its mark.
    assert_eq!(fg.metric(&m("miss", "cold")).await, 41.0);
    assert_eq!(fg.metric(&m("miss", "purged")).await, 5.0);
    assert_eq!(fg.metric(&m("miss", "hit_for_miss")).await, 1.0);
    assert_eq!(fg.metric(&m("miss", "evicted")).await, 0.0);
    assert_eq!(fg.metric(&m("pass", "customer_or_checkout")).await, 1.0);

    // The lists come from the background task and the per-second samples: wait for the
    // samples to have seen every request.
    let seen = until(LIMIT, || async {
        insights(&fg).await["reasons"]["lookups"].as_u64() >= Some(lookups)
    })
    .await;
    let report = insights(&fg).await;
    assert!(
        seen,
        "the samples never counted {lookups} lookups: {report:#}"
    );
    let top = &report["top"];

    let private = find(&top["uncacheable"], "path", "/private.html").expect("the private page");
    assert_eq!(
        (private["count"].as_u64(), private["reason"].as_str()),
        (Some(6), Some("private"))
    );
    let status = find(&top["uncacheable"], "path", "/back.html").expect("the 404");
    assert_eq!(status["reason"], "status");

    let split = find(&top["splitting_params"], "param", "ref").expect("ref splits a path");
    assert_eq!(split["path"], "/category.html");
    assert_eq!(split["distinct_values"], 40, "exact below 64 values");
    assert_eq!(split["misses"], 40);
    let color = find(&top["splitting_params"], "param", "color");
    assert!(
        color.is_none(),
        "one value does not split anything: {color:?}"
    );
    assert_eq!(
        top["splitting_params"][0]["param"], "ref",
        "most values first"
    );

    let tag = find(&top["purged_tags"], "tag", "cat_p_7").expect("the purged tag");
    assert_eq!(
        (tag["purges"].as_u64(), tag["objects"].as_u64()),
        (Some(6), Some(6))
    );
    let after = find(&top["misses_after_purge"], "tag", "cat_p_7").expect("misses after purges");
    assert_eq!(after["misses"], 5);

    let product = find(&top["misses"], "path", "/p-7.html").expect("the product's misses");
    assert_eq!(
        (product["count"].as_u64(), product["reason"].as_str()),
        (Some(6), Some("purged"))
    );
    let category = find(&top["misses"], "path", "/category.html").expect("the category");
    assert_eq!(
        (category["count"].as_u64(), category["reason"].as_str()),
        (Some(40), Some("cold"))
    );
    assert!(find(&top["slowest_origin"], "path", "/category.html").is_some());

    assert_eq!(reason(&report["reasons"]["uncacheable"], "private"), 6);
    assert_eq!(reason(&report["reasons"]["miss"], "purged"), 5);

    // The diagnosis says what to do, with the evidence.
    let diagnosis: Vec<String> = report["diagnosis"]
        .as_array()
        .expect("a diagnosis")
        .iter()
        .map(|l| l.as_str().unwrap_or_default().to_string())
        .collect();
    let says = |words: &[&str]| {
        diagnosis
            .iter()
            .any(|l| words.iter().all(|w| l.contains(w)))
    };
    assert!(
        says(&["`ref`", "/category.html", "40", "magento.marketing_params"]),
        "{diagnosis:#?}"
    );
    assert!(!says(&["`color`"]), "{diagnosis:#?}");
    assert!(
        says(&[
            "Cache-Control: private",
            "cacheable=\"false\"",
            "/private.html"
        ]),
        "{diagnosis:#?}"
    );
    assert!(
        says(&["`cat_p_7`", "6 times", "Update by Schedule"]),
        "{diagnosis:#?}"
    );
    assert_eq!(report["events_dropped"], 0);
}

#[tokio::test]
async fn the_window_forgets_and_paths_from_visitors_are_escaped_on_the_status_page() {
    let origin = Origin::start().await;
    // The shortest window: 10 slices of one second.
    let fg = Floodgate::start_with(
        origin.addr,
        Settings::default().insights("window_secs = 10"),
    )
    .await;
    // Pingora refuses `<` in a request line, but a header carries anything: a purge's
    // X-Pool (shown as the purge's tag) and a private page's path with `'` and `&`.
    origin.set(
        "/it's&more.html",
        Page::cacheable("x").header("cache-control", "private"),
    );
    let answer = raw(
        fg.addr,
        b"GET /it's&more.html HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let purged = client()
        .request(
            reqwest::Method::from_bytes(b"PURGE").expect("method"),
            fg.url("/"),
        )
        .header("x-pool", "<img src=x onerror=alert(1)>")
        .send()
        .await
        .expect("purge");
    assert_eq!(purged.status(), 200);
    let listed = until(LIMIT, || async {
        let report = insights(&fg).await;
        report["top"]["uncacheable"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            && report["top"]["purged_tags"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
    })
    .await;
    assert!(listed, "{:#}", insights(&fg).await);
    let page = client()
        .get(fg.admin_url("/"))
        .send()
        .await
        .expect("status page")
        .text()
        .await
        .expect("html");
    assert!(page.contains("Uncacheable paths"));
    assert!(
        !page.contains("<img"),
        "a purge's text reached the page unescaped"
    );
    assert!(page.contains("X-Pool: &lt;img src=x onerror=alert(1)&gt;"));
    assert!(page.contains("/it&#39;s&amp;more.html"));
    // Past the window, the lists are empty again, while /metrics keeps the count.
    let forgotten = until(Duration::from_secs(30), || async {
        insights(&fg).await["top"]["uncacheable"]
            .as_array()
            .is_some_and(|a| a.is_empty())
    })
    .await;
    assert!(forgotten, "{:#}", insights(&fg).await);
    assert_eq!(
        fg.metric("floodgate_outcome_reasons_total{outcome=\"uncacheable\",reason=\"private\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn misses_of_evicted_and_expired_pages_say_so() {
    let origin = Origin::start().await;
    // 1 MiB of memory for 40 pages of 100 KB (not compressible): most are evicted.
    let fg = Floodgate::start_with(
        origin.addr,
        Settings::default()
            .cache("memory_bytes = 1048576")
            .cache("max_object_bytes = 262144")
            .cache("grace_secs = 0")
            .cache("store_gzip = false")
            .warm("enabled = false"),
    )
    .await;
    let noise: String = (0..100_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    for i in 0..40 {
        origin.set(&format!("/big-{i}.html"), Page::cacheable(noise.clone()));
        get(&fg.url(&format!("/big-{i}.html"))).await;
    }
    let evicted = until(LIMIT, || async {
        fg.metric("floodgate_cache_evictions_total").await >= 20.0
    })
    .await;
    assert!(evicted, "memory_bytes did not evict");
    let m = |reason: &str| {
        format!("floodgate_outcome_reasons_total{{outcome=\"miss\",reason=\"{reason}\"}}")
    };
    assert_eq!(fg.metric(&m("cold")).await, 40.0);
    let mut misses = 0;
    for i in 0..40 {
        if get(&fg.url(&format!("/big-{i}.html"))).await.cache_debug() == "MISS" {
            misses += 1;
        }
    }
    assert!(misses >= 20, "{misses} misses");
    assert_eq!(
        fg.metric(&m("evicted")).await,
        f64::from(misses),
        "every second miss was an evicted page"
    );
    assert_eq!(fg.metric(&m("cold")).await, 40.0);

    // A page past its TTL (no grace): its miss is an expired one.
    origin.set("/short.html", Page::cacheable("short").ttl(1));
    assert_eq!(get(&fg.url("/short.html")).await.cache_debug(), "MISS");
    fg.until_expired("/short.html").await;
    assert_eq!(get(&fg.url("/short.html")).await.cache_debug(), "MISS");
    assert_eq!(fg.metric(&m("expired")).await, 1.0);
    assert_eq!(fg.metric(&m("cold")).await, 41.0);
}

/// Counts the pixels of the screenshot within `tolerance` of `rgb`.
fn pixels_near(png_file: &std::path::Path, rgb: [u8; 3], tolerance: u8) -> usize {
    let decoder = png::Decoder::new(std::fs::File::open(png_file).expect("screenshot"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|p| p.len() >= 3 && (0..3).all(|i| p[i].abs_diff(rgb[i]) <= tolerance))
        .count()
}

#[tokio::test]
async fn the_status_page_draws_its_charts_in_chromium() {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("no Chromium: install Debian's `chromium` (packaging/install-build-deps.sh does)");
    let origin = Origin::start().await;
    let fg = Floodgate::start_with(origin.addr, Settings::default()).await;
    origin.set(
        "/private.html",
        Page::cacheable("<html>mini cart</html>").header("cache-control", "private, max-age=600"),
    );
    // Traffic over several seconds, so the charts have points to join.
    let mut seconds = 0;
    let mut round = 0;
    while seconds < 6 {
        workload_round(&fg, round).await;
        round += 1;
        seconds = insights(&fg).await["now"]["seconds"].as_u64().unwrap_or(0);
    }
    let dir = crate::common::temp_dir("status-page");
    let shot = dir.join("status-page.png");
    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1500",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(fg.admin_url("/"))
        .output()
        .expect("run chromium");
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The hit-ratio line, the hits' area in the traffic chart, the origin's in-flight line.
    let ratio_line = pixels_near(&shot, [0x26, 0x46, 0x53], 10);
    let hit_area = pixels_near(&shot, [0x2a, 0x9d, 0x8f], 6);
    let miss_area = pixels_near(&shot, [0xe9, 0xc4, 0x6a], 6);
    assert!(
        ratio_line > 300,
        "the hit-ratio line is not drawn ({ratio_line} pixels)"
    );
    assert!(
        hit_area > 3000,
        "the traffic chart shows no hits ({hit_area} pixels)"
    );
    assert!(
        miss_area > 300,
        "the traffic chart shows no misses ({miss_area} pixels)"
    );
    if std::env::var_os("FLOODGATE_KEEP_SCREENSHOT").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
        std::fs::copy(&shot, docs).expect("copy the screenshot to docs/");
    }
}

/// One round of a shop's traffic: mostly hits, some misses, an uncacheable page, a purge.
async fn workload_round(fg: &Floodgate, round: usize) {
    for i in 0..20 {
        get(&fg.url(&format!("/p-{i}.html"))).await;
    }
    get(&fg.url(&format!("/category.html?ref=r{round}"))).await;
    get(&fg.url("/checkout/cart")).await;
    get(&fg.url("/private.html")).await;
    if round.is_multiple_of(3) {
        purge_request(fg, &tags_pattern(&[&format!("cat_p_{}", round % 20)]))
            .send()
            .await
            .expect("purge");
    }
}

#[tokio::test]
async fn floodgate_top_shows_the_live_view_in_a_terminal() {
    let origin = Origin::start().await;
    let fg = Floodgate::start_with(origin.addr, Settings::default().warm("enabled = false")).await;
    let lookups = workload(&fg, &origin).await;
    assert!(
        until(LIMIT, || async {
            insights(&fg).await["reasons"]["lookups"].as_u64() >= Some(lookups)
        })
        .await
    );
    let session = format!("floodgate-top-{}", fg.admin.port());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(args)
            .output()
            .expect("no tmux: install Debian's `tmux` (packaging/install-build-deps.sh does)")
    };
    let command = format!(
        "{} top --admin http://{}",
        env!("CARGO_BIN_EXE_floodgate"),
        fg.admin
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "200",
        "-y",
        "50",
        &command,
    ]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let screen = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned()
    };
    let shows_all = until(LIMIT, || async {
        let s = screen();
        s.contains("hit ratio")
            && s.contains("/private.html")
            && s.contains("cat_p_7")
            && s.contains("/category.html?ref")
    })
    .await;
    let s = screen();
    assert!(shows_all, "floodgate top shows:\n{s}");
    for part in [
        "Requests by outcome",
        "in flight",
        "Diagnosis",
        "marketing_params",
        "Misses",
        "Uncacheable",
        "Purged tags",
    ] {
        assert!(s.contains(part), "no {part:?} on the screen:\n{s}");
    }
    // It refreshes: new traffic shows up without a key press.
    for _ in 0..3 {
        get(&fg.url("/fresh-arrival.html")).await;
    }
    let refreshed = until(LIMIT, || async { screen().contains("/fresh-arrival.html") }).await;
    assert!(refreshed, "no refresh:\n{}", screen());
    // A Floodgate it cannot reach is said so, and retried, not a crash.
    let lost = format!("{session}-lost");
    let nowhere = format!(
        "{} top --admin http://127.0.0.1:9",
        env!("CARGO_BIN_EXE_floodgate")
    );
    assert!(tmux(&[
        "new-session",
        "-d",
        "-s",
        &lost,
        "-x",
        "120",
        "-y",
        "20",
        &nowhere
    ])
    .status
    .success());
    let said = until(LIMIT, || async {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &lost]).stdout)
            .contains("cannot reach Floodgate's admin listener")
    })
    .await;
    tmux(&["kill-session", "-t", &lost]);
    assert!(said, "no word about the unreachable admin listener");
    // q gives the terminal back and ends the program.
    tmux(&["send-keys", "-t", &session, "q"]);
    let ended = until(LIMIT, || async {
        !tmux(&["has-session", "-t", &session]).status.success()
    })
    .await;
    if !ended {
        tmux(&["kill-session", "-t", &session]);
    }
    assert!(ended, "floodgate top did not quit on q");
}
