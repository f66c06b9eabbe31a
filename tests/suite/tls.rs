//! Floodgate as the whole front door: TLS terminated by SNI, HTTP/2, the SSL-offload
//! header set to the truth, plain HTTP redirected, certificates swapped by a reload.

use crate::common;

use std::time::Duration;

use common::certs::{https_builder, https_client, presented, start_tls, TestCa};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_is_served_by_sni_with_a_default_certificate_and_the_offload_header_told_true() {
    let ca = TestCa::new();
    let shop = ca.leaf("shop", &["shop.test", "www.shop.test"]);
    let other = ca.leaf("other", &["*.other.test"]);
    let origin = TestOrigin::start().await;
    let (fg, tls) = start_tls(
        origin.addr,
        &[&shop, &other],
        Settings::default()
            .server("trusted_proxies = []")
            .server("hsts_max_age_secs = 31536000"),
    )
    .await;

    // The certificate by SNI: exact names, a wildcard, and the default for the rest.
    for (sni, cn) in [
        (Some("shop.test"), "CN = shop.test"),
        (Some("www.shop.test"), "CN = shop.test"),
        (Some("a.other.test"), "CN = *.other.test"),
        (Some("unknown.test"), "CN = shop.test"),
        (None, "CN = shop.test"),
    ] {
        let seen = presented(tls, sni);
        assert!(seen.contains(cn), "{sni:?}: {seen}");
    }

    // Whatever the client claims, an HTTPS request reaches Magento as HTTPS.
    let client = https_client(&ca, tls, &["shop.test"]);
    let got = client
        .get(format!("https://shop.test:{}/p.html", tls.port()))
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .expect("https request");
    assert_eq!(got.status(), 200);
    assert_eq!(got.version(), reqwest::Version::HTTP_2, "h2 chosen by ALPN");
    assert_eq!(
        got.headers()
            .get("strict-transport-security")
            .and_then(|v| v.to_str().ok()),
        Some("max-age=31536000")
    );
    assert!(!got.bytes().await.expect("body").is_empty());
    let seen = origin.last("/p.html").expect("the origin was asked");
    assert_eq!(
        seen.headers.get("x-forwarded-proto").map(|v| v.as_bytes()),
        Some(&b"https"[..])
    );

    // On the plain listener a visitor's claim to be HTTPS is dropped: it gets the plain
    // variant (a miss of its own), and Magento sees no offload header.
    let plain = send(
        common::client()
            .get(fg.url("/p.html"))
            .header("host", "shop.test")
            .header("x-forwarded-proto", "https"),
    )
    .await;
    assert_eq!((plain.status, plain.cache_debug()), (200, "MISS"));
    assert!(plain.header("strict-transport-security").is_none());
    let seen = origin.last("/p.html").expect("asked again");
    assert!(seen.headers.get("x-forwarded-proto").is_none());
    assert_eq!(origin.hits("/p.html"), 2);

    assert!(fg.metric_sum("floodgate_tls_handshakes_total").await >= 1.0);
    // Clients that dropped their handshakes (openssl s_client above) are theirs to
    // worry about: no ERROR line for an operator to chase.
    let errors: Vec<String> = fg
        .log()
        .lines()
        .filter(|l| l.contains("ERROR"))
        .map(str::to_owned)
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    // Counted once each request is logged, just after its answer.
    for version in ["1.1", "2"] {
        let sample = format!("floodgate_http_requests_total{{version=\"{version}\"}}");
        assert!(
            until_metric(&fg, &sample, 1.0, Duration::from_secs(5))
                .await
                .is_some(),
            "{sample}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_carries_100_concurrent_requests_on_one_connection_from_the_cache() {
    let ca = TestCa::new();
    let shop = ca.leaf("shop", &["shop.test"]);
    let origin = TestOrigin::start().await;
    let (fg, tls) = start_tls(origin.addr, &[&shop], Settings::default()).await;
    let client = https_client(&ca, tls, &["shop.test"]);
    let url = format!("https://shop.test:{}/h2.html", tls.port());
    let first = client.get(&url).send().await.expect("first");
    assert_eq!(first.version(), reqwest::Version::HTTP_2);
    let body = first.bytes().await.expect("body");
    let handshakes = fg.metric_sum("floodgate_tls_handshakes_total").await;

    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (client, url) = (client.clone(), url.clone());
        streams.spawn(async move {
            let got = client.get(&url).send().await.expect("stream");
            let version = got.version();
            let debug = got
                .headers()
                .get("x-magento-cache-debug")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (version, debug, got.bytes().await.expect("stream body"))
        });
    }
    let mut served = 0;
    while let Some(done) = streams.join_next().await {
        let (version, debug, got) = done.expect("stream task");
        assert_eq!(version, reqwest::Version::HTTP_2);
        assert_eq!(debug.as_deref(), Some("HIT"));
        assert_eq!(got, body, "the whole page");
        served += 1;
    }
    assert_eq!(served, 100);
    assert_eq!(origin.hits("/h2.html"), 1, "all from the cache");
    assert_eq!(
        fg.metric_sum("floodgate_tls_handshakes_total").await,
        handshakes,
        "no new connection: the 100 requests were streams of one"
    );
    assert!(
        until_metric(
            &fg,
            "floodgate_http_requests_total{version=\"2\"}",
            101.0,
            Duration::from_secs(5)
        )
        .await
        .is_some(),
        "every stream counted as HTTP/2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https_but_purge_is_not() {
    let ca = TestCa::new();
    let shop = ca.leaf("shop", &["shop.test"]);
    let origin = TestOrigin::start().await;
    let (fg, tls) = start_tls(
        origin.addr,
        &[&shop],
        Settings::default()
            .server("trusted_proxies = []")
            .server("redirect_http_to_https = true"),
    )
    .await;
    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let port = fg.addr.port();
    let got = send(
        no_redirects
            .get(fg.url("/women.html?color=red"))
            .header("host", format!("shop.test:{port}")),
    )
    .await;
    assert_eq!(got.status, 301);
    assert_eq!(
        got.header("location"),
        Some(format!("https://shop.test:{}/women.html?color=red", tls.port()).as_str())
    );
    let post = send(
        no_redirects
            .post(fg.url("/checkout/cart/add"))
            .header("host", "shop.test")
            .body("qty=1"),
    )
    .await;
    assert_eq!(post.status, 308, "the method and body are kept");
    // A visitor's claim to be HTTPS already is not believed.
    let claimed = send(
        no_redirects
            .get(fg.url("/women.html"))
            .header("host", "shop.test")
            .header("x-forwarded-proto", "https"),
    )
    .await;
    assert_eq!(claimed.status, 301);
    // Magento purges over plain HTTP: answered, not redirected.
    let purge = send(purge_request(&fg, "((^|,)cat_p_1(,|$))")).await;
    assert_eq!(purge.status, 200, "{}", purge.text());
    // A Host that is no authority gets no redirect to anywhere.
    let bad = send(
        no_redirects
            .get(fg.url("/women.html"))
            .header("host", "evil.test/x"),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(origin.total_hits(), 0, "nothing reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_certificate_for_new_handshakes_and_open_connections_stay() {
    let ca = TestCa::new();
    let shop = ca.leaf("shop", &["shop.test"]);
    let origin = TestOrigin::start().await;
    let (fg, tls) = start_tls(origin.addr, &[&shop], Settings::default()).await;
    let before = presented(tls, Some("shop.test"));
    assert!(before.contains("serial=01"), "{before}");

    // An open keep-alive connection, made with the old certificate.
    let client = https_client(&ca, tls, &["shop.test"]);
    let url = format!("https://shop.test:{}/r.html", tls.port());
    assert_eq!(client.get(&url).send().await.expect("first").status(), 200);

    // certbot's deploy hook: the files replaced, then a reload.
    let renewed = ca.leaf("renewed", &["shop.test"]);
    std::fs::copy(&renewed.cert, &shop.cert).expect("replace the certificate");
    std::fs::copy(&renewed.key, &shop.key).expect("replace the key");
    let reload = |fg: &Floodgate| {
        send(
            common::client()
                .post(fg.admin_url("/reload"))
                .header("content-type", "application/json"),
        )
    };
    let answer = reload(&fg).await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    let handshakes = fg.metric_sum("floodgate_tls_handshakes_total").await;
    let again = client
        .get(&url)
        .send()
        .await
        .expect("on the open connection");
    assert_eq!(again.status(), 200);
    assert_eq!(
        fg.metric_sum("floodgate_tls_handshakes_total").await,
        handshakes,
        "the open connection was kept, not made again"
    );
    let after = presented(tls, Some("shop.test"));
    assert!(
        after.contains("serial=02"),
        "new handshakes get the renewed one: {after}"
    );

    // A certificate that does not load fails the reload; the one in force keeps serving.
    std::fs::write(&shop.cert, "not a certificate").expect("break the certificate");
    let refused = reload(&fg).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        refused.text().contains("tls.certificates[0]"),
        "{}",
        refused.text()
    );
    let still = presented(tls, Some("shop.test"));
    assert!(still.contains("serial=02"), "{still}");
    assert_eq!(client.get(&url).send().await.expect("still").status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_http1_share_a_page_but_two_hosts_never_do() {
    let ca = TestCa::new();
    let shop = ca.leaf("shop", &["shop.test", "other.test"]);
    let origin = TestOrigin::start().await;
    // Without ESI nothing wraps the request: the HTTP/2 request itself is keyed.
    let (_fg, tls) = start_tls(
        origin.addr,
        &[&shop],
        Settings::default().esi("enabled = false"),
    )
    .await;
    let h2 = https_client(&ca, tls, &["shop.test", "other.test"]);
    let h1 = https_builder(&ca, tls, &["shop.test"])
        .http1_only()
        .build()
        .expect("h1 client");
    let url = |host: &str| format!("https://{host}:{}/hosted.html", tls.port());
    let debug = |got: &reqwest::Response| {
        got.headers()
            .get("x-magento-cache-debug")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };

    let first = h2.get(url("shop.test")).send().await.expect("h2");
    assert_eq!(first.version(), reqwest::Version::HTTP_2);
    assert_eq!(debug(&first).as_deref(), Some("MISS"));
    // Another shop on the same Floodgate (a Magento multi-store): its own page.
    let other = h2.get(url("other.test")).send().await.expect("h2 other");
    assert_eq!(
        debug(&other).as_deref(),
        Some("MISS"),
        "never the other host's page"
    );
    assert_eq!(origin.hits("/hosted.html"), 2);
    let seen = origin.last("/hosted.html").expect("asked");
    assert_eq!(
        seen.headers.get("host").map(|v| v.as_bytes()),
        Some(format!("other.test:{}", tls.port()).as_bytes())
    );
    // The same page over HTTP/1.1 is the same key: a hit.
    let again = h1.get(url("shop.test")).send().await.expect("h1");
    assert_eq!(again.version(), reqwest::Version::HTTP_11);
    assert_eq!(debug(&again).as_deref(), Some("HIT"));
    assert_eq!(origin.hits("/hosted.html"), 2);
}
