//! A fresh hit answered in `request_filter`, straight from the memory store, without
//! Pingora's cache state machine (lookup, hit handler, phases, a header rebuilt and then
//! cloned): on a shop's front door most requests are exactly this, and the state
//! machine's work was a fifth of a hit's CPU.
//!
//! Invariant: a request is answered here only when Pingora's cache path would send the
//! same stored response unchanged: a GET from a client (not a subrequest), on the lookup
//! route, with no body, no range and no condition, for a key that is not marked
//! hit-for-miss, whose object is in memory, fresh, not a purged page's kept copy, and
//! not an ESI template this request would assemble. Everything else falls through to
//! Pingora's path, which keeps every other rule (grace, tiers, coalescing, 304, Range,
//! HEAD, ESI).
//!
//! The header is not rebuilt line by line and edited on every hit: each thread keeps,
//! per block of shared header lines (`cache::compact_header`), a template with the
//! edits of delivery already made, clones it and appends the object's own lines. A
//! test holds that this sends exactly what the edits made on the whole header would.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use bytes::Bytes;

use pingora::cache::key::CacheHashKey;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::{Floodgate, RequestCtx};
use crate::cache::{CompactHeader, FastHasher};
use crate::esi;
use crate::policy::delivery::{is_static_or_media, prepare_for_client, CacheDebug, Grace};
use crate::policy::route::Route;

/// Magento's debug mode keeps `Age` (`policy::delivery`).
const MAGENTO_DEBUG: http::HeaderName = http::HeaderName::from_static("x-magento-debug");

/// Request headers that ask for something other than the whole stored response.
const CONDITIONS: [http::HeaderName; 4] = [
    http::header::RANGE,
    http::header::IF_NONE_MATCH,
    http::header::IF_MODIFIED_SINCE,
    http::header::UPGRADE,
];

impl Floodgate {
    /// Answers the request from a fresh object in memory, if it may be (see the module's
    /// invariant); `Ok(true)` when the response was written. The key worked out here is
    /// kept for Pingora's path when the request falls through.
    pub(super) async fn serve_fresh_hit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let req = session.req_header();
        if ctx.route != Route::Lookup
            || session.subrequest_ctx.is_some()
            || req.method != http::Method::GET
            || CONDITIONS.iter().any(|name| req.headers.contains_key(name))
        {
            return Ok(false);
        }
        let key = self.key_for(session, ctx);
        let marked = self.marks.is_marked(&key.primary_bin());
        ctx.cache_key = Some(key);
        let Some(hash) = ctx.key.filter(|_| !marked) else {
            return Ok(false);
        };
        let Some(object) = self.store.get(&hash).await else {
            return Ok(false);
        };
        // A purged page's kept copy is expired when kept, so `is_fresh` alone would do;
        // the flag says so without the clock.
        if object.is_purged_copy() || !object.is_fresh() {
            return Ok(false);
        }
        if ctx.assembles_esi()
            && object
                .derived
                .as_ref()
                .and_then(esi::stored_template)
                .is_some()
        {
            return Ok(false);
        }
        // A stored header that does not rebuild is Pingora's path's error to report.
        let hsts = super::hsts_for(ctx);
        let Ok(resp) = delivered(&object.header, object.updated, &ctx.url, hsts) else {
            return Ok(false);
        };
        // A client without gzip gets the page inflated a chunk at a time by the hit
        // (`proxy::inflate`), on Pingora's path.
        if super::inflate::module_would_inflate(session, &resp) {
            return Ok(false);
        }
        object.heat.hit();
        ctx.fresh_hit = true;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(object.body.clone()), true)
            .await?;
        Ok(true)
    }
}

