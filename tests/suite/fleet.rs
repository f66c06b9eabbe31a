//! A fleet keeps the single-box promises (issue 32): several Floodgate nodes on one real
//! Redis keep one origin budget between them, whatever dies or joins, and a checkout on
//! one node goes before crawlers on another. The origin counts its own concurrency, and
//! keeps rendering what a killed node left behind, as PHP-FPM does.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const BUDGET: u64 = 8;

fn node_settings(redis: &RedisServer) -> Settings {
    Settings::default()
        .warm("enabled = false")
        .redis(&format!("url = \"{}\"", redis.url()))
        .redis("key_prefix = \"fleet-test:\"")
        .limits(&format!("max_inflight = {BUDGET}"))
        .limits("max_inflight_per_client = 0")
}

/// Starts a node and waits until it admits on the fleet's budget (Redis reached, one
/// lease past joining).
async fn fleet_node(origin: std::net::SocketAddr, settings: Settings) -> Floodgate {
    let node = Floodgate::start_with(origin, settings).await;
    assert!(
        until(Duration::from_secs(20), || async {
            node.metric_or_zero("floodgate_fleet_fallback").await == 0.0
                && node.metric_or_zero("floodgate_fleet_nodes").await >= 1.0
        })
        .await,
        "the node did not join the fleet:\n{}",
        node.log()
    );
    node
}

/// Keeps `url_prefix`-N misses going at `node` from `clients` concurrent clients until
/// `stop`; counts the answers by status.
fn keep_missing(
    node: &Floodgate,
    url_prefix: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<u16>>> {
    (0..clients)
        .map(|c| {
            let base = node.url(url_prefix);
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = client();
                let mut statuses = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    match client.get(format!("{base}-{c}-{n}.html")).send().await {
                        Ok(resp) => {
                            statuses.push(resp.status().as_u16());
                            let _ = resp.bytes().await;
                        }
                        // The node was killed under it.
                        Err(_) => break,
                    }
                }
                statuses
            })
        })
        .collect()
}

async fn statuses(tasks: Vec<tokio::task::JoinHandle<Vec<u16>>>) -> Vec<u16> {
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    all
}

// Distinct misses on three nodes at once: the origin never sees more than the budget,
// and every request is answered (the page, or the busy page after its wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_keep_one_origin_budget() {
    let redis = RedisServer::start().await;
    let origin = TestOrigin::start().await;
    origin.render_abandoned_requests();
    origin.set_delay(Duration::from_millis(200));
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(fleet_node(origin.addr, node_settings(&redis)).await);
    }
    for node in &nodes {
        assert_eq!(node.metric("floodgate_fleet_nodes").await, 3.0);
    }
    let mut bursts = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for i in 0..40 {
            let url = node.url(&format!("/burst-{n}-{i}.html"));
            bursts.push(tokio::spawn(async move { get(&url).await.status }));
        }
    }
    let mut answered = Vec::new();
    for burst in bursts {
        answered.push(burst.await.expect("request"));
    }
    assert!(
        answered.iter().all(|s| matches!(s, 200 | 503)),
        "{answered:?}"
    );
    assert!(
        answered.iter().filter(|s| **s == 200).count() >= 100,
        "{answered:?}"
    );
    assert!(
        origin.max_total_in_flight() <= BUDGET,
        "three nodes put {} requests in flight at a budget of {BUDGET}",
        origin.max_total_in_flight()
    );
    assert_eq!(origin.max_total_in_flight(), BUDGET, "and used all of it");
}

// kill -9 one node mid-burst: the others use the whole budget within 5 s (the dead
// node's leases run out); a node started mid-burst never pushes the origin over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_gives_its_slots_back_and_a_new_one_keeps_the_budget() {
    let redis = RedisServer::start().await;
    let origin = TestOrigin::start().await;
    origin.render_abandoned_requests();
    origin.set_delay(Duration::from_millis(300));
    let a = fleet_node(origin.addr, node_settings(&redis)).await;
    let b = fleet_node(origin.addr, node_settings(&redis)).await;
    let mut c = fleet_node(origin.addr, node_settings(&redis)).await;
    let stop = Arc::new(AtomicBool::new(false));
    // C alone first: it holds the whole budget.
    let c_load = keep_missing(&c, "/c", 12, stop.clone());
    assert!(
        eventually(Duration::from_secs(10), || origin.total_in_flight_now()
            == BUDGET)
        .await,
        "C filled the budget"
    );
    let mut load = keep_missing(&a, "/a", 6, stop.clone());
    load.extend(keep_missing(&b, "/b", 6, stop.clone()));
    // C dies holding its slots; what it sent is still rendered at the origin.
    c.kill();
    let killed = std::time::Instant::now();
    // A and B take the whole budget back within the lease (3 s) and a renewal.
    assert!(
        until(Duration::from_secs(5), || async {
            origin.total_in_flight_now() == BUDGET
                && a.metric_sum("floodgate_origin_inflight").await
                    + b.metric_sum("floodgate_origin_inflight").await
                    == BUDGET as f64
        })
        .await,
        "A and B hold {} + {} slots {:?} after C died",
        a.metric_sum("floodgate_origin_inflight").await,
        b.metric_sum("floodgate_origin_inflight").await,
        killed.elapsed()
    );
    // D joins mid-burst and takes part, within the budget.
    let d = fleet_node(origin.addr, node_settings(&redis)).await;
    load.extend(keep_missing(&d, "/d", 6, stop.clone()));
    assert!(
        until(Duration::from_secs(10), || async {
            d.metric_sum("floodgate_origin_inflight").await >= 1.0
        })
        .await,
        "D got slots"
    );
    stop.store(true, Ordering::SeqCst);
    let answered = statuses(load).await;
    let _ = statuses(c_load).await;
    assert!(
        answered.iter().all(|s| matches!(s, 200 | 503)),
        "{answered:?}"
    );
    assert!(
        origin.max_total_in_flight() <= BUDGET,
        "the origin saw {} in flight at a budget of {BUDGET}",
        origin.max_total_in_flight()
    );
}

