//! The disk tier against the real binary and real files: a restart (graceful, crash,
//! upgrade) comes back warm; a purge answered is never undone by a crash; a crash in the
//! middle of fills or a damaged file never serves a partial or foreign page; a disk that
//! cannot be used leaves a proxy that serves and purges from memory.

use crate::common;

use std::time::Duration;

use common::*;

struct DiskDir(std::path::PathBuf);

impl DiskDir {
    fn new() -> Self {
        Self(temp_dir("disk"))
    }
    fn file(&self) -> std::path::PathBuf {
        self.0.join("cache.redb")
    }
}

impl Drop for DiskDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn with_disk(dir: &DiskDir) -> Settings {
    Settings::default()
        .cache(&format!("disk_dir = \"{}\"", dir.0.display()))
        .cache("disk_bytes = 67108864")
        .warm("enabled = false")
}

async fn until_on_disk(fg: &Floodgate, objects: f64) {
    assert!(
        until_metric(
            fg,
            "floodgate_disk_objects",
            objects,
            Duration::from_secs(20)
        )
        .await
        .is_some(),
        "{objects} objects never reached the disk: {}",
        fg.metric_or_zero("floodgate_disk_objects").await
    );
}

/// Waits for the objects written to disk so far to be durable (a sync that covers them;
/// one may have come already, between the writes and this call).
async fn until_durable(fg: &Floodgate) {
    let written = fg.metric_or_zero("floodgate_disk_writes_total").await;
    assert!(
        until_metric(
            fg,
            "floodgate_disk_durable_writes",
            written,
            Duration::from_secs(20)
        )
        .await
        .is_some(),
        "no durable commit came"
    );
}

