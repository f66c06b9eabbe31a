//! One include, fetched as a subrequest through Floodgate's own request path: the same
//! key rules, cache, coalescing, limiter and purges as any page, so a fragment is cached
//! under its own URL with its own TTL and tags.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use pingora::http::RequestHeader;
use pingora::protocols::http::subrequest::server::SubrequestHandle;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::proxy::PreparedSubrequest;

use super::{ViewBudget, CACHED_HEADER};

/// A session that reads as `req` sent for `path_and_query`, for a subrequest: Pingora's
/// subrequests copy the raw request of the session they are made from. `client` is the
/// visitor's address, which that session does not have: it is added to
/// `X-Forwarded-For` as the origin request of the visitor's own would have it.
pub async fn replay(
    mut req: RequestHeader,
    path_and_query: &[u8],
    client: Option<std::net::IpAddr>,
) -> Option<ServerSession> {
    if let Some(client) = client {
        let forwarded = match req.headers.get("x-forwarded-for") {
            Some(prior) => format!("{}, {client}", String::from_utf8_lossy(prior.as_bytes())),
            None => client.to_string(),
        };
        req.insert_header("x-forwarded-for", forwarded).ok()?;
    }
    let mut raw = Vec::with_capacity(512);
    raw.extend_from_slice(req.method.as_str().as_bytes());
    raw.push(b' ');
    raw.extend_from_slice(path_and_query);
    raw.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers.iter() {
        raw.extend_from_slice(name.as_str().as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    let mut session = ServerSession::new_http1(Box::new(std::io::Cursor::new(raw)));
    match session.read_request().await {
        Ok(true) => Some(session),
        _ => None,
    }
}

/// What a subrequest is for; travels in Pingora's subrequest context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The page a client asked for, fetched so its body can be assembled on the way out.
    /// It is the client's request in every other respect (metrics, access log, class).
    /// `arrived` is the client's: it tells whether a shed fetch of the same page was
    /// already waited for.
    Page {
        depth: u8,
        arrived: Instant,
        budget: Arc<ViewBudget>,
        /// The first try failed after its header (a broken origin answer): serve the
        /// stale copy if one is kept, else the busy page; never ask the origin again.
        stale_only: bool,
        /// The client's connection is TLS (its response gets what HTTPS ones get).
        client_tls: bool,
        /// The visitor it is made for: its origin slots count against that client's
        /// share (`limits.max_inflight_per_client`).
        client: Option<std::net::IpAddr>,
    },
    /// An included fragment; `budget` is the page view's, shared by every depth, and
    /// `client` the visitor whose share of origin slots its fetch takes.
    Fragment {
        depth: u8,
        budget: Arc<ViewBudget>,
        client: Option<std::net::IpAddr>,
    },
}

impl Role {
    /// How many includes deep the document this request returns is.
    pub fn depth(&self) -> u8 {
        match self {
            Role::Page { depth, .. } | Role::Fragment { depth, .. } => *depth,
        }
    }

    /// The includes the page view this request serves may still fetch.
    pub fn budget(&self) -> &Arc<ViewBudget> {
        match self {
            Role::Page { budget, .. } | Role::Fragment { budget, .. } => budget,
        }
    }

    /// The visitor this subrequest is made for.
    pub fn client(&self) -> Option<std::net::IpAddr> {
        match self {
            Role::Page { client, .. } | Role::Fragment { client, .. } => *client,
        }
    }
}

/// Where a fragment is fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host (and port) from `src`; `None` keeps the including page's.
    pub host: Option<String>,
    pub path_and_query: String,
}

/// Request headers a fragment never inherits from the page's request: ESI fragments are
/// plain GETs for the whole entity, in identity encoding so they can be spliced.
const DROPPED: [HeaderName; 9] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONTENT_TYPE,
];

/// Why an include was left out of its page (logged, and the first one per page view is
/// said in the page's log line).
#[derive(Debug, thiserror::Error)]
pub enum FragmentError {
    #[error("`{0}` has no host")]
    NoHost(String),
    #[error("`{src}` is not a URL path: {why}")]
    BadPath {
        src: String,
        why: http::uri::InvalidUri,
    },
    #[error("`{src}` has an invalid host: {why}")]
    BadHost {
        src: String,
        why: http::uri::InvalidUri,
    },
    #[error("no answer within {0} ms (esi.fragment_timeout_ms)")]
    TimedOut(u128),
    #[error("the origin answered {0}")]
    Status(u16),
    #[error("larger than {0} bytes (esi.max_bytes)")]
    TooLarge(usize),
    #[error("the subrequest failed: {0}")]
    Failed(Box<pingora::Error>),
    #[error("the subrequest ended without a response")]
    NoResponse,
    #[error("its gzip body does not inflate: {0}")]
    Gzip(std::io::Error),
}

impl Target {
    /// Resolves `src` against the including page's Host and path.
    pub fn resolve(src: &str, page_path: &str) -> Result<Target, FragmentError> {
        let (host, path_and_query) = if let Some(rest) = src
            .strip_prefix("http://")
            .or_else(|| src.strip_prefix("https://"))
            .or_else(|| src.strip_prefix("//"))
        {
            let (host, path) = match rest.find(['/', '?']) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if host.is_empty() {
                return Err(FragmentError::NoHost(src.to_string()));
            }
            let path = if path.starts_with('?') {
                format!("/{path}")
            } else {
                path.to_string()
            };
            (Some(host.to_string()), path)
        } else if src.starts_with('/') {
            (None, src.to_string())
        } else {
            let page = page_path.split('?').next().unwrap_or("/");
            let dir = &page[..page.rfind('/').map_or(0, |i| i + 1)];
            let dir = if dir.is_empty() { "/" } else { dir };
            (None, format!("{dir}{src}"))
        };
        path_and_query
            .parse::<http::uri::PathAndQuery>()
            .map_err(|why| FragmentError::BadPath {
                src: src.to_string(),
                why,
            })?;
        if let Some(host) = &host {
            host.parse::<http::uri::Authority>()
                .map_err(|why| FragmentError::BadHost {
                    src: src.to_string(),
                    why,
                })?;
        }
        Ok(Target {
            host,
            path_and_query,
        })
    }

