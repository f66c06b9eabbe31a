//! ESI's shortcut to the store: a fragment the cache holds fresh is spliced without a
//! subrequest, under the key its own request would have (the same rules, the same key
//! function). Anything else about it (a miss, stale, a pass) is left to that request.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::cache::key::CacheHashKey;
use pingora::http::RequestHeader;

use crate::cache::{MemoryStore, StoredObject};
use crate::esi::FragmentCache;
use crate::policy::key::cache_key;
use crate::policy::route::Route;
use crate::policy::Rules;

pub struct FreshFragments<'a> {
    pub rules: &'a Rules,
    pub store: &'static MemoryStore,
}

#[async_trait]
impl FragmentCache for FreshFragments<'_> {
    async fn fresh(&self, req: &RequestHeader) -> Option<Arc<StoredObject>> {
        let (url, route, variant) = self
            .rules
            .classify(&req.method, req.raw_path(), &req.headers);
        if route != Route::Lookup {
            return None;
        }
        let key = cache_key(&url, &req.headers, &variant, self.rules).combined_bin();
        let object = self.store.get(&key).await?;
        if !object.is_fresh() {
            return None;
        }
        // A fragment is as hot as the pages that include it, for the re-warmer.
        object.heat.hit();
        Some(object)
    }
}
