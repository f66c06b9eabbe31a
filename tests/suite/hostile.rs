//! Floodgate at the front door, tried as an attacker would, against the real binary with
//! the default configuration (only timings and pool sizes shrunk where a test would
//! otherwise wait): each attack is made, and each must fail.
//!
//! The harness's clients connect from 127.0.0.1, which is a trusted proxy by default, so
//! a test poses as a visitor by naming it in `X-Forwarded-For`, as a TLS terminator on
//! the same host would; the PROXY protocol listener shows an untrusted peer.

use crate::common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VISITOR: &str = "198.51.100.7";

/// Runs the `floodgate` command line, as an operator would.
fn floodgate_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(args)
        .output()
        .expect("run the CLI")
}

fn purge_req(fg: &Floodgate) -> reqwest::RequestBuilder {
    purge_request(fg, ".*")
}

// 1. Error pages the origin gives one client are never stored for everyone.
#[tokio::test]
async fn an_error_one_client_provokes_is_not_cached_for_the_next() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    // A header nginx rejects: its 400 comes back with no cache headers.
    let huge = "x".repeat(5000);
    let bad = send(client().get(fg.url("/echo/a.html")).header("x-junk", &huge)).await;
    assert_eq!(bad.status, 400);
    let next = get(&fg.url("/echo/a.html")).await;
    assert_eq!(
        next.status, 200,
        "the next visitor gets the page, not the 400"
    );
    assert_eq!(origin.hits("/echo/a.html"), 2);
    // Even an error that claims to be cacheable for a day is not stored.
    for status in [400, 401, 405, 429] {
        let url = format!("/echo/s{status}.html?status={status}");
        for _ in 0..2 {
            assert_eq!(get(&fg.url(&url)).await.status, status);
        }
        assert_eq!(origin.hits(&url), 2, "{status} was served from the cache");
    }
}

// 2. Slow clients cannot hold the origin's slots.
#[tokio::test]
async fn trickled_bodies_hold_no_origin_slot_and_time_out() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start_with(
        origin.addr,
        Settings::default()
            .limits("max_inflight = 2")
            .limits("request_body_timeout_secs = 3"),
    )
    .await;
    // Two (then four) connections send a POST's headers and one byte of its body.
    let mut tricklers = Vec::new();
    for i in 0..4 {
        let mut conn = TcpStream::connect(fg.addr).await.expect("connect");
        let head = format!(
            "POST /echo/cart{i} HTTP/1.1\r\nHost: shop\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10\r\n\r\na"
        );
        conn.write_all(head.as_bytes()).await.expect("write");
        tricklers.push(conn);
    }
    // Every uncached page still comes straight from the origin.
    for i in 0..5 {
        let got = get(&fg.url(&format!("/echo/page{i}.html"))).await;
        assert_eq!(got.status, 200, "page {i} while bodies trickle");
    }
    assert_eq!(origin.hits("/echo/cart0"), 0, "no POST reached the origin");
    // A body that never completes gets 408 within the deadline, and is never forwarded.
    let mut conn = tricklers.remove(0);
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(origin.hits("/echo/cart0"), 0);
    // A complete body arrives at the origin byte for byte.
    let body = "qty=1&product=42&form_key=abc";
    let got = send(client().post(fg.url("/echo/cart/add")).body(body)).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        origin.last("/echo/cart/add").expect("posted").body,
        body.as_bytes()
    );
}

