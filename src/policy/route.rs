//! Which way a request goes, in the order of Magento's `vcl_recv`.

use http::{HeaderMap, Method};

use super::Rules;

/// What Floodgate does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Magento's cache invalidation request.
    Purge,
    /// A method outside the standard set: forwarded unchanged, never cached.
    Tunnel,
    /// Sent to the origin without touching the cache.
    Pass(PassReason),
    /// Looked up in (and filled into) the cache.
    Lookup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassReason {
    Method,
    CustomerOrCheckout,
    HealthCheck,
    StaticOrMedia,
    AuthenticatedGraphql,
    ConfiguredPattern,
}

impl PassReason {
    pub const ALL: [PassReason; 6] = [
        PassReason::Method,
        PassReason::CustomerOrCheckout,
        PassReason::HealthCheck,
        PassReason::StaticOrMedia,
        PassReason::AuthenticatedGraphql,
        PassReason::ConfiguredPattern,
    ];

    /// The `reason` of `floodgate_outcome_reasons_total{outcome="pass"}`.
    pub fn label(self) -> &'static str {
        match self {
            PassReason::Method => "method",
            PassReason::CustomerOrCheckout => "customer_or_checkout",
            PassReason::HealthCheck => "health_check",
            PassReason::StaticOrMedia => "static_or_media",
            PassReason::AuthenticatedGraphql => "authenticated_graphql",
            PassReason::ConfiguredPattern => "configured_pattern",
        }
    }
}

const STANDARD_METHODS: &[&str] = &[
    "GET", "HEAD", "PUT", "POST", "PATCH", "TRACE", "OPTIONS", "DELETE",
];

/// Decides the route for a request whose target is already normalised.
pub fn route(method: &Method, url: &str, headers: &HeaderMap, rules: &Rules) -> Route {
    let method = method.as_str();
    if method == "PURGE" {
        return Route::Purge;
    }
    if !STANDARD_METHODS.contains(&method) {
        return Route::Tunnel;
    }
    if method != "GET" && method != "HEAD" {
        return Route::Pass(PassReason::Method);
    }
    if url.contains("/customer") || url.contains("/checkout") {
        return Route::Pass(PassReason::CustomerOrCheckout);
    }
    if url == "/health_check.php" || url == "/pub/health_check.php" {
        return Route::Pass(PassReason::HealthCheck);
    }
    if ["/static/", "/media/", "/pub/static/", "/pub/media/"]
        .iter()
        .any(|prefix| url.starts_with(prefix))
    {
        return Route::Pass(PassReason::StaticOrMedia);
    }
    if is_graphql(url) && has_bearer(headers) && !headers.contains_key("x-magento-cache-id") {
        return Route::Pass(PassReason::AuthenticatedGraphql);
    }
    if rules
        .extra_pass
        .as_ref()
        .is_some_and(|set| set.is_match(url))
    {
        return Route::Pass(PassReason::ConfiguredPattern);
    }
    Route::Lookup
}

/// A GraphQL request by its path: `/graphql` in the query (`/p?x=/graphql`) does not
/// switch a page to GraphQL keying.
pub fn is_graphql(url: &str) -> bool {
    url.split('?').next().unwrap_or(url).contains("/graphql")
}

pub fn has_bearer(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("Bearer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn rules() -> Rules {
        let mut config = Config::default();
        config.magento.pass_url_patterns = vec!["^/private-sale".into()];
        Rules::new(&config).expect("rules")
    }

    fn get(url: &str) -> Route {
        route(&Method::GET, url, &HeaderMap::new(), &rules())
    }

    #[test]
    fn purge_first_then_tunnel_then_pass_methods() {
        let r = rules();
        let h = HeaderMap::new();
        assert_eq!(
            route(&Method::from_bytes(b"PURGE").unwrap(), "/", &h, &r),
            Route::Purge
        );
        assert_eq!(
            route(&Method::from_bytes(b"PROPFIND").unwrap(), "/", &h, &r),
            Route::Tunnel
        );
        assert_eq!(
            route(&Method::POST, "/a", &h, &r),
            Route::Pass(PassReason::Method)
        );
        assert_eq!(route(&Method::HEAD, "/a", &h, &r), Route::Lookup);
    }

    #[test]
    fn magento_pass_urls() {
        assert_eq!(
            get("/checkout/cart/"),
            Route::Pass(PassReason::CustomerOrCheckout)
        );
        assert_eq!(
            get("/x/customer/section/load"),
            Route::Pass(PassReason::CustomerOrCheckout)
        );
        assert_eq!(
            get("/health_check.php"),
            Route::Pass(PassReason::HealthCheck)
        );
        assert_eq!(
            get("/pub/static/app.js"),
            Route::Pass(PassReason::StaticOrMedia)
        );
        assert_eq!(
            get("/media/catalog/x.jpg"),
            Route::Pass(PassReason::StaticOrMedia)
        );
        assert_eq!(
            get("/private-sale/1"),
            Route::Pass(PassReason::ConfiguredPattern)
        );
        assert_eq!(get("/staticpage.html"), Route::Lookup);
    }

    #[test]
    fn graphql_with_bearer_passes_unless_cache_id() {
        let r = rules();
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(
            route(&Method::GET, "/graphql?query=x", &h, &r),
            Route::Pass(PassReason::AuthenticatedGraphql)
        );
        h.insert("x-magento-cache-id", "id1".parse().unwrap());
        assert_eq!(
            route(&Method::GET, "/graphql?query=x", &h, &r),
            Route::Lookup
        );
    }

    #[test]
    fn graphql_is_known_by_its_path_only() {
        assert!(is_graphql("/graphql?query=x"));
        assert!(is_graphql("/default/graphql"));
        assert!(!is_graphql("/page.html?next=/graphql"));
    }

    #[test]
    fn cookies_and_authorization_alone_do_not_pass() {
        let r = rules();
        let mut h = HeaderMap::new();
        h.insert("cookie", "PHPSESSID=1".parse().unwrap());
        h.insert("authorization", "Basic x".parse().unwrap());
        assert_eq!(route(&Method::GET, "/a.html", &h, &r), Route::Lookup);
    }
}
