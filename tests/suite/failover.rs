//! Redis with a failover (issue 33): a primary, its replica and three sentinels; three
//! Floodgate nodes on `redis+sentinel://`; purges sent to random nodes while the primary
//! is killed with -9 (twice) or paused past the timeouts. Afterwards every node serves
//! every page's newest version: no purge was lost.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::sentinel::SentinelSet;
use common::*;

const PAGES: usize = 40;

fn page(i: usize, version: usize) -> Page {
    Page::cacheable(format!("page {i} version {version}"))
        .header("x-magento-tags", &format!("cat_p_{i}"))
}

async fn nodes_on(set: &SentinelSet, origin: &TestOrigin) -> Vec<Floodgate> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let node = Floodgate::start_with(
            origin.addr,
            Settings::default()
                .warm("enabled = false")
                .redis(&format!("url = \"{}\"", set.url()))
                .redis("key_prefix = \"failover:\"")
                .redis("timeout_ms = 200"),
        )
        .await;
        assert!(
            until_metric(
                &node,
                "floodgate_purge_bus_following",
                1.0,
                Duration::from_secs(20)
            )
            .await
            .is_some(),
            "the node reached the primary through the sentinels:\n{}",
            node.log()
        );
        nodes.push(node);
    }
    nodes
}

/// `purges` purges to random nodes, each of a page whose version it bumps first; the
/// failover runs (in the background, while purges go on) once a third and once two
/// thirds are sent.
async fn purge_through_failovers(
    set: SentinelSet,
    origin: &TestOrigin,
    nodes: &[Floodgate],
    purges: usize,
    pause: bool,
) -> (SentinelSet, Vec<usize>) {
    let versions: Vec<Arc<AtomicUsize>> = (0..PAGES).map(|_| Arc::default()).collect();
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let fail = |mut set: SentinelSet| {
        tokio::spawn(async move {
            if pause {
                set.pause_primary().await;
            } else {
                set.kill_primary().await;
            }
            set
        })
    };
    let mut set = Some(set);
    let mut failing: Option<tokio::task::JoinHandle<SentinelSet>> = None;
    for i in 0..purges {
        if i == purges / 3 || i == 2 * purges / 3 {
            if let Some(running) = failing.take() {
                set = Some(running.await.expect("failover"));
            }
            failing = set.take().map(fail);
        }
        let p = next(PAGES);
        let version = versions[p].fetch_add(1, Ordering::SeqCst) + 1;
        origin.set(&format!("/v-{p}.html"), page(p, version));
        let node = &nodes[next(nodes.len())];
        let answer = send(purge_request(node, &tags_pattern(&[&format!("cat_p_{p}")]))).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        // Now and then a visitor on some node caches the page again in between.
        if next(4) == 0 {
            let _ = get(&nodes[next(nodes.len())].url(&format!("/v-{p}.html"))).await;
        }
    }
    if let Some(running) = failing.take() {
        set = Some(running.await.expect("failover"));
    }
    (
        set.expect("the set is back"),
        versions.iter().map(|v| v.load(Ordering::SeqCst)).collect(),
    )
}

async fn every_node_serves_the_newest(nodes: &[Floodgate], versions: &[usize]) {
    for node in nodes {
        assert!(
            until(Duration::from_secs(30), || async {
                node.metric_or_zero("floodgate_purge_bus_outbox").await == 0.0
            })
            .await,
            "the node's outbox drained:\n{}",
            node.log()
        );
    }
    // The caches outlived the failovers: a new primary with the same data set is not a
    // Redis that lost its history.
    for node in nodes {
        assert_eq!(
            node.metric("floodgate_purge_bus_flushes_total").await,
            0.0,
            "a node dropped its memory for a failover:\n{}",
            node.log()
        );
    }
    for (n, node) in nodes.iter().enumerate() {
        for (p, version) in versions.iter().enumerate() {
            let want = format!("page {p} version {version}");
            let url = node.url(&format!("/v-{p}.html"));
            let newest = until(Duration::from_secs(15), || async {
                get(&url).await.text() == want
            })
            .await;
            assert!(
                newest,
                "node {n} serves {:?} for page {p}, newest is version {version}: a purge was lost\n{}",
                get(&url).await.text(),
                node.log()
            );
        }
    }
}

async fn filled(origin: &TestOrigin, nodes: &[Floodgate]) {
    for p in 0..PAGES {
        origin.set(&format!("/v-{p}.html"), page(p, 0));
    }
    for node in nodes {
        for p in 0..PAGES {
            assert_eq!(get(&node.url(&format!("/v-{p}.html"))).await.status, 200);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_purge_is_lost_when_the_primary_is_killed_twice() {
    let set = SentinelSet::start().await;
    let origin = TestOrigin::start().await;
    let nodes = nodes_on(&set, &origin).await;
    filled(&origin, &nodes).await;
    let (_set, versions) = purge_through_failovers(set, &origin, &nodes, 1000, false).await;
    every_node_serves_the_newest(&nodes, &versions).await;
    // The nodes followed the sentinels to the new primary: the bus is connected there,
    // and the fleet's origin budget (on its fallback share meanwhile) is back.
    for node in &nodes {
        assert!(until_metric(
            node,
            "floodgate_redis_connected",
            1.0,
            Duration::from_secs(10)
        )
        .await
        .is_some());
        assert!(
            until(Duration::from_secs(15), || async {
                node.metric_or_zero("floodgate_fleet_fallback").await == 0.0
            })
            .await,
            "the fleet's budget came back"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_purge_is_lost_when_the_primary_is_paused_past_the_timeouts() {
    let set = SentinelSet::start().await;
    let origin = TestOrigin::start().await;
    let nodes = nodes_on(&set, &origin).await;
    filled(&origin, &nodes).await;
    let (_set, versions) = purge_through_failovers(set, &origin, &nodes, 1000, true).await;
    every_node_serves_the_newest(&nodes, &versions).await;
}
