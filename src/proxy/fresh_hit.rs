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

use std::time::SystemTime;

use pingora::cache::key::CacheHashKey;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::{Floodgate, RequestCtx};
use crate::esi;
use crate::policy::delivery::{CacheDebug, Grace};
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
        let Ok(mut resp) = object.header.unpack() else {
            return Ok(false);
        };
        delivered(&mut resp, object.updated, ctx)?;
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
fn delivered(resp: &mut ResponseHeader, updated: SystemTime, ctx: &RequestCtx) -> Result<()> {
    resp.set_version(http::Version::HTTP_11);
    if resp.headers.contains_key(MAGENTO_DEBUG) {
        let age = SystemTime::now()
            .duration_since(updated)
            .map_or(0, |age| age.as_secs());
        resp.insert_header(http::header::AGE, age)?;
    }
    super::for_client(resp, ctx, CacheDebug::Hit, Some(Grace::None))
}
