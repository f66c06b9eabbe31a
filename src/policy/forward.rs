//! The request the cache key is made from is the request Magento receives.
//!
//! Invariant: after [`prepare`], nothing between the key and the origin can change a
//! header the key or a learnt `Vary` reads. Pingora's upstream policy removes every
//! header a client nominates in `Connection:` and the standard hop-by-hop headers; so the
//! nominations are applied here, before the key is made, and the `Connection` header is
//! left naming only the standard hop-by-hop headers, which nothing keys on (and `Vary`
//! naming one of them is never shared, `policy::vary`). Cookie lines and HTTP/2 cookie
//! crumbs become one line (RFC 9113 §8.2.3), because nginx before 1.23 hands PHP only
//! the last of several; a header the key reads as one value keeps only its first line,
//! the one the key read.
//!
//! Why here and not in `upstream_request_filter`: a fresh hit never reaches that hook,
//! and the key must be made from the cleaned request for hits and misses alike.

use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;

/// Headers Pingora removes from every request it forwards (its `strip_hop_by_hop`),
/// and `close`, a `Connection` option that names no header.
pub const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Headers the key reads as one value (`HeaderMap::get`, the first line): a second line
/// would reach PHP, which keeps the last of repeated headers, behind the key's back.
pub const KEYED_SINGLE: [&str; 6] = [
    "host",
    "user-agent",
    "authorization",
    "store",
    "content-currency",
    "x-magento-cache-id",
];

/// Pingora refuses a request with this many `Connection` options or more.
const MAX_NOMINATIONS: usize = 10;

/// Why a request cannot be forwarded as it is: the client gets `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the Connection header names {0} options; at most 9 are accepted")]
    TooManyNominations(usize),
    #[error("the Connection header names a protected header ({0})")]
    Protected(String),
    #[error("the Connection header holds an option that is not a token")]
    NotAToken,
}

/// Whether `name` is a standard hop-by-hop header.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name) || name == "close"
}

/// A request's headers as `prepare` edits them (Pingora's `RequestHeader` keeps its own
/// map, changed only through its methods).
pub trait EditHeaders {
    fn headers(&self) -> &HeaderMap;
    fn remove(&mut self, name: &HeaderName);
    fn set(&mut self, name: HeaderName, value: HeaderValue);
}

impl EditHeaders for HeaderMap {
    fn headers(&self) -> &HeaderMap {
        self
    }
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }
}

/// Applies the client's `Connection` nominations, joins cookie lines and keeps one line
/// of each single-valued keyed header; see the module's invariant. A request that
/// carries none of these is not touched.
pub fn prepare(req: &mut impl EditHeaders) -> Result<(), Refused> {
    if req.headers().contains_key(header::CONNECTION) {
        apply_nominations(req)?;
    }
    // Most requests (every hit) repeat no header: nothing more to look at.
    let headers = req.headers();
    if headers.len() == headers.keys_len() {
        return Ok(());
    }
    if let Some(joined) = joined_cookies(req.headers()) {
        req.set(header::COOKIE, joined);
    }
    for name in KEYED_SINGLE {
        let name = HeaderName::from_static(name);
        let headers = req.headers();
        if headers.get_all(&name).iter().nth(1).is_some() {
            if let Some(first) = headers.get(&name).cloned() {
                req.set(name, first);
            }
        }
    }
    Ok(())
}

