//! How layers above the cache plug into what it stores, without the cache knowing them.
//!
//! Invariant: the cache never looks inside a body. What another layer works out from a
//! body (ESI's template) is `Derived`: made once by the `Deriver` when the body is stored
//! or promoted, weighed with the object, handed back with every hit, and otherwise
//! opaque. A hit's body comes out as stored unless the layer above hands the hit a
//! `BodySource` (an assembled page), which then replaces it whole.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;

/// Something worked out from a stored body, once, that the hits of that body need.
pub trait Derived: Any + Send + Sync {
    /// Bytes held, counted in the object's weight.
    fn len_bytes(&self) -> usize;
    /// For the layer that made it, to take it back as its own type.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    /// The body re-encoded so that it and this value share their bytes (same content,
    /// same encoding): the store then keeps it instead of the body it was derived from,
    /// so the page is held once. `None`: keep the body as it came.
    fn shared_body(&self) -> Option<Bytes> {
        None
    }
}

/// Works out a body's `Derived`, when one applies to it.
pub trait Deriver: Send + Sync {
    /// `body` as stored (maybe gzipped), with its response `header`; a body that would
    /// have to grow past `max_bytes` to be read gets none.
    fn derive(
        &self,
        header: &ResponseHeader,
        body: &Bytes,
        max_bytes: usize,
    ) -> Option<Arc<dyn Derived>>;
}

/// A hit's body made some other way than read as stored, chunk by chunk; `None` at the
/// end.
#[async_trait]
pub trait BodySource: Send + Sync {
    async fn next_chunk(&mut self) -> Option<Bytes>;
}

/// Cache meta extension: derive the body's `Derived` when it is stored, reading at most
/// this many bytes of it.
#[derive(Clone, Copy)]
pub struct Derive(pub usize);
