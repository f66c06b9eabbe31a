//! Hot reload: SIGHUP (or `POST /reload`) applies a new configuration to the next request
//! without dropping the cache or a connection; a bad file changes nothing.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn purge(fg: &Floodgate) -> reqwest::RequestBuilder {
    purge_request(fg, &tags_pattern(&["nothing"]))
}

async fn reloads(fg: &Floodgate, result: &str) -> f64 {
    fg.metric_or_zero(&format!(
        "floodgate_config_reloads_total{{result=\"{result}\"}}"
    ))
    .await
}

/// Waits up to 5 s for the count of reloads with `result` to reach `n`.
async fn wait_reloads(fg: &Floodgate, result: &str, n: f64) -> bool {
    until(Duration::from_secs(5), || async {
        reloads(fg, result).await == n
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_change_to_the_next_request_and_keeps_the_cache() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    assert_eq!(get(&fg.url("/kept.html")).await.cache_debug(), "MISS");
    assert_eq!(get(&fg.url("/promo.html")).await.cache_debug(), "MISS");
    assert_eq!(send(purge(&fg)).await.status, 200, "loopback may purge");

    let changed = Settings::default()
        .purge("allow = [\"10.9.9.9\"]")
        .magento("pass_url_patterns = [\"^/promo\"]")
        .limits("max_inflight = 3");
    fg.rewrite_config(&changed);
    fg.signal("HUP");
    assert!(wait_reloads(&fg, "ok", 1.0).await, "{}", fg.log());

    assert_eq!(send(purge(&fg)).await.status, 405, "the new ACL applies");
    assert_eq!(
        get(&fg.url("/promo.html")).await.cache_debug(),
        "UNCACHEABLE",
        "the new pass pattern applies"
    );
    assert_eq!(
        get(&fg.url("/kept.html")).await.cache_debug(),
        "HIT",
        "the cache survived the reload"
    );
    assert_eq!(reloads(&fg, "ok").await, 1.0);
    let sample = format!("floodgate_origin_limit{{origin=\"{}\"}}", origin.addr);
    assert_eq!(fg.metric(&sample).await, 3.0, "the new limit applies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_refused_and_the_old_configuration_keeps_serving() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let hash_before = fg.metrics().await;
    let hash_before = hash_before
        .lines()
        .find(|l| l.starts_with("floodgate_config_info{"))
        .expect("config info")
        .to_string();

    fg.write_config_raw("[purge]\nallow = [\"not an address\"]\n");
    let answer = send(
        client()
            .post(fg.admin_url("/reload"))
            .header("content-type", "application/json"),
    )
    .await;
    assert_eq!(answer.status, 400);
    assert!(answer.text().contains("purge.allow"), "{}", answer.text());

    fg.write_config_raw("this is not toml [");
    fg.signal("HUP");
    assert!(wait_reloads(&fg, "failed", 2.0).await, "{}", fg.log());
    assert_eq!(reloads(&fg, "failed").await, 2.0);
    assert_eq!(reloads(&fg, "ok").await, 0.0);
    assert_eq!(
        send(purge(&fg)).await.status,
        200,
        "the old ACL still applies"
    );
    assert_eq!(get(&fg.url("/a.html")).await.status, 200);
    let text = fg.metrics().await;
    assert!(
        text.contains(&hash_before),
        "the config hash did not change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_reloads_under_load() {
    let origin = TestOrigin::start().await;
    let fg = Arc::new(Floodgate::start(origin.addr).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (fg, stop, done, failed) = (fg.clone(), stop.clone(), done.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let client = client();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                // Hits and misses both.
                let url = fg.url(&format!("/load-{}.html", (w * 1000 + i) % 50));
                let ok = match client.get(url).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    // Each reload lands among requests: some must complete under the previous one first.
    let requests_under_each_config = || {
        let done = done.clone();
        let from = done.load(Ordering::Relaxed);
        async move {
            assert!(
                eventually(Duration::from_secs(10), || done.load(Ordering::Relaxed)
                    >= from + 20)
                .await,
                "requests stopped completing"
            );
        }
    };
    for n in 0..20 {
        requests_under_each_config().await;
        // The priority classes change too: one class, then five, then the defaults.
        let mut settings = Settings::default()
            .cache(&format!("default_ttl_secs = {}", 1 + n % 3))
            .limits("max_inflight = 4");
        match n % 3 {
            0 => {
                settings =
                    settings.limits("default_class = \"all\"\n[[limits.class]]\nname = \"all\"")
            }
            1 => {
                settings = settings.limits("default_class = \"c4\"");
                for c in 0..5 {
                    settings = settings.limits(&format!(
                        "[[limits.class]]\nname = \"c{c}\"\npaths = [\"load-{c}\"]"
                    ));
                }
            }
            _ => {}
        }
        fg.rewrite_config(&settings);
        let answer = send(
            client()
                .post(fg.admin_url("/reload"))
                .header("content-type", "application/json"),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        fg.signal("HUP");
    }
    requests_under_each_config().await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    assert!(done.load(Ordering::Relaxed) > 100);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    assert!(wait_reloads(&fg, "ok", 40.0).await, "{}", fg.log());
}
