//! Test harness: a Magento-like origin, a real Floodgate process, and clients.
#![allow(dead_code, unused_imports)]

pub mod broken;
pub mod certs;
pub mod dns;
pub mod floodgate;
pub mod origin;
pub mod redis;
pub mod sentinel;

use std::net::SocketAddr;
use std::time::Duration;

pub use floodgate::{temp_dir, Floodgate, Settings};
pub use origin::{Page, TestOrigin};
pub use redis::{RedisCluster, RedisServer};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP client that neither decompresses nor follows redirects, so tests see the wire.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A response reduced to what tests look at.
pub struct Got {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn cache_debug(&self) -> &str {
        self.header("x-magento-cache-debug").unwrap_or("-")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn send(req: reqwest::RequestBuilder) -> Got {
    let resp = req.send().await.expect("request to floodgate");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("response body");
    Got {
        status,
        headers,
        body,
    }
}

pub async fn get(url: &str) -> Got {
    send(client().get(url)).await
}

/// Writes raw bytes and reads until the server closes: for request targets and framings
/// an HTTP client library will not produce.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// `n` GETs for one URL, all started at once; the responses in start order.
pub async fn burst(url: &str, n: usize) -> Vec<Got> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

/// Magento's `X-Magento-Tags-Pattern` for `tags`: `((^|,)a(,|$))|((^|,)b(,|$))`.
pub fn tags_pattern(tags: &[&str]) -> String {
    tags.iter()
        .map(|t| format!("((^|,){t}(,|$))"))
        .collect::<Vec<_>>()
        .join("|")
}

/// A PURGE of `pattern` (an `X-Magento-Tags-Pattern`) as Magento sends it to `fg`.
pub fn purge_request(fg: &Floodgate, pattern: &str) -> reqwest::RequestBuilder {
    client()
        .request(
            reqwest::Method::from_bytes(b"PURGE").expect("method"),
            fg.url("/"),
        )
        .header("x-magento-tags-pattern", pattern)
}

/// Polls the async `cond` every 20 ms for up to `limit`; whether it came true.
pub async fn until<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return true;
        }
        // The one poll interval of the suite: every wait on a fact goes through here.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond().await
}

/// Polls `fg`'s metric `sample` until it reaches `value` (a sample not there yet counts
/// as 0); how long that took, or `None` past `limit`.
pub async fn until_metric(
    fg: &Floodgate,
    sample: &str,
    value: f64,
    limit: Duration,
) -> Option<Duration> {
    let started = std::time::Instant::now();
    let reached = until(limit, || async { fg.metric_or_zero(sample).await >= value }).await;
    reached.then(|| started.elapsed())
}

/// `until` for a condition that needs no `.await` (an origin counter, a file).
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    until(limit, || std::future::ready(cond())).await
}
