//! Magento's caching rules, as its generated VCL applies them, kept free of Pingora types
//! where possible so each rule can be read, and tested, on its own.
//!
//! A request flows through `forward` (what the key and the origin both see), `normalize` (the URL the cache and the origin see), `route`
//! (purge, tunnel, pass or look up), `key` (what varies a page); a response through
//! `storability` (stored, hit-for-miss, or neither) and `delivery` (what the browser sees).

pub mod client;
pub mod delivery;
pub mod forward;
pub mod key;
pub mod normalize;
pub mod route;
pub mod storability;
pub mod vary;

use regex::Regex;

use crate::config::{invalid, Config, ConfigError};

/// The compiled form of the Magento rules in the configuration, built once at start-up
/// so the request path does no regex compilation or string parsing of the config.
pub struct Rules {
    pub normalizer: normalize::UrlNormalizer,
    pub extra_pass: Option<regex::RegexSet>,
    pub design_exceptions: Vec<(Regex, String)>,
    pub ssl_offload_header: http::HeaderName,
    /// Request headers removed before lookup and forwarding.
    pub stripped_headers: Vec<http::HeaderName>,
}

impl Rules {
    /// Compiles the rules; `config::load` has already checked every pattern, and an
    /// error still names the key.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let m = &config.magento;
        let extra_pass = if m.pass_url_patterns.is_empty() {
            None
        } else {
            Some(
                regex::RegexSet::new(&m.pass_url_patterns)
                    .map_err(|e| invalid("magento.pass_url_patterns", e.to_string()))?,
            )
        };
        let design_exceptions = m
            .design_exceptions
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Regex::new(&d.user_agent)
                    .map(|re| (re, d.value.clone()))
                    .map_err(|e| {
                        invalid(
                            &format!("magento.design_exceptions[{i}].user_agent"),
                            e.to_string(),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let header = |key: &str, name: &str| {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(key, format!("`{name}` is not a valid header name")))
        };
        Ok(Self {
            normalizer: normalize::UrlNormalizer::new(&m.marketing_params),
            extra_pass,
            design_exceptions,
            ssl_offload_header: header("magento.ssl_offload_header", &m.ssl_offload_header)?,
            stripped_headers: m
                .strip_request_headers
                .iter()
                .map(|h| header("magento.strip_request_headers", h))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Request headers the cache key holds already, which an origin's `Vary` may name
    /// without splitting the page further.
    pub fn keyed_headers(&self, variant: &key::Variant) -> Vec<&str> {
        let mut keyed = vec![self.ssl_offload_header.as_str()];
        if variant.is_graphql {
            keyed.extend(["store", "content-currency", "x-magento-cache-id"]);
        }
        keyed
    }

    /// A request's way through the rules: its normalised URL, its route, and (for a
    /// lookup) what varies it.
    pub fn classify(
        &self,
        method: &http::Method,
        target: &[u8],
        headers: &http::HeaderMap,
    ) -> (String, route::Route, key::Variant) {
        let url = match std::str::from_utf8(target) {
            Ok(t) => self.normalizer.normalize(t).into_owned(),
            // Bytes that are not UTF-8 are percent-encoded first (found by fuzzing):
            // replaced by U+FFFD instead, two different targets would share a key, and
            // the URL would skip normalisation.
            Err(_) => self
                .normalizer
                .normalize(&normalize::percent_encode_non_ascii(target))
                .into_owned(),
        };
        let route = route::route(method, &url, headers, self);
        let variant = if route == route::Route::Lookup {
            key::Variant::of(&url, headers)
        } else {
            key::Variant::default()
        };
        (url, route, variant)
    }
}
