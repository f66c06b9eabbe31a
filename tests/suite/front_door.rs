//! Safe at the front door, round two (issue 38): each attack of the second audit made
//! against the real binary, and each must fail. What the key reads is what Magento
//! receives; HTTP/2 cookie crumbs reach PHP as one line; a visitor's subrequests count
//! against that visitor; a client that stops reading holds a bounded part of a page; a
//! connection that trickles or stays silent is closed at its deadline.
//!
//! The harness's clients connect from 127.0.0.1, a trusted proxy by default: a test poses
//! as a visitor by naming one in `X-Forwarded-For`.

use crate::common;

use std::time::{Duration, Instant};

use common::certs::{h2_connect, https_client, start_tls, tls_connect, TestCa};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VISITOR: &str = "198.51.100.7";
const OTHER: &str = "198.51.100.8";

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// Waits until a raw connection is closed by the server (a read gives 0 or an error);
/// whether it was within `limit`.
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

// 1. A header named in `Connection:` is dropped before Magento sees it; it must not key
//    the page either, or one visitor stores a page under another group's key.
#[tokio::test]
async fn a_header_named_in_connection_never_keys_a_page_magento_did_not_see() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;

    // The attacker claims group B but has its Cookie dropped on the way to Magento.
    let attack = raw(
        fg.addr,
        b"GET /echo/group.html HTTP/1.1\r\nHost: shop.test\r\nCookie: X-Magento-Vary=B\r\nConnection: close, Cookie\r\n\r\n",
    )
    .await;
    assert!(attack.starts_with("HTTP/1.1 200"), "{attack}");
    let seen = origin.last("/echo/group.html").expect("origin asked");
    assert!(
        seen.headers.get("cookie").is_none(),
        "Magento saw no cookie"
    );
    // A real group-B customer gets the page Magento renders for group B.
    let b = send(
        client()
            .get(fg.url("/echo/group.html"))
            .header("host", "shop.test")
            .header("cookie", "X-Magento-Vary=B"),
    )
    .await;
    assert!(
        b.text().contains("cookie: X-Magento-Vary=B"),
        "group B got the page rendered for no group: {}",
        b.text()
    );
    assert_eq!(origin.hits("/echo/group.html"), 2);

    // The same with a header the origin varies on.
    let url = "/echo/lang.html?vary=Accept-Language";
    let fr = send(
        client()
            .get(fg.url(url))
            .header("host", "shop.test")
            .header("accept-language", "fr"),
    )
    .await;
    assert!(fr.text().contains("accept-language: fr"));
    let attack = raw(
        fg.addr,
        format!("GET {url} HTTP/1.1\r\nHost: shop.test\r\nAccept-Language: de\r\nConnection: close, keep-alive, Accept-Language\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(attack.starts_with("HTTP/1.1 200"), "{attack}");
    assert!(
        !attack.contains("accept-language: de"),
        "Magento saw no language"
    );
    let de = send(
        client()
            .get(fg.url(url))
            .header("host", "shop.test")
            .header("accept-language", "de"),
    )
    .await;
    assert!(
        de.text().contains("accept-language: de"),
        "a German visitor got the page rendered for no language: {}",
        de.text()
    );

    // What Pingora would refuse to forward is refused before anything is looked up.
    for connection in ["Host", "X-Forwarded-For", "a,b,c,d,e,f,g,h,i,j"] {
        let refused = raw(
            fg.addr,
            format!("GET /echo/group.html HTTP/1.1\r\nHost: shop.test\r\nConnection: {connection}\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            refused.starts_with("HTTP/1.1 400"),
            "{connection}: {refused}"
        );
    }
}

// 2. HTTP/2 cookie crumbs, and several Cookie lines, reach PHP as one line: behind
//    nginx 1.22 PHP keeps only the last, and the customer lost the session and the cart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_crumbs_and_cookie_lines_reach_php_as_one_line() {
    let ca = TestCa::new();
    let shop = ca.leaf("shop", &["shop.test"]);
    let origin = TestOrigin::start().await;
    origin.keep_last_cookie_line_only();
    let (fg, tls) = start_tls(origin.addr, &[&shop], Settings::default()).await;

    // HTTP/2, as a browser sends it: one crumb per cookie.
    let (mut h2, _conn) = h2_connect(&ca, tls, "shop.test").await;
    let mut req = http::Request::builder()
        .method("GET")
        .uri(format!("https://shop.test:{}/echo/crumbs.html", tls.port()));
    for crumb in ["PHPSESSID=abc", "X-Magento-Vary=B", "form_key=xyz"] {
        req = req.header("cookie", crumb);
    }
    let (response, _) = h2
        .send_request(req.body(()).expect("request"), true)
        .expect("h2 request");
    let response = response.await.expect("h2 response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("cookie: PHPSESSID=abc; X-Magento-Vary=B; form_key=xyz\n"),
        "PHP did not get the whole cookie over HTTP/2: {text}"
    );

    // HTTP/1.1 with two Cookie lines.
    let two = raw(
        fg.addr,
        b"GET /echo/lines.html HTTP/1.1\r\nHost: shop.test\r\nCookie: PHPSESSID=abc\r\nCookie: X-Magento-Vary=B\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        two.contains("cookie: PHPSESSID=abc; X-Magento-Vary=B\n"),
        "PHP did not get both cookie lines: {two}"
    );
    // That page was rendered for group B, and is stored under group B's key.
    let b = send(
        client()
            .get(fg.url("/echo/lines.html"))
            .header("host", "shop.test")
            .header("cookie", "X-Magento-Vary=B"),
    )
    .await;
    assert_eq!(b.cache_debug(), "HIT");
    assert_eq!(origin.hits("/echo/lines.html"), 1);
}

// 3. A HEAD's fill and an ESI page's fragments are the visitor's requests: they take
//    that visitor's share of origin slots, not the whole pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_fills_and_esi_fragments_count_against_their_visitor() {
    let origin = TestOrigin::start().await;
    origin.set_delay(Duration::from_millis(300));
    let fg = Floodgate::start_with(
        origin.addr,
        Settings::default()
            .limits("max_inflight = 32")
            .limits("max_inflight_per_client = 4"),
    )
    .await;

    let heads: Vec<_> = (0..40)
        .map(|i| {
            let url = fg.url(&format!("/head-{i}.html"));
            tokio::spawn(async move {
                send(client().head(url).header("x-forwarded-for", VISITOR)).await
            })
        })
        .collect();
    // Another visitor is served meanwhile.
    assert!(
        eventually(Duration::from_secs(5), || origin.max_total_in_flight() >= 4).await,
        "the HEADs reached the origin"
    );
    let other = send(
        client()
            .get(fg.url("/other.html"))
            .header("x-forwarded-for", OTHER),
    )
    .await;
    assert_eq!(other.status, 200, "another visitor is served");
    let mut answered = 0;
    for head in heads {
        let got = head.await.expect("HEAD task");
        assert!(matches!(got.status, 200 | 503), "{}", got.status);
        answered += usize::from(got.status == 200);
    }
    assert!(answered >= 4, "{answered} HEADs answered");
    assert!(
        origin.max_total_in_flight() <= 5,
        "one visitor's HEADs held {} origin slots (their share is 4, the other visitor 1)",
        origin.max_total_in_flight()
    );

    // One page view with twelve fragments, all misses.
    let includes: String = (0..12)
        .map(|i| format!("<esi:include src=\"/frag-{i}\"/>"))
        .collect();
    origin.set(
        "/esi-page.html",
        Page::cacheable(format!("<html>{includes}</html>")),
    );
    for i in 0..12 {
        origin.set(
            &format!("/frag-{i}"),
            Page::cacheable(format!("<b>{i}</b>")).delay(Duration::from_millis(300)),
        );
    }
    let page = send(
        client()
            .get(fg.url("/esi-page.html"))
            .header("x-forwarded-for", VISITOR),
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("<b>0</b>") && page.text().contains("<b>11</b>"),
        "{}",
        page.text()
    );
    assert!(
        origin.max_total_in_flight() <= 5,
        "one page view held {} origin slots",
        origin.max_total_in_flight()
    );
}

