//! Zero-downtime binary upgrade (Pingora's graceful upgrade): a new process takes the
//! listening sockets over from the running one, which drains and exits; clients under
//! load see no failed request.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_a_new_binary_takes_over() {
    let origin = TestOrigin::start().await;
    origin.set_delay(Duration::from_millis(5));
    let fg = Floodgate::start(origin.addr).await;
    assert_eq!(get(&fg.url("/hot.html")).await.cache_debug(), "MISS");

    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (url_base, stop, done, failed, errors) = (
            fg.url(""),
            stop.clone(),
            done.clone(),
            failed.clone(),
            errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            // A new connection per request, as many visitors are: each one is accepted by
            // whichever process holds the listener at that moment.
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client");
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let path = if i.is_multiple_of(2) {
                    "/hot.html".to_string()
                } else {
                    format!("/page-{w}-{i}.html")
                };
                match client.get(format!("{url_base}{path}")).send().await {
                    // A success is a 200 whose body arrived whole (reqwest checks the length).
                    Ok(r) if r.status() == 200 => match r.bytes().await {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors
                                .lock()
                                .expect("errors")
                                .push(format!("{path}: body cut short: {e}"));
                        }
                    },
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors
                            .lock()
                            .expect("errors")
                            .push(format!("{path}: {}", r.status()));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().expect("errors").push(format!("{path}: {e}"));
                    }
                }
                i += 1;
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(10), || done.load(Ordering::Relaxed)
            >= 50)
        .await,
        "the load is flowing before the upgrade"
    );

    let _new = fg.spawn_upgrade();
    let socket = fg.upgrade_socket();
    assert!(
        eventually(Duration::from_secs(10), || socket.exists()).await,
        "the new process did not open {}",
        socket.display()
    );
    let before_handover = done.load(Ordering::Relaxed);
    let hot_before = origin.hits("/hot.html");
    fg.signal("QUIT");

    // Load runs through the hand-over until the new process has served (it fetches the
    // hot page once for its empty cache) and plenty of requests came after.
    assert!(
        eventually(Duration::from_secs(20), || origin.hits("/hot.html")
            > hot_before
            && done.load(Ordering::Relaxed) > before_handover + 200)
        .await,
        "the new process did not take over: {} hot fetches, {} requests",
        origin.hits("/hot.html") - hot_before,
        done.load(Ordering::Relaxed) - before_handover
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let errors = errors.lock().expect("errors").clone();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests: {errors:?}"
    );
    assert!(
        done.load(Ordering::Relaxed) > before_handover + 50,
        "requests kept flowing after the hand-over"
    );
    // The new process starts with an empty cache: it fetched the hot page once itself.
    assert_eq!(
        origin.hits("/hot.html"),
        hot_before + 1,
        "the new process serves"
    );
    assert_eq!(get(&fg.url("/hot.html")).await.cache_debug(), "HIT");
    // The old one drains and exits (grace period 10 s, then at most 5 s of shutdown).
    assert!(
        eventually(Duration::from_secs(20), || fg.has_exited()).await,
        "the old process exited after draining"
    );
}
