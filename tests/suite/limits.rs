//! The upstream limiter: PHP-FPM never gets more than `max_inflight` requests, the
//! queue in front is bounded and ordered by class, and what cannot be served in time
//! gets its stale copy or a 503 with Retry-After, never a 502.

use crate::common;

use std::time::Duration;

use common::*;

fn limits(max_inflight: usize) -> Settings {
    Settings::default().limits(&format!("max_inflight = {max_inflight}"))
}

/// Starts `n` GETs of distinct pages `/{prefix}-{i}.html` at once.
fn misses(fg: &Floodgate, prefix: &str, n: usize) -> Vec<tokio::task::JoinHandle<Got>> {
    (0..n)
        .map(|i| {
            let url = fg.url(&format!("/{prefix}-{i}.html"));
            tokio::spawn(async move { get(&url).await })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_never_sees_more_than_its_pool_under_a_burst_of_twenty_times_it() {
    let pool = 4;
    let origin = TestOrigin::start_with_pool(pool).await;
    origin.set_delay(Duration::from_millis(50));
    let fg = Floodgate::start_with(origin.addr, limits(pool).limits("max_wait_ms = 20000")).await;

    // Misses and checkout passes together: every kind of origin request counts.
    let mut tasks = misses(&fg, "burst", 20 * pool - 10);
    for i in 0..10 {
        let url = fg.url(&format!("/checkout/cart/add?i={i}"));
        tasks.push(tokio::spawn(async move {
            send(client().post(url).body("qty=1")).await
        }));
    }
    for task in tasks {
        let got = task.await.expect("request");
        assert_eq!(got.status, 200, "queued, then served: {}", got.text());
    }
    assert_eq!(
        origin.max_total_in_flight(),
        pool as u64,
        "the pool was used fully and never exceeded"
    );
    assert_eq!(origin.total_hits(), 20 * pool as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_slot_goes_to_checkout_then_pages_then_crawlers_then_the_warmer() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/hold.html",
        Page::cacheable("hold").delay(Duration::from_millis(800)),
    );
    origin.set_delay(Duration::from_millis(20));
    let fg = Floodgate::start_with(origin.addr, limits(1).limits("max_wait_ms = 20000")).await;

    let hold = {
        let url = fg.url("/hold.html");
        tokio::spawn(async move { get(&url).await })
    };
    assert!(eventually(Duration::from_secs(5), || origin.started().len() == 1).await);
    // Queued lowest class first, so arrival order is the reverse of the expected order.
    let queue: [(&str, &str, Option<&str>, Option<&str>); 5] = [
        ("GET", "/warm.html", None, Some("1")),
        (
            "GET",
            "/crawled.html",
            Some("Mozilla/5.0 (compatible; bingbot/2.0)"),
            None,
        ),
        ("GET", "/page.html", Some("Mozilla/5.0"), None),
        ("GET", "/customer/account/", Some("Mozilla/5.0"), None),
        (
            "POST",
            "/catalog/product/compare/add/",
            Some("Mozilla/5.0"),
            None,
        ),
    ];
    let mut tasks = Vec::new();
    for (_, path, _, _) in queue {
        origin.set(path, Page::cacheable(path));
    }
    for (queued, (method, path, user_agent, warm)) in queue.into_iter().enumerate() {
        let mut req = client().request(method.parse().expect("method"), fg.url(path));
        if let Some(ua) = user_agent {
            req = req.header("user-agent", ua);
        }
        if let Some(w) = warm {
            req = req.header("x-floodgate-warm", w);
        }
        tasks.push(tokio::spawn(send(req)));
        // Each must be queued before the next arrives.
        let waiting = (queued + 1) as f64;
        assert!(
            until(Duration::from_secs(5), || async {
                fg.metric_sum("floodgate_origin_queued").await == waiting
            })
            .await,
            "{path} was not queued"
        );
    }
    assert_eq!(hold.await.expect("hold").status, 200);
    for task in tasks {
        assert_eq!(task.await.expect("queued").status, 200);
    }
    assert_eq!(
        origin.started(),
        [
            "/hold.html",
            "/customer/account/",
            "/catalog/product/compare/add/",
            "/page.html",
            "/crawled.html",
            "/warm.html",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_deadline_a_page_gets_its_stale_copy_or_a_503_busy_page() {
    let origin = TestOrigin::start().await;
    origin.set("/kept.html", Page::cacheable("kept").ttl(1));
    origin.set(
        "/hold.html",
        Page::cacheable("hold").delay(Duration::from_secs(3)),
    );
    let settings = limits(1)
        .limits("max_wait_ms = 300")
        .cache("grace_secs = 0");
    let fg = Floodgate::start_with(origin.addr, settings).await;
    get(&fg.url("/kept.html")).await;
    fg.until_stored("/kept.html", &["stale_if_error"], Duration::from_secs(10))
        .await;

    let hold = {
        let url = fg.url("/hold.html");
        tokio::spawn(async move { get(&url).await })
    };
    assert!(eventually(Duration::from_secs(5), || origin.hits("/hold.html") == 1).await);

    // Expired past grace, origin full: the stale copy at once, without joining the queue.
    let stale = get(&fg.url("/kept.html")).await;
    assert_eq!((stale.status, stale.text().as_str()), (200, "kept"));
    assert_eq!(stale.header("grace"), Some("unlimited (overloaded)"));
    assert_eq!(origin.hits("/kept.html"), 1);

    // Nothing stored: it waits its 300 ms, then gets the busy page.
    let busy = get(&fg.url("/new.html")).await;
    assert_eq!(busy.status, 503, "never a 502: {}", busy.text());
    assert_eq!(busy.header("retry-after"), Some("5"));
    assert_eq!(busy.header("x-floodgate-shed"), Some("timeout"));
    assert!(busy
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    assert!(busy.text().contains("busy"), "{}", busy.text());
    assert_eq!(origin.hits("/new.html"), 0);

    assert_eq!(hold.await.expect("hold").status, 200);
    assert_eq!(
        fg.metric("floodgate_shed_total{class=\"pages\",reason=\"timeout\"}")
            .await,
        1.0
    );
    assert_eq!(
        fg.metric("floodgate_requests_total{outcome=\"shed\"}")
            .await,
        1.0
    );
    assert_eq!(
        fg.metric("floodgate_requests_total{outcome=\"stale\"}")
            .await,
        1.0
    );
    // The origin is free again: the page is fetched fresh.
    let fresh = get(&fg.url("/kept.html")).await;
    assert_eq!(fresh.cache_debug(), "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_sheds_the_surplus_at_once_with_503() {
    let origin = TestOrigin::start().await;
    origin.set_delay(Duration::from_millis(700));
    let fg = Floodgate::start_with(
        origin.addr,
        limits(1)
            .limits("queue_size = 2")
            .limits("max_wait_ms = 20000"),
    )
    .await;
    // In the order the answers arrive: the surplus is refused before the first of the
    // served pages (700 ms each at the origin) is done, i.e. it did not wait.
    let mut arriving = tokio::task::JoinSet::new();
    for i in 0..10 {
        let url = fg.url(&format!("/surplus-{i}.html"));
        arriving.spawn(async move { get(&url).await });
    }
    let mut results: Vec<Got> = Vec::new();
    while let Some(got) = arriving.join_next().await {
        results.push(got.expect("request"));
    }
    let order: Vec<u16> = results.iter().map(|g| g.status).collect();
    assert_eq!(
        order,
        [503, 503, 503, 503, 503, 503, 503, 200, 200, 200],
        "every shed answer came before the first served page"
    );
    let served = results.iter().filter(|g| g.status == 200).count();
    let shed: Vec<&Got> = results.iter().filter(|g| g.status == 503).collect();
    assert_eq!(served + shed.len(), 10, "only 200 or 503, never 502");
    assert_eq!(served, 3, "one in flight and two queued are served");
    for got in shed {
        assert_eq!(got.header("x-floodgate-shed"), Some("queue_full"));
        assert_eq!(got.header("retry-after"), Some("5"));
    }
    assert_eq!(origin.total_hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_are_served_while_misses_queue_for_the_origin() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start_with(origin.addr, limits(1).limits("max_wait_ms = 20000")).await;
    assert_eq!(get(&fg.url("/hot.html")).await.cache_debug(), "MISS");
    origin.set_delay(Duration::from_millis(300));

    let queued = misses(&fg, "slow", 10);
    assert!(eventually(Duration::from_secs(5), || origin.total_hits() >= 2).await);
    for _ in 0..20 {
        let hit = get(&fg.url("/hot.html")).await;
        assert_eq!((hit.status, hit.cache_debug()), (200, "HIT"));
    }
    assert!(
        origin.total_hits() < 6,
        "the hits did not wait for the queue of slow misses to drain"
    );
    for task in queued {
        assert_eq!(task.await.expect("miss").status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_origin_server_has_its_own_limit() {
    let a = TestOrigin::start().await;
    let b = TestOrigin::start().await;
    for origin in [&a, &b] {
        origin.set_delay(Duration::from_millis(100));
    }
    let fg =
        Floodgate::start_with_origins(&[a.addr, b.addr], limits(2).limits("max_wait_ms = 20000"))
            .await;
    for task in misses(&fg, "spread", 24) {
        assert_eq!(task.await.expect("request").status, 200);
    }
    assert_eq!(a.max_total_in_flight(), 2);
    assert_eq!(b.max_total_in_flight(), 2);
    assert_eq!(a.total_hits() + b.total_hits(), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_mode_shrinks_the_limit_while_the_origin_is_slow_and_grows_it_back() {
    let origin = TestOrigin::start().await;
    origin.set_delay(Duration::from_millis(300));
    let settings = limits(8)
        .limits("adaptive = true")
        .limits("min_inflight = 2")
        .limits("slow_response_ms = 100")
        .limits("max_wait_ms = 30000");
    let fg = Floodgate::start_with(origin.addr, settings).await;
    let sample = format!("floodgate_origin_limit{{origin=\"{}\"}}", origin.addr);

    for task in misses(&fg, "slow", 60) {
        assert_eq!(task.await.expect("request").status, 200);
    }
    let shrunk = fg.metric(&sample).await;
    assert!(shrunk <= 4.0, "the limit fell from 8 to {shrunk}");

    origin.set_delay(Duration::ZERO);
    for round in 0..20 {
        for task in misses(&fg, &format!("fast{round}"), 8) {
            assert_eq!(task.await.expect("request").status, 200);
        }
    }
    let grown = fg.metric(&sample).await;
    assert!(
        grown > shrunk,
        "fast answers grew it back: {shrunk} -> {grown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_mode_serves_stale_pages_and_the_maintenance_page_without_a_restart() {
    let origin = TestOrigin::start().await;
    origin.set("/kept.html", Page::cacheable("kept").ttl(1));
    let fg = Floodgate::start_with(origin.addr, Settings::default().cache("grace_secs = 0")).await;
    get(&fg.url("/kept.html")).await;
    fg.until_stored("/kept.html", &["stale_if_error"], Duration::from_secs(10))
        .await;

    let cli = |state: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_floodgate"))
            .args(["maintenance", state, "--admin", &fg.admin_url("")])
            .output()
            .expect("run floodgate maintenance")
    };
    let on = cli("on");
    assert!(
        on.status.success(),
        "{}",
        String::from_utf8_lossy(&on.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&on.stdout).trim(),
        r#"{"maintenance":true}"#
    );

    let stale = get(&fg.url("/kept.html")).await;
    assert_eq!((stale.status, stale.text().as_str()), (200, "kept"));
    assert_eq!(stale.header("grace"), Some("unlimited (maintenance)"));
    let page = get(&fg.url("/new.html")).await;
    assert_eq!(page.status, 503);
    assert_eq!(page.header("retry-after"), Some("5"));
    assert!(page.text().contains("back soon"), "{}", page.text());
    let checkout = send(client().post(fg.url("/checkout/cart/add"))).await;
    assert_eq!(checkout.status, 503);
    assert_eq!(
        origin.hits("/new.html") + origin.hits("/checkout/cart/add"),
        0
    );
    assert_eq!(fg.metric("floodgate_maintenance").await, 1.0);

    let off = cli("off");
    assert_eq!(
        String::from_utf8_lossy(&off.stdout).trim(),
        r#"{"maintenance":false}"#
    );
    let back = get(&fg.url("/new.html")).await;
    assert_eq!((back.status, back.cache_debug()), (200, "MISS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_busy_page_is_served_with_the_503() {
    let dir = std::env::temp_dir().join(format!("floodgate-busy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let page = dir.join("busy.html");
    std::fs::write(&page, "<h1>Black Friday: back in a moment</h1>").expect("page");
    let origin = TestOrigin::start().await;
    origin.set(
        "/hold.html",
        Page::cacheable("hold").delay(Duration::from_secs(2)),
    );
    let settings = limits(1)
        .limits("max_wait_ms = 200")
        .limits("retry_after_secs = 17")
        .limits(&format!("busy_page = \"{}\"", page.display()));
    let fg = Floodgate::start_with(origin.addr, settings).await;
    let hold = {
        let url = fg.url("/hold.html");
        tokio::spawn(async move { get(&url).await })
    };
    assert!(eventually(Duration::from_secs(5), || origin.hits("/hold.html") == 1).await);
    let busy = get(&fg.url("/other.html")).await;
    assert_eq!(busy.status, 503);
    assert_eq!(busy.header("retry-after"), Some("17"));
    assert_eq!(busy.text(), "<h1>Black Friday: back in a moment</h1>");
    hold.await.expect("hold");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_coalesced_on_a_shed_page_are_not_queued_again_one_by_one() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/hold.html",
        Page::cacheable("hold").delay(Duration::from_secs(6)),
    );
    let fg = Floodgate::start_with(origin.addr, limits(1).limits("max_wait_ms = 1000")).await;
    let hold = {
        let url = fg.url("/hold.html");
        tokio::spawn(async move { get(&url).await })
    };
    assert!(eventually(Duration::from_secs(5), || origin.hits("/hold.html") == 1).await);
    let started = std::time::Instant::now();
    let results = burst(&fg.url("/popular.html"), 20).await;
    let took = started.elapsed();
    assert!(results.iter().all(|g| g.status == 503));
    // They all waited for the one fetch that was shed after 1 s; without sharing its
    // answer they would be let go one fetch at a time, 1 s each.
    assert!(
        took < Duration::from_millis(2500),
        "20 coalesced visitors answered in {took:?}"
    );
    assert_eq!(
        fg.metric("floodgate_shed_total{class=\"pages\",reason=\"timeout\"}")
            .await,
        20.0
    );
    hold.await.expect("hold");
}