/// A 2 MB catalogue page, as text compresses (about 5:1).
fn big_page() -> String {
    let mut page = String::with_capacity(2 << 20);
    page.push_str("<html><body><ul>\n");
    let mut i: u64 = 0;
    while page.len() < 2 << 20 {
        page.push_str(&format!(
            "<li class=\"product\">product {i} price {}.{:02}</li>\n",
            i * 7919 % 1000,
            i * 31 % 100
        ));
        i += 1;
    }
    page.push_str("</ul></body></html>\n");
    page
}

/// A Floodgate with a TLS listener and the 2 MB page stored (gzipped, as pages are).
async fn with_big_page(
    settings: Settings,
) -> (TestOrigin, Floodgate, TestCa, std::net::SocketAddr, String) {
    let ca = TestCa::new();
    let shop = ca.leaf("shop", &["shop.test"]);
    let origin = TestOrigin::start().await;
    let page = big_page();
    origin.set("/big.html", Page::cacheable(page.clone()));
    let (fg, tls) = start_tls(origin.addr, &[&shop], settings).await;
    let stored = send(
        client()
            .get(fg.url("/big.html"))
            .header("host", "shop.test")
            .header("accept-encoding", "gzip"),
    )
    .await;
    assert_eq!(stored.header("content-encoding"), Some("gzip"));
    assert!(stored.body.len() < page.len() / 2, "stored compressed");
    // The same page over HTTPS is another key (the scheme, the port in the authority).
    let https = https_client(&ca, tls, &["shop.test"]);
    let stored = send(
        https
            .get(format!("https://shop.test:{}/big.html", tls.port()))
            .header("accept-encoding", "gzip"),
    )
    .await;
    assert_eq!(stored.header("content-encoding"), Some("gzip"));
    (origin, fg, ca, tls, page)
}