    /// The fragment's request as a session of its own, which its subrequest is made from.
    /// A subrequest copies its parent's request as it arrived (raw bytes), so one made
    /// from the page's session and re-pointed later would leave anything Pingora derives
    /// from it (a background refresh of a stale fragment) asking for the page.
    /// `client` is the visitor's address (see `replay`).
    pub async fn session(
        &self,
        page_req: &RequestHeader,
        client: Option<std::net::IpAddr>,
    ) -> Option<ServerSession> {
        let mut req = page_req.clone();
        self.rewrite(&mut req).ok()?;
        replay(req, self.path_and_query.as_bytes(), client).await
    }

    /// Turns a copy of the page's request into the fragment's: GET, its URL and Host,
    /// the client's other headers (cookies included, so X-Magento-Vary applies).
    pub fn rewrite(&self, req: &mut RequestHeader) -> pingora::Result<()> {
        req.set_method(http::Method::GET);
        let uri = self.path_and_query.parse::<http::Uri>().map_err(|e| {
            pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "ESI fragment URL", e)
        })?;
        req.set_uri(uri);
        if let Some(host) = &self.host {
            req.insert_header(header::HOST, host.as_str())?;
        }
        for name in &DROPPED {
            req.remove_header(name);
        }
        req.insert_header(header::ACCEPT_ENCODING, "identity")?;
        Ok(())
    }
}

/// A fragment's body.
pub struct Fetched {
    pub body: Bytes,
    /// Served from the cache rather than the origin.
    pub cached: bool,
}

/// Runs a prepared fragment subrequest and collects its body, within `timeout`.
pub async fn fetch(
    prepared: PreparedSubrequest,
    handle: SubrequestHandle,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Fetched, FragmentError> {
    // The subrequest runs on its own, so it completes (and fills the cache) even when
    // this page stops waiting for it.
    tokio::spawn(prepared.run());
    match tokio::time::timeout(timeout, collect(handle, max_bytes)).await {
        Ok(result) => result,
        Err(_) => Err(FragmentError::TimedOut(timeout.as_millis())),
    }
}

async fn collect(mut handle: SubrequestHandle, max_bytes: usize) -> Result<Fetched, FragmentError> {
    let mut body = BytesMut::new();
    let mut cached = false;
    let mut gzipped = false;
    let mut status = None;
    while let Some(task) = handle.rx.recv().await {
        let end = match task {
            HttpTask::Header(resp, end) => {
                if !resp.status.is_success() {
                    return Err(FragmentError::Status(resp.status.as_u16()));
                }
                status = Some(resp.status);
                cached = resp.headers.contains_key(CACHED_HEADER);
                gzipped = super::is_gzip(&resp.headers);
                end
            }
            HttpTask::Body(data, end) | HttpTask::UpgradedBody(data, end) => {
                if let Some(data) = data {
                    if body.len() + data.len() > max_bytes {
                        return Err(FragmentError::TooLarge(max_bytes));
                    }
                    body.extend_from_slice(&data);
                }
                end
            }
            HttpTask::Trailer(_) | HttpTask::Done => true,
            HttpTask::Failed(e) => return Err(FragmentError::Failed(e)),
        };
        if end {
            break;
        }
    }
    if status.is_none() {
        return Err(FragmentError::NoResponse);
    }
    let body = body.freeze();
    let body = if gzipped {
        super::gunzip(&body, max_bytes).map_err(FragmentError::Gzip)?
    } else {
        body
    };
    Ok(Fetched { body, cached })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(src: &str, page: &str) -> (Option<String>, String) {
        let t = Target::resolve(src, page).expect(src);
        (t.host, t.path_and_query)
    }

    #[test]
    fn absolute_src_takes_its_host() {
        assert_eq!(
            resolve(
                "http://shop.test/page_cache/block/esi/blocks/x/handles/y/",
                "/women.html"
            ),
            (
                Some("shop.test".into()),
                "/page_cache/block/esi/blocks/x/handles/y/".into()
            )
        );
        assert_eq!(
            resolve("https://shop.test:8443?a=1", "/"),
            (Some("shop.test:8443".into()), "/?a=1".into())
        );
        assert_eq!(
            resolve("//cdn.test/menu", "/"),
            (Some("cdn.test".into()), "/menu".into())
        );
    }

    #[test]
    fn relative_src_keeps_the_page_host() {
        assert_eq!(
            resolve("/menu?x=1", "/a/b.html"),
            (None, "/menu?x=1".into())
        );
        assert_eq!(resolve("menu", "/a/b.html?q=1"), (None, "/a/menu".into()));
        assert_eq!(resolve("menu", "/"), (None, "/menu".into()));
    }

    #[test]
    fn unusable_src_is_an_error() {
        assert!(Target::resolve("http:///x", "/").is_err());
        assert!(Target::resolve("/a b", "/").is_err());
    }
}
