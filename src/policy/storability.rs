//! Whether an origin response is stored, following Magento's `vcl_backend_response`.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use pingora::cache::cache_control::CacheControl;

use super::key::Variant;

/// Why a key is remembered as uncacheable ("hit-for-miss"): its requests skip the cache
/// and the coalescing queue until the mark expires or a cacheable response replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitForMiss {
    /// 403/404/5xx, a status a shared cache may not store, no-cache/no-store, TTL <= 0,
    /// `Vary: *` or a `Vary` on a visitor's credentials (Magento: 120 s).
    Uncacheable,
    /// `Cache-Control: private` (Magento: 24 h).
    Private,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storability {
    Store {
        ttl: Duration,
    },
    HitForMiss(HitForMiss),
    /// Not stored under this key, with no mark: the next request tries again.
    NotStored(NotCached),
}

/// Why a response to a lookup was not stored, in the operator's terms: the `reason` of
/// `floodgate_outcome_reasons_total{outcome="uncacheable"}` and of the insights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCached {
    /// 403/404/5xx, or a status a shared cache does not store (400, 401, 405 …).
    Status,
    /// `Cache-Control: private` (a layout block with `cacheable="false"`, in Magento).
    Private,
    /// `no-cache`/`no-store` (or `Surrogate-Control: no-store`).
    NoStore,
    /// A TTL of 0 or less: `max-age=0`, an `Expires` in the past.
    ZeroTtl,
    /// `Vary: *`, or a `Vary` on the visitor's credentials.
    Vary,
    /// The page sets `X-Magento-Vary` for a request that did not carry it.
    SetsVaryCookie,
    /// A GraphQL answer whose `X-Magento-Cache-Id` is not the request's.
    GraphqlIdMismatch,
    /// The page's `Vary` changed, or it has `cache.max_variants` variants already.
    Variants,
}

impl NotCached {
    pub const ALL: [NotCached; 8] = [
        NotCached::Status,
        NotCached::Private,
        NotCached::NoStore,
        NotCached::ZeroTtl,
        NotCached::Vary,
        NotCached::SetsVaryCookie,
        NotCached::GraphqlIdMismatch,
        NotCached::Variants,
    ];

    pub fn label(self) -> &'static str {
        match self {
            NotCached::Status => "status",
            NotCached::Private => "private",
            NotCached::NoStore => "no_store",
            NotCached::ZeroTtl => "ttl_zero",
            NotCached::Vary => "vary",
            NotCached::SetsVaryCookie => "sets_vary_cookie",
            NotCached::GraphqlIdMismatch => "graphql_id_mismatch",
            NotCached::Variants => "variants",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub storability: Storability,
    /// Cacheable GET/HEAD responses never set cookies for whoever happens to be first.
    pub strip_set_cookie: bool,
    /// Why it is not stored (`None` when it is).
    pub why: Option<NotCached>,
}

/// Decides for a response to a `Route::Lookup` request.
pub fn decide(
    status: StatusCode,
    headers: &HeaderMap,
    variant: &Variant,
    default_ttl: Duration,
    now: SystemTime,
) -> Decision {
    let keep_cookies = |kind, why| Decision {
        storability: Storability::HitForMiss(kind),
        strip_set_cookie: false,
        why: Some(why),
    };
    let code = status.as_u16();
    if code == 403 || code == 404 || code >= 500 {
        return keep_cookies(HitForMiss::Uncacheable, NotCached::Status);
    }
    let cc = CacheControl::from_headers_named("cache-control", headers);
    // Varnish gives a TTL only to what a shared cache may store by default; anything
    // else (400, 401, 405, 429 …) is never stored, whatever its headers claim, so a
    // client that makes the origin reject it cannot get the rejection cached for all.
    let grants_ttl = cc.as_ref().is_some_and(|cc| {
        cc.s_maxage().ok().flatten().is_some() || cc.max_age().ok().flatten().is_some()
    }) || headers.contains_key(http::header::EXPIRES);
    let storable_status = matches!(code, 200 | 203 | 204 | 300 | 301 | 304 | 410 | 414)
        || (matches!(code, 302 | 307) && grants_ttl);
    if !storable_status {
        return keep_cookies(HitForMiss::Uncacheable, NotCached::Status);
    }
    if cc.as_ref().is_some_and(|cc| cc.private()) {
        return keep_cookies(HitForMiss::Private, NotCached::Private);
    }
    let surrogate = CacheControl::from_headers_named("surrogate-control", headers);
    let no_store = match &surrogate {
        Some(sc) => sc.no_store(),
        None => cc.as_ref().is_some_and(|cc| cc.no_cache() || cc.no_store()),
    };
    let vary_star = headers.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|p| p.trim_ascii() == b"*")
    });
    let ttl = ttl(cc.as_ref(), headers, default_ttl, now);
    if no_store {
        return keep_cookies(HitForMiss::Uncacheable, NotCached::NoStore);
    }
    if vary_star {
        return keep_cookies(HitForMiss::Uncacheable, NotCached::Vary);
    }
    let Some(ttl) = ttl else {
        return keep_cookies(HitForMiss::Uncacheable, NotCached::ZeroTtl);
    };
    let storability = if !variant.is_graphql_with_cache_id()
        && variant.vary_cookie.is_none()
        && sets_cookie(headers, "X-Magento-Vary")
    {
        // The page was rendered for a context the key does not know yet.
        Storability::NotStored(NotCached::SetsVaryCookie)
    } else if variant.graphql_cache_id.is_some()
        && headers.get("x-magento-cache-id").map(|v| v.as_bytes())
            != variant.graphql_cache_id.as_deref().map(str::as_bytes)
    {
        Storability::NotStored(NotCached::GraphqlIdMismatch)
    } else {
        Storability::Store { ttl }
    };
    let why = match storability {
        Storability::NotStored(why) => Some(why),
        _ => None,
    };
    Decision {
        storability,
        strip_set_cookie: true,
        why,
    }
}

