//! docs/magento-cache-protocol.md, section 3: Magento's PURGE, answered from the tag index; and the re-warmer.

use crate::common;

use std::time::Duration;

use common::*;

/// The purge rules are checked without the re-warmer, which would refill what they
/// purged; the re-warmer has its own test below.
fn no_warm() -> Settings {
    Settings::default().warm("enabled = false")
}

fn purge_req(fg: &Floodgate) -> reqwest::RequestBuilder {
    client().request(reqwest::Method::from_bytes(b"PURGE").unwrap(), fg.url("/"))
}

/// Whether `url` is served from the cache: a HIT, or else a MISS (anything else, an
/// error status included, fails the test rather than counting as "not cached").
async fn is_cached(fg: &Floodgate, url: &str) -> bool {
    let got = get(&fg.url(url)).await;
    assert_eq!(got.status, 200, "{url}: a page, not an error");
    match got.cache_debug() {
        "HIT" => true,
        "MISS" => false,
        other => panic!("{url}: X-Magento-Cache-Debug {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_removes_exactly_the_tagged_pages_on_every_host() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start_with(origin.addr, no_warm()).await;
    let c = client();
    for url in ["/product-1.html", "/product-11.html", "/product-2.html"] {
        get(&fg.url(url)).await;
    }
    send(
        c.get(fg.url("/product-1.html"))
            .header("host", "second-store.test"),
    )
    .await;

    // Exactly what Magento sends: no body, no Content-Length, a new connection.
    let answer = raw(
        fg.addr,
        format!(
            "PURGE / HTTP/1.1\r\nX-Magento-Tags-Pattern: {}\r\nHost: cache.internal\r\nConnection: close\r\n\r\n",
            tags_pattern(&["cat_p_1"])
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("content-length"),
        "{answer}"
    );
    assert!(
        answer.contains("purged 2 objects"),
        "both hosts' copies: {answer}"
    );

    assert!(!is_cached(&fg, "/product-1.html").await, "cat_p_1 purged");
    let other_host = send(
        c.get(fg.url("/product-1.html"))
            .header("host", "second-store.test"),
    )
    .await;
    assert_eq!(other_host.cache_debug(), "MISS", "a purge ignores the Host");
    assert!(
        is_cached(&fg, "/product-11.html").await,
        "cat_p_1 must not purge cat_p_11"
    );
    assert!(is_cached(&fg, "/product-2.html").await);
    assert_eq!(fg.metric("floodgate_purged_objects_total").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_missing_headers_and_bad_patterns_purge_nothing() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start_with(origin.addr, no_warm().purge("allow = [\"10.9.9.0/24\"]")).await;
    get(&fg.url("/product-5.html")).await;
    let refused = send(purge_req(&fg).header("x-magento-tags-pattern", ".*")).await;
    assert_eq!(refused.status, 405);
    assert!(refused.text().contains("purge.allow"), "{}", refused.text());
    assert!(is_cached(&fg, "/product-5.html").await);

    let fg2 = Floodgate::start_with(origin.addr, no_warm()).await;
    get(&fg2.url("/product-5.html")).await;
    let no_header = send(purge_req(&fg2)).await;
    assert_eq!(no_header.status, 400);
    assert!(no_header.text().contains("X-Magento-Tags-Pattern"));
    let bad = send(purge_req(&fg2).header("x-magento-tags-pattern", "((^|,)cat_p_5(,|$)")).await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.text().contains("not a valid regular expression"),
        "{}",
        bad.text()
    );
    let bad_pool = send(
        purge_req(&fg2)
            .header("x-magento-tags-pattern", ".*")
            .header("x-pool", "("),
    )
    .await;
    assert_eq!(bad_pool.status, 400);
    assert!(
        is_cached(&fg2, "/product-5.html").await,
        "nothing purged by a refused purge"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flush_keeps_untagged_objects() {
    let origin = TestOrigin::start().await;
    origin.set("/untagged.html", Page::cacheable("no tags"));
    let fg = Floodgate::start_with(origin.addr, no_warm()).await;
    for url in ["/product-1.html", "/category-3.html", "/untagged.html"] {
        get(&fg.url(url)).await;
    }
    let flushed = send(purge_req(&fg).header("x-magento-tags-pattern", ".*")).await;
    assert_eq!(flushed.status, 200);
    assert!(!is_cached(&fg, "/product-1.html").await);
    assert!(!is_cached(&fg, "/category-3.html").await);
    assert!(is_cached(&fg, "/untagged.html").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_patterns_match_known_tags_and_pools_match_x_pool() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/cms.html",
        Page::cacheable("cms").header("x-magento-tags", "cms_b_1,store"),
    );
    origin.set(
        "/pooled.html",
        Page::cacheable("p").header("x-pool", "pool-blue"),
    );
    let fg = Floodgate::start_with(origin.addr, no_warm()).await;
    for url in ["/cms.html", "/product-3.html", "/pooled.html"] {
        get(&fg.url(url)).await;
    }
    assert_eq!(
        send(purge_req(&fg).header("x-magento-tags-pattern", "^cms_b_[0-9]+$"))
            .await
            .status,
        200
    );
    assert!(!is_cached(&fg, "/cms.html").await);
    assert!(is_cached(&fg, "/product-3.html").await);
    assert_eq!(
        send(purge_req(&fg).header("x-pool", "blue")).await.status,
        200
    );
    assert!(!is_cached(&fg, "/pooled.html").await);
    assert!(is_cached(&fg, "/product-3.html").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tags_in_one_header() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start_with(origin.addr, no_warm()).await;
    get(&fg.url("/product-777.html")).await;
    get(&fg.url("/product-5000.html")).await;
    let tags: Vec<String> = (0..1000).map(|i| format!("cat_p_{i}")).collect();
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let answer = send(purge_req(&fg).header("x-magento-tags-pattern", tags_pattern(&tags))).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.text().contains("purged 1 objects"),
        "{}",
        answer.text()
    );
    assert!(!is_cached(&fg, "/product-777.html").await);
    assert!(is_cached(&fg, "/product-5000.html").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_in_flight_during_a_purge_is_not_stored_fresh() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/slow-price.html",
        Page::cacheable("old price")
            .header("x-magento-tags", "cat_p_9")
            .delay(Duration::from_millis(800)),
    );
    let fg = Floodgate::start_with(origin.addr, no_warm()).await;
    let url = fg.url("/slow-price.html");
    let in_flight = tokio::spawn(async move { get(&url).await });
    assert!(
        eventually(Duration::from_secs(5), || origin.hits("/slow-price.html")
            == 1)
        .await,
        "the fetch reached the origin before the purge"
    );
    assert_eq!(
        send(purge_req(&fg).header("x-magento-tags-pattern", tags_pattern(&["cat_p_9"])))
            .await
            .status,
        200
    );
    assert_eq!(
        in_flight.await.unwrap().text(),
        "old price",
        "the waiting visitor still gets an answer"
    );
    origin.set(
        "/slow-price.html",
        Page::cacheable("new price").header("x-magento-tags", "cat_p_9"),
    );
    let next = get(&fg.url("/slow-price.html")).await;
    assert_eq!(
        (next.cache_debug(), next.text().as_str()),
        ("MISS", "new price")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purge_serves_stale_while_one_refresh_runs() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/soft.html",
        Page::cacheable("v1").header("x-magento-tags", "cat_p_4"),
    );
    let fg = Floodgate::start_with(origin.addr, no_warm()).await;
    get(&fg.url("/soft.html")).await;
    origin.set(
        "/soft.html",
        Page::cacheable("v2").header("x-magento-tags", "cat_p_4"),
    );
    let answer = send(
        purge_req(&fg)
            .header("x-magento-tags-pattern", tags_pattern(&["cat_p_4"]))
            .header("x-floodgate-purge", "soft"),
    )
    .await;
    assert!(
        answer.text().contains("expired 1 objects"),
        "{}",
        answer.text()
    );
    let stale = get(&fg.url("/soft.html")).await;
    assert_eq!(
        (stale.text().as_str(), stale.header("grace")),
        ("v1", Some("normal (healthy server)"))
    );
    assert!(eventually(Duration::from_secs(3), || origin.hits("/soft.html") == 2).await);
    fg.until_fresh("/soft.html").await;
    assert_eq!(get(&fg.url("/soft.html")).await.text(), "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_hot_pages_are_rewarmed_and_cold_ones_are_not() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let c = client();
    // Hot: requested by visitors (in their https variant).
    for _ in 0..3 {
        send(
            c.get(fg.url("/product-8.html"))
                .header("x-forwarded-proto", "https"),
        )
        .await;
    }
    // Cold: filled by a warm-up (as `floodgate warm` does) and never asked for by anyone.
    send(
        c.get(fg.url("/product-80.html"))
            .header("x-floodgate-warm", "1"),
    )
    .await;
    let answer = send(purge_req(&fg).header(
        "x-magento-tags-pattern",
        "((^|,)cat_p_8(,|$))|((^|,)cat_p_80(,|$))",
    ))
    .await;
    assert!(
        answer.text().contains("purged 2 objects, 1 queued"),
        "{}",
        answer.text()
    );
    assert!(
        eventually(Duration::from_secs(5), || origin.hits("/product-8.html")
            == 2)
        .await,
        "re-warmed"
    );
    fg.until_fresh("/product-8.html").await;
    let visitor = send(
        c.get(fg.url("/product-8.html"))
            .header("x-forwarded-proto", "https"),
    )
    .await;
    assert_eq!(
        visitor.cache_debug(),
        "HIT",
        "the visitor meets a warm cache, in their variant"
    );
    assert_eq!(
        origin.hits("/product-80.html"),
        1,
        "cold pages are left for visitors"
    );
    assert_eq!(
        fg.metric("floodgate_warm_requests_total{result=\"fetched\"}")
            .await,
        1.0
    );
    let warm_fetch = origin.last("/product-8.html").unwrap();
    assert!(
        warm_fetch.headers.get("cookie").is_none(),
        "no visitor session is replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_warm_commands() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start_with(origin.addr, no_warm()).await;
    let bin = env!("CARGO_BIN_EXE_floodgate");
    let dir = common::floodgate::temp_dir("sitemap");
    let sitemap = dir.join("sitemap.xml");
    std::fs::write(
        &sitemap,
        "<?xml version=\"1.0\"?><urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">\
         <url><loc>https://shop.test/product-21.html</loc></url>\
         <url><loc>https://shop.test/product-22.html</loc></url>\
         <url><loc>https://shop.test/product-23.html</loc></url></urlset>",
    )
    .unwrap();
    let target = format!("http://{}", fg.addr);
    let run = |args: Vec<String>| {
        let out = std::process::Command::new(bin)
            .args(args)
            .output()
            .expect("run floodgate");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let warm = |rate: &str| {
        vec![
            "warm".into(),
            "--sitemap".into(),
            sitemap.display().to_string(),
            "--rate".into(),
            rate.into(),
            "--url".into(),
            target.clone(),
        ]
    };
    let (code, out) = run(warm("50"));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("fetched 3, already warm 0, failed 0"), "{out}");
    let (_, again) = run(warm("50"));
    assert!(
        again.contains("fetched 0, already warm 3, failed 0"),
        "{again}"
    );
    // The sitemap's https pages are stored under the https variant.
    let visitor = send(
        client()
            .get(fg.url("/product-22.html"))
            .header("host", "shop.test")
            .header("x-forwarded-proto", "https"),
    )
    .await;
    assert_eq!(visitor.cache_debug(), "HIT");

    let (code, out) = run(vec![
        "purge".into(),
        "--tags".into(),
        "cat_p_21,cat_p_22".into(),
        "--url".into(),
        target.clone(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("purged 2 objects"), "{out}");
    let (code, out) = run(vec![
        "purge".into(),
        "--all".into(),
        "--url".into(),
        target.clone(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("purged 1 objects"), "{out}");
    let (code, out) = run(vec![
        "purge".into(),
        "--pattern".into(),
        "(".into(),
        "--url".into(),
        target.clone(),
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("400"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `purge.keep_purged_secs`, the middle road between hard and soft purges: a purged
/// page's old copy is served (marked, counted) only where the visitor would otherwise
/// get Floodgate's 503 (the limiter sheds the request, the origin is down), and never
/// while the origin can answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_copy_is_served_only_where_the_alternative_is_a_503() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start_with(
        origin.addr,
        no_warm()
            .purge("keep_purged_secs = 60")
            .limits("max_inflight = 1")
            .limits("max_wait_ms = 300"),
    )
    .await;
    let page = "/kept-9.html";
    let version = |v: &str| Page::cacheable(v.to_string()).header("x-magento-tags", "cat_p_9");
    let purge = || async {
        let answer =
            send(purge_req(&fg).header("x-magento-tags-pattern", tags_pattern(&["cat_p_9"]))).await;
        assert_eq!(answer.status, 200);
        assert!(
            answer.text().contains("purged 1 objects"),
            "{}",
            answer.text()
        );
    };
    origin.set(page, version("v1"));
    assert_eq!(get(&fg.url(page)).await.text(), "v1");

    // The origin answers: the new page, never the kept copy.
    origin.set(page, version("v2"));
    purge().await;
    let fresh = get(&fg.url(page)).await;
    assert_eq!(fresh.text(), "v2");
    assert_eq!(fresh.cache_debug(), "MISS");
    assert!(fresh.header("x-floodgate-purged-copy").is_none());
    assert_eq!(origin.hits(page), 2);

    // Purged again; then the only origin slot is taken by a slow page and the queue's
    // wait runs out: the kept copy instead of the 503 an uncached page gets.
    origin.set(page, version("v3"));
    purge().await;
    origin.set(
        "/slow-9.html",
        Page::cacheable("slow").delay(Duration::from_secs(3)),
    );
    let slow_url = fg.url("/slow-9.html");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    assert!(
        eventually(Duration::from_secs(5), || origin.hits("/slow-9.html") == 1).await,
        "the slow page took the slot"
    );
    let kept = get(&fg.url(page)).await;
    assert_eq!(kept.status, 200);
    assert_eq!(kept.text(), "v2", "the purged page's kept copy");
    assert_eq!(kept.header("x-floodgate-purged-copy"), Some("1"));
    assert_eq!(get(&fg.url("/never-9.html")).await.status, 503);
    assert!(fg.metric("floodgate_purged_copies_served_total").await >= 1.0);
    assert_eq!(origin.hits(page), 2, "the busy origin was not asked");
    assert_eq!(slow.await.expect("slow page").status, 200);

    // The origin down: the kept copy at once. Back: the new page.
    origin.set_unhealthy(true);
    assert!(
        until(Duration::from_secs(10), || async {
            fg.metric("floodgate_origin_healthy").await == 0.0
        })
        .await
    );
    let down = get(&fg.url(page)).await;
    assert_eq!(down.text(), "v2");
    assert_eq!(down.header("x-floodgate-purged-copy"), Some("1"));
    origin.set_unhealthy(false);
    assert!(until_metric(
        &fg,
        "floodgate_origin_healthy",
        1.0,
        Duration::from_secs(10)
    )
    .await
    .is_some());
    let back = get(&fg.url(page)).await;
    assert_eq!(back.text(), "v3");
    assert!(back.header("x-floodgate-purged-copy").is_none());
    // v3 was stored and is purged; a kept copy is not purged (or counted) twice.
    purge().await;
    let again =
        send(purge_req(&fg).header("x-magento-tags-pattern", tags_pattern(&["cat_p_9"]))).await;
    assert!(
        again.text().contains("purged 0 objects"),
        "{}",
        again.text()
    );
}

/// The promotion hour: a visitor whose page was just purged, with a kept copy, waits at
/// most `purge.keep_purged_wait_ms` for a busy origin (not its class's whole wait), gets
/// the copy, and the page is fetched again for the visitors after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_with_a_kept_copy_waits_briefly_and_the_page_is_fetched_for_the_next() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start_with(
        origin.addr,
        Settings::default()
            .purge("keep_purged_secs = 600")
            .purge("keep_purged_wait_ms = 300")
            .limits("max_inflight = 1"),
    )
    .await;
    let page = "/promo-5.html";
    let version = |v: &str| Page::cacheable(v.to_string()).header("x-magento-tags", "cat_p_5");
    origin.set(page, version("before"));
    assert_eq!(get(&fg.url(page)).await.text(), "before");
    origin.set(page, version("promotion"));
    // The only slot is busy for 3 s, longer than the keep wait, shorter than the 5 s a
    // page visitor would otherwise queue; the purge comes meanwhile (its re-warm waits).
    origin.set(
        "/busy-5.html",
        Page::cacheable("busy").delay(Duration::from_secs(3)),
    );
    let busy_url = fg.url("/busy-5.html");
    let busy = tokio::spawn(async move { get(&busy_url).await });
    assert!(eventually(Duration::from_secs(5), || origin.hits("/busy-5.html") == 1).await);
    let answer = send(purge_request(&fg, &tags_pattern(&["cat_p_5"]))).await;
    assert_eq!(answer.status, 200);
    let asked = std::time::Instant::now();
    let kept = get(&fg.url(page)).await;
    let waited = asked.elapsed();
    assert_eq!(kept.status, 200);
    assert_eq!(kept.text(), "before", "the kept copy");
    assert_eq!(kept.header("x-floodgate-purged-copy"), Some("1"));
    assert!(
        waited < Duration::from_millis(2500),
        "the visitor waited {waited:?} for a kept copy (keep_purged_wait_ms = 300)"
    );
    // Once the slot is free the page is fetched again (the re-warmer), for the next.
    assert_eq!(busy.await.expect("busy page").status, 200);
    assert!(
        eventually(Duration::from_secs(10), || origin.answered(page) >= 2).await,
        "the page was fetched again"
    );
    fg.until_fresh(page).await;
    let next = get(&fg.url(page)).await;
    assert_eq!(next.text(), "promotion");
    assert_eq!(next.cache_debug(), "HIT");
}
