//! `GET /cache?url=/path?query`: what the store holds for one URL, every host and
//! variant, and how each copy may be served now. The operator's `varnishlog -q ReqURL`
//! for "is this page cached, and until when?"; the tests wait on it instead of on the
//! clock. A read: it never fetches, refreshes or promotes anything.

use std::time::SystemTime;

use http::Response;
use serde_json::{json, Value};

use super::{json_reply, Admin};
use crate::cache::StoredObject;

impl Admin {
    pub(super) fn inspect(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let Some(url) = query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(name, _)| name == "url")
                .map(|(_, value)| value.into_owned())
        }) else {
            return json_reply(
                400,
                json!({ "error": "say which page: GET /cache?url=/path (query included, URL-encoded)" }),
            );
        };
        // The store knows a page by its normalised URL (marketing parameters dropped,
        // the query sorted), so the operator's URL is normalised the same way.
        let path = match url.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => url.as_str(),
        };
        let rt = self.runtime.load();
        let (normalised, _, _) =
            rt.rules
                .classify(&http::Method::GET, path.as_bytes(), &http::HeaderMap::new());
        let now = SystemTime::now();
        let objects: Vec<Value> = self
            .store
            .filled_for(&normalised)
            .iter()
            .map(|object| describe(object, now))
            .collect();
        json_reply(200, json!({ "url": normalised, "objects": objects }))
    }
}

fn describe(object: &StoredObject, now: SystemTime) -> Value {
    let secs = |from: SystemTime, to: SystemTime| match to.duration_since(from) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    let identity = object.identity.as_deref();
    json!({
        "state": object.state(now).label(),
        "variant": identity.map(|i| &*i.headers),
        "age_secs": secs(object.updated, now),
        "fresh_for_secs": secs(now, object.fresh_until),
        "grace_secs": object.grace_secs,
        "keep_secs": object.keep_secs,
        "body_bytes": object.body.len(),
        "tags": object.tags.iter().count(),
        "hits": object.heat.hits(),
        "purged_copy": object.is_purged_copy(),
    })
}