/// `streams` requests for the big page without gzip, over HTTP/2 connections of 100
/// streams each, whose bodies are never read: each stalls once its window is full.
async fn stalled_h2_readers(
    ca: &TestCa,
    tls: std::net::SocketAddr,
    streams: usize,
) -> Vec<(h2::client::SendRequest<bytes::Bytes>, Vec<h2::RecvStream>)> {
    let mut held = Vec::new();
    for _ in 0..streams.div_ceil(100) {
        let (mut h2, _conn) = h2_connect(ca, tls, "shop.test").await;
        let mut bodies = Vec::new();
        let mut pending = Vec::new();
        for _ in 0..100.min(streams - held.len() * 100) {
            h2 = h2.ready().await.expect("h2 stream slot");
            let req = http::Request::builder()
                .uri(format!("https://shop.test:{}/big.html", tls.port()))
                .body(())
                .expect("request");
            let (response, _) = h2.send_request(req, true).expect("h2 request");
            pending.push(response);
        }
        for response in pending {
            let response = response.await.expect("h2 response header");
            assert_eq!(response.status(), 200);
            assert!(response.headers().get("content-encoding").is_none());
            bodies.push(response.into_body());
        }
        held.push((h2, bodies));
    }
    held
}

// 4. A client that does not take gzip and stops reading holds a bounded part of the
//    page, not the whole inflated page: 1,000 such readers of a 2 MB page once took 1.9 GB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_without_gzip_hold_a_bounded_part_of_a_page() {
    let (origin, fg, ca, tls, page) = with_big_page(Settings::default()).await;
    // A reader that reads gets the whole page, inflated.
    let whole = send(
        client()
            .get(fg.url("/big.html"))
            .header("host", "shop.test"),
    )
    .await;
    assert_eq!(whole.status, 200);
    assert!(whole.header("content-encoding").is_none());
    assert!(
        whole
            .header("vary")
            .is_some_and(|v| v.eq_ignore_ascii_case("accept-encoding")),
        "{:?}",
        whole.header("vary")
    );
    assert!(
        whole.body == page.as_bytes(),
        "the inflated page is the page"
    );
    // Ranges of the stored gzip bytes are never served to a client without gzip.
    let ranged = send(
        client()
            .get(fg.url("/big.html"))
            .header("host", "shop.test")
            .header("range", "bytes=0-99"),
    )
    .await;
    assert_eq!(ranged.status, 200, "the whole page, not 100 gzip bytes");
    assert!(ranged.body == page.as_bytes());

    let before = rss(fg.pid());
    let held = stalled_h2_readers(&ca, tls, 1000).await;
    let share = 64.0 * 1024.0;
    assert!(
        until_metric(
            &fg,
            "floodgate_response_buffer_bytes",
            1000.0 * share,
            Duration::from_secs(30)
        )
        .await
        .is_some(),
        "1,000 inflating responses in flight: {}",
        fg.metric("floodgate_response_buffer_bytes").await
    );
    let h2_added = rss(fg.pid()).saturating_sub(before);
    assert!(
        h2_added < 100 << 20,
        "1,000 stalled HTTP/2 readers added {} MB",
        h2_added >> 20
    );
    drop(held);
    assert!(
        until(Duration::from_secs(30), || async {
            fg.metric("floodgate_response_buffer_bytes").await == 0.0
        })
        .await,
        "the shares are given back when the readers go"
    );

    // HTTP/1: connections that read the response's first bytes, then nothing.
    let before = rss(fg.pid());
    let mut conns = Vec::new();
    for _ in 0..1000 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .set_recv_buffer_size(16 * 1024)
            .expect("small receive buffer");
        let mut conn = socket.connect(fg.addr).await.expect("connect");
        conn.write_all(b"GET /big.html HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            .await
            .expect("write");
        conns.push(conn);
    }
    for conn in &mut conns {
        let mut first = [0u8; 12];
        conn.read_exact(&mut first)
            .await
            .expect("the response starts");
        assert_eq!(&first, b"HTTP/1.1 200");
    }
    // Resident memory while they sit: sampled over two seconds, the most it reached.
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(rss(fg.pid()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h1_added = most.saturating_sub(before);
    assert!(
        h1_added < 100 << 20,
        "1,000 stalled HTTP/1 readers added {} MB",
        h1_added >> 20
    );
    // Other visitors are served meanwhile, from the cache.
    let other = send(
        client()
            .get(fg.url("/big.html"))
            .header("host", "shop.test")
            .header("accept-encoding", "gzip"),
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(
        origin.hits("/big.html"),
        2,
        "once over HTTP, once over HTTPS"
    );
    eprintln!(
        "stalled readers of a 2 MB page: 1,000 HTTP/2 +{} MB, 1,000 HTTP/1 +{} MB",
        h2_added >> 20,
        h1_added >> 20
    );
}

// 4b. The responses in flight together hold at most limits.response_buffer_bytes: past
//     it a client without gzip gets the busy page, never the gzip bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_in_flight_are_held_to_their_budget() {
    let (_origin, fg, ca, tls, _page) =
        with_big_page(Settings::default().limits("response_buffer_bytes = 262144")).await;
    // Four stalled readers take the four shares.
    let held = stalled_h2_readers(&ca, tls, 4).await;
    assert_eq!(fg.metric("floodgate_response_buffer_bytes").await, 262144.0);
    let refused = send(
        client()
            .get(fg.url("/big.html"))
            .header("host", "shop.test"),
    )
    .await;
    assert_eq!(refused.status, 503);
    assert!(refused.header("retry-after").is_some());
    assert_eq!(refused.header("x-floodgate-shed"), Some("response_memory"));
    assert!(refused.header("content-encoding").is_none());
    assert_eq!(
        fg.metric("floodgate_response_buffer_refused_total").await,
        1.0
    );
    assert_eq!(
        fg.metric("floodgate_unavailable_total{reason=\"response_memory\"}")
            .await,
        1.0
    );
    // A client that takes gzip needs no share.
    let gzip = send(
        client()
            .get(fg.url("/big.html"))
            .header("host", "shop.test")
            .header("accept-encoding", "gzip"),
    )
    .await;
    assert_eq!(gzip.status, 200);
    drop(held);
    assert!(
        until(Duration::from_secs(30), || async {
            fg.metric("floodgate_response_buffer_bytes").await == 0.0
        })
        .await
    );
    let again = send(
        client()
            .get(fg.url("/big.html"))
            .header("host", "shop.test"),
    )
    .await;
    assert_eq!(again.status, 200, "the shares came back");
}

/// Reads one response (its header, then a `Content-Length` or chunked body) from a
/// keep-alive connection; its status line.
async fn read_response(conn: &mut TcpStream) -> String {
    async fn line(conn: &mut TcpStream) -> String {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            conn.read_exact(&mut byte).await.expect("response bytes");
            line.push(byte[0]);
        }
        String::from_utf8_lossy(&line).trim_end().to_string()
    }
    let status = line(conn).await;
    let mut length = None;
    let mut chunked = false;
    loop {
        let header = line(conn).await;
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').expect("a header line");
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse::<usize>().ok();
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.trim().eq_ignore_ascii_case("chunked");
        }
    }
    if chunked {
        loop {
            let size = usize::from_str_radix(&line(conn).await, 16).expect("chunk size");
            let mut chunk = vec![0u8; size + 2];
            conn.read_exact(&mut chunk).await.expect("chunk");
            if size == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0u8; length.expect("a length or chunks")];
        conn.read_exact(&mut body).await.expect("response body");
    }
    status
}

