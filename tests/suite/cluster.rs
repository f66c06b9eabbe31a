//! Several Floodgate nodes on one real Redis: a purge sent to any node reaches every
//! node, including one that was cut off or restarting, and Redis going away never fails
//! a client request.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn node_settings(redis: &RedisServer, extra: &[&str]) -> Settings {
    let mut settings = Settings::default()
        .warm("enabled = false")
        .redis(&format!("url = \"{}\"", redis.url()))
        .redis("key_prefix = \"test:\"");
    for line in extra {
        settings = settings.redis(line);
    }
    settings
}

async fn tagged_origin() -> TestOrigin {
    let origin = TestOrigin::start().await;
    for n in 1..=3 {
        origin.set(
            &format!("/p{n}.html"),
            Page::cacheable(format!("p{n}")).header("x-magento-tags", &format!("cat_p_{n},cat_p")),
        );
    }
    origin
}

fn purge(fg: &Floodgate, pattern: &str) -> reqwest::RequestBuilder {
    purge_request(fg, pattern)
}

/// Starts a node and waits until it has reached Redis (when Redis is up).
async fn start_node(origin: std::net::SocketAddr, settings: Settings) -> Floodgate {
    let node = Floodgate::start_with(origin, settings).await;
    // Reading the purge stream: every purge sent from now on reaches it (and it drops
    // whatever it would cache before that, so a test fills it only after).
    let _ = until_metric(
        &node,
        "floodgate_purge_bus_following",
        1.0,
        Duration::from_secs(5),
    )
    .await;
    node
}

/// Starts a node and fails the test unless it reaches Redis within 5 s.
async fn start_connected_node(origin: std::net::SocketAddr, settings: Settings) -> Floodgate {
    let node = Floodgate::start_with(origin, settings).await;
    assert!(
        until_metric(
            &node,
            "floodgate_redis_connected",
            1.0,
            Duration::from_secs(5)
        )
        .await
        .is_some(),
        "the node did not reach Redis"
    );
    node
}

/// A GET as visitors send it: every node sees the shop's own Host, so they share keys.
async fn shop(node: &Floodgate, path: &str) -> Got {
    send(client().get(node.url(path)).header("host", "shop.test")).await
}

