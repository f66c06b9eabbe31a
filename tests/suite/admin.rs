//! The admin API: health and readiness, and the operations as JSON, used by the CLI.

use crate::common;

use std::time::Duration;

use common::*;

async fn post_json(url: String, body: &str) -> (u16, serde_json::Value) {
    let got = send(
        client()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await;
    let value = serde_json::from_slice(&got.body).unwrap_or(serde_json::Value::Null);
    (got.status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_follow_the_process_and_the_origin() {
    let origin = TestOrigin::start().await;
    let settings = Settings::default()
        .origin("health_window = 2")
        .origin("health_threshold = 2");
    let fg = Floodgate::start_with(origin.addr, settings).await;
    assert_eq!(get(&fg.admin_url("/healthz")).await.status, 200);
    let ready = get(&fg.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert!(ready.text().contains("\"listening\":true"));

    origin.set_unhealthy(true);
    assert!(
        until(Duration::from_secs(6), || async {
            get(&fg.admin_url("/readyz")).await.status == 503
        })
        .await,
        "readyz turns 503 while the origin fails its probe"
    );
    let unready = get(&fg.admin_url("/readyz")).await;
    assert!(
        unready.text().contains("\"origin_healthy\":false"),
        "{}",
        unready.text()
    );
    assert_eq!(
        get(&fg.admin_url("/healthz")).await.status,
        200,
        "still alive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_through_the_admin_api_and_the_cli() {
    let origin = TestOrigin::start().await;
    for n in 1..=3 {
        origin.set(
            &format!("/p{n}.html"),
            Page::cacheable(format!("p{n}")).header("x-magento-tags", &format!("cat_p_{n},cat_p")),
        );
    }
    let fg = Floodgate::start_with(origin.addr, Settings::default().warm("enabled = false")).await;
    for n in 1..=3 {
        get(&fg.url(&format!("/p{n}.html"))).await;
    }
    let (status, report) = post_json(fg.admin_url("/purge"), r#"{"tags": ["cat_p_1"]}"#).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["objects"], 1);
    assert_eq!(get(&fg.url("/p1.html")).await.cache_debug(), "MISS");
    assert_eq!(get(&fg.url("/p2.html")).await.cache_debug(), "HIT");

    let (status, report) = post_json(fg.admin_url("/purge"), r#"{"pattern": "("}"#).await;
    assert_eq!(status, 400);
    assert!(report["error"]
        .as_str()
        .is_some_and(|e| e.contains("nothing was purged")));
    let (status, _) = post_json(fg.admin_url("/purge"), r#"{"tagz": ["x"]}"#).await;
    assert_eq!(status, 400, "unknown fields are refused");
    let (status, _) = post_json(fg.admin_url("/purge"), "{}").await;
    assert_eq!(status, 400, "nothing to purge");
    assert_eq!(get(&fg.admin_url("/purge")).await.status, 405);
    assert_eq!(get(&fg.admin_url("/nope")).await.status, 404);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(["purge", "--tags", "cat_p", "--admin", &fg.admin_url("")])
        .output()
        .expect("run floodgate purge");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // p1 (re-fetched), p2, p3.
    assert!(text.starts_with("purged 3 objects"), "{text}");
    assert_eq!(get(&fg.url("/p2.html")).await.cache_debug(), "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_through_the_admin_api_fills_the_cache_in_the_background() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let host = format!("{}", fg.addr);
    let body = format!(r#"{{"urls": ["http://{host}/w1.html", "https://{host}/w2.html"]}}"#);
    let (status, answer) = post_json(fg.admin_url("/warm"), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["queued"], 2);
    assert!(
        eventually(Duration::from_secs(10), || origin.hits("/w1.html") == 1
            && origin.hits("/w2.html") == 1)
        .await
    );
    fg.until_fresh("/w1.html").await;
    fg.until_fresh("/w2.html").await;
    assert_eq!(get(&fg.url("/w1.html")).await.cache_debug(), "HIT");
    let https = send(
        client()
            .get(fg.url("/w2.html"))
            .header("x-forwarded-proto", "https"),
    )
    .await;
    assert_eq!(https.cache_debug(), "HIT", "warmed in the https variant");

    let (status, answer) = post_json(fg.admin_url("/warm"), r#"{"urls": ["not a url"]}"#).await;
    assert_eq!(status, 400, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_endpoint_says_what_is_stored_for_a_url_without_touching_it() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/short.html",
        Page::cacheable("short")
            .ttl(1)
            .header("x-magento-tags", "cat_p_1,cat_p"),
    );
    let fg = Floodgate::start(origin.addr).await;
    assert!(fg.stored("/short.html").await.is_empty(), "nothing yet");
    get(&fg.url("/short.html")).await;
    send(
        client()
            .get(fg.url("/short.html"))
            .header("x-forwarded-proto", "https"),
    )
    .await;
    let answer: serde_json::Value = client()
        .get(fg.admin_url("/cache"))
        .query(&[("url", "/short.html?utm_source=mail")])
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    assert_eq!(
        answer["url"], "/short.html",
        "normalised as a visitor's URL is"
    );
    let objects = answer["objects"].as_array().expect("objects");
    assert_eq!(objects.len(), 2, "one per variant: {answer}");
    for object in objects {
        assert_eq!(object["state"], "fresh", "{answer}");
        assert_eq!(object["tags"], 2, "{answer}");
        assert_eq!(object["body_bytes"], 5, "{answer}");
    }
    // The TTL runs out in Floodgate's view, and asking changed nothing: no fetch.
    fg.until_stored("/short.html", &["grace"], Duration::from_secs(10))
        .await;
    assert_eq!(origin.hits("/short.html"), 2, "the endpoint never fetches");

    let missing = client()
        .get(fg.admin_url("/cache"))
        .send()
        .await
        .expect("admin");
    assert_eq!(missing.status(), 400, "the URL is required");
    let foreign = client()
        .get(fg.admin_url("/cache?url=/short.html"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("admin");
    assert_eq!(foreign.status(), 403, "guarded like every operation");
}
