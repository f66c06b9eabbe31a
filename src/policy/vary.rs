//! The origin's `Vary`, as a shared cache must honour it: a page that varies on a
//! visitor's credentials is never shared, and one that varies on another request header
//! is stored once per value of that header.
//!
//! Magento's own pages send only `Vary: Accept-Encoding`, which gzip storage makes moot;
//! this is for extensions and custom pages that send more (docs/magento-cache-protocol.md).

use http::{HeaderMap, HeaderName};

/// What a response's `Vary` asks of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    /// Nothing beyond what the key already holds.
    Nothing,
    /// `Cookie` or `Authorization`: the answer is one visitor's; never stored shared.
    Credentials,
    /// Stored per value of these request headers (lowercase, sorted, each once).
    Headers(Vec<HeaderName>),
}

/// Request headers the cache key or the stored body already account for.
fn accounted(name: &str, keyed: &[&str]) -> bool {
    // Accept-Encoding: bodies are stored gzipped and inflated for clients that need it.
    name == "accept-encoding" || name == "host" || keyed.contains(&name)
}

/// Reads `Vary`; `keyed` names the request headers the key holds already (the
/// SSL-offload header; for GraphQL `store`, `content-currency`, `x-magento-cache-id`).
/// `Vary: *` is decided elsewhere (never stored).
pub fn of(headers: &HeaderMap, keyed: &[&str]) -> Vary {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(http::header::VARY) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part == b"*" {
                continue;
            }
            let Ok(name) = HeaderName::from_bytes(part) else {
                // A name that is not a header name cannot be matched: not shareable.
                return Vary::Credentials;
            };
            // A hop-by-hop header never reaches the origin as the key would read it
            // (`policy::forward`): a page varying on one cannot be shared either.
            if name == http::header::COOKIE
                || name == http::header::AUTHORIZATION
                || super::forward::is_hop_by_hop(name.as_str())
            {
                return Vary::Credentials;
            }
            if !accounted(name.as_str(), keyed) && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if names.is_empty() {
        return Vary::Nothing;
    }
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    Vary::Headers(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vary(values: &[&str]) -> Vary {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::VARY, v.parse().unwrap());
        }
        of(&h, &["x-forwarded-proto"])
    }

    #[test]
    fn credentials_are_never_shared() {
        assert_eq!(vary(&["Cookie"]), Vary::Credentials);
        assert_eq!(vary(&["Accept-Encoding, authorization"]), Vary::Credentials);
        assert_eq!(vary(&["Accept-Language", "COOKIE"]), Vary::Credentials);
        assert_eq!(vary(&["TE"]), Vary::Credentials, "hop-by-hop");
        assert_eq!(vary(&["Accept-Language, Upgrade"]), Vary::Credentials);
    }

    #[test]
    fn keyed_and_encoding_are_nothing() {
        assert_eq!(vary(&[]), Vary::Nothing);
        assert_eq!(vary(&["Accept-Encoding"]), Vary::Nothing);
        assert_eq!(vary(&["Host, X-Forwarded-Proto"]), Vary::Nothing);
    }

    #[test]
    fn other_headers_select_variants_in_one_order() {
        assert_eq!(
            vary(&["X-Device, Accept-Language", "accept-language"]),
            Vary::Headers(vec![
                HeaderName::from_static("accept-language"),
                HeaderName::from_static("x-device")
            ])
        );
    }
}
