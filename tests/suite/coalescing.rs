//! Request coalescing: concurrent misses for one page make one origin request.

use crate::common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_misses_make_one_origin_request() {
    let origin = TestOrigin::start().await;
    origin.set(
        "/cold.html",
        Page::cacheable("cold page").delay(Duration::from_millis(700)),
    );
    let fg = Floodgate::start(origin.addr).await;
    let responses = burst(&fg.url("/cold.html"), 100).await;
    assert!(responses
        .iter()
        .all(|r| r.status == 200 && r.text() == "cold page"));
    assert_eq!(
        origin.hits("/cold.html"),
        1,
        "one origin request for 100 concurrent misses"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_triggers_one_refresh_while_the_others_get_stale() {
    let origin = TestOrigin::start().await;
    let page = |body: &str| {
        Page::cacheable(body.to_string())
            .ttl(1)
            .delay(Duration::from_millis(500))
    };
    origin.set("/hot.html", page("old"));
    let fg = Floodgate::start(origin.addr).await;
    get(&fg.url("/hot.html")).await;
    fg.until_stored("/hot.html", &["grace"], Duration::from_secs(10))
        .await;
    origin.set("/hot.html", page("new"));
    let responses = burst(&fg.url("/hot.html"), 100).await;
    assert!(
        responses
            .iter()
            .all(|r| r.status == 200 && r.text() == "old"),
        "all served stale at once"
    );
    assert!(eventually(Duration::from_secs(5), || origin.hits("/hot.html") == 2).await);
    // The origin counts a request on arrival; the 500 ms render is stored when it ends.
    fg.until_fresh("/hot.html").await;
    assert_eq!(origin.hits("/hot.html"), 2, "exactly one refresh");
    assert_eq!(get(&fg.url("/hot.html")).await.text(), "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_past_grace_coalesces_the_synchronous_fetch() {
    let origin = TestOrigin::start().await;
    let page = |body: &str| {
        Page::cacheable(body.to_string())
            .ttl(1)
            .delay(Duration::from_millis(500))
    };
    origin.set("/sync.html", page("old"));
    let fg = Floodgate::start_with(origin.addr, Settings::default().cache("grace_secs = 0")).await;
    get(&fg.url("/sync.html")).await;
    fg.until_expired("/sync.html").await;
    origin.set("/sync.html", page("new"));
    let responses = burst(&fg.url("/sync.html"), 100).await;
    assert!(responses
        .iter()
        .all(|r| r.status == 200 && r.text() == "new"));
    assert_eq!(
        origin.hits("/sync.html"),
        2,
        "one fetch for 100 requests after expiry"
    );
}