// 5. Time limits: a header that trickles in a byte at a time, a connection that says
//    nothing, a TLS client that never sends its ClientHello, an HTTP/2 client silent
//    after ALPN or idle after its preface: each is closed at its deadline, while other
//    visitors are served and a keep-alive connection may idle between its requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_and_silent_connections_are_closed_at_their_deadlines() {
    let ca = TestCa::new();
    let shop = ca.leaf("shop", &["shop.test"]);
    let origin = TestOrigin::start().await;
    let (fg, tls) = start_tls(
        origin.addr,
        &[&shop],
        Settings::default()
            .server("header_timeout_secs = 2")
            .server("handshake_timeout_secs = 2")
            .server("h2_idle_timeout_secs = 2"),
    )
    .await;
    let deadline = Duration::from_secs(2);
    // Closed no earlier than the deadline, and within a second or three after it.
    let slack = Duration::from_secs(3);

    // A keep-alive connection idles longer than the header deadline between requests.
    let mut keep = TcpStream::connect(fg.addr).await.expect("connect");
    keep.write_all(b"GET /a.html HTTP/1.1\r\nHost: shop.test\r\nAccept-Encoding: gzip\r\n\r\n")
        .await
        .expect("write");
    assert!(read_response(&mut keep).await.contains("200"));

    let started = Instant::now();
    let mut tasks = Vec::new();
    // 1,000 HTTP/1 headers trickled a byte every half second (the pace is the attack).
    for i in 0..1000 {
        let addr = fg.addr;
        tasks.push(tokio::spawn(async move {
            let opened = Instant::now();
            let mut conn = TcpStream::connect(addr).await.expect("connect");
            // Some send empty lines first (parsers skip them): the deadline still holds.
            let lead = if i % 10 == 0 { "\r\n\r\n" } else { "" };
            let header = format!(
                "{lead}GET /slow-{i} HTTP/1.1\r\nHost: shop.test\r\nX-Slow: {}",
                "a".repeat(64)
            );
            let mut buf = [0u8; 512];
            for byte in header.as_bytes().iter().cycle() {
                tokio::select! {
                    read = conn.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return opened.elapsed(),
                        Ok(_) => {}
                    },
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if conn.write_all(&[*byte]).await.is_err() {
                            return opened.elapsed();
                        }
                    }
                }
                if opened.elapsed() > Duration::from_secs(30) {
                    break;
                }
            }
            opened.elapsed()
        }));
    }
    // 1,000 HTTP/1 connections that send nothing.
    for _ in 0..1000 {
        let addr = fg.addr;
        tasks.push(tokio::spawn(async move {
            let opened = Instant::now();
            let mut conn = TcpStream::connect(addr).await.expect("connect");
            closed_within(&mut conn, Duration::from_secs(30)).await;
            opened.elapsed()
        }));
    }
    // 200 connections to the TLS port that never send a ClientHello.
    for _ in 0..200 {
        tasks.push(tokio::spawn(async move {
            let opened = Instant::now();
            let mut conn = TcpStream::connect(tls).await.expect("connect");
            closed_within(&mut conn, Duration::from_secs(30)).await;
            opened.elapsed()
        }));
    }
    // 200 TLS connections that choose HTTP/2 and then say nothing.
    for _ in 0..200 {
        tasks.push(tokio::spawn({
            let silent = tls_connect(&ca, tls, "shop.test", &[b"h2"])
                .await
                .expect("TLS h2");
            async move {
                let opened = Instant::now();
                let mut silent = silent;
                let mut buf = [0u8; 1024];
                loop {
                    match tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf)).await
                    {
                        Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return opened.elapsed(),
                        // The server's SETTINGS: it waits for the preface.
                        Ok(Ok(_)) => continue,
                    }
                }
            }
        }));
    }
    // Meanwhile, visitors are served: over HTTP/1 and HTTP/2.
    let visitor = send(
        client()
            .get(fg.url("/served.html"))
            .header("host", "shop.test"),
    )
    .await;
    assert_eq!(visitor.status, 200);
    let (mut h2, idle) = h2_connect(&ca, tls, "shop.test").await;
    let req = http::Request::builder()
        .uri(format!("https://shop.test:{}/served.html", tls.port()))
        .body(())
        .expect("request");
    let (response, _) = h2.send_request(req, true).expect("h2 request");
    assert_eq!(response.await.expect("h2 response").status(), 200);
    let h2_idle_from = Instant::now();

    for task in tasks {
        let lived = task.await.expect("connection task");
        assert!(
            lived >= deadline - Duration::from_millis(200) && lived <= deadline + slack,
            "a connection lived {lived:?}; its deadline was {deadline:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    // The HTTP/2 connection, idle since its request, is closed too.
    tokio::time::timeout(Duration::from_secs(10), idle)
        .await
        .expect("the idle HTTP/2 connection was closed")
        .expect("h2 driver");
    assert!(h2_idle_from.elapsed() >= deadline - Duration::from_millis(200));
    drop(h2);

    assert!(
        fg.metric("floodgate_connections_closed_total{reason=\"header_timeout\"}")
            .await
            >= 2000.0
    );
    assert!(
        fg.metric("floodgate_connections_closed_total{reason=\"handshake_timeout\"}")
            .await
            >= 400.0
    );

    // The keep-alive connection idled past the header deadline: it still serves.
    keep.write_all(b"GET /a.html HTTP/1.1\r\nHost: shop.test\r\nAccept-Encoding: gzip\r\n\r\n")
        .await
        .expect("write after idling");
    assert!(read_response(&mut keep).await.contains("200"));
}

// 6. The HTTPS redirect is built from the request's path only: a target that is not
//    origin-form gets 400, never a Location that leads elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_redirect_is_built_from_the_path_only() {
    let ca = TestCa::new();
    let shop = ca.leaf("shop", &["shop.test"]);
    let origin = TestOrigin::start().await;
    let (fg, tls) = start_tls(
        origin.addr,
        &[&shop],
        Settings::default()
            .server("redirect_http_to_https = true")
            .server("trusted_proxies = []"),
    )
    .await;
    for target in ["@evil.test/x", "*", "http://evil.test/x"] {
        let got = raw(
            fg.addr,
            format!("GET {target} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 400"), "{target}: {got}");
        assert!(
            !got.to_ascii_lowercase().contains("location:"),
            "{target}: {got}"
        );
    }
    let got = raw(
        fg.addr,
        b"GET /p.html?a=1 HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 301"), "{got}");
    assert!(
        got.contains(&format!(
            "location: https://shop.test:{}/p.html?a=1\r\n",
            tls.port()
        )),
        "{got}"
    );
}

