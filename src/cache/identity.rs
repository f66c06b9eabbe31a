//! What it takes to ask for a stored page again: the re-warmer replays this request.

/// The request that filled an object: its URL, Host, and the headers that chose its
/// variant (X-Magento-Vary cookie, SSL-offload header, User-Agent for design
/// exceptions, GraphQL's headers). Nothing else, so no session is ever replayed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestIdentity {
    pub url: String,
    pub headers: Vec<(String, String)>,
}