const APPLIED: &str = "floodgate_purge_bus_applied_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_sent_to_one_node_reaches_every_node() {
    let redis = RedisServer::start().await;
    let origin = tagged_origin().await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(start_node(origin.addr, node_settings(&redis, &[])).await);
    }
    for node in &nodes {
        for n in 1..=2 {
            shop(node, &format!("/p{n}.html")).await;
            assert_eq!(
                shop(node, &format!("/p{n}.html")).await.cache_debug(),
                "HIT"
            );
        }
    }

    let sent = Instant::now();
    let answer = send(purge(&nodes[1], "((^|,)cat_p_1(,|$))")).await;
    assert_eq!(answer.status, 200);
    for (i, node) in nodes.iter().enumerate() {
        if i == 1 {
            continue;
        }
        let took = until_metric(node, APPLIED, 1.0, Duration::from_secs(2))
            .await
            .unwrap_or_else(|| panic!("node {i} never applied the purge:\n{}", node.log()));
        eprintln!(
            "node {i} applied the purge {took:?} after it was sent ({:?} total)",
            sent.elapsed()
        );
    }
    // The page changed with the purge: no node may serve the old one, from its memory or
    // from the shared tier.
    origin.set(
        "/p1.html",
        Page::cacheable("p1 v2").header("x-magento-tags", "cat_p_1,cat_p"),
    );
    let fetched_before = origin.hits("/p1.html");
    for node in &nodes {
        assert_eq!(
            shop(node, "/p1.html").await.text(),
            "p1 v2",
            "purged everywhere"
        );
        assert_eq!(
            shop(node, "/p2.html").await.cache_debug(),
            "HIT",
            "the rest stays"
        );
    }
    assert!(origin.hits("/p1.html") > fetched_before);
    // The sender applied it itself, once: not again from the stream.
    assert_eq!(nodes[1].metric(APPLIED).await, 0.0);
    assert_eq!(
        nodes[1].metric("floodgate_purge_bus_published_total").await,
        1.0
    );
    let ready = get(&nodes[0].admin_url("/readyz")).await;
    assert!(
        ready.text().contains("\"redis_connected\":true"),
        "{}",
        ready.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_trimmed_purges_drops_its_memory_tier() {
    let redis = RedisServer::start().await;
    let origin = tagged_origin().await;
    // The memory tier alone: what is dropped must come from the origin again.
    let settings = node_settings(&redis, &["stream_max_len = 20", "shared_cache = false"]);
    let a = start_node(origin.addr, settings.clone()).await;
    let b = start_node(origin.addr, settings).await;
    shop(&a, "/p1.html").await;
    assert_eq!(shop(&a, "/p1.html").await.cache_debug(), "HIT");
    // A reads one purge, so it has a position in the stream.
    send(purge(&b, "((^|,)unrelated_0(,|$))")).await;
    assert!(until_metric(&a, APPLIED, 1.0, Duration::from_secs(5))
        .await
        .is_some());

    // A is cut off while 500 purges (none of them its pages) go by and are trimmed.
    a.signal("STOP");
    for i in 1..=500 {
        send(purge(&b, &format!("((^|,)unrelated_{i}(,|$))"))).await;
    }
    assert!(until_metric(
        &b,
        "floodgate_purge_bus_published_total",
        501.0,
        Duration::from_secs(10)
    )
    .await
    .is_some());
    a.signal("CONT");

    assert!(
        until_metric(
            &a,
            "floodgate_purge_bus_flushes_total",
            1.0,
            Duration::from_secs(10)
        )
        .await
        .is_some(),
        "{}",
        a.log()
    );
    assert_eq!(
        shop(&a, "/p1.html").await.cache_debug(),
        "MISS",
        "it cannot know what it missed, so nothing old is served"
    );
    // B, which missed nothing, kept its cache.
    assert_eq!(b.metric("floodgate_purge_bus_flushes_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_reaches_redis_late_drops_what_it_cached_before() {
    let mut redis = RedisServer::start().await;
    let origin = tagged_origin().await;
    redis.kill();
    // A starts with Redis down and caches p1: a purge sent by another node meanwhile
    // cannot reach it.
    let a = Floodgate::start_with(origin.addr, node_settings(&redis, &[])).await;
    shop(&a, "/p1.html").await;
    assert_eq!(shop(&a, "/p1.html").await.cache_debug(), "HIT");
    assert_eq!(a.metric_or_zero("floodgate_purge_bus_following").await, 0.0);

    redis.restart().await;
    let b = start_node(origin.addr, node_settings(&redis, &[])).await;
    origin.set(
        "/p1.html",
        Page::cacheable("p1 v2").header("x-magento-tags", "cat_p_1,cat_p"),
    );
    assert_eq!(send(purge(&b, "((^|,)cat_p_1(,|$))")).await.status, 200);

    // Whether A reads the stream before or after that purge, it never serves p1 v1.
    assert!(
        until_metric(
            &a,
            "floodgate_purge_bus_following",
            1.0,
            Duration::from_secs(10)
        )
        .await
        .is_some(),
        "{}",
        a.log()
    );
    assert_eq!(shop(&a, "/p1.html").await.text(), "p1 v2");
    assert_eq!(a.metric("floodgate_purge_bus_flushes_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_requests_never_fail_and_purges_reach_everyone_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let origin = tagged_origin().await;
    let a = Arc::new(start_node(origin.addr, node_settings(&redis, &[])).await);
    let b = Arc::new(start_node(origin.addr, node_settings(&redis, &[])).await);
    shop(&a, "/p1.html").await;
    shop(&a, "/p2.html").await;
    // A's copies are in Redis before B asks: B takes them from there.
    assert!(until_metric(
        &a,
        "floodgate_shared_writes_total",
        2.0,
        Duration::from_secs(5)
    )
    .await
    .is_some());
    shop(&b, "/p1.html").await;
    shop(&b, "/p2.html").await;

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for (w, node) in [a.clone(), b.clone()].into_iter().enumerate() {
        let (stop, failed, done) = (stop.clone(), failed.clone(), done.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let url = if i % 2 == 0 {
                    node.url("/p2.html")
                } else {
                    node.url(&format!("/fresh-{w}-{i}.html"))
                };
                // A success is a 200 whose body arrived whole (reqwest checks the length).
                let whole = match client().get(url).send().await {
                    Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                    _ => false,
                };
                if whole {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }

    redis.kill();
    // Both nodes know Redis is gone (their stream reads broke).
    for node in [&a, &b] {
        assert!(
            until(Duration::from_secs(5), || async {
                node.metric("floodgate_redis_connected").await == 0.0
            })
            .await
        );
    }
    // B takes a purge while Redis is gone: applied at once on B, kept for A.
    let answer = send(purge(&b, "((^|,)cat_p_1(,|$))")).await;
    assert_eq!(answer.status, 200);
    origin.set(
        "/p1.html",
        Page::cacheable("p1 v2").header("x-magento-tags", "cat_p_1,cat_p"),
    );
    assert_eq!(shop(&b, "/p1.html").await.cache_debug(), "MISS");
    assert_eq!(
        shop(&a, "/p1.html").await.cache_debug(),
        "HIT",
        "A cannot know yet"
    );
    assert!(until_metric(
        &b,
        "floodgate_purge_bus_outbox",
        1.0,
        Duration::from_secs(2)
    )
    .await
    .is_some());
    let ready = get(&b.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200, "still serving: degraded, not down");
    assert!(
        ready.text().contains("\"degraded\":true"),
        "{}",
        ready.text()
    );

    redis.restart().await;
    assert!(
        until_metric(&a, APPLIED, 1.0, Duration::from_secs(10))
            .await
            .is_some(),
        "A applied the purge once Redis was back:\n{}",
        a.log()
    );
    // From the origin or from B's fresh copy in the new Redis, never A's old one.
    assert_eq!(shop(&a, "/p1.html").await.text(), "p1 v2");
    // Redis came back without its data (a new epoch): a purge written just before it
    // died may never have reached A, so A dropped its memory rather than guess.
    assert_eq!(a.metric("floodgate_purge_bus_flushes_total").await, 1.0);
    assert_eq!(shop(&a, "/p2.html").await.text(), "p2");
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load");
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no client request failed"
    );
    assert!(done.load(Ordering::Relaxed) > 50);
    assert_eq!(b.metric("floodgate_purge_bus_outbox").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_after_a_purge_does_not_serve_the_purged_page() {
    let redis = RedisServer::start().await;
    let origin = tagged_origin().await;
    let a = start_connected_node(origin.addr, node_settings(&redis, &[])).await;
    let b = start_connected_node(origin.addr, node_settings(&redis, &[])).await;
    assert_eq!(shop(&a, "/p1.html").await.cache_debug(), "MISS");
    // A's copy is in the shared tier: without the purge, the restarted A would hit it.
    assert!(
        until_metric(
            &a,
            "floodgate_shared_writes_total",
            1.0,
            Duration::from_secs(5)
        )
        .await
        .is_some(),
        "A's copy reached Redis"
    );
    let hits_before = origin.hits("/p1.html");
    drop(a); // stopped
    let purged = send(purge(&b, "((^|,)cat_p_1(,|$))")).await;
    assert_eq!(purged.status, 200, "{}", purged.text());
    origin.set(
        "/p1.html",
        Page::cacheable("p1 v2").header("x-magento-tags", "cat_p_1"),
    );
    let a = start_connected_node(origin.addr, node_settings(&redis, &[])).await;
    let got = shop(&a, "/p1.html").await;
    assert_eq!((got.text().as_str(), got.cache_debug()), ("p1 v2", "MISS"));
    assert_eq!(origin.hits("/p1.html"), hits_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_one_node_fetched_is_a_hit_for_another_and_a_new_node_starts_warm() {
    let redis = RedisServer::start().await;
    let origin = tagged_origin().await;
    let a = start_node(origin.addr, node_settings(&redis, &[])).await;
    let b = start_node(origin.addr, node_settings(&redis, &[])).await;
    assert_eq!(shop(&a, "/p1.html").await.cache_debug(), "MISS");
    assert!(until_metric(
        &a,
        "floodgate_shared_writes_total",
        1.0,
        Duration::from_secs(5)
    )
    .await
    .is_some());

    let on_b = shop(&b, "/p1.html").await;
    assert_eq!((on_b.text().as_str(), on_b.cache_debug()), ("p1", "HIT"));
    assert_eq!(origin.hits("/p1.html"), 1, "B did not ask the origin");
    assert_eq!(
        b.metric("floodgate_shared_lookups_total{result=\"hit\"}")
            .await,
        1.0
    );

    let c = start_node(origin.addr, node_settings(&redis, &[])).await;
    assert_eq!(
        shop(&c, "/p1.html").await.cache_debug(),
        "HIT",
        "a new node starts warm"
    );
    assert_eq!(origin.hits("/p1.html"), 1);

    // A purge sent to C removes the shared copy: a fourth node must fetch anew.
    send(purge(&c, "((^|,)cat_p_1(,|$))")).await;
    origin.set(
        "/p1.html",
        Page::cacheable("p1 v2").header("x-magento-tags", "cat_p_1"),
    );
    let d = start_node(origin.addr, node_settings(&redis, &[])).await;
    let on_d = shop(&d, "/p1.html").await;
    assert_eq!(
        (on_d.text().as_str(), on_d.cache_debug()),
        ("p1 v2", "MISS")
    );
    assert!(until_metric(&a, APPLIED, 1.0, Duration::from_secs(5))
        .await
        .is_some());
    assert_eq!(shop(&a, "/p1.html").await.text(), "p1 v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_dead_the_shared_tier_is_a_miss_not_an_error() {
    let mut redis = RedisServer::start().await;
    let origin = tagged_origin().await;
    let a = start_node(origin.addr, node_settings(&redis, &[])).await;
    redis.kill();
    for n in 1..=3 {
        let got = shop(&a, &format!("/p{n}.html")).await;
        assert_eq!((got.status, got.cache_debug()), (200, "MISS"));
        assert_eq!(shop(&a, &format!("/p{n}.html")).await.cache_debug(), "HIT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cross_node_coalescing_a_cold_page_is_fetched_once_for_all_nodes() {
    let redis = RedisServer::start().await;
    let origin = tagged_origin().await;
    origin.set(
        "/slow.html",
        Page::cacheable("slow")
            .header("x-magento-tags", "cat_p_9")
            .delay(Duration::from_millis(600)),
    );
    origin.set(
        "/private.html",
        Page::cacheable("mine")
            .header("cache-control", "private")
            .delay(Duration::from_millis(300)),
    );
    let settings = node_settings(&redis, &["coalesce = true", "coalesce_wait_ms = 3000"]);
    let a = Arc::new(start_node(origin.addr, settings.clone()).await);
    let b = Arc::new(start_node(origin.addr, settings).await);

    let origin = &origin;
    let both = |path: &'static str| {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let before = origin.hits(path);
            let on_a = tokio::spawn(async move { shop(&a, path).await });
            // A has claimed the fetch (it claims before it asks the origin).
            assert!(
                eventually(Duration::from_secs(5), || origin.hits(path) > before).await,
                "A's fetch of {path} did not start"
            );
            let on_b = tokio::spawn(async move { shop(&b, path).await });
            (on_a.await.expect("a"), on_b.await.expect("b"))
        }
    };
    let (on_a, on_b) = both("/slow.html").await;
    assert_eq!((on_a.status, on_a.text().as_str()), (200, "slow"));
    assert_eq!((on_b.status, on_b.text().as_str()), (200, "slow"));
    assert_eq!(origin.hits("/slow.html"), 1, "one fetch for both nodes");
    assert_eq!(b.metric("floodgate_shared_coalesced_total").await, 1.0);

    // A page that is never shared ends the wait when its fetch ends.
    let (on_a, on_b) = both("/private.html").await;
    assert_eq!((on_a.status, on_b.status), (200, 200));
    assert_eq!(origin.hits("/private.html"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_redis_over_tls_as_an_acl_user_and_a_wrong_password_only_degrades() {
    let redis = RedisServer::start_tls().await;
    let origin = tagged_origin().await;
    let ca = redis.ca_file().expect("ca");
    let tls = |password: &str| {
        Settings::default()
            .warm("enabled = false")
            .redis(&format!("url = \"{}\"", redis.tls_url(password)))
            .redis(&format!("tls_ca_file = \"{}\"", ca.display()))
    };
    let a = start_node(origin.addr, tls(common::redis::TLS_PASSWORD)).await;
    let b = start_node(origin.addr, tls(common::redis::TLS_PASSWORD)).await;
    let wrong = start_node(origin.addr, tls("wrong")).await;

    shop(&a, "/p1.html").await;
    assert!(
        until_metric(
            &a,
            "floodgate_shared_writes_total",
            1.0,
            Duration::from_secs(5)
        )
        .await
        .is_some(),
        "{}",
        a.log()
    );
    assert_eq!(
        shop(&b, "/p1.html").await.cache_debug(),
        "HIT",
        "shared over TLS"
    );
    send(purge(&b, "((^|,)cat_p_1(,|$))")).await;
    assert!(until_metric(&a, APPLIED, 1.0, Duration::from_secs(5))
        .await
        .is_some());

    // Refused by Redis: the node serves on its own and says so.
    let got = shop(&wrong, "/p2.html").await;
    assert_eq!((got.status, got.cache_debug()), (200, "MISS"));
    assert_eq!(send(purge(&wrong, "((^|,)cat_p_2(,|$))")).await.status, 200);
    let ready = get(&wrong.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200);
    assert!(
        ready.text().contains("\"degraded\":true"),
        "{}",
        ready.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_purges_and_shared_pages_work_across_slots() {
    let redis = RedisCluster::start().await;
    let origin = tagged_origin().await;
    let settings = Settings::default()
        .warm("enabled = false")
        .redis(&format!("url = \"{}\"", redis.url()))
        .redis("key_prefix = \"shop1:\"");
    let a = start_node(origin.addr, settings.clone()).await;
    let b = start_node(origin.addr, settings).await;
    assert_eq!(
        a.metric("floodgate_redis_connected").await,
        1.0,
        "{}",
        a.log()
    );

    // Three pages and their tags spread over the cluster's slots.
    for n in 1..=3 {
        shop(&a, &format!("/p{n}.html")).await;
    }
    assert!(until_metric(
        &a,
        "floodgate_shared_writes_total",
        3.0,
        Duration::from_secs(5)
    )
    .await
    .is_some());
    for n in 1..=3 {
        assert_eq!(shop(&b, &format!("/p{n}.html")).await.cache_debug(), "HIT");
    }
    assert_eq!(origin.total_hits(), 3);

    // `cat_p` is on all three pages: the purge removes shared copies in every slot.
    assert_eq!(send(purge(&b, "((^|,)cat_p(,|$))")).await.status, 200);
    assert!(
        until_metric(&a, APPLIED, 1.0, Duration::from_secs(5))
            .await
            .is_some(),
        "{}",
        a.log()
    );
    let c = start_node(
        origin.addr,
        Settings::default()
            .warm("enabled = false")
            .redis(&format!("url = \"{}\"", redis.url()))
            .redis("key_prefix = \"shop1:\""),
    )
    .await;
    for n in 1..=3 {
        assert_eq!(
            shop(&c, &format!("/p{n}.html")).await.cache_debug(),
            "MISS",
            "no shared copy left"
        );
    }
}

/// A small deterministic generator (no test depends on a seed it cannot repeat).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_purge_is_lost_while_redis_is_killed_and_restarted_five_times() {
    const PAGES: usize = 60;
    const PURGES: usize = 1000;
    let mut redis = RedisServer::start().await;
    let origin = TestOrigin::start().await;
    let page = |i: usize| format!("/f{i}.html");
    let mut version = vec![0u32; PAGES];
    let set = |origin: &TestOrigin, i: usize, v: u32| {
        origin.set(
            &page(i),
            Page::cacheable(format!("f{i} v{v}"))
                .header("x-magento-tags", &format!("cat_p_{i},cat_p")),
        )
    };
    for i in 0..PAGES {
        set(&origin, i, 0);
    }
    // A small outbox, so a node that takes many purges while Redis is away overflows
    // it and falls back to a flush of everything.
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(start_node(origin.addr, node_settings(&redis, &["outbox_size = 25"])).await);
    }
    for node in &nodes {
        for i in 0..PAGES {
            shop(node, &page(i)).await;
        }
    }
    let mut rng = Lcg(7);
    let kills = [100, 300, 500, 650, 850];
    for n in 0..PURGES {
        if kills.contains(&n) {
            redis.kill();
        }
        if kills.iter().any(|k| n == k + 60) {
            redis.restart().await;
        }
        let i = rng.below(PAGES);
        version[i] += 1;
        set(&origin, i, version[i]);
        let node = &nodes[rng.below(nodes.len())];
        let answer = send(purge(node, &format!("((^|,)cat_p_{i}(,|$))"))).await;
        assert_eq!(answer.status, 200, "purge {n}");
        // Visitors keep every node's cache busy meanwhile.
        for _ in 0..2 {
            let got = shop(&nodes[rng.below(nodes.len())], &page(rng.below(PAGES))).await;
            assert_eq!(got.status, 200);
        }
    }
    // Redis is up again (the last kill was followed by a restart). Every node must come
    // to serve every page's newest version: a node still serving an older one after its
    // outboxes drained and its consumers caught up lost a purge.
    for node in &nodes {
        assert!(
            until_metric(
                node,
                "floodgate_redis_connected",
                1.0,
                Duration::from_secs(10)
            )
            .await
            .is_some(),
            "a node never reconnected to Redis on its own:\n{}",
            node.log()
        );
    }
    let stale = std::sync::Mutex::new(Vec::new());
    until(Duration::from_secs(15), || async {
        let mut found = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            if node.metric("floodgate_purge_bus_outbox").await > 0.0 {
                found.push(format!("node {n}: outbox not empty"));
                continue;
            }
            for (i, v) in version.iter().enumerate() {
                let got = shop(node, &page(i)).await;
                let want = format!("f{i} v{v}");
                if got.text() != want {
                    found.push(format!(
                        "node {n} {}: {} (want {want})",
                        page(i),
                        got.text()
                    ));
                }
            }
        }
        let converged = found.is_empty();
        *stale.lock().expect("stale") = found;
        converged
    })
    .await;
    let stale = stale.into_inner().expect("stale");
    assert!(
        stale.is_empty(),
        "purged pages still served ({} lost):\n{}",
        stale.len(),
        stale.join("\n")
    );
}
