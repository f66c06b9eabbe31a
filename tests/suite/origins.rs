//! Origins that come and go (issue 33): an `origin.addresses` entry may be a DNS name,
//! resolved again as its records expire (a real DNS server in the test, answering with
//! 127.0.0.x addresses), and a reload changes the list; each address is an origin server
//! with its own budget, a removed one finishes what it has, and no request fails.

use crate::common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::dns::TestDns;
use common::floodgate::free_port;
use common::*;

/// Three origins on 127.0.0.1..3, one port, as three app servers behind one name.
async fn app_servers() -> (u16, Vec<TestOrigin>) {
    let port = free_port();
    let mut origins = Vec::new();
    for last in 1..=3u8 {
        let addr = SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), port));
        origins.push(TestOrigin::start_at(addr).await);
    }
    (port, origins)
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Keeps distinct misses going from `clients` clients until `stop`; every status.
fn keep_missing(
    fg: &Floodgate,
    prefix: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<u16>>> {
    (0..clients)
        .map(|c| {
            let base = fg.url(prefix);
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = client();
                let mut statuses = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let status = match client.get(format!("{base}-{c}-{n}.html")).send().await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let _ = resp.bytes().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    statuses.push(status);
                }
                statuses
            })
        })
        .collect()
}

async fn all_ok(tasks: Vec<tokio::task::JoinHandle<Vec<u16>>>) {
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.extend(task.await.expect("client"));
    }
    assert!(!statuses.is_empty());
    let failed: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
}

// A name that resolves to one, then three, then two addresses: traffic follows within
// resolve_secs + 1 s, each address has its own budget, a removed address finishes its
// request, a name that stops resolving keeps its last addresses, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_name_is_followed_as_it_changes() {
    let dns = TestDns::start().await;
    let (port, origins) = app_servers().await;
    for origin in &origins {
        origin.set_delay(Duration::from_millis(100));
    }
    dns.set("app.test", &[ip(1)]);
    let fg = Floodgate::start_with_origin_entries(
        &[format!("app.test:{port}")],
        Settings::default()
            .warm("enabled = false")
            .origin(&format!("dns_servers = [\"{}\"]", dns.addr))
            .origin("resolve_secs = 1")
            .limits("max_inflight = 2")
            .limits("max_inflight_per_client = 0"),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = keep_missing(&fg, "/app", 8, stop.clone());
    assert!(
        eventually(Duration::from_secs(5), || origins[0].total_hits() >= 10).await,
        "the first address serves"
    );
    assert_eq!(origins[1].total_hits() + origins[2].total_hits(), 0);
    assert_eq!(
        fg.metric("floodgate_origin_addresses{name=\"app.test\"}")
            .await,
        1.0
    );

    // Three addresses: the new ones get traffic within resolve_secs + 1 s.
    dns.set("app.test", &[ip(1), ip(2), ip(3)]);
    let changed = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || origins[1].total_hits() > 0
            && origins[2].total_hits() > 0)
        .await,
        "the new addresses got no traffic"
    );
    let followed = changed.elapsed();
    assert!(
        followed <= Duration::from_secs(2) + Duration::from_millis(500),
        "followed after {followed:?}"
    );
    // Each address has its own budget of 2: six at once in all, never three at one.
    assert!(
        eventually(Duration::from_secs(10), || origins
            .iter()
            .all(|o| o.max_total_in_flight() == 2))
        .await,
        "each address used its own budget: {:?}",
        origins
            .iter()
            .map(TestOrigin::max_total_in_flight)
            .collect::<Vec<_>>()
    );
    let series = format!("floodgate_origin_inflight{{origin=\"127.0.0.2:{port}\"}}");
    assert!(fg.metrics().await.contains(&series));

    // 127.0.0.2 goes while a slow request is on it: that request finishes, no new one
    // arrives, and its series go once it is done.
    // Slow pages on every address, a dozen requests round the balancer: some land on
    // 127.0.0.2.
    let slow_url = |k: usize| format!("/slow-{k}.html");
    for origin in &origins {
        for k in 0..12 {
            origin.set(
                &slow_url(k),
                Page::cacheable("slow").delay(Duration::from_secs(2)),
            );
        }
    }
    let slow: Vec<_> = (0..12)
        .map(|k| {
            let url = fg.url(&slow_url(k));
            tokio::spawn(async move { get(&url).await.status })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || (0..12)
            .any(|k| origins[1].hits(&slow_url(k)) == 1))
        .await,
        "a slow request reached 127.0.0.2"
    );
    dns.set("app.test", &[ip(1), ip(3)]);
    assert!(
        until(Duration::from_secs(5), || async {
            fg.metric_or_zero("floodgate_origin_addresses{name=\"app.test\"}")
                .await
                == 2.0
        })
        .await
    );
    let after_removal = origins[1].total_hits();
    for request in slow {
        assert_eq!(request.await.expect("slow request"), 200, "each finished");
    }
    assert_eq!(
        (0..4)
            .map(|k| origins[1].answered(&slow_url(k)))
            .sum::<u64>(),
        (0..4).map(|k| origins[1].hits(&slow_url(k))).sum::<u64>(),
        "the removed address answered what it had"
    );
    assert!(
        until(Duration::from_secs(5), || async {
            !fg.metrics().await.contains(&series)
        })
        .await,
        "the removed address's series are gone"
    );
    let later = origins[0].total_hits() + origins[2].total_hits();
    assert!(
        eventually(Duration::from_secs(5), || origins[0].total_hits()
            + origins[2].total_hits()
            > later + 10)
        .await
    );
    assert!(
        origins[1].total_hits() <= after_removal + 1,
        "the removed address got new requests"
    );

    // The name stops resolving: the last good set stays, and says so.
    dns.fail("app.test");
    assert!(
        until(Duration::from_secs(10), || async {
            fg.metric_or_zero("floodgate_origin_resolve_failures_total{name=\"app.test\"}")
                .await
                >= 1.0
        })
        .await
    );
    let during = origins[0].total_hits() + origins[2].total_hits();
    assert!(
        eventually(Duration::from_secs(5), || origins[0].total_hits()
            + origins[2].total_hits()
            > during + 10)
        .await
    );
    assert!(fg.log().contains("last good addresses"), "{}", fg.log());
    stop.store(true, Ordering::SeqCst);
    all_ok(load).await;
    assert!(dns.queries() > 3);
}