/// Removes every header the client nominated, as Pingora would after the key was made,
/// and leaves `Connection` with the standard options only. The checks are Pingora's
/// (`pingora-proxy` `ConnectionNominations::parse`), so a request it would refuse is
/// refused here, before anything is looked up.
fn apply_nominations(req: &mut impl EditHeaders) -> Result<(), Refused> {
    let mut nominated: Vec<HeaderName> = Vec::new();
    let mut kept: Vec<&'static str> = Vec::new();
    let mut count = 0;
    for value in req.headers().get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|b| *b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() {
                continue;
            }
            count += 1;
            if count >= MAX_NOMINATIONS {
                return Err(Refused::TooManyNominations(count));
            }
            if token.starts_with(b":") {
                return Err(Refused::Protected(
                    String::from_utf8_lossy(token).into_owned(),
                ));
            }
            if !token.iter().all(|b| is_tchar(*b)) {
                return Err(Refused::NotAToken);
            }
            let name = HeaderName::from_bytes(token).map_err(|_| Refused::NotAToken)?;
            if matches!(
                name.as_str(),
                "host" | "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
            ) {
                return Err(Refused::Protected(name.as_str().to_string()));
            }
            match HOP_BY_HOP
                .iter()
                .chain(&["close"])
                .find(|h| **h == name.as_str())
            {
                Some(standard) if !kept.contains(standard) => kept.push(standard),
                Some(_) => {}
                None => nominated.push(name),
            }
        }
    }
    for name in &nominated {
        req.remove(name);
    }
    if kept.is_empty() {
        req.remove(&header::CONNECTION);
    } else if let Ok(value) = HeaderValue::from_str(&kept.join(", ")) {
        req.set(header::CONNECTION, value);
    }
    Ok(())
}

/// Several `Cookie` lines (HTTP/2 crumbs, or a client that sent two) as one, joined
/// with `"; "` in their order; `None` when there is at most one.
fn joined_cookies(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut lines = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (lines.next(), lines.next()) else {
        return None;
    };
    let mut joined = Vec::with_capacity(first.len() * 4);
    for (i, line) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(line.as_bytes());
    }
    // Valid values joined with "; " are a valid value.
    HeaderValue::from_bytes(&joined).ok()
}