// Redis stopped mid-burst: each node keeps to its fallback share, so the origin never
// sees more than the budget; Redis back: the fleet's budget returns without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_node_keeps_its_share_and_the_budget_returns_with_it() {
    let mut redis = RedisServer::start().await;
    let origin = TestOrigin::start().await;
    origin.render_abandoned_requests();
    origin.set_delay(Duration::from_millis(200));
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(fleet_node(origin.addr, node_settings(&redis)).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        load.extend(keep_missing(node, &format!("/n{n}"), 6, stop.clone()));
    }

    assert!(
        eventually(Duration::from_secs(10), || origin.total_in_flight_now()
            == BUDGET)
        .await,
        "the fleet used its budget"
    );
    redis.kill();
    for node in &nodes {
        assert!(
            until_metric(
                node,
                "floodgate_fleet_fallback",
                1.0,
                Duration::from_secs(5)
            )
            .await
            .is_some(),
            "a node says it runs on its fallback share"
        );
        // 8 / 3 nodes: 2 each, never the whole budget.
        assert_eq!(node.metric("floodgate_fleet_share").await, 2.0);
    }
    assert!(node_log_says(&nodes[0], "fallback share"));
    // Past the slots that were in flight when Redis went: each node at its share.
    assert!(
        eventually(Duration::from_secs(10), || origin.total_in_flight_now()
            == 6)
        .await,
        "three shares of two in flight: {}",
        origin.total_in_flight_now()
    );
    // An outage longer than a lease: 60 more pages rendered on the shares alone.
    let rendered = origin.renders();
    assert!(
        eventually(Duration::from_secs(20), || origin.renders()
            >= rendered + 60)
        .await,
        "the fleet serves on its shares"
    );
    redis.restart().await;
    for node in &nodes {
        assert!(
            until(Duration::from_secs(15), || async {
                node.metric_or_zero("floodgate_fleet_fallback").await == 0.0
            })
            .await,
            "the node is back on the fleet's budget"
        );
    }
    assert!(
        eventually(Duration::from_secs(10), || origin.total_in_flight_now()
            == BUDGET)
        .await,
        "the whole budget in use again: {}",
        origin.total_in_flight_now()
    );
    stop.store(true, Ordering::SeqCst);
    let answered = statuses(load).await;
    assert!(
        answered.iter().all(|s| matches!(s, 200 | 503)),
        "{answered:?}"
    );
    assert!(
        origin.max_total_in_flight() <= BUDGET,
        "the origin saw {} in flight at a budget of {BUDGET}",
        origin.max_total_in_flight()
    );
}

fn node_log_says(node: &Floodgate, what: &str) -> bool {
    node.log().contains(what)
}

