//! docs/magento-cache-protocol.md, section 1: which requests are cached, passed or tunnelled, how URLs are
//! normalised and what varies the cache key.

use crate::common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_get_is_a_hit_served_without_the_origin() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let first = get(&fg.url("/product-1.html")).await;
    let second = get(&fg.url("/product-1.html")).await;
    assert_eq!((first.status, first.cache_debug()), (200, "MISS"));
    assert_eq!((second.status, second.cache_debug()), (200, "HIT"));
    assert_eq!(first.body, second.body);
    assert_eq!(origin.hits("/product-1.html"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_standard_methods_are_tunnelled_unchanged() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/dav?b=2&a=1",
        Page::cacheable("dav").header("x-magento-tags", "t"),
    );
    let fg = Floodgate::start(origin.addr).await;
    let method = reqwest::Method::from_bytes(b"PROPFIND").unwrap();
    for _ in 0..2 {
        let got = send(client().request(method.clone(), fg.url("/dav?b=2&a=1"))).await;
        assert_eq!(got.status, 200);
        // A tunnel is a pipe: no normalisation and no vcl_deliver rewriting.
        assert_eq!(got.header("x-magento-tags"), Some("t"));
        assert_eq!(got.header("x-magento-cache-debug"), None);
    }
    assert_eq!(origin.hits("/dav?b=2&a=1"), 2);
    assert_eq!(origin.last("/dav?b=2&a=1").unwrap().method, "PROPFIND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_get_methods_pass() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        for _ in 0..2 {
            let got = send(
                client()
                    .request(method.clone(), fg.url("/product-2.html"))
                    .body("x=1"),
            )
            .await;
            assert_eq!(got.status, 200);
            assert_eq!(got.cache_debug(), "UNCACHEABLE");
        }
    }
    assert_eq!(origin.hits("/product-2.html"), 6);
    // and a following GET is still a miss: passes never filled the cache
    assert_eq!(get(&fg.url("/product-2.html")).await.cache_debug(), "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn magento_pass_urls_always_reach_the_origin() {
    let origin = TestOrigin::start().await;
    // The probe goes elsewhere so it does not add to /health_check.php's count.
    let settings = Settings::default()
        .magento("pass_url_patterns = [\"^/no-cache-zone/\"]")
        .origin("health_check_url = \"/probe.php\"");
    let fg = Floodgate::start_with(origin.addr, settings).await;
    let urls = [
        "/checkout/cart/",
        "/customer/account/",
        "/en/customer/section/load/?sections=cart",
        "/catalog/checkout-like/checkout/x.html",
        "/health_check.php",
        "/pub/health_check.php",
        "/static/version1/frontend/app.js",
        "/media/catalog/product/a.jpg",
        "/pub/static/x.css",
        "/pub/media/y.png",
        "/no-cache-zone/page.html",
    ];
    for url in urls {
        for _ in 0..2 {
            let got = get(&fg.url(url)).await;
            assert_eq!(got.cache_debug(), "UNCACHEABLE", "{url}");
        }
        assert_eq!(
            origin.hits(url),
            2,
            "{url} must pass to the origin every time"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_graphql_passes_unless_it_has_a_cache_id() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let url = "/graphql?query=products";
    for _ in 0..2 {
        let got = send(client().get(fg.url(url)).bearer_auth("token")).await;
        assert_eq!(got.cache_debug(), "UNCACHEABLE");
    }
    assert_eq!(origin.hits(url), 2);
    for _ in 0..2 {
        send(
            client()
                .get(fg.url(url))
                .bearer_auth("token")
                .header("x-magento-cache-id", "c1"),
        )
        .await;
    }
    assert_eq!(
        origin.hits(url),
        3,
        "with X-Magento-Cache-Id the second one is a hit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_and_authorization_do_not_force_a_pass() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let c = client();
    send(
        c.get(fg.url("/product-3.html"))
            .header("cookie", "PHPSESSID=a; form_key=b"),
    )
    .await;
    let got = send(
        c.get(fg.url("/product-3.html"))
            .header("cookie", "PHPSESSID=other")
            .basic_auth("u", Some("p")),
    )
    .await;
    assert_eq!(got.cache_debug(), "HIT");
    assert_eq!(origin.hits("/product-3.html"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_are_normalised_for_key_and_origin() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let a = get(&fg.url("/list.html?p=2&color=red&utm_source=news&gclid=x")).await;
    let b = get(&fg.url("/list.html?color=red&p=2")).await;
    let c = get(&fg.url("/list.html?fbclid=1&color=red&p=2&")).await;
    assert_eq!(a.cache_debug(), "MISS");
    assert_eq!(b.cache_debug(), "HIT");
    assert_eq!(c.cache_debug(), "HIT");
    assert_eq!(
        origin.hits("/list.html?color=red&p=2"),
        1,
        "the origin receives the normalised URL"
    );
    assert_eq!(origin.total_hits(), 1);
    // Only marketing parameters go; names are case-sensitive.
    get(&fg.url("/list.html?GCLID=1")).await;
    assert_eq!(origin.hits("/list.html?GCLID=1"), 1);
    // A URL that is only marketing parameters becomes the bare path.
    get(&fg.url("/bare.html?utm_campaign=x")).await;
    assert_eq!(origin.hits("/bare.html"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_loses_its_scheme_and_host() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let response = raw(
        fg.addr,
        b"GET http://shop.test/abs.html?b=1&a=2 HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(origin.hits("/abs.html?a=2&b=1"), 1);
    let hit = send(
        client()
            .get(fg.url("/abs.html?a=2&b=1"))
            .header("host", "shop.test"),
    )
    .await;
    assert_eq!(hit.cache_debug(), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_varies_by_vary_cookie_offload_header_host_and_design_exception_only() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start_with(
        origin.addr,
        Settings::default()
            .magento("design_exceptions = [{ user_agent = \"iPhone\", value = \"mobile\" }]"),
    )
    .await;
    let c = client();
    let url = fg.url("/v.html");
    let variants: Vec<reqwest::RequestBuilder> = vec![
        c.get(&url),
        c.get(&url).header("cookie", "X-Magento-Vary=group2"),
        c.get(&url).header("x-forwarded-proto", "https"),
        c.get(&url).header("host", "second-store.test"),
        c.get(&url).header("user-agent", "Mozilla/5.0 (iPhone)"),
    ];
    for req in variants {
        assert_eq!(send(req).await.cache_debug(), "MISS");
    }
    assert_eq!(origin.hits("/v.html"), 5);
    // These all find the first variant.
    let same: Vec<reqwest::RequestBuilder> = vec![
        c.get(&url).header("accept-encoding", "gzip"),
        c.get(&url).header("cookie", "PHPSESSID=x; mage-messages="),
        c.get(&url).header("user-agent", "Mozilla/5.0 (X11; Linux)"),
        c.get(&url).header("accept-language", "de"),
    ];
    for req in same {
        assert_eq!(send(req).await.cache_debug(), "HIT");
    }
    assert_eq!(origin.hits("/v.html"), 5);
    assert_eq!(
        send(c.get(&url).header("cookie", "a=1; X-Magento-Vary=group2"))
            .await
            .cache_debug(),
        "HIT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_key_uses_cache_id_store_and_currency() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let c = client();
    let url = fg.url("/graphql?query=q");
    assert_eq!(
        send(c.get(&url).header("x-magento-cache-id", "A"))
            .await
            .cache_debug(),
        "MISS"
    );
    assert_eq!(
        send(
            c.get(&url)
                .header("x-magento-cache-id", "A")
                .header("cookie", "X-Magento-Vary=z")
        )
        .await
        .cache_debug(),
        "HIT"
    );
    assert_eq!(
        send(c.get(&url).header("x-magento-cache-id", "B"))
            .await
            .cache_debug(),
        "MISS"
    );
    assert_eq!(
        send(
            c.get(&url)
                .header("x-magento-cache-id", "A")
                .header("store", "de")
        )
        .await
        .cache_debug(),
        "MISS"
    );
    assert_eq!(
        send(
            c.get(&url)
                .header("x-magento-cache-id", "A")
                .header("content-currency", "EUR")
        )
        .await
        .cache_debug(),
        "MISS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_is_handled_first_and_never_reaches_magento() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let method = reqwest::Method::from_bytes(b"PURGE").unwrap();
    // Even on a URL that would pass (checkout), PURGE is answered by Floodgate.
    let got = send(
        client()
            .request(method, fg.url("/checkout/cart/"))
            .header("x-magento-tags-pattern", ".*"),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(origin.total_hits(), 0, "a PURGE never reaches Magento");
}
