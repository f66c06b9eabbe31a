//! docs/magento-cache-protocol.md, section 4: what the browser receives.

use crate::common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_not_browser_cacheable_and_internal_headers_are_removed() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/page.html",
        Page::cacheable("p")
            .header("x-magento-tags", "cat_p_1,store")
            .header("x-powered-by", "PHP/8.3")
            .header("server", "nginx")
            .header("via", "1.1 lb")
            .header("link", "</a.js>; rel=preload")
            .header("age", "42"),
    );
    let fg = Floodgate::start(origin.addr).await;
    for expected in ["MISS", "HIT"] {
        let got = get(&fg.url("/page.html")).await;
        assert_eq!(got.cache_debug(), expected);
        assert_eq!(
            got.header("cache-control"),
            Some("no-store, no-cache, must-revalidate, max-age=0")
        );
        assert_eq!(got.header("pragma"), Some("no-cache"));
        assert_eq!(got.header("expires"), Some("-1"));
        for removed in [
            "x-magento-tags",
            "x-powered-by",
            "server",
            "via",
            "link",
            "age",
            "x-magento-debug",
        ] {
            assert!(
                got.header(removed).is_none(),
                "{expected}: {removed} must not reach the browser"
            );
        }
    }
    let hit = get(&fg.url("/page.html")).await;
    assert_eq!(
        hit.header("grace"),
        Some("none"),
        "a fresh hit says Grace: none"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_keep_their_cache_control() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let got = get(&fg.url("/static/frontend/Magento/luma/en_US/app.js")).await;
    assert_eq!(
        got.header("cache-control"),
        Some("public, max-age=31536000")
    );
    assert!(got.header("expires").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn magento_debug_keeps_age_and_exposes_the_origin_cache_control() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/debug.html",
        Page::cacheable("d").header("x-magento-debug", "1"),
    );
    let fg = Floodgate::start(origin.addr).await;
    get(&fg.url("/debug.html")).await;
    let hit = get(&fg.url("/debug.html")).await;
    assert_eq!(hit.cache_debug(), "HIT");
    assert_eq!(
        hit.header("x-magento-cache-control"),
        Some("public, max-age=86400, s-maxage=86400")
    );
    assert!(
        hit.header("age").is_some(),
        "Age stays when the origin sent X-Magento-Debug"
    );
    assert!(hit.header("x-magento-debug").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_verdict_on_passes_and_refused_responses() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    assert_eq!(
        get(&fg.url("/checkout/cart/")).await.cache_debug(),
        "UNCACHEABLE"
    );
    assert_eq!(
        get(&fg.url("/no-such-page")).await.cache_debug(),
        "UNCACHEABLE"
    );
    assert_eq!(get(&fg.url("/fine.html")).await.cache_debug(), "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_page_answers_a_browsers_revalidation_with_304() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/etag.html",
        Page::cacheable("the stored page")
            .header("etag", "\"v1\"")
            .header("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
    );
    let fg = Floodgate::start(origin.addr).await;
    assert_eq!(get(&fg.url("/etag.html")).await.cache_debug(), "MISS");
    let hit = get(&fg.url("/etag.html")).await;
    assert_eq!(hit.cache_debug(), "HIT");
    let etag = hit.header("etag").expect("the stored ETag").to_string();
    let revalidated = send(
        client()
            .get(fg.url("/etag.html"))
            .header("if-none-match", &etag),
    )
    .await;
    assert_eq!(revalidated.status, 304, "the browser's copy is current");
    assert!(revalidated.body.is_empty());
    let since = send(
        client()
            .get(fg.url("/etag.html"))
            .header("if-modified-since", "Tue, 01 Dec 2026 10:00:00 GMT"),
    )
    .await;
    assert_eq!(since.status, 304);
    let other = send(
        client()
            .get(fg.url("/etag.html"))
            .header("if-none-match", "\"v0\""),
    )
    .await;
    assert_eq!(other.status, 200, "another version gets the page");
    assert_eq!(other.text(), "the stored page");
    assert_eq!(other.cache_debug(), "HIT");
    assert_eq!(origin.hits("/etag.html"), 1, "all of it from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_hit_is_the_stored_page_and_counted_once() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/counted.html",
        Page::cacheable("counted page").header("x-magento-tags", "cat_p_7"),
    );
    let fg = Floodgate::start(origin.addr).await;
    assert_eq!(get(&fg.url("/counted.html")).await.cache_debug(), "MISS");
    for _ in 0..3 {
        let hit = get(&fg.url("/counted.html")).await;
        assert_eq!(hit.status, 200);
        assert_eq!(hit.cache_debug(), "HIT");
        assert_eq!(hit.text(), "counted page");
    }
    assert_eq!(origin.hits("/counted.html"), 1);
    assert_eq!(
        fg.metric("floodgate_requests_total{outcome=\"hit\"}").await,
        3.0
    );
    assert_eq!(
        fg.metric("floodgate_requests_total{outcome=\"miss\"}")
            .await,
        1.0
    );
    // The re-warmer ranks purged pages by their requests: the visitor's fill and 3 hits.
    let inspected = fg.inspect("/counted.html").await;
    assert_eq!(inspected["objects"][0]["hits"], 4, "{inspected}");
}