// With the budget full of crawler requests from node B, a checkout POST on node A gets
// the next free slot, ahead of every crawler B still has waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_on_one_node_goes_before_crawlers_on_another() {
    let redis = RedisServer::start().await;
    let origin = TestOrigin::start().await;
    origin.render_abandoned_requests();
    origin.set_delay(Duration::from_millis(300));
    let a = fleet_node(origin.addr, node_settings(&redis)).await;
    let b = fleet_node(origin.addr, node_settings(&redis)).await;
    let crawlers: Vec<_> = (0..24)
        .map(|i| {
            let url = b.url(&format!("/crawled-{i}.html"));
            tokio::spawn(async move {
                let got = client()
                    .get(url)
                    .header("user-agent", "Googlebot/2.1")
                    .send()
                    .await;
                match got {
                    Ok(resp) => resp.status().as_u16(),
                    Err(e) => panic!("a crawler's request failed: {e:?}"),
                }
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || origin.total_in_flight_now()
            == BUDGET)
        .await,
        "B's crawlers fill the budget"
    );
    assert!(
        until(Duration::from_secs(5), || async {
            b.metric_or_zero("floodgate_origin_queued{class=\"crawlers\"}")
                .await
                >= 10.0
        })
        .await,
        "and more wait on B"
    );
    let checkout = {
        let url = a.url("/checkout/cart/add");
        tokio::spawn(async move {
            send(
                client()
                    .post(url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body("product=1&qty=1"),
            )
            .await
            .status
        })
    };
    // The fleet had no slot for it: from now on it waits, registered as the best waiter.
    assert!(
        until(Duration::from_secs(5), || async {
            a.metric_or_zero("floodgate_fleet_admissions_total{result=\"denied\"}")
                .await
                >= 1.0
        })
        .await,
        "the checkout asked the fleet"
    );
    let asked = origin.started().len();
    assert!(checkout.await.expect("checkout") < 500);
    let started = origin.started();
    let at = started
        .iter()
        .position(|url| url.starts_with("/checkout"))
        .expect("the checkout reached the origin");
    // Slots free in batches (the crawlers started together): the checkout must be in the
    // first batch freed after it asked, not behind the crawlers B still had queued.
    let ahead_of_it = at.saturating_sub(asked);
    assert!(
        ahead_of_it < BUDGET as usize,
        "{ahead_of_it} crawlers on B went first while the checkout waited on A: {:?}",
        &started[asked.min(at)..at]
    );
    for crawler in crawlers {
        assert!(matches!(crawler.await.expect("crawler"), 200 | 503));
    }
    assert!(origin.max_total_in_flight() <= BUDGET);
}

fn warm_node_settings(redis: &RedisServer) -> Settings {
    Settings::default()
        .redis(&format!("url = \"{}\"", redis.url()))
        .redis("key_prefix = \"fleet-warm:\"")
        .warm("rate_per_sec = 100")
        .limits(&format!("max_inflight = {BUDGET}"))
}

// 200 hot pages (served by every node) purged through one node: each is fetched again
// once for the whole fleet, and then every node serves each of them without asking PHP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_hot_page_is_rewarmed_once_for_the_fleet() {
    let redis = RedisServer::start().await;
    let origin = TestOrigin::start().await;
    const PAGES: usize = 200;
    for i in 0..PAGES {
        origin.set(
            &format!("/hot-{i}.html"),
            Page::cacheable(format!("<p>{i}</p>"))
                .header("x-magento-tags", &format!("cat_p_{i},hot")),
        );
    }
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(fleet_node(origin.addr, warm_node_settings(&redis)).await);
    }
    // Hot on every node: each serves each page (the first from PHP, the others from
    // the shared tier).
    // One shop: every node is asked for the same Host, as behind a load balancer.
    let shop = |node: &Floodgate, i: usize| {
        client()
            .get(node.url(&format!("/hot-{i}.html")))
            .header("host", "shop.test")
    };
    for node in &nodes {
        for i in 0..PAGES {
            assert_eq!(send(shop(node, i)).await.status, 200);
        }
    }
    let hot_hits = |origin: &TestOrigin| -> u64 {
        (0..PAGES)
            .map(|i| origin.hits(&format!("/hot-{i}.html")))
            .sum()
    };
    assert_eq!(hot_hits(&origin), PAGES as u64, "filled once for the fleet");
    let purged = send(purge_request(&nodes[0], &tags_pattern(&["hot"]))).await;
    assert_eq!(purged.status, 200, "{}", purged.text());
    // Every page comes back once: wait on the origin's own count.
    assert!(
        eventually(Duration::from_secs(60), || (0..PAGES)
            .all(|i| origin.answered(&format!("/hot-{i}.html")) >= 2))
        .await,
        "the purged pages were re-warmed: {} of {PAGES}",
        (0..PAGES)
            .filter(|i| origin.answered(&format!("/hot-{i}.html")) >= 2)
            .count()
    );
    // The re-warmers and every other node settle: no node fetches them again.
    let settled = hot_hits(&origin);
    for node in &nodes {
        assert!(
            until(Duration::from_secs(30), || async {
                node.metric_or_zero("floodgate_warm_queue_depth").await == 0.0
            })
            .await
        );
    }
    let after_purge = hot_hits(&origin) - PAGES as u64;
    assert!(
        after_purge <= 210,
        "{after_purge} origin requests for {PAGES} purged pages across 3 nodes"
    );
    for node in &nodes {
        for i in 0..PAGES {
            let got = send(shop(node, i)).await;
            assert_eq!(got.status, 200);
            assert_eq!(got.text(), format!("<p>{i}</p>"));
        }
    }
    assert_eq!(hot_hits(&origin), settled, "no node asked PHP again");
}