// 7. The disk tier keeps its pages to Floodgate's user, and never writes through a
//    symlink planted in its place.
#[tokio::test]
async fn the_disk_tier_is_owner_only_and_refuses_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let origin = TestOrigin::start().await;
    let base = temp_dir("disk-perms");
    let dir = base.join("cache");
    let fg = Floodgate::start_with(
        origin.addr,
        Settings::default().cache(&format!("disk_dir = \"{}\"", dir.display())),
    )
    .await;
    assert!(
        until_metric(&fg, "floodgate_disk_open", 1.0, Duration::from_secs(40))
            .await
            .is_some()
    );
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the directory");
    assert_eq!(mode(&dir.join("cache.redb")), 0o600, "the file");
    drop(fg);

    // A symlink in the file's place, to a file that is not the cache's.
    let planted = temp_dir("disk-symlink");
    let victim = base.join("victim");
    std::fs::write(&victim, b"").expect("victim file");
    std::os::unix::fs::symlink(&victim, planted.join("cache.redb")).expect("symlink");
    let fg = Floodgate::start_with(
        origin.addr,
        Settings::default().cache(&format!("disk_dir = \"{}\"", planted.display())),
    )
    .await;
    assert!(
        until(Duration::from_secs(20), || async {
            fg.metric_or_zero("floodgate_disk_errors_total{operation=\"open\"}")
                .await
                >= 1.0
        })
        .await,
        "the tier refused to open"
    );
    assert!(
        fg.log().contains("symlink"),
        "the log says why:\n{}",
        fg.log()
    );
    assert_eq!(
        get(&fg.url("/p.html")).await.status,
        200,
        "pages are served from memory"
    );
    assert_eq!(
        std::fs::metadata(&victim).expect("victim").len(),
        0,
        "nothing written through"
    );
    let _ = std::fs::remove_dir_all(&base);
    let _ = std::fs::remove_dir_all(&planted);
}

