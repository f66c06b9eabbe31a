//! Which pages the origin varies on request headers (its `Vary`), and which variants of
//! each are stored.
//!
//! Invariant: a page is stored under its plain key only while no `Vary` on another
//! header is known for it; once one is, every request for it is keyed by the values of
//! those headers as well, and at most `max_variants` distinct variants are stored, so a
//! client sending a new value each time cannot fill the cache with one page.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderName;
use moka::sync::Cache;
use pingora::cache::key::HashBinary;

/// Pages whose `Vary` is remembered at most; the least used are forgotten first (the
/// next answer for such a page teaches it again, at the cost of one unstored response).
const PAGES: u64 = 100_000;
/// A page not requested for this long is forgotten.
const IDLE: Duration = Duration::from_secs(86_400);

pub struct VarySpec {
    pub names: Vec<HeaderName>,
    stored: Mutex<HashSet<HashBinary>>,
}

pub struct Variants {
    pages: Cache<HashBinary, Arc<VarySpec>>,
    /// Whether any page ever varied: until one does (Magento's own never do), every
    /// request skips the lookup.
    any: AtomicBool,
}

impl Default for Variants {
    fn default() -> Self {
        Self {
            pages: Cache::builder()
                .max_capacity(PAGES)
                .time_to_idle(IDLE)
                .build(),
            any: AtomicBool::new(false),
        }
    }
}

/// What to do with a response whose `Vary` names `names` (empty: none beyond the key).
#[derive(Debug, PartialEq, Eq)]
pub enum VariantVerdict {
    /// Store it under the key the request used.
    Store,
    /// The request was keyed for another `Vary`; now learnt, the next request is keyed
    /// right. Not stored.
    Relearnt,
    /// The page has `max_variants` variants stored already. Not stored.
    TooMany,
}

impl Variants {
    /// The headers `page` varies on, if any are known.
    pub fn spec(&self, page: &HashBinary) -> Option<Arc<VarySpec>> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        self.pages.get(page)
    }

    /// Decides for a response to a request for `page` that was keyed as `used` (the
    /// spec known when it was keyed) under `key`.
    pub fn settle(
        &self,
        page: HashBinary,
        used: Option<&Arc<VarySpec>>,
        names: &[HeaderName],
        key: HashBinary,
        max_variants: usize,
    ) -> VariantVerdict {
        let used_names: &[HeaderName] = used.map_or(&[], |s| &s.names);
        if used_names != names {
            if names.is_empty() {
                self.pages.invalidate(&page);
            } else {
                self.any.store(true, Ordering::Relaxed);
                self.pages.insert(
                    page,
                    Arc::new(VarySpec {
                        names: names.to_vec(),
                        stored: Mutex::new(HashSet::new()),
                    }),
                );
            }
            return VariantVerdict::Relearnt;
        }
        let Some(spec) = used else {
            return VariantVerdict::Store;
        };
        let Ok(mut stored) = spec.stored.lock() else {
            return VariantVerdict::TooMany;
        };
        if stored.contains(&key) || stored.len() < max_variants {
            stored.insert(key);
            VariantVerdict::Store
        } else {
            VariantVerdict::TooMany
        }
    }

    /// Forgets every page (an emergency flush).
    pub fn clear(&self) {
        self.pages.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_then_bounds_variants() {
        let v = Variants::default();
        let page = [1u8; 16];
        let lang = vec![HeaderName::from_static("accept-language")];
        // First answer: the request was keyed without Vary: learn, do not store.
        assert_eq!(
            v.settle(page, None, &lang, page, 2),
            VariantVerdict::Relearnt
        );
        let spec = v.spec(&page).expect("learnt");
        assert_eq!(
            v.settle(page, Some(&spec), &lang, [2; 16], 2),
            VariantVerdict::Store
        );
        assert_eq!(
            v.settle(page, Some(&spec), &lang, [3; 16], 2),
            VariantVerdict::Store
        );
        assert_eq!(
            v.settle(page, Some(&spec), &lang, [2; 16], 2),
            VariantVerdict::Store
        );
        assert_eq!(
            v.settle(page, Some(&spec), &lang, [4; 16], 2),
            VariantVerdict::TooMany
        );
        // The origin stops varying: forgotten, and the plain key serves again.
        assert_eq!(
            v.settle(page, Some(&spec), &[], [2; 16], 2),
            VariantVerdict::Relearnt
        );
        assert!(v.spec(&page).is_none());
        assert_eq!(v.settle(page, None, &[], page, 2), VariantVerdict::Store);
    }
}