/// A `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// What Pingora 0.9.1's default upstream policy leaves of a request's headers
/// (`pingora-proxy/src/proxy_common.rs`, `sanitize_h1_upstream_request`): nominated
/// headers and the standard hop-by-hop ones removed, `Connection`/`Upgrade` put back for
/// a WebSocket upgrade. `None` where Pingora refuses the request. Kept beside
/// [`prepare`] so tests and the fuzz target can hold the invariant against it.
pub fn as_pingora_forwards(headers: &HeaderMap) -> Option<HeaderMap> {
    let mut out = headers.clone();
    let mut count = 0;
    let mut nominated = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|b| *b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() {
                continue;
            }
            count += 1;
            if count >= MAX_NOMINATIONS
                || token.starts_with(b":")
                || !token.iter().all(|b| is_tchar(*b))
            {
                return None;
            }
            let name = HeaderName::from_bytes(token).ok()?;
            if matches!(
                name.as_str(),
                "host" | "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
            ) {
                return None;
            }
            nominated.push(name);
        }
    }
    for name in nominated {
        out.remove(name);
    }
    for name in HOP_BY_HOP {
        out.remove(name);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in lines {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        h
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    #[test]
    fn nominated_headers_are_gone_before_the_key_and_connection_keeps_the_standard_options() {
        let mut h = headers(&[
            ("cookie", "X-Magento-Vary=B"),
            ("accept-language", "de"),
            ("user-agent", "iPhone"),
            ("connection", "keep-alive, Cookie"),
            ("connection", "Accept-Language,User-Agent, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        prepare(&mut h).expect("forwardable");
        assert!(h.get("cookie").is_none());
        assert!(h.get("accept-language").is_none());
        assert!(h.get("user-agent").is_none());
        assert_eq!(values(&h, "connection"), ["keep-alive, upgrade"]);
        assert_eq!(
            values(&h, "upgrade"),
            ["websocket"],
            "the upgrade is Pingora's"
        );
    }

    #[test]
    fn what_pingora_refuses_is_refused_before_the_key() {
        for connection in [
            "Host",
            "x-forwarded-for",
            "X-Forwarded-Proto",
            ":authority",
            "\"Cookie\"",
            "a, b, c, d, e, f, g, h, i, j",
        ] {
            let mut h = headers(&[("connection", connection), ("cookie", "a=1")]);
            assert!(prepare(&mut h).is_err(), "{connection}");
            assert!(as_pingora_forwards(&h).is_none(), "{connection}");
        }
        let mut nine = headers(&[("connection", "a, b, c, d, e, f, g, h, i")]);
        assert!(prepare(&mut nine).is_ok());
    }

    #[test]
    fn cookie_lines_and_crumbs_become_one_line_in_order() {
        let mut h = headers(&[
            ("cookie", "PHPSESSID=abc"),
            ("cookie", "X-Magento-Vary=B"),
            ("cookie", "form_key=xyz"),
        ]);
        prepare(&mut h).expect("forwardable");
        assert_eq!(
            values(&h, "cookie"),
            ["PHPSESSID=abc; X-Magento-Vary=B; form_key=xyz"]
        );
        let mut one = headers(&[("cookie", "a=1; b=2")]);
        prepare(&mut one).expect("forwardable");
        assert_eq!(values(&one, "cookie"), ["a=1; b=2"]);
    }

    #[test]
    fn a_single_valued_keyed_header_keeps_the_line_the_key_reads() {
        let mut h = headers(&[
            ("store", "default"),
            ("store", "de"),
            ("user-agent", "a"),
            ("user-agent", "b"),
            ("accept-language", "de"),
            ("accept-language", "fr"),
        ]);
        prepare(&mut h).expect("forwardable");
        assert_eq!(values(&h, "store"), ["default"]);
        assert_eq!(values(&h, "user-agent"), ["a"]);
        // A Vary-keyed header is keyed on all its lines, in order, as the origin gets them.
        assert_eq!(values(&h, "accept-language"), ["de", "fr"]);
    }

    #[test]
    fn nothing_keyed_is_hop_by_hop() {
        for name in KEYED_SINGLE.iter().chain(&["cookie", "x-forwarded-proto"]) {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }

    /// The invariant, over many generated requests: after `prepare`, Pingora forwards
    /// every header that is not hop-by-hop exactly as the key saw it.
    #[test]
    fn after_prepare_pingora_forwards_every_keyable_header_unchanged() {
        let names = [
            "cookie",
            "user-agent",
            "accept-language",
            "store",
            "x-magento-cache-id",
            "authorization",
            "x-custom",
            "keep-alive",
            "te",
            "upgrade",
        ];
        let tokens = [
            "close",
            "keep-alive",
            "Cookie",
            "user-agent",
            "Accept-Language",
            "X-Custom",
            "te",
            "upgrade",
            "store",
            "",
        ];
        // A small deterministic generator: every request of up to 4 headers and up to 3
        // Connection options drawn from the lists above.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..20_000 {
            let mut h = HeaderMap::new();
            for _ in 0..next(5) {
                let name = names[next(names.len())];
                h.append(name, HeaderValue::from_static("v"));
                if next(3) == 0 {
                    h.append(name, HeaderValue::from_static("w"));
                }
            }
            let options: Vec<&str> = (0..next(4)).map(|_| tokens[next(tokens.len())]).collect();
            if !options.is_empty() {
                h.append(
                    header::CONNECTION,
                    HeaderValue::from_str(&options.join(", ")).expect("value"),
                );
            }
            if prepare(&mut h).is_err() {
                continue;
            }
            let forwarded = as_pingora_forwards(&h).expect("Pingora forwards a prepared request");
            for name in h.keys() {
                if is_hop_by_hop(name.as_str()) {
                    continue;
                }
                assert_eq!(
                    values(&h, name.as_str()),
                    values(&forwarded, name.as_str()),
                    "{name} changed between the key and the origin: {h:?}"
                );
            }
            assert!(h.get_all("cookie").iter().count() <= 1);
        }
    }
}
