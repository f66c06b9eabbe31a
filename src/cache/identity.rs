//! What it takes to ask for a stored page again: the re-warmer replays this request.
//!
//! Invariant: the headers of equal identities are one shared copy (interned): every page
//! of a shop is asked for with the same Host, and its variants with a handful of
//! `X-Magento-Vary` values, so each object holds its URL and a pointer.

use std::sync::{Arc, LazyLock};

use super::interner::Interner;

/// Distinct header sets remembered for sharing (`Interner`).
const INTERNED_MAX: usize = 4096;

/// A request's replayed headers, `(name, value)`.
pub type ReplayHeaders = Arc<[(String, String)]>;

static INTERNED: LazyLock<Interner<ReplayHeaders>> = LazyLock::new(|| Interner::new(INTERNED_MAX));

/// The request that filled an object: its URL, Host, and the headers that chose its
/// variant (X-Magento-Vary cookie, SSL-offload header, User-Agent for design
/// exceptions, GraphQL's headers). Nothing else, so no session is ever replayed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestIdentity {
    pub url: Box<str>,
    pub headers: ReplayHeaders,
}

impl RequestIdentity {
    pub fn new(url: String, headers: Vec<(String, String)>) -> Self {
        Self {
            // Kept with the object for as long as it lives: no spare capacity.
            url: url.into_boxed_str(),
            headers: INTERNED.intern(headers.into()),
        }
    }
}