#[tokio::test]
async fn a_large_body_streamed_slowly_is_cut_at_the_deadline() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start_with(
        origin.addr,
        Settings::default().limits("request_body_timeout_secs = 2"),
    )
    .await;
    let mut conn = TcpStream::connect(fg.addr).await.expect("connect");
    conn.write_all(b"POST /echo/upload HTTP/1.1\r\nHost: shop\r\nContent-Length: 200000\r\n\r\n")
        .await
        .expect("write");
    // A trickle that would take far longer than the deadline.
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    for _ in 0..40 {
        if conn.write_all(&[b'x'; 1000]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(250), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the connection was cut near the 2 s deadline, not left to trickle"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains(" 502 "), "{answer}");
    let seen = origin.last("/echo/upload").map_or(0, |s| s.body.len());
    assert!(
        seen < 200_000,
        "the cut body reached the origin as complete"
    );
    drop(fg);
}

// 2b. One address cannot take the pool.
#[tokio::test]
async fn one_client_holds_at_most_its_share_of_origin_slots() {
    let origin = TestOrigin::start().await;
    origin.set_delay(Duration::from_millis(600));
    let fg = Floodgate::start_with(
        origin.addr,
        Settings::default()
            .limits("max_inflight = 4")
            .limits("max_inflight_per_client = 2")
            .limits("max_wait_ms = 20000"),
    )
    .await;
    let flood: Vec<_> = (0..8)
        .map(|i| {
            let url = fg.url(&format!("/echo/flood{i}"));
            tokio::spawn(async move {
                send(
                    client()
                        .post(url)
                        .header("x-forwarded-for", "203.0.113.66")
                        .body("x"),
                )
                .await
            })
        })
        .collect();
    // Another visitor's page is fetched while the flood queues behind its own cap.
    assert!(
        eventually(Duration::from_secs(5), || origin.max_total_in_flight() >= 2).await,
        "the flood reached the origin"
    );
    let started = std::time::Instant::now();
    let other = send(
        client()
            .get(fg.url("/echo/other.html"))
            .header("x-forwarded-for", VISITOR),
    )
    .await;
    assert_eq!(other.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the other visitor waited behind the flood"
    );
    for task in flood {
        assert_eq!(task.await.expect("flood task").status, 200);
    }
    assert!(
        origin.max_total_in_flight() <= 3,
        "the flooding client held more than its 2 slots (plus the other visitor's one): {}",
        origin.max_total_in_flight()
    );
}

// 3. Private pages are never served to other people.
#[tokio::test]
async fn vary_on_cookie_or_authorization_is_never_shared() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    for (vary, header) in [("Cookie", "cookie"), ("Authorization", "authorization")] {
        let url = fg.url(&format!("/echo/account.html?vary={vary}"));
        let alice = send(client().get(&url).header(header, "session=alice")).await;
        let bob = send(client().get(&url).header(header, "session=bob")).await;
        assert!(alice.text().contains("alice"));
        assert!(
            !bob.text().contains("alice"),
            "Bob got Alice's page: {}",
            bob.text()
        );
        assert!(bob.text().contains("bob"));
    }
}

#[tokio::test]
async fn vary_on_another_header_stores_bounded_variants() {
    let origin = TestOrigin::start().await;
    let fg =
        Floodgate::start_with(origin.addr, Settings::default().cache("max_variants = 2")).await;
    let url = fg.url("/echo/lang.html?vary=Accept-Language");
    let lang = |l: &'static str| {
        let url = url.clone();
        async move { send(client().get(&url).header("accept-language", l)).await }
    };
    // The first answer teaches the page's Vary; from then on each language is its own.
    assert!(lang("de").await.text().contains("accept-language: de"));
    assert!(lang("de").await.text().contains("accept-language: de"));
    let hit = lang("de").await;
    assert_eq!(hit.cache_debug(), "HIT");
    assert!(hit.text().contains("accept-language: de"));
    let fr = lang("fr").await;
    assert!(fr.text().contains("accept-language: fr"), "{}", fr.text());
    assert_eq!(lang("fr").await.cache_debug(), "HIT");
    // A third language is past max_variants: served, never stored.
    for _ in 0..2 {
        let it = lang("it").await;
        assert!(it.text().contains("accept-language: it"));
        assert_ne!(it.cache_debug(), "HIT");
    }
    assert_eq!(lang("de").await.cache_debug(), "HIT");
}

