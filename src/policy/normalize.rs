//! URL normalisation: the normalised URL is both the cache key and what the origin gets,
//! so `?b=2&a=1` and `?a=1&b=2&utm_source=x` are one page fetched once.

use std::borrow::Cow;
use std::collections::HashSet;

/// Strips a scheme+host prefix, removes marketing parameters and sorts the query.
pub struct UrlNormalizer {
    exact: HashSet<String>,
    prefixes: Vec<String>,
}

impl UrlNormalizer {
    /// `params` as in the config: exact names, or a prefix ending in `*`.
    pub fn new(params: &[String]) -> Self {
        let mut exact = HashSet::new();
        let mut prefixes = Vec::new();
        for p in params {
            match p.strip_suffix('*') {
                Some(prefix) => prefixes.push(prefix.to_string()),
                None => {
                    exact.insert(p.clone());
                }
            }
        }
        Self { exact, prefixes }
    }

    fn is_marketing(&self, name: &str) -> bool {
        self.exact.contains(name) || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// Normalises a request target. Borrowed when nothing changes, which is the common case.
    pub fn normalize<'a>(&self, target: &'a str) -> Cow<'a, str> {
        let target = strip_scheme_and_host(target);
        let Some((path, query)) = target.split_once('?') else {
            return target;
        };
        let mut segments: Vec<&str> = query
            .split('&')
            .filter(|segment| !segment.is_empty())
            .filter(|segment| {
                let name = segment.split_once('=').map_or(*segment, |(name, _)| name);
                !self.is_marketing(name)
            })
            .collect();
        if segments.is_empty() {
            return Cow::Owned(path.to_string());
        }
        if segments.len() >= 2 {
            // Byte-wise by name, without decoding. Stable, so a repeated name keeps its
            // values in the client's order: PHP takes the last, and sorting by value
            // would make `?a=2&a=1` and `?a=1&a=2` one page with two meanings.
            segments.sort_by(|a, b| param_name(a).cmp(param_name(b)));
        }
        let mut out = String::with_capacity(target.len());
        out.push_str(path);
        out.push('?');
        out.push_str(&segments.join("&"));
        if out == *target {
            target
        } else {
            Cow::Owned(out)
        }
    }
}

/// A request target that is not UTF-8, made ASCII: every byte above 0x7F becomes `%XX`
/// (what PHP decodes back to the same byte), so distinct targets stay distinct.
pub fn percent_encode_non_ascii(target: &[u8]) -> String {
    let mut out = String::with_capacity(target.len() * 3);
    for &b in target {
        if b.is_ascii() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn param_name(segment: &str) -> &str {
    segment.split_once('=').map_or(segment, |(name, _)| name)
}

/// `http://host/p?q` -> `/p?q`; an absolute target with no path becomes `/`.
fn strip_scheme_and_host(target: &str) -> Cow<'_, str> {
    let rest = if let Some(rest) = target.strip_prefix("http://") {
        rest
    } else if let Some(rest) = target.strip_prefix("https://") {
        rest
    } else {
        return Cow::Borrowed(target);
    };
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => Cow::Borrowed(&rest[i..]),
        Some(i) => Cow::Owned(format!("/{}", &rest[i..])),
        None => Cow::Borrowed("/"),
    }
}

/// Gives an HTTP/2 request the `Host` its `:authority` stands for, before anything keys
/// or routes on `Host`: the cache key, Magento, and the HTTP/1.1 subrequests made from
/// the request. Without it two shops behind one Floodgate would share one key over h2,
/// and an h2 request would miss the page an HTTP/1.1 request stored.
pub fn host_from_authority(req: &mut pingora::http::RequestHeader) {
    if req.headers.contains_key(http::header::HOST) {
        return;
    }
    if let Some(authority) = req.uri.authority().map(|a| a.as_str().to_owned()) {
        let _ = req.insert_header(http::header::HOST, authority);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAGENTO_MARKETING_PARAMS;

    fn magento() -> UrlNormalizer {
        let params: Vec<String> = MAGENTO_MARKETING_PARAMS
            .iter()
            .map(|s| s.to_string())
            .collect();
        UrlNormalizer::new(&params)
    }

    #[test]
    fn untouched_url_is_borrowed() {
        assert!(matches!(
            magento().normalize("/shoes.html?p=2"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            magento().normalize("/shoes.html"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn strips_scheme_and_host() {
        let n = magento();
        assert_eq!(n.normalize("http://shop.test/a.html?x=1"), "/a.html?x=1");
        assert_eq!(n.normalize("https://shop.test"), "/");
        assert_eq!(n.normalize("https://shop.test?b=1"), "/?b=1");
    }

    #[test]
    fn sorts_two_or_more_params_bytewise() {
        let n = magento();
        assert_eq!(
            n.normalize("/c.html?p=2&color=red"),
            "/c.html?color=red&p=2"
        );
        assert_eq!(
            n.normalize("/c.html?b=1&B=2&a=%20"),
            "/c.html?B=2&a=%20&b=1"
        );
    }

    #[test]
    fn targets_that_are_not_utf8_are_encoded_and_stay_apart() {
        assert_eq!(percent_encode_non_ascii(b"/a?\x91=2"), "/a?%91=2");
        assert_ne!(
            percent_encode_non_ascii(b"/a?\x91=2"),
            percent_encode_non_ascii(b"/a?\x92=2")
        );
    }

    #[test]
    fn repeated_names_keep_their_order() {
        let n = magento();
        assert_eq!(n.normalize("/c?a=2&b=0&a=1"), "/c?a=2&a=1&b=0");
        assert_ne!(n.normalize("/c?a=2&a=1"), n.normalize("/c?a=1&a=2"));
    }

    #[test]
    fn removes_marketing_params_case_sensitively() {
        let n = magento();
        assert_eq!(n.normalize("/p.html?utm_source=x&gclid=1"), "/p.html");
        assert_eq!(
            n.normalize("/p.html?id=3&utm_medium=y&fbclid=z"),
            "/p.html?id=3"
        );
        assert_eq!(n.normalize("/p.html?GCLID=1"), "/p.html?GCLID=1");
        assert_eq!(n.normalize("/p.html?gad_source=1&q=x&"), "/p.html?q=x");
        assert_eq!(n.normalize("/p.html?"), "/p.html");
    }

    #[test]
    fn custom_params_are_honoured() {
        let n = UrlNormalizer::new(&["ref".into(), "aff_*".into()]);
        assert_eq!(n.normalize("/x?ref=1&aff_id=2&keep=3"), "/x?keep=3");
        assert_eq!(n.normalize("/x?utm_source=1"), "/x?utm_source=1");
    }
}