/// The stored header as Pingora's hit path and `response_filter` would send it: the
/// `Age` Pingora adds (kept only for Magento's debug mode), HTTP/1.1 as Pingora sets for
/// stored responses, then what every response gets (`for_client`).
///
/// Built from this thread's [`Template`] for the object's shared lines, then its own
/// lines: delivery's edits are made once per set of shared lines, not on every hit.
fn delivered(
    stored: &CompactHeader,
    updated: SystemTime,
    url: &str,
    hsts: Option<&http::HeaderValue>,
) -> Result<ResponseHeader> {
    let shared = stored.shared();
    let key = (Arc::as_ptr(shared) as usize, is_static_or_media(url));
    let (mut resp, debug, expires_replaced) = TEMPLATES.with(|templates| {
        let mut templates = templates.borrow_mut();
        let template = match templates.entry(key) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => new.insert(Template::build(stored, url)?),
        };
        debug_assert!(std::ptr::eq(template.shared.as_ptr(), Arc::as_ptr(shared)));
        let found = (
            template.header.clone(),
            template.debug,
            template.expires_replaced,
        );
        if templates.len() > TEMPLATES_MAX {
            templates.clear();
        }
        Ok::<_, Box<pingora::Error>>(found)
    })?;
    // `Age` is Pingora's to set (below); `Expires` was replaced by delivery for pages.
    let skip: &[&str] = if expires_replaced {
        &["age", "expires"]
    } else {
        &["age"]
    };
    stored.append_own(&mut resp, skip)?;
    if debug {
        let age = SystemTime::now()
            .duration_since(updated)
            .map_or(0, |age| age.as_secs());
        resp.insert_header(http::header::AGE, age)?;
    }
    if let Some(hsts) = hsts {
        resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
    }
    Ok(resp)
}

/// Templates a thread keeps at most (a shop has a handful of distinct shared blocks;
/// an origin that varies them per response makes the interner start afresh anyway).
const TEMPLATES_MAX: usize = 256;

thread_local! {
    /// Per thread, so a hit takes no lock and touches no shared counter for them.
    /// Keyed by the shared block's address and the URL's kind (static files and media
    /// keep their caching headers). The address names one block for as long as the
    /// entry lives: the entry's `Weak` keeps the block's allocation, so no other block
    /// can be given that address (and a hit compares no counts).
    static TEMPLATES: RefCell<HashMap<(usize, bool), Template, FastHasher>> =
        RefCell::new(HashMap::default());
}

/// A fresh hit's header before the object's own lines: the shared lines with the
/// edits of delivery done (`for_client`: Magento's `vcl_deliver`).
struct Template {
    /// Holds the address of the block this template was made from (see `TEMPLATES`).
    shared: Weak<Bytes>,
    header: ResponseHeader,
    /// Magento's debug mode: `Age` is sent.
    debug: bool,
    /// Delivery set `Expires` (a page): the object's own `Expires` is not sent.
    expires_replaced: bool,
}