// A reload that adds and removes origins under load: traffic moves to the new list, the
// old origin finishes what it had, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_origins_under_load() {
    let (_port, origins) = app_servers().await;
    for origin in &origins {
        origin.set_delay(Duration::from_millis(50));
    }
    let first = vec![origins[0].addr.to_string()];
    let settings = Settings::default()
        .warm("enabled = false")
        .limits("max_inflight_per_client = 0");
    let fg = Floodgate::start_with_origin_entries(&first, settings.clone()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = keep_missing(&fg, "/reload", 6, stop.clone());
    assert!(eventually(Duration::from_secs(5), || origins[0].total_hits() >= 10).await);
    let next = vec![origins[1].addr.to_string(), origins[2].addr.to_string()];
    fg.rewrite_config_with_origins(&next, &settings);
    let answer = send(
        client()
            .post(fg.admin_url("/reload"))
            .header("content-type", "application/json"),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        !answer.text().contains("origin\""),
        "the origin list applies without a restart: {}",
        answer.text()
    );
    assert!(
        eventually(Duration::from_secs(5), || origins[1].total_hits() > 5
            && origins[2].total_hits() > 5)
        .await,
        "the new origins serve"
    );
    let old = origins[0].total_hits();
    let moved = origins[1].total_hits() + origins[2].total_hits();
    assert!(
        eventually(Duration::from_secs(5), || origins[1].total_hits()
            + origins[2].total_hits()
            > moved + 20)
        .await
    );
    assert_eq!(
        origins[0].total_hits(),
        old,
        "the removed origin got new requests"
    );
    stop.store(true, Ordering::SeqCst);
    all_ok(load).await;
}
