//! A Magento-like origin for tests: a real HTTP server on a loopback port.
//!
//! Without configuration it answers like a Magento shop (tagged cacheable catalogue
//! pages that set a session cookie, private checkout, uncacheable customer sections,
//! static files, GraphQL, a health check); a test can replace any URL's answer. It
//! counts requests per URL, remembers what it received, can be slow, can cap its
//! concurrency like a PHP-FPM pool, can fail its health check, and can be stopped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// One canned answer.
#[derive(Clone, Debug)]
pub struct Page {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
}

impl Page {
    /// What Magento sends for a cacheable page.
    pub fn cacheable(body: impl Into<Bytes>) -> Self {
        Page {
            status: 200,
            headers: vec![
                ("content-type".into(), "text/html; charset=UTF-8".into()),
                (
                    "cache-control".into(),
                    "public, max-age=86400, s-maxage=86400".into(),
                ),
                ("pragma".into(), "cache".into()),
            ],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// A cacheable page that expires after `secs` seconds.
    pub fn ttl(self, secs: u32) -> Self {
        let cc = format!("public, max-age={secs}, s-maxage={secs}");
        self.header("cache-control", &cc)
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Replaces every header of that name.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds one more header line, keeping earlier ones of the same name.
    pub fn append(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// What the origin saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
struct State {
    pages: Mutex<HashMap<String, Page>>,
    counts: Mutex<HashMap<String, u64>>,
    answered: Mutex<HashMap<String, u64>>,
    last: Mutex<HashMap<String, Seen>>,
    in_flight: Mutex<HashMap<String, (u64, u64)>>,
    /// Page requests being answered or queued for the pool, and the most at once.
    total_in_flight: Mutex<(u64, u64)>,
    /// Page URLs in the order the pool started rendering them.
    started: Mutex<Vec<String>>,
    renders: AtomicU64,
    unhealthy: AtomicBool,
    delay_ms: AtomicU64,
    /// Hands the page only the last of several `Cookie` lines, as PHP-FPM behind
    /// Debian's nginx 1.22 gets them.
    last_cookie_only: AtomicBool,
    /// A request whose client went away is rendered to its end all the same, as a
    /// PHP-FPM worker does: it holds its place in the pool until then.
    render_abandoned: AtomicBool,
}

pub struct TestOrigin {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
}

impl TestOrigin {
    pub async fn start() -> Self {
        Self::start_with_pool(usize::MAX >> 4).await
    }

    /// `pool` caps the requests being answered at once, like `pm.max_children`; the
    /// others queue, as in PHP-FPM's listen backlog.
    pub async fn start_with_pool(pool: usize) -> Self {
        // A port of the suite's own range: `restart_on` may bind it again later.
        let listener = TcpListener::bind(("127.0.0.1", super::floodgate::free_port()))
            .await
            .expect("bind test origin");
        Self::serve(listener, pool)
    }

    /// Starts on a given address (another 127.0.0.x with a shared port, say).
    pub async fn start_at(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind test origin");
        Self::serve(listener, usize::MAX >> 4)
    }

    /// Starts again on a known address (after `stop`).
    pub async fn restart_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("rebind test origin");
        Self::serve(listener, usize::MAX >> 4)
    }

    fn serve(listener: TcpListener, pool: usize) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State::default());
        let (stop, stopped) = watch::channel(false);
        let pool = Arc::new(Semaphore::new(pool));
        let accept_state = state.clone();
        tokio::spawn(async move {
            let mut stop_accepting = stopped.clone();
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(conn) => conn,
                        Err(_) => continue,
                    },
                    _ = stop_accepting.changed() => return,
                };
                let state = accept_state.clone();
                let pool = pool.clone();
                let mut stop_conn = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        let pool = pool.clone();
                        async move { Ok::<_, Infallible>(answer(state, pool, req).await) }
                    });
                    let conn = http1::Builder::new()
                        .max_buf_size(4 << 20)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_conn.changed() => {}
                    }
                });
            }
        });
        TestOrigin { addr, state, stop }
    }

    /// Stops listening and drops every open connection: the origin is down.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Sets the answer for one URL (path and query, exactly as the origin receives it).
    pub fn set(&self, url: &str, page: Page) {
        lock(&self.state.pages).insert(url.to_string(), page);
    }

    /// Requests the origin received for `url` (path and query).
    pub fn hits(&self, url: &str) -> u64 {
        lock(&self.state.counts).get(url).copied().unwrap_or(0)
    }

    /// Requests received in total, health probes excluded.
    /// Requests for `url` answered so far.
    pub fn answered(&self, url: &str) -> u64 {
        lock(&self.state.answered).get(url).copied().unwrap_or(0)
    }

    pub fn total_hits(&self) -> u64 {
        lock(&self.state.counts)
            .iter()
            .filter(|(url, _)| !url.contains("health_check"))
            .map(|(_, n)| n)
            .sum()
    }

    /// The most page requests (health probes excluded) it held at the same moment,
    /// rendering or queued for the pool: the concurrency a proxy put on it.
    pub fn max_total_in_flight(&self) -> u64 {
        lock(&self.state.total_in_flight).1
    }

    /// Page URLs in the order the pool began rendering them.
    pub fn started(&self) -> Vec<String> {
        lock(&self.state.started).clone()
    }

    /// The most requests for `url` it was answering at the same moment.
    pub fn max_in_flight(&self, url: &str) -> u64 {
        lock(&self.state.in_flight)
            .get(url)
            .map_or(0, |(_, max)| *max)
    }

    pub fn last(&self, url: &str) -> Option<Seen> {
        lock(&self.state.last).get(url).cloned()
    }

    /// Makes `/health_check.php` answer 503 (or 200 again).
    pub fn set_unhealthy(&self, unhealthy: bool) {
        self.state.unhealthy.store(unhealthy, Ordering::SeqCst);
    }

    /// Renders a request to its end even when its client went away (Floodgate killed
    /// with -9, a timeout), as PHP-FPM does, so the counts see the work it left behind.
    pub fn render_abandoned_requests(&self) {
        self.state.render_abandoned.store(true, Ordering::SeqCst);
    }

    /// Requests rendered so far (health probes included).
    pub fn renders(&self) -> u64 {
        self.state.renders.load(Ordering::SeqCst)
    }

    /// Requests being answered or queued for the pool right now (health probes excluded).
    pub fn total_in_flight_now(&self) -> u64 {
        lock(&self.state.total_in_flight).0
    }

    /// Keeps only the last `Cookie` line of a request, as nginx 1.22 + PHP-FPM do.
    pub fn keep_last_cookie_line_only(&self) {
        self.state.last_cookie_only.store(true, Ordering::SeqCst);
    }

    /// A render time for every page without its own delay.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn answer(
    state: Arc<State>,
    pool: Arc<Semaphore>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let url = req.uri().path_and_query().map_or_else(
        || req.uri().path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let method = req.method().to_string();
    let mut headers = req.headers().clone();
    if state.last_cookie_only.load(Ordering::SeqCst) {
        if let Some(last) = headers.get_all("cookie").iter().next_back().cloned() {
            headers.insert("cookie", last);
        }
    }
    // Read the request body so keep-alive works for POSTs; tests look at it too.
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let seen = Seen {
        method,
        headers,
        body,
    };
    if state.render_abandoned.load(Ordering::SeqCst) {
        // Its own task: dropping this future (the client went away) does not stop it.
        let render = tokio::spawn(render(state, pool, url, seen));
        return render.await.unwrap_or_else(|_| {
            Response::builder()
                .status(500)
                .body(Full::new(Bytes::from_static(b"render task failed")))
                .expect("valid test response")
        });
    }
    render(state, pool, url, seen).await
}