// 8. Pattern purges (trusted purgers, but a broken indexer sends thousands): what they
//    keep is bounded, not one compiled expression each until the next purge.
#[tokio::test]
async fn a_flood_of_pattern_purges_holds_bounded_memory() {
    let origin = TestOrigin::start().await;
    let fg = Floodgate::start(origin.addr).await;
    assert_eq!(get(&fg.url("/p-1.html")).await.status, 200);
    let before = rss(fg.pid());
    let purger = client();
    for i in 0..2000 {
        // A Unicode class repeated: hundreds of KB of program each, under the 1 MiB cap.
        let pattern = format!("^(cat_p_{i}|[\\w-]{{1,8}}_{i})$");
        let got = send(
            purger
                .request(
                    reqwest::Method::from_bytes(b"PURGE").expect("method"),
                    fg.url("/"),
                )
                .header("x-magento-tags-pattern", pattern),
        )
        .await;
        assert_eq!(got.status, 200, "{}", got.text());
    }
    let added = rss(fg.pid()).saturating_sub(before);
    assert!(
        added < 64 << 20,
        "2,000 pattern purges hold {} MB",
        added >> 20
    );
    // And what a pattern selected is still refused if its fetch began before it.
    assert_eq!(get(&fg.url("/p-1.html")).await.status, 200);
}

