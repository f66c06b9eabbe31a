//! docs/magento-cache-protocol.md, section 5: stale within grace with one background refresh, stale while the
//! origin is down or erroring, and 503 with Retry-After when nothing is stored.

use crate::common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_grace_stale_is_served_at_once_and_refreshed_once_in_the_background() {
    let origin = TestOrigin::start().await;
    origin.set("/g.html", Page::cacheable("v1").ttl(1));
    let fg = Floodgate::start(origin.addr).await;
    assert_eq!(get(&fg.url("/g.html")).await.text(), "v1");
    fg.until_expired("/g.html").await;
    origin.set(
        "/g.html",
        Page::cacheable("v2")
            .ttl(1)
            .delay(Duration::from_millis(500)),
    );

    let started = std::time::Instant::now();
    let stale = get(&fg.url("/g.html")).await;
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "stale is served without waiting for the origin"
    );
    assert_eq!((stale.text().as_str(), stale.cache_debug()), ("v1", "HIT"));
    assert_eq!(stale.header("grace"), Some("normal (healthy server)"));
    // More visitors during the refresh are served stale too and cause no extra fetch.
    for _ in 0..5 {
        assert_eq!(get(&fg.url("/g.html")).await.text(), "v1");
    }
    assert!(eventually(Duration::from_secs(5), || origin.hits("/g.html") == 2).await);
    // The origin counts on arrival; the 500 ms refresh is stored when it ends.
    fg.until_fresh("/g.html").await;
    assert_eq!(origin.hits("/g.html"), 2, "exactly one background refresh");
    let fresh = get(&fg.url("/g.html")).await;
    assert_eq!(
        (fresh.text().as_str(), fresh.header("grace")),
        ("v2", Some("none"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_grace_with_a_healthy_origin_fetches_synchronously() {
    let origin = TestOrigin::start().await;
    origin.set("/past.html", Page::cacheable("v1").ttl(1));
    let fg = Floodgate::start_with(origin.addr, Settings::default().cache("grace_secs = 1")).await;
    get(&fg.url("/past.html")).await;
    fg.until_stored(
        "/past.html",
        &["stale_if_error", "absent"],
        Duration::from_secs(10),
    )
    .await;
    origin.set("/past.html", Page::cacheable("v2").ttl(1));
    let got = get(&fg.url("/past.html")).await;
    assert_eq!((got.text().as_str(), got.cache_debug()), ("v2", "MISS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_origin_gets_stale_pages_served_and_503_with_retry_after_for_the_rest() {
    let origin = TestOrigin::start().await;
    origin.set("/kept.html", Page::cacheable("kept").ttl(1));
    let fg = Floodgate::start_with(origin.addr, Settings::default().cache("grace_secs = 0")).await;
    get(&fg.url("/kept.html")).await;
    origin.stop();
    // Expired, but still held for stale-if-error: the copy the rest relies on.
    fg.until_stored("/kept.html", &["stale_if_error"], Duration::from_secs(10))
        .await;

    let stale = get(&fg.url("/kept.html")).await;
    assert_eq!((stale.status, stale.text().as_str()), (200, "kept"));
    assert_eq!(stale.cache_debug(), "HIT");
    assert_eq!(stale.header("grace"), Some("unlimited (unhealthy server)"));

    for url in ["/never-seen.html", "/checkout/cart/"] {
        let down = get(&fg.url(url)).await;
        assert_eq!(down.status, 503, "{url}: never a 502");
        assert_eq!(down.header("retry-after"), Some("5"), "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erroring_origin_gets_stale_pages_served() {
    let origin = TestOrigin::start().await;
    origin.set("/err.html", Page::cacheable("good").ttl(1));
    let fg = Floodgate::start_with(origin.addr, Settings::default().cache("grace_secs = 0")).await;
    get(&fg.url("/err.html")).await;
    // Expired, but still held for stale-if-error: the copy the rest relies on.
    fg.until_stored("/err.html", &["stale_if_error"], Duration::from_secs(10))
        .await;
    origin.set("/err.html", Page::cacheable("fatal error").status(500));
    let got = get(&fg.url("/err.html")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "good"));
    assert_eq!(
        origin.hits("/err.html"),
        2,
        "the origin was asked and failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_probes_mark_the_origin_unhealthy() {
    let origin = TestOrigin::start().await;
    origin.set("/probe.html", Page::cacheable("probe").ttl(1));
    let settings = Settings::default()
        .origin("health_window = 2")
        .origin("health_threshold = 2")
        .cache("grace_secs = 300");
    let fg = Floodgate::start_with(origin.addr, settings).await;
    get(&fg.url("/probe.html")).await;
    origin.set_unhealthy(true);
    // Probes run every second; one failure of a window of two tips it.
    assert!(
        until(Duration::from_secs(10), || async {
            fg.metric("floodgate_origin_healthy").await == 0.0
        })
        .await,
        "marked unhealthy"
    );
    let got = get(&fg.url("/probe.html")).await;
    assert_eq!(got.text(), "probe");
    assert_eq!(
        got.header("grace"),
        Some("unlimited (unhealthy server)"),
        "stale because the origin is unhealthy"
    );
    // Unhealthy means no traffic is sent: a page never seen gets 503, not a fetch.
    let before = origin.hits("/unknown.html");
    assert_eq!(get(&fg.url("/unknown.html")).await.status, 503);
    assert_eq!(origin.hits("/unknown.html"), before);

    origin.set_unhealthy(false);
    assert!(
        until_metric(
            &fg,
            "floodgate_origin_healthy",
            1.0,
            Duration::from_secs(10)
        )
        .await
        .is_some(),
        "healthy again"
    );
    assert_eq!(
        get(&fg.url("/unknown.html")).await.status,
        200,
        "healthy again: requests flow"
    );
    assert_eq!(origin.hits("/unknown.html"), before + 1);
}
