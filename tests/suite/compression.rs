//! docs/magento-cache-protocol.md, section 7: gzip towards the origin and in the store, plain text for clients
//! that do not accept it; a HEAD miss is fetched as GET.

use crate::common;

use std::io::Read;

use common::*;

fn gunzip(bytes: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut out)
        .expect("valid gzip");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_fetched_and_stored_gzipped_and_inflated_for_plain_clients() {
    let origin = TestOrigin::start().await;
    let html =
        "<html><body>".to_string() + &"Lorem ipsum dolor sit amet. ".repeat(400) + "</body></html>";
    origin.set("/text.html", Page::cacheable(html.clone()));
    let fg = Floodgate::start(origin.addr).await;
    let c = client();

    let plain_miss = get(&fg.url("/text.html")).await;
    assert_eq!(
        plain_miss.text(),
        html,
        "a client without Accept-Encoding gets plain text"
    );
    let seen = origin.last("/text.html").expect("origin saw the fetch");
    assert_eq!(
        seen.headers
            .get("accept-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip")
    );

    let gz_hit = send(
        c.get(fg.url("/text.html"))
            .header("accept-encoding", "gzip, deflate, br"),
    )
    .await;
    assert_eq!(gz_hit.cache_debug(), "HIT");
    assert_eq!(gz_hit.header("content-encoding"), Some("gzip"));
    assert!(
        gz_hit.body.len() < html.len() / 4,
        "stored compressed ({} bytes)",
        gz_hit.body.len()
    );
    assert_eq!(gunzip(&gz_hit.body), html);

    let plain_hit = get(&fg.url("/text.html")).await;
    assert_eq!(plain_hit.cache_debug(), "HIT");
    assert!(plain_hit.header("content-encoding").is_none());
    assert_eq!(plain_hit.text(), html);
    assert_eq!(origin.hits("/text.html"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_gzip_is_stored_as_is() {
    let origin = TestOrigin::start().await;
    let html = "<p>already compressed by nginx</p>".repeat(50);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, html.as_bytes()).unwrap();
    origin.set(
        "/gz.html",
        Page::cacheable(gz.finish().unwrap()).header("content-encoding", "gzip"),
    );
    let fg = Floodgate::start(origin.addr).await;
    get(&fg.url("/gz.html")).await;
    let plain = get(&fg.url("/gz.html")).await;
    assert_eq!((plain.cache_debug(), plain.text()), ("HIT", html));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_miss_is_fetched_as_get_and_then_serves_gets() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let head = send(client().head(fg.url("/product-9.html"))).await;
    assert_eq!((head.status, head.cache_debug()), (200, "MISS"));
    assert!(head.body.is_empty());
    assert_eq!(origin.last("/product-9.html").unwrap().method, "GET");
    let got = get(&fg.url("/product-9.html")).await;
    assert_eq!(got.cache_debug(), "HIT");
    assert!(got.text().contains("/product-9.html"));
    assert_eq!(origin.hits("/product-9.html"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests_are_answered_from_the_cache() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/r.txt",
        Page::cacheable("0123456789").header("content-type", "image/png"),
    );
    let fg = Floodgate::start(origin.addr).await;
    get(&fg.url("/r.txt")).await;
    let part = send(client().get(fg.url("/r.txt")).header("range", "bytes=2-5")).await;
    assert_eq!((part.status, part.text().as_str()), (206, "2345"));
    assert_eq!(origin.hits("/r.txt"), 1);
}