// 4c. An HTTP/1 client that stops reading is dropped after `server.send_timeout_secs`
//     without a byte taken, and what its response held goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_at_the_send_timeout() {
    let origin = TestOrigin::start().await;
    // Larger than the kernel's socket buffers can take for a reader that stops.
    let mut page = String::with_capacity(9 << 20);
    let mut i: u64 = 0;
    while page.len() < 8 << 20 {
        page.push_str(&format!(
            "<li>item {i} {}</li>\n",
            i * 2_654_435_761 % 1_000_003
        ));
        i += 1;
    }
    origin.set("/huge.html", Page::cacheable(page));
    let fg = Floodgate::start_with(
        origin.addr,
        Settings::default()
            .server("send_timeout_secs = 2")
            .cache("max_object_bytes = 16777216"),
    )
    .await;
    let stored = send(
        client()
            .get(fg.url("/huge.html"))
            .header("accept-encoding", "gzip"),
    )
    .await;
    assert_eq!(stored.status, 200);
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(16 * 1024)
        .expect("small receive buffer");
    let mut conn = socket.connect(fg.addr).await.expect("connect");
    conn.write_all(b"GET /huge.html HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .expect("write");
    let mut first = [0u8; 12];
    conn.read_exact(&mut first)
        .await
        .expect("the response starts");
    assert_eq!(&first, b"HTTP/1.1 200");
    // It reads nothing more: Floodgate's writes stall, and after 2 s it gives up.
    assert!(
        until_metric(
            &fg,
            "floodgate_connections_closed_total{reason=\"send_timeout\"}",
            1.0,
            Duration::from_secs(20)
        )
        .await
        .is_some(),
        "the stalled reader was dropped"
    );
    assert_eq!(fg.metric("floodgate_response_buffer_bytes").await, 0.0);
    // Everybody else is served as before.
    assert_eq!(get(&fg.url("/huge.html")).await.status, 200);
}
