//! The admin listener's Prometheus metrics count what clients actually got.

mod common;

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
        fg.metric("floodgate_upstream_response_seconds_count").await,
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
    tokio::time::sleep(Duration::from_millis(1500)).await;
    get(&fg.url("/short.html")).await; // stale, refreshed in the background
    assert_eq!(
        fg.metric("floodgate_requests_total{outcome=\"stale\"}")
            .await,
        1.0
    );
    assert!(eventually(Duration::from_secs(3), || origin.hits("/short.html") == 2).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fg.metric("floodgate_background_refreshes_total").await, 1.0);

    origin.stop();
    assert_eq!(get(&fg.url("/never.html")).await.status, 503);
    assert_eq!(fg.metric("floodgate_origin_unavailable_total").await, 1.0);
}