async fn until_open(fg: &Floodgate) {
    assert!(
        until_metric(fg, "floodgate_disk_open", 1.0, Duration::from_secs(40))
            .await
            .is_some(),
        "the disk tier did not open:\n{}",
        fg.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_comes_back_warm_without_asking_the_origin() {
    let origin = TestOrigin::start().await;
    let dir = DiskDir::new();
    let mut fg = Floodgate::start_with(origin.addr, with_disk(&dir)).await;
    until_open(&fg).await;
    let pages: Vec<String> = (0..20).map(|i| format!("/p-{i}.html")).collect();
    for page in &pages {
        assert_eq!(get(&fg.url(page)).await.cache_debug(), "MISS");
    }
    until_on_disk(&fg, 20.0).await;

    // As `systemctl restart` does it: SIGTERM, a graceful exit, a new process.
    fg.restart(false).await;
    until_open(&fg).await;
    assert_eq!(fg.metric("floodgate_disk_recovered_objects").await, 20.0);
    for page in &pages {
        let got = get(&fg.url(page)).await;
        assert_eq!((page.as_str(), got.cache_debug()), (page.as_str(), "HIT"));
        assert!(got.text().contains(page.as_str()), "{page}: {}", got.text());
    }
    assert_eq!(origin.total_hits(), 20, "no page was fetched twice");
    assert_eq!(
        fg.metric("floodgate_disk_lookups_total{result=\"hit\"}")
            .await,
        20.0
    );
    // Read twice from disk, a page goes back to memory: the third visit reads nothing.
    get(&fg.url("/p-0.html")).await;
    let disk_hits = "floodgate_disk_lookups_total{result=\"hit\"}";
    assert_eq!(fg.metric(disk_hits).await, 21.0);
    get(&fg.url("/p-0.html")).await;
    assert_eq!(fg.metric(disk_hits).await, 21.0);
}

/// An ESI page is kept as one stream that is both its body and its template's text; on
/// disk it is that body, and after a restart it is assembled again from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_esi_page_comes_back_from_disk_and_is_assembled() {
    let origin = TestOrigin::start().await;
    let filler = "<p>tile</p>".repeat(300);
    origin.set(
        "/esi.html",
        Page::cacheable(format!(
            "<html>{filler}<esi:include src=\"/menu\"/>{filler}</html>"
        )),
    );
    origin.set("/menu", Page::cacheable("[menu]"));
    let expected = format!("<html>{filler}[menu]{filler}</html>");
    let dir = DiskDir::new();
    let mut fg = Floodgate::start_with(origin.addr, with_disk(&dir)).await;
    until_open(&fg).await;
    assert_eq!(get(&fg.url("/esi.html")).await.text(), expected);
    until_on_disk(&fg, 2.0).await;
    fg.restart(false).await;
    until_open(&fg).await;
    for _ in 0..3 {
        let got = get(&fg.url("/esi.html")).await;
        assert_eq!((got.cache_debug(), got.text()), ("HIT", expected.clone()));
    }
    assert_eq!(origin.hits("/esi.html"), 1, "the page came from disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_answered_is_never_undone_by_a_crash() {
    let origin = TestOrigin::start().await;
    let dir = DiskDir::new();
    let mut fg = Floodgate::start_with(origin.addr, with_disk(&dir)).await;
    until_open(&fg).await;
    for i in 0..30 {
        get(&fg.url(&format!("/p-{i}.html"))).await;
    }
    until_on_disk(&fg, 30.0).await;
    until_durable(&fg).await;

    // Magento's shape, a regular expression, and a soft purge; each answered 200, then
    // the process is killed with no chance to write anything more.
    let named = send(purge_request(&fg, &tags_pattern(&["cat_p_1", "cat_p_2"]))).await;
    assert_eq!(named.status, 200, "{}", named.text());
    let pattern = send(purge_request(&fg, "^cat_p_1[0-9]$")).await;
    assert_eq!(pattern.status, 200, "{}", pattern.text());
    let soft =
        send(purge_request(&fg, &tags_pattern(&["cat_p_3"])).header("x-floodgate-purge", "soft"))
            .await;
    assert_eq!(soft.status, 200, "{}", soft.text());
    fg.restart(true).await;
    until_open(&fg).await;

    for i in 0..30 {
        let page = format!("/p-{i}.html");
        let got = get(&fg.url(&page)).await;
        let purged = i == 1 || i == 2 || (10..20).contains(&i);
        if purged {
            assert_eq!(
                got.cache_debug(),
                "MISS",
                "{page} was purged before the crash"
            );
            assert_eq!(origin.hits(&page), 2, "{page}");
        } else if i == 3 {
            // Soft: still there to serve, but expired, so the origin is asked again.
            assert!(
                eventually(Duration::from_secs(5), || origin.hits(&page) == 2).await,
                "the soft-purged page was not refreshed"
            );
        } else {
            assert_eq!(got.cache_debug(), "HIT", "{page} was not purged");
            assert_eq!(origin.hits(&page), 1, "{page}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_fills_serves_nothing_partial() {
    let origin = TestOrigin::start().await;
    // Large, distinct bodies: a record cut anywhere would show.
    let body = |i: usize| format!("<html>{}</html>", format!("{i:04}-").repeat(50_000));
    for i in 0..40 {
        origin.set(
            &format!("/big-{i}.html"),
            Page::cacheable(body(i)).header("x-magento-tags", &format!("big_{i}")),
        );
    }
    let dir = DiskDir::new();
    let mut fg = Floodgate::start_with(origin.addr, with_disk(&dir)).await;
    until_open(&fg).await;
    // Half on disk and durable before the crash...
    for i in 0..20 {
        get(&fg.url(&format!("/big-{i}.html"))).await;
    }
    until_on_disk(&fg, 20.0).await;
    until_durable(&fg).await;
    // ...half being written when it comes.
    let mut fills = Vec::new();
    for i in 20..40 {
        let url = fg.url(&format!("/big-{i}.html"));
        // Cut off by the crash: errors are expected here, and not the point.
        fills.push(tokio::spawn(async move {
            client().get(&url).send().await.is_ok()
        }));
    }
    assert!(until_metric(
        &fg,
        "floodgate_disk_writes_total",
        23.0,
        Duration::from_secs(20)
    )
    .await
    .is_some());
    fg.restart(true).await;
    for fill in fills {
        let _ = fill.await;
    }
    until_open(&fg).await;
    let mut hits = 0;
    for i in 0..40 {
        let got = get(&fg.url(&format!("/big-{i}.html"))).await;
        assert_eq!(got.status, 200);
        assert!(got.text() == body(i), "/big-{i}.html came back different");
        if i < 20 {
            assert_eq!(got.cache_debug(), "HIT", "/big-{i}.html was durable");
        }
        hits += usize::from(got.cache_debug() == "HIT");
    }
    assert_eq!(fg.metric_or_zero("floodgate_disk_corrupt_total").await, 0.0);
    eprintln!("{hits} of 40 pages came back from disk after the crash (20 were durable)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_file_is_never_served_and_the_proxy_serves_on() {
    let origin = TestOrigin::start().await;
    let dir = DiskDir::new();
    let mut fg = Floodgate::start_with(origin.addr, with_disk(&dir)).await;
    until_open(&fg).await;
    for i in 0..10 {
        get(&fg.url(&format!("/p-{i}.html"))).await;
    }
    until_on_disk(&fg, 10.0).await;
    until_durable(&fg).await;

    // Every 4 KiB page of the file gets garbage in its middle while nothing has it open.
    fg.signal("KILL");
    assert!(eventually(Duration::from_secs(10), || fg.has_exited()).await);
    let mut bytes = std::fs::read(dir.file()).expect("the file");
    let mut at = 2048;
    while at + 16 < bytes.len() {
        bytes[at..at + 16].copy_from_slice(b"garbage-garbage!");
        at += 4096;
    }
    std::fs::write(dir.file(), bytes).expect("damage the file");
    fg.restart(true).await;
    until_open(&fg).await;
    for i in 0..10 {
        let page = format!("/p-{i}.html");
        let got = get(&fg.url(&page)).await;
        assert_eq!(got.status, 200, "{page}");
        assert!(got.text().contains(page.as_str()), "{page}: {}", got.text());
    }
    assert!(!fg.has_exited(), "the proxy is still up");
    eprintln!(
        "damaged file: {} errors on open, {} corrupt records, {} disk hits",
        fg.metric_or_zero("floodgate_disk_errors_total{operation=\"open\"}")
            .await,
        fg.metric_or_zero("floodgate_disk_corrupt_total").await,
        fg.metric_or_zero("floodgate_disk_lookups_total{result=\"hit\"}")
            .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_hands_the_disk_over_warm() {
    let origin = TestOrigin::start().await;
    let dir = DiskDir::new();
    let fg = Floodgate::start_with(origin.addr, with_disk(&dir)).await;
    until_open(&fg).await;
    for i in 0..10 {
        get(&fg.url(&format!("/p-{i}.html"))).await;
    }
    until_on_disk(&fg, 10.0).await;

    let _new = fg.spawn_upgrade();
    let socket = fg.upgrade_socket();
    assert!(eventually(Duration::from_secs(10), || socket.exists()).await);
    fg.signal("QUIT");
    // The old process lets go of the file at once; the new one (which now holds the
    // admin listener) opens it and finds the ten pages.
    assert!(
        until_metric(
            &fg,
            "floodgate_disk_recovered_objects",
            10.0,
            Duration::from_secs(40)
        )
        .await
        .is_some(),
        "the new process did not open the disk:\n{}",
        fg.log()
    );
    for i in 0..10 {
        let page = format!("/p-{i}.html");
        assert_eq!(get(&fg.url(&page)).await.cache_debug(), "HIT", "{page}");
    }
    assert_eq!(origin.total_hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_cannot_be_used_leaves_memory_serving_and_purging() {
    let origin = TestOrigin::start().await;
    let dir = DiskDir::new();
    // A directory under a regular file cannot be created, even by root.
    let blocker = dir.0.join("a-file");
    std::fs::write(&blocker, "not a directory").expect("file");
    let settings = Settings::default()
        .cache(&format!(
            "disk_dir = \"{}\"",
            blocker.join("disk").display()
        ))
        .warm("enabled = false");
    let fg = Floodgate::start_with(origin.addr, settings).await;
    assert!(
        until(Duration::from_secs(20), || async {
            fg.metric_or_zero("floodgate_disk_errors_total{operation=\"open\"}")
                .await
                >= 1.0
        })
        .await
    );
    assert_eq!(fg.metric("floodgate_disk_open").await, 0.0);
    assert_eq!(get(&fg.url("/p-1.html")).await.cache_debug(), "MISS");
    assert_eq!(get(&fg.url("/p-1.html")).await.cache_debug(), "HIT");
    let purged = send(purge_request(&fg, &tags_pattern(&["cat_p_1"]))).await;
    assert_eq!(purged.status, 200, "{}", purged.text());
    assert_eq!(get(&fg.url("/p-1.html")).await.cache_debug(), "MISS");
    assert!(
        fg.log().contains("disk tier"),
        "the log says why:\n{}",
        fg.log()
    );
}

/// A small filesystem of its own for the disk tier, unmounted when dropped.
struct SmallDisk(DiskDir);

impl SmallDisk {
    /// `None` where mounting is not allowed (not root): said, then the test stops.
    fn mount(mib: u32) -> Option<Self> {
        let dir = DiskDir::new();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir.0)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
            return None;
        }
        Some(Self(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.0 .0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_not_visitors_and_loses_no_purge() {
    let Some(disk) = SmallDisk::mount(24) else {
        return;
    };
    let origin = TestOrigin::start().await;
    // Incompressible bodies, so 24 MiB fills up after a few dozen pages.
    // Version 1 before the purge, version 2 after: a purged copy is a version 1 body.
    let body = |i: usize, version: u64| {
        let mut x = i as u64 + 1 + (version << 32);
        let bytes: String = (0..600_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'!' + (x % 90) as u8)
            })
            .collect();
        format!("<html>{bytes}</html>")
    };
    for i in 0..60 {
        origin.set(
            &format!("/big-{i}.html"),
            Page::cacheable(body(i, 1)).header("x-magento-tags", &format!("big,big_{i}")),
        );
    }
    // A budget larger than the filesystem: the disk fills before eviction starts.
    let settings = Settings::default()
        .cache(&format!("disk_dir = \"{}\"", disk.0 .0.display()))
        .cache("disk_bytes = 1073741824")
        .cache("store_gzip = false")
        .warm("enabled = false");
    let mut fg = Floodgate::start_with(origin.addr, settings).await;
    until_open(&fg).await;
    for i in 0..60 {
        let got = get(&fg.url(&format!("/big-{i}.html"))).await;
        assert_eq!(got.status, 200, "visitors are served while the disk fills");
    }
    assert!(
        until(Duration::from_secs(20), || async {
            fg.metric_or_zero("floodgate_disk_errors_total{operation=\"write\"}")
                .await
                >= 1.0
        })
        .await,
        "the disk filled up: {} objects written",
        fg.metric_or_zero("floodgate_disk_objects").await
    );
    // A purge on a full disk: answered 200 only if it is on disk; either way, no
    // purged page comes back, now or after a crash.
    let purge = send(purge_request(&fg, &tags_pattern(&["big"]))).await;
    assert!(
        purge.status == 200 || purge.status >= 500,
        "{}: {}",
        purge.status,
        purge.text()
    );
    // The shop changed what the purge was for; visitors fetch the new pages (and the
    // tier, with the space the purge freed, may store some of them).
    for i in 0..60 {
        origin.set(
            &format!("/big-{i}.html"),
            Page::cacheable(body(i, 2)).header("x-magento-tags", &format!("big,big_{i}")),
        );
    }
    for i in 0..60 {
        let got = get(&fg.url(&format!("/big-{i}.html"))).await;
        assert!(
            got.text() == body(i, 2),
            "/big-{i}.html: a purged copy was served"
        );
    }
    fg.restart(true).await;
    until(Duration::from_secs(20), || async {
        fg.metric_or_zero("floodgate_disk_open").await == 1.0
            || fg
                .metric_or_zero("floodgate_disk_errors_total{operation=\"open\"}")
                .await
                >= 1.0
    })
    .await;
    for i in 0..60 {
        let got = get(&fg.url(&format!("/big-{i}.html"))).await;
        assert_eq!(got.status, 200);
        assert!(
            got.text() == body(i, 2),
            "/big-{i}.html: a copy purged before the crash came back ({})",
            got.cache_debug()
        );
    }
}

/// PURGE as Magento sends it, with the headers given.
fn purge_with(fg: &Floodgate, headers: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let mut request = client().request(
        reqwest::Method::from_bytes(b"PURGE").expect("method"),
        fg.url("/"),
    );
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_all_tagged_and_everything_purges_reach_pages_only_on_disk() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/pooled.html",
        Page::cacheable("pooled")
            .header("x-magento-tags", "cat_p_1")
            .header("x-pool", "pool-a"),
    );
    let untagged = "/echo/untagged.html?bare";
    let dir = DiskDir::new();
    let mut fg = Floodgate::start_with(origin.addr, with_disk(&dir)).await;
    until_open(&fg).await;
    for page in ["/pooled.html", "/p-2.html", untagged] {
        assert_eq!(get(&fg.url(page)).await.cache_debug(), "MISS", "{page}");
    }
    until_on_disk(&fg, 3.0).await;
    until_durable(&fg).await;
    // Memory is empty after a crash: the purges below can only find the pages on disk.
    fg.restart(true).await;
    until_open(&fg).await;
    let pool = send(purge_with(&fg, &[("x-pool", "^pool-a$")])).await;
    assert_eq!(pool.status, 200, "{}", pool.text());
    let all = send(purge_with(&fg, &[("x-magento-tags-pattern", ".*")])).await;
    assert_eq!(all.status, 200, "{}", all.text());
    fg.restart(true).await;
    until_open(&fg).await;
    assert_eq!(get(&fg.url("/pooled.html")).await.cache_debug(), "MISS");
    assert_eq!(get(&fg.url("/p-2.html")).await.cache_debug(), "MISS");
    // Magento's `.*` keeps untagged objects, on disk as in memory.
    assert_eq!(get(&fg.url(untagged)).await.cache_debug(), "HIT");

    // The emergency flush takes them too, on disk before it is answered.
    let everything = send(
        client()
            .post(fg.admin_url("/purge"))
            .header("content-type", "application/json")
            .body(r#"{"everything": true}"#),
    )
    .await;
    assert_eq!(everything.status, 200, "{}", everything.text());
    assert_eq!(fg.metric("floodgate_disk_objects").await, 0.0);
    fg.restart(true).await;
    until_open(&fg).await;
    assert_eq!(get(&fg.url(untagged)).await.cache_debug(), "MISS");
    assert_eq!(origin.hits(untagged), 2);
}

// A node with a disk tier on a purge bus, stopped while 100 purges go by on the other
// node, then started: it replays the purges it missed from the stream, keeps its other
// disk pages (hits, no origin request) and serves none of the purged ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_from_downtime_replays_the_purges_it_missed_and_keeps_the_rest() {
    let redis = RedisServer::start().await;
    let origin = TestOrigin::start().await;
    let dir = DiskDir::new();
    let on_bus = |settings: Settings| {
        settings
            .redis(&format!("url = \"{}\"", redis.url()))
            .redis("key_prefix = \"catch-up:\"")
            .redis("shared_cache = false")
    };
    const PAGES: usize = 200;
    let version = |i: usize, v: u32| {
        Page::cacheable(format!("page {i} v{v}")).header("x-magento-tags", &format!("cat_p_{i}"))
    };
    for i in 0..PAGES {
        origin.set(&format!("/c-{i}.html"), version(i, 1));
    }
    let mut a = Floodgate::start_with(origin.addr, on_bus(with_disk(&dir))).await;
    let b = Floodgate::start_with(
        origin.addr,
        on_bus(Settings::default().warm("enabled = false")),
    )
    .await;
    for node in [&a, &b] {
        assert!(until_metric(
            node,
            "floodgate_purge_bus_following",
            1.0,
            Duration::from_secs(10)
        )
        .await
        .is_some());
    }
    until_open(&a).await;
    for i in 0..PAGES {
        assert_eq!(
            get(&a.url(&format!("/c-{i}.html"))).await.text(),
            format!("page {i} v1")
        );
    }
    until_on_disk(&a, PAGES as f64).await;
    until_durable(&a).await;
    a.stop(false).await;

    // While A is down: 100 of its pages change and are purged, through B.
    for i in 0..100 {
        origin.set(&format!("/c-{i}.html"), version(i, 2));
        let answer = send(purge_request(&b, &tags_pattern(&[&format!("cat_p_{i}")]))).await;
        assert_eq!(answer.status, 200);
    }
    a.start_again().await;
    assert!(
        until_metric(
            &a,
            "floodgate_purge_bus_following",
            1.0,
            Duration::from_secs(20)
        )
        .await
        .is_some(),
        "{}",
        a.log()
    );
    assert_eq!(
        a.metric_or_zero("floodgate_purge_bus_flushes_total").await,
        0.0,
        "the disk tier was dropped instead of caught up:\n{}",
        a.log()
    );
    let before = origin.total_hits();
    for i in 100..PAGES {
        let got = get(&a.url(&format!("/c-{i}.html"))).await;
        assert_eq!(got.text(), format!("page {i} v1"));
    }
    assert_eq!(
        origin.total_hits(),
        before,
        "the unpurged pages came from the disk"
    );
    for i in 0..100 {
        let got = get(&a.url(&format!("/c-{i}.html"))).await;
        assert_eq!(
            got.text(),
            format!("page {i} v2"),
            "a purged page served from the disk"
        );
    }
    assert_eq!(origin.total_hits(), before + 100);
}
