//! Edge Side Includes: Magento replaces every layout block with a `ttl` (the top menu)
//! by `<esi:include src=…/>` when its cache is Varnish, and expects the cache in front
//! to splice the fragment in (docs/magento-cache-protocol.md, section 6).
//!
//! The way through Floodgate:
//! - `template`: a `text/*` body is parsed once, when it is stored; the store keeps the
//!   template beside the body, its literals compressed (`gzip`: pieces stitched into one
//!   gzip stream, so a hit is not compressed again).
//! - a hit on such a page is assembled by the store's hit handler (`assembly`), which
//!   Pingora reads asynchronously, so fragments are awaited in order while the page
//!   streams; they are fetched concurrently from the start.
//! - a page that has to come from the origin (miss, expired, pass) is fetched as a
//!   subrequest and assembled on its way to the client (`origin_page`), because
//!   Pingora's body filters cannot wait for a fragment.
//! - every fragment is a subrequest through the whole request path (`fragment`): its own
//!   key, TTL, tags, coalescing and origin slot; only a fragment the cache holds fresh is
//!   taken straight from the store, under the same key.

pub mod assembly;
pub mod budget;
pub mod fragment;
pub mod gzip;
pub mod metrics;
pub mod origin_page;
pub mod streaming;
pub mod template;

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};

pub use assembly::{Assembly, FragmentCache, Settings};
pub use budget::ViewBudget;
pub use fragment::Role;
pub use template::Template;

/// Marks a fragment's response as served from the cache, for the fragment metrics. It
/// only travels between a fragment subrequest and the page that includes it.
pub const CACHED_HEADER: &str = "x-floodgate-esi-cached";

/// Compression of a stored template's literals: once per fill, as stored bodies are.
pub const TEMPLATE_GZIP_LEVEL: u32 = 6;
/// Compression of what is compressed per request (a fetched fragment, the template
/// of a page that is not stored): speed beats ratio.
pub const PER_REQUEST_GZIP_LEVEL: u32 = 1;

/// Whether a response is one ESI applies to (`text/*`, as Magento's VCL says).
pub fn applies_to(resp: &ResponseHeader) -> bool {
    resp.headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().len() >= 5 && v.as_bytes()[..5].eq_ignore_ascii_case(b"text/")
    })
}

/// Whether a response body is gzip-encoded.
pub fn is_gzip(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"))
}

/// Parses the ESI of bodies as the cache stores them (`cache::Deriver`), so a hit on a
/// page with ESI is assembled without parsing it again.
pub struct EsiDeriver;

impl crate::cache::Deriver for EsiDeriver {
    fn derive(
        &self,
        header: &ResponseHeader,
        body: &Bytes,
        max_bytes: usize,
    ) -> Option<Arc<dyn crate::cache::Derived>> {
        parse_stored(header, body, max_bytes).map(|t| t as Arc<dyn crate::cache::Derived>)
    }
}

/// The template the cache kept with a stored body, if it is one.
pub fn stored_template(derived: &Arc<dyn crate::cache::Derived>) -> Option<Arc<Template>> {
    derived.clone().into_any().downcast::<Template>().ok()
}

/// The template of a body as stored (maybe gzipped); `None` when ESI does not apply or
/// the body has none.
pub fn parse_stored(
    resp: &ResponseHeader,
    body: &Bytes,
    max_bytes: usize,
) -> Option<Arc<Template>> {
    if !applies_to(resp) {
        return None;
    }
    if !is_gzip(&resp.headers) {
        return template_of(resp, body, max_bytes, TEMPLATE_GZIP_LEVEL).map(Arc::new);
    }
    // A gzipped body is kept as the template's own stream (one copy of the page).
    Template::parse_sharing_body(
        &inflated(body, max_bytes)?,
        TEMPLATE_GZIP_LEVEL,
        crate::cache::body::copy_of,
    )
    .map(Arc::new)
}

/// The template of a response body (maybe gzipped), its literals compressed at `level`;
/// `None` when it has no ESI or does not inflate within `max_bytes`.
pub fn template_of(
    resp: &ResponseHeader,
    body: &Bytes,
    max_bytes: usize,
    level: u32,
) -> Option<Template> {
    let identity = if is_gzip(&resp.headers) {
        inflated(body, max_bytes)?
    } else {
        body.clone()
    };
    Template::parse(&identity, level)
}

/// A gzip body inflated for parsing; `None` (and a warning) when it cannot be.
fn inflated(body: &[u8], max_bytes: usize) -> Option<Bytes> {
    gunzip(body, max_bytes)
        .inspect_err(|e| {
            tracing::warn!(error = %e, "gzip body could not be inflated; its ESI is not processed");
        })
        .ok()
}