// 4 and 5. Headers outside the key do not reach the origin; the key's own headers reach
// it as the key used them.
#[tokio::test]
async fn unkeyed_headers_are_removed_and_the_offload_header_is_one_value() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let got = send(
        client()
            .get(fg.url("/echo/hygiene.html"))
            .header("x-original-url", "/admin")
            .header("x-rewrite-url", "/admin")
            .header("x-http-method-override", "DELETE")
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "host=evil.example;proto=http")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-proto", "http"),
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = origin.last("/echo/hygiene.html").expect("fetched");
    for name in [
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-forwarded-host",
        "forwarded",
    ] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the origin"
        );
    }
    let proto: Vec<_> = seen.headers.get_all("x-forwarded-proto").iter().collect();
    assert_eq!(
        proto,
        ["https"],
        "the origin sees the one value the key used"
    );
    // And that value is what the stored page is keyed by: an http visitor misses it.
    let http = send(
        client()
            .get(fg.url("/echo/hygiene.html"))
            .header("x-forwarded-proto", "http"),
    )
    .await;
    assert_eq!(http.cache_debug(), "MISS");
    assert!(http.text().contains("x-forwarded-proto: http\n"));
}

// Behind a terminator on the same host: the real client, not 127.0.0.1.
#[tokio::test]
async fn visitors_behind_a_local_terminator_cannot_purge() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    get(&fg.url("/p-1.html")).await;
    let refused = send(purge_req(&fg).header("x-forwarded-for", VISITOR)).await;
    assert_eq!(
        refused.status, 405,
        "a visitor relayed by nginx may not purge"
    );
    assert!(refused.text().contains(VISITOR));
    // Its forged chain is believed only as far as trusted proxies go.
    let forged =
        send(purge_req(&fg).header("x-forwarded-for", format!("127.0.0.1, {VISITOR}"))).await;
    assert_eq!(forged.status, 405);
    assert_eq!(get(&fg.url("/p-1.html")).await.cache_debug(), "HIT");
    // Magento itself, on this host, purges.
    assert_eq!(send(purge_req(&fg)).await.status, 200);
    // The origin hears of the visitor, not of the terminator's claim alone.
    send(
        client()
            .get(fg.url("/echo/xff.html"))
            .header("x-forwarded-for", VISITOR),
    )
    .await;
    let xff = origin.last("/echo/xff.html").expect("fetched");
    assert_eq!(
        xff.headers["x-forwarded-for"],
        format!("{VISITOR}, 127.0.0.1")
    );
}

/// Sends `header` and a GET on one connection to the PROXY listener; the response text.
async fn through_proxy_protocol(addr: std::net::SocketAddr, header: &[u8], extra: &str) -> String {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(header).await.expect("write header");
    let req =
        format!("GET /echo/pp.html HTTP/1.1\r\nHost: shop\r\n{extra}Connection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("write request");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Floodgate with a PROXY protocol listener too; its address once it accepts.
async fn with_proxy_listener(
    origin: &TestOrigin,
    settings: Settings,
) -> (Floodgate, std::net::SocketAddr) {
    let port = common::floodgate::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let fg = Floodgate::start_with(
        origin.addr,
        settings.server(&format!("proxy_protocol_listen = [\"{addr}\"]")),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
            addr
        )
        .is_ok())
        .await,
        "the PROXY listener listens"
    );
    (fg, addr)
}

#[tokio::test]
async fn the_proxy_protocol_names_the_client_and_is_believed_only_from_trusted_peers() {
    let origin = TestOrigin::start().await;
    let (_fg, addr) = with_proxy_listener(&origin, Settings::default()).await;
    // v1: the client is the header's, and its own X-Forwarded-For is not believed.
    let v1 = through_proxy_protocol(
        addr,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 6081\r\n",
        "X-Forwarded-For: 127.0.0.1\r\n",
    )
    .await;
    assert!(v1.starts_with("HTTP/1.1 200"), "{v1}");
    assert_eq!(
        origin.last("/echo/pp.html").expect("fetched").headers["x-forwarded-for"],
        "203.0.113.9"
    );
    // v2, binary.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 192, 0, 2, 44, 127, 0, 0, 1, 0x9c, 0x40, 0x17, 0xc1,
    ]);
    let answer = through_proxy_protocol(addr, &v2, "Cache-Control: no-cache\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Such a client is not 127.0.0.1 to the purge ACL.
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 6081\r\nPURGE / HTTP/1.1\r\nHost: shop\r\nX-Magento-Tags-Pattern: .*\r\nX-Forwarded-For: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 405"));
    // No header, or a malformed one: closed before any HTTP is read.
    for bad in [&b""[..], b"PROXY TCP4 junk\r\n"] {
        let answer = through_proxy_protocol(addr, bad, "").await;
        assert!(answer.is_empty(), "{answer}");
    }
}

