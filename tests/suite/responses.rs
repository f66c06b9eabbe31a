//! docs/magento-cache-protocol.md, section 2: which origin responses are stored, what happens to their cookies,
//! hit-for-miss marks, and huge `X-Magento-Tags` headers.

use crate::common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_are_not_stored() {
    let origin = TestOrigin::start().await;
    origin.set("/forbidden.html", Page::cacheable("no").status(403));
    origin.set("/gone.html", Page::cacheable("no").status(404));
    origin.set("/broken.html", Page::cacheable("no").status(500));
    origin.set("/busy.html", Page::cacheable("no").status(503));
    let fg = Floodgate::start(origin.addr).await;
    for url in [
        "/forbidden.html",
        "/gone.html",
        "/broken.html",
        "/busy.html",
    ] {
        for _ in 0..2 {
            let got = get(&fg.url(url)).await;
            assert_eq!(got.cache_debug(), "UNCACHEABLE", "{url}");
        }
        assert_eq!(origin.hits(url), 2, "{url} must not be stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_for_miss_is_replaced_by_a_later_cacheable_response() {
    let origin = TestOrigin::start().await;
    origin.set("/flip.html", Page::cacheable("maintenance").status(503));
    let fg = Floodgate::start(origin.addr).await;
    assert_eq!(get(&fg.url("/flip.html")).await.status, 503);
    origin.set("/flip.html", Page::cacheable("back"));
    let recovered = get(&fg.url("/flip.html")).await;
    assert_eq!((recovered.status, recovered.text().as_str()), (200, "back"));
    let hit = get(&fg.url("/flip.html")).await;
    assert_eq!(
        hit.cache_debug(),
        "HIT",
        "the cacheable response replaced the mark and was stored"
    );
    assert_eq!(origin.hits("/flip.html"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_for_miss_keys_skip_the_coalescing_queue() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/slow-private.html",
        Page::cacheable("p")
            .header("cache-control", "private")
            .delay(Duration::from_millis(400)),
    );
    let fg = Floodgate::start(origin.addr).await;
    get(&fg.url("/slow-private.html")).await; // marks the key
    for got in burst(&fg.url("/slow-private.html"), 6).await {
        assert_eq!(got.status, 200);
    }
    assert_eq!(origin.hits("/slow-private.html"), 7);
    assert!(
        origin.max_in_flight("/slow-private.html") >= 4,
        "marked requests must go to the origin side by side, not one after another (max in flight {})",
        origin.max_in_flight("/slow-private.html")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_is_not_stored_and_its_cookies_reach_the_client() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/mine.html",
        Page::cacheable("mine")
            .header("cache-control", "private, max-age=600")
            .append("set-cookie", "cart=1; path=/"),
    );
    let fg = Floodgate::start(origin.addr).await;
    for _ in 0..2 {
        let got = get(&fg.url("/mine.html")).await;
        assert_eq!(got.cache_debug(), "UNCACHEABLE");
        assert_eq!(got.header("set-cookie"), Some("cart=1; path=/"));
        assert_eq!(got.header("cache-control"), Some("private, max-age=600"));
    }
    assert_eq!(origin.hits("/mine.html"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cacheable_pages_never_set_cookies() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    // The Magento-like origin sets PHPSESSID on catalogue pages.
    let miss = get(&fg.url("/product-7.html")).await;
    let hit = get(&fg.url("/product-7.html")).await;
    assert_eq!((miss.cache_debug(), hit.cache_debug()), ("MISS", "HIT"));
    assert!(
        miss.header("set-cookie").is_none(),
        "the first visitor must not get a cookie either"
    );
    assert!(hit.header("set-cookie").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_setting_a_new_vary_cookie_is_not_stored() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/switch-currency.html",
        Page::cacheable("eur").append("set-cookie", "X-Magento-Vary=eur123; path=/"),
    );
    let fg = Floodgate::start(origin.addr).await;
    for _ in 0..2 {
        let got = get(&fg.url("/switch-currency.html")).await;
        assert_eq!(got.cache_debug(), "UNCACHEABLE");
        assert!(
            got.header("set-cookie").is_none(),
            "Set-Cookie is still removed"
        );
    }
    assert_eq!(origin.hits("/switch-currency.html"), 2);
    // A request that already carries the cookie stores the page.
    let c = client();
    let with = || {
        c.get(fg.url("/switch-currency.html"))
            .header("cookie", "X-Magento-Vary=eur123")
    };
    assert_eq!(send(with()).await.cache_debug(), "MISS");
    assert_eq!(send(with()).await.cache_debug(), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_no_store_zero_ttl_and_vary_star_are_not_stored() {
    let origin = TestOrigin::start().await;
    let cases = [
        (
            "/nc.html",
            Page::cacheable("x").header("cache-control", "no-cache, max-age=600"),
        ),
        (
            "/ns.html",
            Page::cacheable("x").header(
                "cache-control",
                "no-store, no-cache, must-revalidate, max-age=0",
            ),
        ),
        (
            "/zero.html",
            Page::cacheable("x").header("cache-control", "public, max-age=0"),
        ),
        ("/vary.html", Page::cacheable("x").header("vary", "*")),
        (
            "/surrogate.html",
            Page::cacheable("x").header("surrogate-control", "no-store"),
        ),
    ];
    for (url, page) in &cases {
        origin.set(url, page.clone().append("set-cookie", "seen=1"));
    }
    let fg = Floodgate::start(origin.addr).await;
    for (url, _) in &cases {
        for _ in 0..2 {
            let got = get(&fg.url(url)).await;
            assert_eq!(got.cache_debug(), "UNCACHEABLE", "{url}");
            assert_eq!(
                got.header("set-cookie"),
                Some("seen=1"),
                "{url}: Set-Cookie reaches the client"
            );
        }
        assert_eq!(origin.hits(url), 2, "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_comes_from_s_maxage_before_max_age() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/short.html",
        Page::cacheable("s").header("cache-control", "public, max-age=86400, s-maxage=1"),
    );
    origin.set(
        "/long.html",
        Page::cacheable("l").header("cache-control", "public, max-age=1, s-maxage=86400"),
    );
    // No grace, so an expired object is fetched again at once.
    let fg = Floodgate::start_with(origin.addr, Settings::default().cache("grace_secs = 0")).await;
    get(&fg.url("/short.html")).await;
    get(&fg.url("/long.html")).await;
    fg.until_expired("/short.html").await;
    assert_eq!(fg.stored("/long.html").await, ["fresh"]);
    assert_eq!(get(&fg.url("/short.html")).await.cache_debug(), "MISS");
    assert_eq!(get(&fg.url("/long.html")).await.cache_debug(), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_cache_id_mismatch_is_not_stored() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/graphql?query=m",
        Page::cacheable("{}").header("x-magento-cache-id", "server-side"),
    );
    let fg = Floodgate::start(origin.addr).await;
    let c = client();
    for _ in 0..2 {
        let got = send(
            c.get(fg.url("/graphql?query=m"))
                .header("x-magento-cache-id", "client-side"),
        )
        .await;
        assert_eq!(got.cache_debug(), "UNCACHEABLE");
    }
    assert_eq!(origin.hits("/graphql?query=m"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_megabyte_of_tags_is_cached_and_never_sent_to_the_browser() {
    let origin = TestOrigin::start().await;
    let mut tags = String::with_capacity(1_000_100);
    let mut id = 0;
    while tags.len() < 1_000_000 {
        if !tags.is_empty() {
            tags.push(',');
        }
        tags.push_str(&format!("cat_p_{id}"));
        id += 1;
    }
    origin.set(
        "/huge-category.html",
        Page::cacheable("big category").header("x-magento-tags", &tags),
    );
    // Magento may also split tags over several lines.
    origin.set(
        "/split.html",
        Page::cacheable("split")
            .append("x-magento-tags", "cat_c_1,split_1")
            .append("x-magento-tags", "split_2"),
    );
    // No re-warmer: it would fill again what the purges below remove.
    let fg = Floodgate::start_with(origin.addr, Settings::default().warm("enabled = false")).await;
    for url in ["/huge-category.html", "/split.html"] {
        let miss = get(&fg.url(url)).await;
        assert_eq!(miss.status, 200, "{url}");
        assert!(miss.header("x-magento-tags").is_none());
        let hit = get(&fg.url(url)).await;
        assert_eq!((hit.status, hit.cache_debug()), (200, "HIT"), "{url}");
        assert_eq!(hit.body, miss.body);
    }
    // Every tag was indexed: the last of the megabyte, and the one on the second line.
    let last = format!("cat_p_{}", id - 1);
    for (url, tag) in [
        ("/huge-category.html", last.as_str()),
        ("/split.html", "split_2"),
    ] {
        let purged = send(purge_request(&fg, &tags_pattern(&[tag]))).await;
        assert!(
            purged.text().contains("purged 1 objects"),
            "{tag}: {}",
            purged.text()
        );
        let after = get(&fg.url(url)).await;
        assert_eq!(
            (after.status, after.cache_debug()),
            (200, "MISS"),
            "{url} purged by {tag}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_over_the_size_limit_pass_through_whole() {
    let origin = TestOrigin::start().await;
    // Incompressible, so the stored size is the body size (the limit applies to what is stored).
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let big: Vec<u8> = (0..3 << 20)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    origin.set(
        "/big.html",
        Page::cacheable(big.clone()).header("content-type", "image/jpeg"),
    );
    let fg = Floodgate::start_with(
        origin.addr,
        Settings::default().cache("max_object_bytes = 1048576"),
    )
    .await;
    for _ in 0..2 {
        let got = get(&fg.url("/big.html")).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body.len(), big.len(), "the client gets the whole body");
    }
    assert_eq!(origin.hits("/big.html"), 2);
}

/// Header lines pages send alike are held once for all of them; a page's own lines
/// (ETag, Last-Modified, Content-Length) and any line only it sends must still come
/// back on its hits, never another page's; `Date` is the time of each response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hit_carries_its_own_header_lines_and_none_of_another_pages() {
    let origin = TestOrigin::start().await;
    for n in 0..20 {
        origin.set(
            &format!("/p-{n}.html"),
            Page::cacheable(format!("page {n}").repeat(n + 1))
                .header("etag", &format!("\"v{n}\""))
                .header(
                    "last-modified",
                    &format!("Tue, {:02} Dec 2026 10:00:00 GMT", n + 1),
                )
                .header("x-request-id", &format!("req-{n}"))
                .header("x-shared", "same on every page"),
        );
    }
    let fg = Floodgate::start(origin.addr).await;
    for n in 0..20 {
        let url = fg.url(&format!("/p-{n}.html"));
        let miss = get(&url).await;
        let hit = get(&url).await;
        assert_eq!(hit.cache_debug(), "HIT", "/p-{n}.html");
        assert_eq!(hit.text(), format!("page {n}").repeat(n + 1));
        for name in ["x-request-id", "x-shared"] {
            assert_eq!(hit.header(name), miss.header(name), "{name} of /p-{n}.html");
        }
        // `Date` is the proxy's clock as it writes each response (Pingora sets it), so
        // a hit's is its own and never older than its miss's, not another page's.
        let date = |got: &Got| {
            httpdate::parse_http_date(got.header("date").expect("a Date line"))
                .expect("an HTTP date")
        };
        assert!(date(&hit) >= date(&miss), "date of /p-{n}.html");
        // Weakened when the body was gzipped for storage (another representation).
        let etag = hit.header("etag").map(|e| e.trim_start_matches("W/"));
        assert_eq!(etag, Some(format!("\"v{n}\"").as_str()));
        assert_eq!(
            hit.header("x-request-id"),
            Some(format!("req-{n}").as_str())
        );
        // Absent when a gzipped body is inflated for this client on the way.
        if let Some(length) = hit.header("content-length") {
            assert_eq!(length, hit.text().len().to_string());
        }
        assert_eq!(origin.hits(&format!("/p-{n}.html")), 1);
    }
}
