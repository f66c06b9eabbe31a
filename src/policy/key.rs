//! What makes two requests the same page, in the order of Magento's `vcl_hash`.
//!
//! Nothing else varies the key: other cookies, Accept-Encoding and the origin's `Vary`
//! are ignored, as in Magento's VCL, so one page is stored once.

use http::HeaderMap;
use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheKey;

use super::route::{has_bearer, is_graphql};
use super::Rules;

/// The request's values that decide its cache variant, kept for the response decision.
#[derive(Debug, Default, Clone)]
pub struct Variant {
    /// Value of the `X-Magento-Vary` cookie (customer group, currency, store …).
    pub vary_cookie: Option<String>,
    /// GraphQL's `X-Magento-Cache-Id` request header, when the URL is `/graphql`.
    pub graphql_cache_id: Option<String>,
    pub is_graphql: bool,
}

impl Variant {
    pub fn of(url: &str, headers: &HeaderMap) -> Self {
        let is_graphql = is_graphql(url);
        Self {
            vary_cookie: cookie(headers, "X-Magento-Vary").map(str::to_string),
            graphql_cache_id: if is_graphql {
                header_str(headers, "x-magento-cache-id").map(str::to_string)
            } else {
                None
            },
            is_graphql,
        }
    }
}

/// Builds the cache key. Components are length-prefixed so no two different requests
/// can produce the same byte string by shifting a separator.
pub fn cache_key(url: &str, headers: &HeaderMap, variant: &Variant, rules: &Rules) -> CacheKey {
    let mut primary = Vec::with_capacity(url.len() + 96);
    // GraphQL requests that carry X-Magento-Cache-Id are varied by it instead of the cookie.
    let vary = if variant.graphql_cache_id.is_some() {
        None
    } else {
        variant.vary_cookie.as_deref()
    };
    push(&mut primary, vary.map(str::as_bytes));
    push(
        &mut primary,
        headers.get(&rules.ssl_offload_header).map(|v| v.as_bytes()),
    );
    push(
        &mut primary,
        design_exception(headers, rules).map(str::as_bytes),
    );
    if variant.is_graphql {
        push(
            &mut primary,
            variant.graphql_cache_id.as_deref().map(str::as_bytes),
        );
        push(
            &mut primary,
            Some(if has_bearer(headers) {
                b"bearer"
            } else {
                b"anon"
            }),
        );
        push(&mut primary, headers.get("store").map(|v| v.as_bytes()));
        push(
            &mut primary,
            headers.get("content-currency").map(|v| v.as_bytes()),
        );
    }
    push(&mut primary, Some(url.as_bytes()));
    push(
        &mut primary,
        headers.get(http::header::HOST).map(|v| v.as_bytes()),
    );
    hashed_once(primary)
}

/// A key whose hash is worked out here, once: Pingora's `CacheKey` hashes its primary
/// key (Blake2b) on every `primary_bin`/`combined_bin` call, and a hit asks for it
/// several times (hit-for-miss marks, lock, lookup). The override is that same hash, so
/// keys, stored objects and other nodes' keys are unchanged.
fn hashed_once(primary: Vec<u8>) -> CacheKey {
    let mut key = CacheKey::new(primary, "");
    let hash = key.primary_bin();
    key.set_primary_bin_override(hash);
    key
}

/// `key` for one variant of a page whose origin answers `Vary` on `names`: the page's
/// key extended with the request's values of those headers (every line, in order).
pub fn with_variance(key: &CacheKey, names: &[http::HeaderName], headers: &HeaderMap) -> CacheKey {
    let mut primary = key.primary_key().to_vec();
    for name in names {
        let mut values = headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            push(&mut primary, None);
            continue;
        }
        let joined: Vec<u8> = values
            .enumerate()
            .flat_map(|(i, v)| {
                let sep: &[u8] = if i == 0 { b"" } else { b"\n" };
                sep.iter().chain(v.as_bytes()).copied().collect::<Vec<u8>>()
            })
            .collect();
        push(&mut primary, Some(&joined));
    }
    hashed_once(primary)
}