impl Variant {
    fn is_graphql_with_cache_id(&self) -> bool {
        self.is_graphql && self.graphql_cache_id.is_some()
    }
}

/// s-maxage, else max-age, else Expires, else the default; `None` when zero or negative.
fn ttl(
    cc: Option<&CacheControl>,
    headers: &HeaderMap,
    default_ttl: Duration,
    now: SystemTime,
) -> Option<Duration> {
    let from_cc = cc.and_then(|cc| {
        cc.s_maxage()
            .ok()
            .flatten()
            .or_else(|| cc.max_age().ok().flatten())
    });
    let ttl = match from_cc {
        Some(secs) => Duration::from_secs(secs.into()),
        None => match headers.get(http::header::EXPIRES) {
            // An unparseable Expires (Magento's own "-1") means "already expired".
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|v| httpdate::parse_http_date(v).ok())
                .and_then(|at| at.duration_since(now).ok())
                .unwrap_or_default(),
            None => default_ttl,
        },
    };
    (ttl.as_secs() > 0).then_some(ttl)
}

fn sets_cookie(headers: &HeaderMap, name: &str) -> bool {
    headers.get_all(http::header::SET_COOKIE).iter().any(|v| {
        v.as_bytes().starts_with(name.as_bytes()) && v.as_bytes().get(name.len()) == Some(&b'=')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Duration = Duration::from_secs(120);

    fn decide_with(status: u16, pairs: &[(&str, &str)], variant: &Variant) -> Decision {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        decide(
            StatusCode::from_u16(status).unwrap(),
            &h,
            variant,
            DEFAULT,
            SystemTime::now(),
        )
    }

    fn d(status: u16, pairs: &[(&str, &str)]) -> Decision {
        decide_with(status, pairs, &Variant::default())
    }

    #[test]
    fn ttl_order_s_maxage_max_age_expires_default() {
        let store = |secs| Storability::Store {
            ttl: Duration::from_secs(secs),
        };
        assert_eq!(
            d(
                200,
                &[("cache-control", "public, max-age=60, s-maxage=86400")]
            )
            .storability,
            store(86400)
        );
        assert_eq!(
            d(200, &[("cache-control", "public, max-age=60")]).storability,
            store(60)
        );
        assert_eq!(d(200, &[]).storability, store(120));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
        match d(200, &[("expires", &later)]).storability {
            Storability::Store { ttl } => assert!(ttl.as_secs() > 3500 && ttl.as_secs() <= 3600),
            other => panic!("expected store, got {other:?}"),
        }
    }

    #[test]
    fn only_statuses_varnish_gives_a_ttl_are_stored() {
        for status in [400, 401, 405, 406, 429, 206, 303, 308, 418] {
            assert_eq!(
                d(status, &[("cache-control", "public, max-age=86400")]).storability,
                Storability::HitForMiss(HitForMiss::Uncacheable),
                "{status}"
            );
        }
        for status in [200, 203, 300, 301, 410, 414] {
            assert!(matches!(
                d(status, &[]).storability,
                Storability::Store { .. }
            ));
        }
        // 302 and 307 only when Cache-Control or Expires grants a TTL.
        assert_eq!(
            d(302, &[]).storability,
            Storability::HitForMiss(HitForMiss::Uncacheable)
        );
        assert!(matches!(
            d(307, &[("cache-control", "max-age=60")]).storability,
            Storability::Store { .. }
        ));
    }

    #[test]
    fn every_unstored_answer_says_why() {
        let why = |status, pairs: &[(&str, &str)]| d(status, pairs).why;
        assert_eq!(why(200, &[]), None);
        assert_eq!(why(404, &[]), Some(NotCached::Status));
        assert_eq!(why(401, &[]), Some(NotCached::Status));
        assert_eq!(
            why(200, &[("cache-control", "private, max-age=60")]),
            Some(NotCached::Private)
        );
        assert_eq!(
            why(200, &[("cache-control", "no-store")]),
            Some(NotCached::NoStore)
        );
        assert_eq!(
            why(200, &[("cache-control", "no-cache, max-age=60")]),
            Some(NotCached::NoStore)
        );
        assert_eq!(
            why(200, &[("cache-control", "max-age=0")]),
            Some(NotCached::ZeroTtl)
        );
        assert_eq!(why(200, &[("expires", "-1")]), Some(NotCached::ZeroTtl));
        assert_eq!(why(200, &[("vary", "*")]), Some(NotCached::Vary));
        assert_eq!(
            why(200, &[("set-cookie", "X-Magento-Vary=abc; path=/")]),
            Some(NotCached::SetsVaryCookie)
        );
    }

    #[test]
    fn error_statuses_are_hit_for_miss() {
        for status in [403, 404, 500, 503] {
            assert_eq!(
                d(status, &[]).storability,
                Storability::HitForMiss(HitForMiss::Uncacheable)
            );
        }
        assert!(matches!(d(301, &[]).storability, Storability::Store { .. }));
    }

    #[test]
    fn private_keeps_cookies_for_a_day_mark() {
        let dec = d(
            200,
            &[
                ("cache-control", "private, max-age=100"),
                ("set-cookie", "a=1"),
            ],
        );
        assert_eq!(
            dec.storability,
            Storability::HitForMiss(HitForMiss::Private)
        );
        assert!(!dec.strip_set_cookie);
    }

    #[test]
    fn no_cache_no_store_zero_ttl_vary_star() {
        for pairs in [
            vec![(
                "cache-control",
                "no-store, no-cache, must-revalidate, max-age=0",
            )],
            vec![("cache-control", "max-age=60, no-cache")],
            vec![("cache-control", "max-age=0")],
            vec![("cache-control", "max-age=60"), ("vary", "Accept, *")],
            vec![
                ("surrogate-control", "no-store"),
                ("cache-control", "max-age=60"),
            ],
            vec![("expires", "-1")],
        ] {
            let dec = d(200, &pairs);
            assert_eq!(
                dec.storability,
                Storability::HitForMiss(HitForMiss::Uncacheable),
                "{pairs:?}"
            );
            assert!(!dec.strip_set_cookie);
        }
        // Surrogate-Control without no-store overrides a no-cache Cache-Control.
        let dec = d(
            200,
            &[
                ("surrogate-control", "max-age=60"),
                ("cache-control", "max-age=60, no-cache"),
            ],
        );
        assert!(matches!(dec.storability, Storability::Store { .. }));
    }

    #[test]
    fn cacheable_strips_cookies_and_refuses_new_vary_cookie() {
        let dec = d(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("set-cookie", "PHPSESSID=1"),
            ],
        );
        assert!(matches!(dec.storability, Storability::Store { .. }));
        assert!(dec.strip_set_cookie);
        let dec = d(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("set-cookie", "X-Magento-Vary=abc; path=/"),
            ],
        );
        assert_eq!(
            dec.storability,
            Storability::NotStored(NotCached::SetsVaryCookie)
        );
        assert!(dec.strip_set_cookie);
        let with_cookie = Variant {
            vary_cookie: Some("abc".into()),
            ..Variant::default()
        };
        let dec = decide_with(200, &[("set-cookie", "X-Magento-Vary=abc")], &with_cookie);
        assert!(matches!(dec.storability, Storability::Store { .. }));
    }

    #[test]
    fn graphql_cache_id_must_match() {
        let v = Variant {
            graphql_cache_id: Some("c1".into()),
            is_graphql: true,
            ..Variant::default()
        };
        assert!(matches!(
            decide_with(200, &[("x-magento-cache-id", "c1")], &v).storability,
            Storability::Store { .. }
        ));
        assert_eq!(
            decide_with(200, &[("x-magento-cache-id", "c2")], &v).storability,
            Storability::NotStored(NotCached::GraphqlIdMismatch)
        );
    }
}
