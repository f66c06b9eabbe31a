//! A stored gzip page for a client that does not take gzip: inflated by the hit itself,
//! a bounded chunk at a time (`cache::inflate`), instead of whole by Pingora's response
//! decompression.
//!
//! Invariant: a hit whose body Pingora's compression module would inflate is inflated by
//! the hit, under a reservation of `limits.response_buffer_bytes`, with the header the
//! module would have sent (identity, no length, no ranges, a weak validator, `Vary:
//! Accept-Encoding`); when the budget is taken the visitor gets the busy page (503 +
//! `Retry-After`), never the page's gzip bytes. Whether to inflate is the module's own
//! decision (`will_decompress`), so the two never disagree.

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::modules::http::compression::ResponseCompression;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::metrics::Unavailable;
use super::{Floodgate, RequestCtx};
use crate::cache::inflate::CHARGE;
use crate::cache::{BodySource, StoredHit};

/// Whether Pingora's response decompression would inflate `resp` for this client.
pub(super) fn module_would_inflate(session: &Session, resp: &ResponseHeader) -> bool {
    session
        .downstream_modules_ctx
        .get::<ResponseCompression>()
        .is_some_and(|compression| compression.will_decompress(resp))
}

impl Floodgate {
    /// For a hit that serves the stored body: takes the inflation over from the module
    /// when it would inflate this response (see the module's invariant).
    pub(super) fn inflate_hit(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        let has_body = session.req_header().method != http::Method::HEAD
            && resp.status == http::StatusCode::OK;
        if !has_body || !module_would_inflate(session, resp) {
            return Ok(());
        }
        let Some(hit) = session
            .cache
            .hit_handler()
            .as_any_mut()
            .downcast_mut::<StoredHit>()
        else {
            return Ok(());
        };
        match self
            .response_budget
            .reserve(CHARGE, ctx.rt.config.limits.response_buffer_bytes)
        {
            Some(reservation) => {
                hit.inflate(reservation);
                identity_header(resp)?;
            }
            None => {
                // The busy page instead of the stored body; nothing is inflated.
                let busy = ctx.rt.pages.busy.clone();
                hit.assemble(Box::new(Fixed(Some(busy.clone()))));
                *resp = busy_header(ctx, busy.len())?;
                self.requests.unavailable(Unavailable::ResponseMemory);
            }
        }
        if let Some(compression) = session
            .downstream_modules_ctx
            .get_mut::<ResponseCompression>()
        {
            compression.adjust_decompression(false);
        }
        Ok(())
    }
}

/// What Pingora's module makes of the header of a body it inflates
/// (`pingora-core` `adjust_response_header` and `add_vary_header`).
fn identity_header(resp: &mut ResponseHeader) -> Result<()> {
    resp.remove_header(&header::CONTENT_ENCODING);
    resp.remove_header(&header::CONTENT_LENGTH);
    resp.remove_header(&header::ACCEPT_RANGES);
    // Pingora frames a response without a length as chunked (HTTP/1) or by frames (h2).
    resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    if let Some(etag) = resp.headers.get(header::ETAG).cloned() {
        let bytes = etag.as_bytes();
        if bytes.starts_with(b"\"") {
            let weak = [b"W/", bytes].concat();
            resp.insert_header(header::ETAG, weak)?;
        } else if !bytes.starts_with(b"W/") {
            resp.remove_header(&header::ETAG);
        }
    }
    let varies = resp
        .headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|name| {
            let name = name.trim_ascii();
            name == b"*" || name.eq_ignore_ascii_case(b"accept-encoding")
        });
    if !varies {
        resp.append_header(header::VARY, "Accept-Encoding")?;
    }
    Ok(())
}

/// The busy page's header for a response refused for memory.
fn busy_header(ctx: &RequestCtx, len: usize) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(503, Some(6))?;
    resp.insert_header(header::CONTENT_TYPE, "text/html; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, len.to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    resp.insert_header(header::RETRY_AFTER, ctx.rt.pages.retry_after.as_str())?;
    resp.insert_header("x-floodgate-shed", Unavailable::ResponseMemory.label())?;
    if let Some(hsts) = super::hsts_for(ctx) {
        resp.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
    }
    Ok(resp)
}

/// A body given whole.
struct Fixed(Option<Bytes>);

#[async_trait]
impl BodySource for Fixed {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        self.0.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip_page(etag: &str, vary: Option<&str>) -> ResponseHeader {
        let mut resp = ResponseHeader::build(200, None).expect("header");
        resp.insert_header("content-encoding", "gzip").expect("h");
        resp.insert_header("content-length", "1234").expect("h");
        resp.insert_header("accept-ranges", "bytes").expect("h");
        resp.insert_header("etag", etag).expect("h");
        if let Some(vary) = vary {
            resp.insert_header("vary", vary).expect("h");
        }
        resp
    }

    #[test]
    fn the_identity_header_is_the_one_pingora_would_send() {
        let mut resp = gzip_page("\"abc\"", None);
        identity_header(&mut resp).expect("edits");
        assert!(resp.headers.get("content-encoding").is_none());
        assert!(resp.headers.get("content-length").is_none());
        assert!(resp.headers.get("accept-ranges").is_none());
        assert_eq!(resp.headers["transfer-encoding"], "chunked");
        assert_eq!(resp.headers["etag"], "W/\"abc\"");
        assert_eq!(resp.headers["vary"], "Accept-Encoding");

        let mut weak = gzip_page("W/\"abc\"", Some("Accept-Encoding"));
        identity_header(&mut weak).expect("edits");
        assert_eq!(weak.headers["etag"], "W/\"abc\"");
        assert_eq!(weak.headers.get_all("vary").iter().count(), 1);

        let mut invalid = gzip_page("abc", Some("Accept-Language"));
        identity_header(&mut invalid).expect("edits");
        assert!(invalid.headers.get("etag").is_none());
        let vary: Vec<_> = invalid.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["Accept-Language", "Accept-Encoding"]);
    }
}