fn push(out: &mut Vec<u8>, part: Option<&[u8]>) {
    match part {
        // u32::MAX marks "absent", so an empty value and a missing one differ.
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        Some(bytes) => {
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }
}

fn design_exception<'r>(headers: &HeaderMap, rules: &'r Rules) -> Option<&'r str> {
    if rules.design_exceptions.is_empty() {
        return None;
    }
    let ua = header_str(headers, "user-agent")?;
    rules
        .design_exceptions
        .iter()
        .find(|(re, _)| re.is_match(ua))
        .map(|(_, value)| value.as_str())
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The value of cookie `name`, looking through every `Cookie` header (HTTP/2 splits them).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DesignException};

    fn rules() -> Rules {
        let mut config = Config::default();
        config.magento.design_exceptions = vec![DesignException {
            user_agent: "iPhone|Android".into(),
            value: "mobile".into(),
        }];
        Rules::new(&config).expect("rules")
    }

    fn key(url: &str, pairs: &[(&str, &str)]) -> [u8; 16] {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let variant = Variant::of(url, &h);
        cache_key(url, &h, &variant, &rules()).combined_bin()
    }

    #[test]
    fn the_hash_worked_out_once_is_pingoras_own() {
        // Stored objects, disk files and other nodes' keys depend on the hash staying
        // Pingora's: the override must only save the work, never change the value.
        let mut h = HeaderMap::new();
        h.insert("host", "shop".parse().unwrap());
        let variant = Variant::of("/a?b=1", &h);
        let key = cache_key("/a?b=1", &h, &variant, &rules());
        let plain = CacheKey::new(key.primary_key().to_vec(), "");
        assert_eq!(key.primary_bin(), plain.primary_bin());
        assert_eq!(key.combined_bin(), plain.combined_bin());
        let names = [http::HeaderName::from_static("accept-language")];
        let varied = with_variance(&key, &names, &h);
        let plain = CacheKey::new(varied.primary_key().to_vec(), "");
        assert_eq!(varied.combined_bin(), plain.combined_bin());
        assert_ne!(varied.combined_bin(), key.combined_bin());
    }

    #[test]
    fn variance_separates_values_and_absence() {
        let mut h = HeaderMap::new();
        h.insert("host", "shop".parse().unwrap());
        let variant = Variant::of("/a", &h);
        let base = cache_key("/a", &h, &variant, &rules());
        let names = [http::HeaderName::from_static("accept-language")];
        let absent = with_variance(&base, &names, &h).combined_bin();
        h.insert("accept-language", "".parse().unwrap());
        let empty = with_variance(&base, &names, &h).combined_bin();
        h.insert("accept-language", "de".parse().unwrap());
        let de = with_variance(&base, &names, &h).combined_bin();
        h.insert("accept-language", "fr".parse().unwrap());
        let fr = with_variance(&base, &names, &h).combined_bin();
        let all = [base.combined_bin(), absent, empty, de, fr];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn other_cookies_and_accept_encoding_do_not_vary() {
        let base = key("/a", &[("host", "shop")]);
        assert_eq!(
            base,
            key(
                "/a",
                &[("host", "shop"), ("cookie", "PHPSESSID=9; form_key=x")]
            )
        );
        assert_eq!(
            base,
            key("/a", &[("host", "shop"), ("accept-encoding", "gzip")])
        );
    }

    #[test]
    fn vary_cookie_proto_host_design_vary() {
        let base = key("/a", &[("host", "shop")]);
        assert_ne!(
            base,
            key(
                "/a",
                &[("host", "shop"), ("cookie", "a=1; X-Magento-Vary=abc")]
            )
        );
        assert_ne!(
            base,
            key("/a", &[("host", "shop"), ("x-forwarded-proto", "https")])
        );
        assert_ne!(base, key("/a", &[("host", "other")]));
        assert_ne!(
            base,
            key("/a", &[("host", "shop"), ("user-agent", "Mozilla iPhone")])
        );
        assert_eq!(
            base,
            key("/a", &[("host", "shop"), ("user-agent", "Mozilla Linux")])
        );
        assert_ne!(base, key("/b", &[("host", "shop")]));
    }

    #[test]
    fn graphql_varies_by_cache_id_not_cookie() {
        let with_cookie = key(
            "/graphql?q=1",
            &[
                ("host", "s"),
                ("x-magento-cache-id", "c1"),
                ("cookie", "X-Magento-Vary=v"),
            ],
        );
        let without = key(
            "/graphql?q=1",
            &[("host", "s"), ("x-magento-cache-id", "c1")],
        );
        assert_eq!(with_cookie, without);
        assert_ne!(
            without,
            key(
                "/graphql?q=1",
                &[("host", "s"), ("x-magento-cache-id", "c2")]
            )
        );
        assert_ne!(
            without,
            key(
                "/graphql?q=1",
                &[("host", "s"), ("x-magento-cache-id", "c1"), ("store", "de")]
            )
        );
        assert_ne!(
            without,
            key(
                "/graphql?q=1",
                &[
                    ("host", "s"),
                    ("x-magento-cache-id", "c1"),
                    ("content-currency", "EUR")
                ]
            )
        );
    }
}