/// Counts, waits for the pool, renders and answers one request.
async fn render(
    state: Arc<State>,
    pool: Arc<Semaphore>,
    url: String,
    seen: Seen,
) -> Response<Full<Bytes>> {
    *lock(&state.counts).entry(url.clone()).or_default() += 1;
    let page_request = !url.contains("health_check");
    if page_request {
        let mut total = lock(&state.total_in_flight);
        total.0 += 1;
        total.1 = total.1.max(total.0);
    }
    lock(&state.last).insert(url.clone(), seen.clone());

    let _permit = pool.acquire().await;
    if page_request {
        lock(&state.started).push(url.clone());
    }
    {
        let mut in_flight = lock(&state.in_flight);
        let entry = in_flight.entry(url.clone()).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(entry.0);
    }
    let page = lock(&state.pages)
        .get(&url)
        .cloned()
        .unwrap_or_else(|| magento_like(&state, &url, &seen));
    let delay = if page.delay.is_zero() && !url.contains("health_check") {
        Duration::from_millis(state.delay_ms.load(Ordering::SeqCst))
    } else {
        page.delay
    };
    // Not a wait for a fact: the simulated PHP render time the test asked for.
    tokio::time::sleep(delay).await;
    if let Some(entry) = lock(&state.in_flight).get_mut(&url) {
        entry.0 -= 1;
    }
    if page_request {
        lock(&state.total_in_flight).0 -= 1;
    }

    let render = state.renders.fetch_add(1, Ordering::SeqCst) + 1;
    *lock(&state.answered).entry(url.clone()).or_default() += 1;
    let mut builder = Response::builder().status(page.status);
    for (name, value) in &page.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder = builder.header("x-origin-render", render.to_string());
    builder
        .body(Full::new(page.body))
        .expect("valid test response")
}