#[tokio::test]
async fn a_proxy_protocol_peer_that_is_not_trusted_is_refused() {
    let origin = TestOrigin::start().await;
    let (_fg, addr) = with_proxy_listener(
        &origin,
        Settings::default().server("trusted_proxies = [\"192.0.2.1\"]"),
    )
    .await;
    let answer =
        through_proxy_protocol(addr, b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 6081\r\n", "").await;
    assert!(answer.is_empty(), "{answer}");
    assert_eq!(origin.hits("/echo/pp.html"), 0);
}

// 6. The admin API obeys no web page.
#[tokio::test]
async fn the_admin_api_refuses_what_a_browser_sends_cross_site() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    get(&fg.url("/p-2.html")).await;
    let post = |path: &str| client().post(fg.admin_url(path));
    let cross_site = [
        post("/purge")
            .header("content-type", "text/plain")
            .header("origin", "https://evil.example")
            .body(r#"{"all":true}"#),
        post("/purge")
            .header("content-type", "text/plain")
            .body(r#"{"all":true}"#),
        post("/purge")
            .header("content-type", "application/json")
            .header("sec-fetch-site", "cross-site")
            .body(r#"{"all":true}"#),
        post("/purge")
            .header("content-type", "application/json")
            .header("host", "rebound.evil.example")
            .body(r#"{"all":true}"#),
        post("/maintenance/on").header("content-type", "text/plain"),
    ];
    for req in cross_site {
        let got = send(req).await;
        assert!(
            matches!(got.status, 403 | 415 | 421),
            "{} {}",
            got.status,
            got.text()
        );
    }
    assert_eq!(
        get(&fg.url("/p-2.html")).await.cache_debug(),
        "HIT",
        "nothing was purged"
    );
    assert_eq!(
        get(&fg.url("/p-3.html")).await.status,
        200,
        "maintenance stayed off"
    );
    // Scrapers are not asked for anything.
    assert_eq!(get(&fg.admin_url("/metrics")).await.status, 200);
    assert_eq!(get(&fg.admin_url("/healthz")).await.status, 200);
}

#[tokio::test]
async fn an_admin_token_is_required_when_configured() {
    let origin = TestOrigin::start().await;
    let dir = common::floodgate::temp_dir("token");
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    let fg = Floodgate::start_with(
        origin.addr,
        Settings::default().server(&format!("admin_token_file = \"{}\"", token_file.display())),
    )
    .await;
    let purge = || {
        client()
            .post(fg.admin_url("/purge"))
            .header("content-type", "application/json")
            .body(r#"{"all":true}"#)
    };
    assert_eq!(send(purge()).await.status, 401);
    assert_eq!(
        send(purge().bearer_auth("wrong-token-0123456789"))
            .await
            .status,
        401
    );
    assert_eq!(
        send(purge().bearer_auth("s3cret-token-0123456789"))
            .await
            .status,
        200
    );
    assert_eq!(get(&fg.admin_url("/metrics")).await.status, 200);
    // The insights name the shop's URLs and tags: reads, but not open ones.
    for path in ["/insights", "/"] {
        assert_eq!(get(&fg.admin_url(path)).await.status, 401, "{path}");
        let with = send(
            client()
                .get(fg.admin_url(path))
                .bearer_auth("s3cret-token-0123456789"),
        )
        .await;
        assert_eq!(with.status, 200, "{path}");
    }
    // The CLI sends it from --token-file.
    let token = token_file.display().to_string();
    let cli = floodgate_cli(&[
        "purge",
        "--all",
        "--admin",
        &fg.admin_url(""),
        "--token-file",
        &token,
    ]);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let without = floodgate_cli(&["purge", "--all", "--admin", &fg.admin_url("")]);
    assert!(!without.status.success());
    let _ = std::fs::remove_dir_all(dir);
}

// 7. A page that includes itself costs a bounded amount of work, and one warning.
#[tokio::test]
async fn a_self_including_page_is_bounded_per_view() {
    let origin = TestOrigin::start().await;
    let includes = "<esi:include src=\"/loop.html\"/>".repeat(16);
    origin.set("/loop.html", Page::cacheable(format!("<p>{includes}</p>")));
    let fg = Floodgate::start_with(origin.addr, Settings::default().log("level = \"warn\"")).await;
    let got = get(&fg.url("/loop.html")).await;
    assert_eq!(got.status, 200);
    let first = spliced_or_fetched(&fg).await;
    assert!(
        first <= 64.0,
        "one view spliced or fetched {first} includes"
    );
    let again = get(&fg.url("/loop.html")).await;
    assert_eq!(again.status, 200);
    let second = spliced_or_fetched(&fg).await - first;
    assert!(
        second <= 64.0,
        "one cached view spliced or fetched {second} includes"
    );
    assert!(
        eventually(Duration::from_secs(5), || fg
            .log()
            .matches("left out of one page view")
            .count()
            >= 2)
        .await,
        "one summarised warning per view:\n{}",
        fg.log()
    );
    assert!(
        fg.log().matches("left out of one page view").count() <= 4,
        "a warning per include instead of per view"
    );
    assert!(origin.hits("/loop.html") <= 2);
}

/// ESI includes spliced from the cache or fetched, since start (left-out ones aside).
async fn spliced_or_fetched(fg: &Floodgate) -> f64 {
    fg.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("floodgate_esi_fragments_total{") && !l.contains("failed"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// 8. The small ones.
#[tokio::test]
async fn pool_is_not_delivered_graphql_is_a_path_and_repeated_parameters_keep_their_order() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/pooled.html",
        Page::cacheable("p").header("x-pool", "secret-pool"),
    );
    let fg = Floodgate::start(origin.addr).await;
    assert!(get(&fg.url("/pooled.html"))
        .await
        .header("x-pool")
        .is_none());
    // `/graphql` in the query of a page does not make a bearer visitor pass.
    let page = fg.url("/echo/gq.html?next=/graphql");
    let with_bearer = || send(client().get(&page).header("authorization", "Bearer token"));
    assert_eq!(with_bearer().await.cache_debug(), "MISS");
    assert_eq!(with_bearer().await.cache_debug(), "HIT");
    // PHP takes the last of a repeated parameter: two orders are two pages.
    get(&fg.url("/echo/q?a=2&a=1")).await;
    get(&fg.url("/echo/q?a=1&a=2")).await;
    assert_eq!(origin.hits("/echo/q?a=2&a=1"), 1);
    assert_eq!(origin.hits("/echo/q?a=1&a=2"), 1);
}

// The emergency flush: everything goes, tagged or not.
#[tokio::test]
async fn purge_everything_removes_untagged_objects_too() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let untagged = fg.url("/echo/untagged.html?bare");
    get(&untagged).await;
    assert_eq!(get(&untagged).await.cache_debug(), "HIT");
    // Magento's `.*` keeps untagged objects.
    assert_eq!(send(purge_req(&fg)).await.status, 200);
    assert_eq!(get(&untagged).await.cache_debug(), "HIT");
    let cli = floodgate_cli(&["purge", "--everything", "--admin", &fg.admin_url("")]);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(get(&untagged).await.cache_debug(), "MISS");
    assert_eq!(origin.hits("/echo/untagged.html?bare"), 2);
}

// Found by fuzzing: bytes that are not UTF-8 in the target made two targets one key.
#[tokio::test]
async fn targets_that_are_not_utf8_never_share_a_page() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    let first = raw(
        fg.addr,
        b"GET /echo/u.html?\x91=1 HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
    )
    .await;
    let second = raw(
        fg.addr,
        b"GET /echo/u.html?\x92=1 HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
    )
    .await;
    if first.starts_with("HTTP/1.1 200") {
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
        assert!(
            !second.contains("X-Magento-Cache-Debug: HIT")
                && !second.contains("x-magento-cache-debug: HIT"),
            "{second}"
        );
        assert_eq!(origin.hits("/echo/u.html?%91=1"), 1);
        assert_eq!(origin.hits("/echo/u.html?%92=1"), 1);
    } else {
        assert!(first.starts_with("HTTP/1.1 400"), "{first}");
    }
}
