//! docs/magento-cache-protocol.md, section 6: Edge Side Includes, as Magento emits them for the top menu.

use crate::common;

use std::io::Read;
use std::time::Duration;

use common::*;

const MENU: &str =
    "/page_cache/block/esi/blocks/%5B%22catalog.topnav%22%5D/handles/WyJkZWZhdWx0Il0%3D/";

/// A category page as Magento renders it under Varnish: the top menu is an include.
fn page_with_menu(title: &str) -> Page {
    Page::cacheable(format!(
        "<html><body><header><esi:include src=\"http://shop.test{MENU}\" /></header><main>{title}</main></body></html>"
    ))
    .header("x-magento-tags", "cat_p_1,store")
}

fn no_warm() -> Settings {
    Settings::default().warm("enabled = false")
}

async fn page(fg: &Floodgate, url: &str) -> Got {
    send(client().get(fg.url(url)).header("host", "shop.test")).await
}

/// A page as a gzip client gets it, and its text inflated.
async fn gzip_page(fg: &Floodgate, url: &str) -> (Got, String) {
    let got = send(
        client()
            .get(fg.url(url))
            .header("host", "shop.test")
            .header("accept-encoding", "gzip"),
    )
    .await;
    let mut inflated = String::new();
    flate2::read::GzDecoder::new(&got.body[..])
        .read_to_string(&mut inflated)
        .expect("one valid gzip stream");
    (got, inflated)
}

fn purge(fg: &Floodgate, tag: &str) -> reqwest::RequestBuilder {
    purge_request(fg, &tags_pattern(&[tag]))
}