/// The default answers, shaped like Magento 2.4's.
fn magento_like(state: &State, url: &str, seen: &Seen) -> Page {
    let path = url.split('?').next().unwrap_or(url);
    let body = format!("<html><body>{url}</body></html>");
    if path.ends_with("health_check.php") {
        return if state.unhealthy.load(Ordering::SeqCst) {
            Page::cacheable("down")
                .status(503)
                .header("cache-control", "no-store")
        } else {
            Page::cacheable("OK").header("cache-control", "no-store")
        };
    }
    if path.contains("/checkout") {
        return Page::cacheable(body)
            .header("cache-control", "private, max-age=0")
            .append("set-cookie", "PHPSESSID=checkout; path=/");
    }
    if path.contains("/customer") {
        return Page::cacheable(body)
            .header(
                "cache-control",
                "no-store, no-cache, must-revalidate, max-age=0",
            )
            .header("pragma", "no-cache")
            .append("set-cookie", "private_content_version=abc; path=/");
    }
    if path.starts_with("/static/") || path.starts_with("/media/") || path.starts_with("/pub/") {
        return Page::cacheable(body).header("cache-control", "public, max-age=31536000");
    }
    if path.starts_with("/page_cache/block/esi/") {
        // Magento's ESI controller: the block as HTML, cached for the block's ttl, tagged
        // with the block's identities, one variant per X-Magento-Vary.
        let vary = seen
            .headers
            .get_all("cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix("X-Magento-Vary="))
            .unwrap_or("none")
            .to_string();
        let render = lock(&state.counts).get(url).copied().unwrap_or(0);
        return Page::cacheable(format!(
            "<ul class=\"topmenu\" data-vary=\"{vary}\" data-render=\"{render}\">menu</ul>"
        ))
        .header("cache-control", "public, max-age=3600, s-maxage=3600")
        .header("x-magento-tags", "cat_c,cat_c_3,cms_b_topmenu");
    }
    if path.starts_with("/echo/") {
        return echo(url, seen);
    }
    if path.starts_with("/graphql") {
        let mut page = Page::cacheable(body).header("x-magento-tags", "cat_p_1");
        if let Some(id) = seen
            .headers
            .get("x-magento-cache-id")
            .and_then(|v| v.to_str().ok())
        {
            page = page.header("x-magento-cache-id", id);
        }
        return page;
    }
    if path.ends_with(".html") || path == "/" {
        let id = path
            .trim_end_matches(".html")
            .rsplit(['-', '/'])
            .next()
            .unwrap_or("0")
            .to_string();
        return Page::cacheable(body)
            .header("x-magento-tags", &format!("cat_p_{id},cat_p,store"))
            .append("set-cookie", "PHPSESSID=first-visitor; path=/; HttpOnly")
            .header("x-powered-by", "PHP/8.3")
            .header("server", "nginx")
            .header("link", "</static/app.js>; rel=preload");
    }
    Page::cacheable("<html><body>404</body></html>")
        .status(404)
        .header(
            "cache-control",
            "no-store, no-cache, must-revalidate, max-age=0",
        )
}

/// `/echo/…`: a cacheable page whose body reports the request headers an origin could
/// act on, for tests of what reaches the origin and what is cached for whom. Query:
/// `vary=H` sends `Vary: H`; `status=N` answers N; `bare` drops the cache headers; and
/// any request header longer than 4096 bytes gets nginx's `400` without cache headers.
fn echo(url: &str, seen: &Seen) -> Page {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    let mut body = format!("method: {}\n", seen.method);
    for name in [
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-forwarded-host",
        "forwarded",
        "x-forwarded-proto",
        "x-forwarded-for",
        "accept-language",
        "cookie",
        "authorization",
    ] {
        let values: Vec<String> = seen
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if !values.is_empty() {
            body.push_str(&format!("{name}: {}\n", values.join(" | ")));
        }
    }
    if seen.headers.values().any(|v| v.len() > 4096) {
        return Page {
            status: 400,
            headers: vec![("content-type".into(), "text/html".into())],
            body: Bytes::from("<html>400 Request Header Or Cookie Too Large</html>"),
            delay: Duration::ZERO,
        };
    }
    let mut page = Page::cacheable(body).header("x-magento-tags", "echo");
    if let Some(vary) = param("vary") {
        page = page.header("vary", &vary);
    }
    if let Some(status) = param("status").and_then(|s| s.parse().ok()) {
        page = page.status(status);
    }
    if query.split('&').any(|p| p == "bare") {
        page.headers.retain(|(n, _)| n == "content-type");
    }
    page
}