/// Inflates a gzip body, refusing to grow past `max_bytes`.
pub fn gunzip(body: &[u8], max_bytes: usize) -> std::io::Result<Bytes> {
    let mut out = Vec::with_capacity(body.len() * 4);
    let read = flate2::read::MultiGzDecoder::new(body)
        .take(max_bytes as u64 + 1)
        .read_to_end(&mut out)?;
    if read > max_bytes {
        return Err(std::io::Error::other(format!(
            "inflates to more than {max_bytes} bytes"
        )));
    }
    Ok(Bytes::from(out))
}

/// Whether the client takes gzip (`Accept-Encoding`, a zero q-value refuses it).
pub fn accepts_gzip(req: &RequestHeader) -> bool {
    req.headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// An assembled page's header: its encoding is the assembly's, its length unknown, and
/// it has no validator, since one of the template would validate a page whose fragments
/// may have changed.
pub fn prepare_assembled_header(resp: &mut ResponseHeader, gzip: bool) {
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::ETAG,
        header::LAST_MODIFIED,
        header::ACCEPT_RANGES,
    ] {
        resp.remove_header(&name);
    }
    // Pingora frames a response without a length as close-delimited, which would cost
    // the keep-alive connection; chunked keeps it (and is dropped for HTTP/2).
    let _ = resp.insert_header(header::TRANSFER_ENCODING, "chunked");
    if gzip {
        let _ = resp.insert_header(header::CONTENT_ENCODING, "gzip");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        encoder.write_all(data).expect("gzip");
        Bytes::from(encoder.finish().expect("gzip"))
    }

    fn header(content_type: &str, encoding: Option<&str>) -> ResponseHeader {
        let mut resp = ResponseHeader::build(200, None).expect("header");
        resp.insert_header("content-type", content_type)
            .expect("header");
        if let Some(encoding) = encoding {
            resp.insert_header("content-encoding", encoding)
                .expect("header");
        }
        resp
    }

    #[test]
    fn stored_gzip_text_is_parsed_and_other_types_are_not() {
        let page = b"<p><esi:include src=\"/menu\"/></p>";
        let t = parse_stored(
            &header("text/html; charset=UTF-8", Some("gzip")),
            &gzip(page),
            1 << 20,
        )
        .expect("template");
        assert_eq!(t.include_count(), 1);
        assert!(parse_stored(
            &header("application/json", None),
            &Bytes::from_static(page),
            1 << 20
        )
        .is_none());
        assert!(parse_stored(
            &header("TEXT/plain", None),
            &Bytes::from_static(page),
            1 << 20
        )
        .is_some());
    }

    #[test]
    fn gzip_is_accepted_unless_refused() {
        let accepts = |value: Option<&str>| {
            let mut req = RequestHeader::build("GET", b"/", None).expect("request");
            if let Some(value) = value {
                req.insert_header("accept-encoding", value).expect("header");
            }
            accepts_gzip(&req)
        };
        assert!(accepts(Some("gzip, deflate, br")));
        assert!(accepts(Some("br;q=1.0, GZIP;q=0.5")));
        assert!(accepts(Some("*")));
        assert!(!accepts(Some("gzip;q=0, br")));
        assert!(!accepts(Some("identity")));
        assert!(!accepts(None));
    }

    #[test]
    fn a_stored_gzip_page_shares_its_body_unless_it_cannot_be_read() {
        use crate::cache::Derived;
        let page = b"<p>a</p><esi:include src=\"/menu\"/><esi:remove>r</esi:remove><p>b</p>";
        let resp = header("text/html", Some("gzip"));
        let t = parse_stored(&resp, &gzip(page), 1 << 20).expect("template");
        let shared = t.shared_body().expect("one stream for body and template");
        assert_eq!(gunzip(&shared, 1 << 20).expect("valid gzip"), &page[..]);
        // Corrupt, or inflating past the bound: no template, the body stays as it came.
        let corrupt = Bytes::from_static(b"\x1f\x8b\x08not gzip at all");
        assert!(parse_stored(&resp, &corrupt, 1 << 20).is_none());
        assert!(parse_stored(&resp, &gzip(page), 10).is_none());
        // An identity body keeps its literals apart: nothing replaces it.
        let identity = parse_stored(
            &header("text/html", None),
            &Bytes::from_static(page),
            1 << 20,
        )
        .expect("template");
        assert!(identity.shared_body().is_none());
    }

    #[test]
    fn inflating_is_bounded() {
        let big = gzip(&vec![b'a'; 100_000]);
        assert!(gunzip(&big, 1000).is_err());
        assert_eq!(gunzip(&big, 100_000).expect("fits").len(), 100_000);
        assert!(gunzip(b"not gzip", 1000).is_err());
    }
}
