//! What the browser sees, following Magento's `vcl_deliver`: only the proxy caches pages,
//! and internal headers (tags, debug, server banners) never leave it.

use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;

/// The `X-Magento-Cache-Debug` verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheDebug {
    Hit,
    Miss,
    Uncacheable,
}

impl CacheDebug {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheDebug::Hit => "HIT",
            CacheDebug::Miss => "MISS",
            CacheDebug::Uncacheable => "UNCACHEABLE",
        }
    }
}

/// The `Grace` header on hits, as Magento's VCL words it: fresh, stale within grace while
/// a refresh runs, or stale past grace because the origin cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grace {
    None,
    Normal,
    /// The origin fails its health probe or failed this request.
    Unhealthy,
    /// The origin's slots and queue are full (the limiter shed the request).
    Overloaded,
    /// The operator switched maintenance mode on.
    Maintenance,
}

impl Grace {
    pub fn as_str(self) -> &'static str {
        match self {
            Grace::None => "none",
            Grace::Normal => "normal (healthy server)",
            Grace::Unhealthy => "unlimited (unhealthy server)",
            Grace::Overloaded => "unlimited (overloaded)",
            Grace::Maintenance => "unlimited (maintenance)",
        }
    }
}

// Names and values as constants: every hit runs this, and a `&str` name is parsed (and a
// `&str` value copied) on each use.
const MAGENTO_DEBUG: HeaderName = HeaderName::from_static("x-magento-debug");
const INTERNAL_HEADERS: [HeaderName; 8] = [
    MAGENTO_DEBUG,
    HeaderName::from_static("x-magento-tags"),
    HeaderName::from_static("x-powered-by"),
    http::header::SERVER,
    http::header::VIA,
    http::header::LINK,
    HeaderName::from_static("x-varnish"),
    // Magento's pool purge key: kept with the object, of no use to a browser.
    HeaderName::from_static("x-pool"),
];
const CACHE_DEBUG: HeaderName = HeaderName::from_static("x-magento-cache-debug");
const GRACE: HeaderName = HeaderName::from_static("grace");
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");
const EXPIRES_NOW: HeaderValue = HeaderValue::from_static("-1");
const NOT_STORED: HeaderValue =
    HeaderValue::from_static("no-store, no-cache, must-revalidate, max-age=0");

/// Static files and media keep their own browser caching (Magento's `vcl_deliver`).
pub fn is_static_or_media(url: &str) -> bool {
    ["/static/", "/media/", "/pub/static/", "/pub/media/"]
        .iter()
        .any(|p| url.starts_with(p))
}

/// Rewrites a response header for the client.
pub fn prepare_for_client(
    resp: &mut ResponseHeader,
    url: &str,
    verdict: CacheDebug,
    grace: Option<Grace>,
) {
    let private = resp
        .headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .any(|v| {
            v.as_bytes()
                .windows(7)
                .any(|w| w.eq_ignore_ascii_case(b"private"))
        });
    let static_or_media = is_static_or_media(url);
    // insert_header only fails on invalid names or values; these are constants.
    if !private && !static_or_media {
        let _ = resp.insert_header(http::header::PRAGMA, NO_CACHE);
        let _ = resp.insert_header(http::header::EXPIRES, EXPIRES_NOW);
        let _ = resp.insert_header(http::header::CACHE_CONTROL, NOT_STORED);
    }
    if !resp.headers.contains_key(MAGENTO_DEBUG) {
        resp.remove_header(&http::header::AGE);
    }
    for name in &INTERNAL_HEADERS {
        resp.remove_header(name);
    }
    let _ = resp.insert_header(CACHE_DEBUG, HeaderValue::from_static(verdict.as_str()));
    if let Some(grace) = grace {
        let _ = resp.insert_header(GRACE, HeaderValue::from_static(grace.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(pairs: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in pairs {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn pages_are_not_browser_cached_and_internals_removed() {
        let mut r = resp(&[
            ("cache-control", "public, max-age=86400"),
            ("x-magento-tags", "cat_p_1"),
            ("server", "nginx"),
            ("x-powered-by", "PHP"),
            ("age", "10"),
            ("link", "<x>; rel=preload"),
        ]);
        prepare_for_client(&mut r, "/a.html", CacheDebug::Hit, Some(Grace::None));
        let h = &r.headers;
        assert_eq!(
            h["cache-control"],
            "no-store, no-cache, must-revalidate, max-age=0"
        );
        assert_eq!(h["pragma"], "no-cache");
        assert_eq!(h["expires"], "-1");
        assert_eq!(h["x-magento-cache-debug"], "HIT");
        assert_eq!(h["grace"], "none");
        for gone in ["x-magento-tags", "server", "x-powered-by", "age", "link"] {
            assert!(!h.contains_key(gone), "{gone} must be removed");
        }
    }

    #[test]
    fn private_and_static_keep_their_cache_control_and_debug_keeps_age() {
        let mut r = resp(&[("cache-control", "private, max-age=10")]);
        prepare_for_client(&mut r, "/customer/x", CacheDebug::Uncacheable, None);
        assert_eq!(r.headers["cache-control"], "private, max-age=10");
        let mut r = resp(&[
            ("cache-control", "max-age=31536000"),
            ("x-magento-debug", "1"),
            ("age", "5"),
        ]);
        prepare_for_client(&mut r, "/pub/static/a.js", CacheDebug::Uncacheable, None);
        assert_eq!(r.headers["cache-control"], "max-age=31536000");
        assert_eq!(r.headers["age"], "5");
        assert!(!r.headers.contains_key("x-magento-debug"));
        assert!(!r.headers.contains_key("grace"));
    }
}