impl Template {
    fn build(stored: &CompactHeader, url: &str) -> Result<Self> {
        let mut header = stored.unpack_shared()?;
        header.set_version(http::Version::HTTP_11);
        let debug = header.headers.contains_key(MAGENTO_DEBUG);
        prepare_for_client(&mut header, url, CacheDebug::Hit, Some(Grace::None));
        // No shared line is an `Expires` (it is one of an object's own), so one there
        // now is delivery's.
        let expires_replaced = header.headers.contains_key(http::header::EXPIRES);
        Ok(Self {
            shared: Arc::downgrade(stored.shared()),
            header,
            debug,
            expires_replaced,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header as it was built before templates: the whole stored header rebuilt,
    /// then every edit of delivery made on it.
    fn rebuilt(stored: &CompactHeader, url: &str, hsts: Option<&http::HeaderValue>) -> Vec<String> {
        let mut resp = stored.unpack().unwrap();
        resp.set_version(http::Version::HTTP_11);
        if resp.headers.contains_key(MAGENTO_DEBUG) {
            resp.insert_header(http::header::AGE, 0).unwrap();
        }
        prepare_for_client(&mut resp, url, CacheDebug::Hit, Some(Grace::None));
        if let Some(hsts) = hsts {
            resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone())
                .unwrap();
        }
        wire_lines(&resp)
    }

    /// The header's lines as written to the client (names as the origin spelled them),
    /// sorted: the order of lines with different names carries no meaning.
    fn wire_lines(resp: &ResponseHeader) -> Vec<String> {
        let mut wire = Vec::new();
        resp.header_to_h1_wire(&mut wire);
        let mut lines: Vec<String> = String::from_utf8(wire)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(Into::into)
            .collect();
        lines.sort();
        lines
    }

    fn stored(lines: &[(&str, &str)]) -> CompactHeader {
        let mut h = ResponseHeader::build(200, None).unwrap();
        for (name, value) in lines {
            h.append_header(name.to_string(), *value).unwrap();
        }
        CompactHeader::pack(&h, &[], &[])
    }

    #[test]
    fn a_hit_from_a_template_sends_what_the_edits_of_delivery_made() {
        let page = [
            ("Server", "nginx"),
            ("Date", "Wed, 02 Dec 2026 13:00:00 GMT"),
            ("Content-Type", "text/html; charset=UTF-8"),
            ("Cache-Control", "public, max-age=86400, s-maxage=86400"),
            ("Expires", "Thu, 03 Dec 2026 13:00:00 GMT"),
            ("Pragma", "cache"),
            ("X-Magento-Tags", "cat_p_1,store"),
            ("X-Powered-By", "PHP"),
            ("ETag", "\"abc\""),
            ("Last-Modified", "Wed, 02 Dec 2026 12:00:00 GMT"),
            ("Age", "7"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("Vary", "Accept-Encoding"),
            ("Content-Encoding", "gzip"),
            ("Content-Length", "1234"),
        ];
        let hsts = http::HeaderValue::from_static("max-age=31536000");
        let private = [
            ("Cache-Control", "private, max-age=10"),
            ("Expires", "Thu, 03 Dec 2026 13:00:00 GMT"),
            ("Content-Length", "5"),
        ];
        let debug = [
            ("X-Magento-Debug", "1"),
            ("Age", "3"),
            ("Expires", "Thu, 03 Dec 2026 13:00:00 GMT"),
            ("Content-Length", "5"),
        ];
        for (lines, url) in [
            (&page[..], "/a.html"),
            (&page[..], "/static/a.css"),
            (&private[..], "/customer/x"),
            (&debug[..], "/b.html"),
        ] {
            let header = stored(lines);
            for hsts in [None, Some(&hsts)] {
                // Twice: the template is built by the first and reused by the second.
                for _ in 0..2 {
                    let resp = delivered(&header, SystemTime::now(), url, hsts).unwrap();
                    assert_eq!(resp.version, http::Version::HTTP_11);
                    assert_eq!(wire_lines(&resp), rebuilt(&header, url, hsts), "{url}");
                }
            }
        }
    }

    #[test]
    fn pages_sharing_lines_share_a_template_and_keep_their_own_lines() {
        let a = stored(&[
            ("Content-Type", "text/html"),
            ("ETag", "\"a\""),
            ("Content-Length", "1"),
        ]);
        let b = stored(&[
            ("Content-Type", "text/html"),
            ("ETag", "\"b\""),
            ("Content-Length", "22"),
        ]);
        assert!(Arc::ptr_eq(a.shared(), b.shared()));
        let now = SystemTime::now();
        let (a, b) = (
            delivered(&a, now, "/a.html", None).unwrap(),
            delivered(&b, now, "/b.html", None).unwrap(),
        );
        assert_eq!(a.headers["etag"], "\"a\"");
        assert_eq!(a.headers["content-length"], "1");
        assert_eq!(b.headers["etag"], "\"b\"");
        assert_eq!(b.headers["content-length"], "22");
        assert_eq!(b.headers.get_all("etag").iter().count(), 1);
    }
}