fn menu_render(body: &str) -> u32 {
    body.split("data-render=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no menu in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_top_menu_is_spliced_in_and_fetched_once_for_many_pages() {
    let origin = TestOrigin::start().await;
    for n in 0..10 {
        origin.set(
            &format!("/category-{n}.html"),
            page_with_menu(&format!("category {n}")),
        );
    }
    let fg = Floodgate::start_with(origin.addr, no_warm()).await;

    for round in 0..2 {
        for n in 0..10 {
            let got = page(&fg, &format!("/category-{n}.html")).await;
            assert_eq!(got.status, 200);
            assert_eq!(
                got.text(),
                format!("<html><body><header><ul class=\"topmenu\" data-vary=\"none\" data-render=\"1\">menu</ul></header><main>category {n}</main></body></html>"),
                "round {round}"
            );
            let expected = if round == 0 { "MISS" } else { "HIT" };
            assert_eq!(got.cache_debug(), expected, "round {round}, page {n}");
            assert!(
                got.header("content-length").is_none(),
                "assembled pages are chunked"
            );
        }
    }
    assert_eq!(
        origin.hits(MENU),
        1,
        "one fetch of the menu serves every page"
    );
    for n in 0..10 {
        assert_eq!(origin.hits(&format!("/category-{n}.html")), 1);
    }
    // The fragment request is a plain GET with the client's headers and src's Host.
    let seen = origin.last(MENU).expect("menu fetched");
    assert_eq!(seen.method, "GET");
    assert_eq!(
        seen.headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok()),
        Some("127.0.0.1"),
        "the origin learns the visitor's address, as for a page"
    );
    assert_eq!(
        seen.headers.get("host").and_then(|v| v.to_str().ok()),
        Some("shop.test")
    );
    assert!(
        fg.metric("floodgate_esi_fragments_total{result=\"fetched\"}")
            .await
            >= 1.0
    );
    assert!(
        fg.metric("floodgate_esi_fragments_total{result=\"cached\"}")
            .await
            >= 19.0
    );
    assert_eq!(
        fg.metric("floodgate_esi_fragments_total{result=\"failed\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_the_menu_tag_refreshes_the_menu_not_the_pages() {
    let origin = TestOrigin::start().await;
    origin.set("/a.html", page_with_menu("a"));
    origin.set("/b.html", page_with_menu("b"));
    let fg = Floodgate::start_with(origin.addr, no_warm()).await;
    for url in ["/a.html", "/b.html"] {
        assert_eq!(menu_render(&page(&fg, url).await.text()), 1);
    }

    let answer = send(purge(&fg, "cat_c_3")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    for url in ["/a.html", "/b.html"] {
        let got = page(&fg, url).await;
        assert_eq!(got.cache_debug(), "HIT", "the page itself was not purged");
        assert_eq!(
            menu_render(&got.text()),
            2,
            "{url} shows the refreshed menu"
        );
    }
    assert_eq!(origin.hits("/a.html"), 1);
    assert_eq!(origin.hits("/b.html"), 1);
    assert_eq!(origin.hits(MENU), 2);

    // And a page purge leaves the menu cached.
    send(purge(&fg, "cat_p_1")).await;
    assert_eq!(menu_render(&page(&fg, "/a.html").await.text()), 2);
    assert_eq!(origin.hits("/a.html"), 2);
    assert_eq!(origin.hits(MENU), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_x_magento_vary_cookie_selects_the_menu_variant() {
    let origin = TestOrigin::start().await;
    origin.set("/a.html", page_with_menu("a"));
    let fg = Floodgate::start_with(origin.addr, no_warm()).await;
    let with = |vary: &'static str| {
        let fg_url = fg.url("/a.html");
        async move {
            send(
                client()
                    .get(fg_url)
                    .header("host", "shop.test")
                    .header("cookie", format!("PHPSESSID=s1; X-Magento-Vary={vary}")),
            )
            .await
        }
    };
    for _ in 0..2 {
        assert!(page(&fg, "/a.html")
            .await
            .text()
            .contains("data-vary=\"none\""));
        assert!(with("wholesale")
            .await
            .text()
            .contains("data-vary=\"wholesale\""));
        assert!(with("retail").await.text().contains("data-vary=\"retail\""));
    }
    assert_eq!(origin.hits(MENU), 3, "one fetch per variant");
    let seen = origin.last(MENU).expect("menu fetched");
    assert!(
        seen.headers
            .get("cookie")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.contains("PHPSESSID=s1")),
        "the fragment gets the client's cookies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fragment_leaves_the_page_intact() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/broken.html",
        Page::cacheable(
            "<p>before</p><esi:include src=\"/fails\" onerror=\"continue\"/><p>between</p><esi:include src=\"/slow\"/><p>after</p><esi:include src=\"/loop\"/><p>end</p><esi:include src=\"/fails\" alt=\"/fallback\"/>",
        ),
    );
    origin.set(
        "/fails",
        Page::cacheable("server error")
            .status(500)
            .header("cache-control", "no-store"),
    );
    origin.set(
        "/slow",
        Page::cacheable("too late").delay(Duration::from_secs(3)),
    );
    origin.set("/fallback", Page::cacheable("[fallback]"));
    // A fragment that includes itself: the depth limit ends it.
    origin.set("/loop", Page::cacheable("L<esi:include src=\"/loop\"/>"));
    let fg = Floodgate::start_with(
        origin.addr,
        no_warm()
            .esi("fragment_timeout_ms = 500")
            .esi("max_depth = 3"),
    )
    .await;

    for _ in 0..2 {
        let got = page(&fg, "/broken.html").await;
        assert_eq!(got.status, 200);
        assert_eq!(
            got.text(),
            "<p>before</p><p>between</p><p>after</p>LLL<p>end</p>[fallback]",
            "failed fragments are left out; alt replaces a failed src"
        );
    }
    assert!(
        fg.metric("floodgate_esi_fragments_total{result=\"failed\"}")
            .await
            >= 4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_client_gets_the_assembled_page_gzipped_and_others_get_identity() {
    let origin = TestOrigin::start().await;
    let filler = "<p>product tile</p>".repeat(500);
    origin.set(
        "/big.html",
        Page::cacheable(format!(
            "<html>{filler}<esi:include src=\"{MENU}\"/>{filler}</html>"
        )),
    );
    let fg = Floodgate::start_with(origin.addr, no_warm()).await;
    let expected = format!(
        "<html>{filler}<ul class=\"topmenu\" data-vary=\"none\" data-render=\"1\">menu</ul>{filler}</html>"
    );
    for _ in 0..2 {
        let (gz, inflated) = gzip_page(&fg, "/big.html").await;
        assert_eq!(gz.header("content-encoding"), Some("gzip"));
        assert!(gz.header("content-length").is_none());
        assert_eq!(inflated, expected);

        let plain = page(&fg, "/big.html").await;
        assert_eq!(plain.header("content-encoding"), None);
        assert_eq!(plain.text(), expected);
    }
    assert_eq!(origin.hits("/big.html"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_streams_before_a_slow_fragment_and_fragments_load_together() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/slow-menu.html",
        Page::cacheable(
            "<p>head</p><esi:include src=\"/frag-1\"/><esi:include src=\"/frag-2\"/><p>tail</p>",
        ),
    );
    for n in 1..=2 {
        origin.set(
            &format!("/frag-{n}"),
            Page::cacheable(format!("[{n}]")).delay(Duration::from_millis(1500)),
        );
    }
    let fg = Floodgate::start_with(origin.addr, no_warm()).await;
    let mut resp = client()
        .get(fg.url("/slow-menu.html"))
        .header("host", "shop.test")
        .send()
        .await
        .expect("response");
    let first = resp.chunk().await.expect("read").expect("a first chunk");
    assert!(first.starts_with(b"<p>head</p>"));
    assert_eq!(
        origin.answered("/frag-1") + origin.answered("/frag-2"),
        0,
        "the first bytes left before either fragment was answered"
    );
    let mut rest = first.to_vec();
    while let Some(chunk) = resp.chunk().await.expect("read") {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "<p>head</p>[1][2]<p>tail</p>"
    );
    assert_eq!(
        origin.max_total_in_flight(),
        2,
        "both fragments were at the origin at the same time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passed_pages_are_processed_and_esi_can_be_turned_off() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/checkout/cart",
        Page::cacheable("<p>cart</p><esi:include src=\"/frag\"/><esi:remove>fallback</esi:remove>")
            .header("cache-control", "private, max-age=0"),
    );
    origin.set("/frag", Page::cacheable("[frag]"));
    origin.set(
        "/script.js",
        Page::cacheable("var s = '<esi:include src=\"/frag\"/>';")
            .header("content-type", "application/javascript"),
    );
    let fg = Floodgate::start_with(origin.addr, no_warm()).await;
    assert_eq!(
        page(&fg, "/checkout/cart").await.text(),
        "<p>cart</p>[frag]"
    );
    assert_eq!(
        page(&fg, "/script.js").await.text(),
        "var s = '<esi:include src=\"/frag\"/>';",
        "only text/* is processed"
    );
    drop(fg);

    let off = Floodgate::start_with(origin.addr, no_warm().esi("enabled = false")).await;
    assert_eq!(
        page(&off, "/checkout/cart").await.text(),
        "<p>cart</p><esi:include src=\"/frag\"/><esi:remove>fallback</esi:remove>"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_range_and_the_fragment_limit_on_an_assembled_page() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/many.html",
        Page::cacheable(
            "<esi:include src=\"/f1\"/><esi:include src=\"/f2\"/><esi:include src=\"/f3\"/><esi:include src=\"/f4\"/>!",
        ),
    );
    for n in 1..=4 {
        origin.set(&format!("/f{n}"), Page::cacheable(format!("[{n}]")));
    }
    let fg = Floodgate::start_with(origin.addr, no_warm().esi("max_fragments = 3")).await;
    assert_eq!(page(&fg, "/many.html").await.text(), "[1][2][3]!");
    assert_eq!(
        origin.hits("/f4"),
        0,
        "includes past the limit are not fetched"
    );

    // A byte range of the stored template would cut the page anywhere: the whole
    // assembled page is sent instead (a range is optional for a server).
    let ranged = send(
        client()
            .get(fg.url("/many.html"))
            .header("host", "shop.test")
            .header("range", "bytes=0-3"),
    )
    .await;
    assert_eq!(ranged.status, 200);
    assert_eq!(ranged.text(), "[1][2][3]!");

    let head = send(
        client()
            .head(fg.url("/many.html"))
            .header("host", "shop.test"),
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(
        head.header("content-length").is_none(),
        "the template's length is not the page's"
    );
    assert_eq!(origin.hits("/many.html"), 1);
    assert_eq!(origin.hits("/f1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_are_coalesced_and_queue_for_the_origin_like_pages() {
    let origin = TestOrigin::start().await;
    for n in 0..20 {
        origin.set(
            &format!("/cold-{n}.html"),
            Page::cacheable(format!(
                "<p>{n}</p><esi:include src=\"/shared-menu\"/><esi:include src=\"/own-{n}\"/>"
            )),
        );
        origin.set(
            &format!("/own-{n}"),
            Page::cacheable(format!("[own {n}]")).delay(Duration::from_millis(100)),
        );
    }
    origin.set(
        "/shared-menu",
        Page::cacheable("[menu]").delay(Duration::from_millis(300)),
    );
    let fg = Floodgate::start_with(origin.addr, no_warm().limits("max_inflight = 3")).await;
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let url = fg.url(&format!("/cold-{n}.html"));
            tokio::spawn(async move { (n, get(&url).await) })
        })
        .collect();
    for task in tasks {
        let (n, got) = task.await.expect("request");
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), format!("<p>{n}</p>[menu][own {n}]"));
    }
    assert_eq!(
        origin.hits("/shared-menu"),
        1,
        "20 pages waiting for one fragment make one origin request"
    );
    assert!(
        origin.max_total_in_flight() <= 3,
        "pages and fragments together stay within the origin's slots: {}",
        origin.max_total_in_flight()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_page_is_assembled_from_its_stale_copy_in_grace_and_when_the_origin_fails() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/in-grace.html",
        Page::cacheable("<p>v1</p><esi:include src=\"/menu\"/>").ttl(1),
    );
    origin.set(
        "/erroring.html",
        Page::cacheable("<p>kept</p><esi:include src=\"/menu\"/>").ttl(1),
    );
    origin.set("/menu", Page::cacheable("[menu]"));
    let fg = Floodgate::start_with(origin.addr, no_warm().cache("grace_secs = 1")).await;
    page(&fg, "/in-grace.html").await;
    page(&fg, "/erroring.html").await;
    origin.set(
        "/in-grace.html",
        Page::cacheable("<p>v2</p><esi:include src=\"/menu\"/>").ttl(60),
    );
    origin.set(
        "/erroring.html",
        Page::cacheable("down")
            .status(500)
            .header("cache-control", "no-store"),
    );
    fg.until_stored("/in-grace.html", &["grace"], Duration::from_secs(10))
        .await;

    // Within grace: the stale copy at once, assembled, while one refresh runs.
    let stale = page(&fg, "/in-grace.html").await;
    assert_eq!(stale.text(), "<p>v1</p>[menu]");
    assert!(
        eventually(Duration::from_secs(5), || origin.hits("/in-grace.html")
            == 2)
        .await,
        "refreshed in the background"
    );
    fg.until_fresh("/in-grace.html").await;
    assert_eq!(page(&fg, "/in-grace.html").await.text(), "<p>v2</p>[menu]");

    // Past grace, the origin answers 500: the kept copy, assembled, never the error.
    fg.until_stored(
        "/erroring.html",
        &["stale_if_error"],
        Duration::from_secs(10),
    )
    .await;
    let kept = page(&fg, "/erroring.html").await;
    assert_eq!(
        (kept.status, kept.text().as_str()),
        (200, "<p>kept</p>[menu]")
    );
    assert_eq!(origin.hits("/menu"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_fragment_is_served_stale_once_and_refreshed_in_the_background() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/page.html",
        Page::cacheable("<p>page</p><esi:include src=\"/menu\"/>"),
    );
    origin.set("/menu", Page::cacheable("[menu v1]").ttl(1));
    let fg = Floodgate::start_with(origin.addr, no_warm()).await;
    assert_eq!(page(&fg, "/page.html").await.text(), "<p>page</p>[menu v1]");
    origin.set("/menu", Page::cacheable("[menu v2]").ttl(60));
    fg.until_stored("/menu", &["grace"], Duration::from_secs(10))
        .await;

    // Within grace: the stale menu at once, while its refresh (of the menu's own URL)
    // runs in the background.
    assert_eq!(page(&fg, "/page.html").await.text(), "<p>page</p>[menu v1]");
    assert!(
        eventually(Duration::from_secs(5), || origin.hits("/menu") == 2).await,
        "the menu was refreshed"
    );
    fg.until_fresh("/menu").await;
    assert_eq!(page(&fg, "/page.html").await.text(), "<p>page</p>[menu v2]");
    assert_eq!(
        origin.hits("/page.html"),
        1,
        "the page itself was never refetched"
    );
}

/// A stored ESI page is held once: its body is re-encoded as one gzip stream whose bytes
/// are also the template's literals. That body must still be the origin's page, markup
/// included, with its own length: what a hit sends once ESI is turned off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_esi_page_is_still_the_origins_page_once_esi_is_turned_off() {
    let origin = TestOrigin::start().await;
    let filler = "<p>product tile</p>".repeat(500);
    let raw = format!(
        "<html>{filler}<esi:include src=\"{MENU}\"/><!--esi <b>kept</b> -->{filler}\
         <esi:remove>fallback</esi:remove><esi:comment text=\"c\"/></html>"
    );
    origin.set("/big.html", Page::cacheable(raw.clone()));
    let fg = Floodgate::start_with(origin.addr, no_warm()).await;
    let assembled = format!(
        "<html>{filler}<ul class=\"topmenu\" data-vary=\"none\" data-render=\"1\">menu</ul> <b>kept</b> {filler}</html>"
    );
    assert_eq!(page(&fg, "/big.html").await.text(), assembled);
    let hit = page(&fg, "/big.html").await;
    assert_eq!((hit.cache_debug(), hit.text()), ("HIT", assembled));

    fg.rewrite_config(&no_warm().esi("enabled = false"));
    fg.signal("HUP");
    assert!(
        until_metric(
            &fg,
            "floodgate_config_reloads_total{result=\"ok\"}",
            1.0,
            Duration::from_secs(5)
        )
        .await
        .is_some(),
        "{}",
        fg.log()
    );
    let (gz, inflated) = gzip_page(&fg, "/big.html").await;
    assert_eq!(gz.cache_debug(), "HIT");
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(
        gz.header("content-length"),
        Some(gz.body.len().to_string().as_str()),
        "the stored length is the stored body's"
    );
    assert_eq!(inflated, raw, "the stored body is the origin's page");
    let plain = page(&fg, "/big.html").await;
    assert_eq!((plain.cache_debug(), plain.text()), ("HIT", raw));
    assert_eq!(origin.hits("/big.html"), 1);
}
