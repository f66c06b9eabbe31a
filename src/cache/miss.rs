//! A miss: a response body collected while Pingora streams it, stored when complete.
//!
//! Invariant: the object becomes visible only when its body is complete, so a failed or
//! cut fetch never leaves a truncated page behind; a response fetched before a purge of
//! one of its tags is not stored at all.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::HashBinary;
use pingora::cache::storage::{HandleMiss, MissFinishType};
use pingora::cache::CacheMeta;
use pingora::{Error, ErrorType, Result};

use super::object::StoredObject;
use super::store::MemoryStore;
use super::{RequestIdentity, Tags};

/// Collects a response body; the object becomes visible only when it is complete, so a
/// failed or cut fetch never leaves a truncated page behind.
pub(super) struct Miss {
    pub(super) key: HashBinary,
    /// Derive what the layer above needs of the body, reading at most this many bytes.
    pub(super) derive: Option<usize>,
    /// The response's freshness and header; taken when the object is stored.
    pub(super) meta: Option<CacheMeta>,
    pub(super) tags: Tags,
    pub(super) identity: Option<Arc<RequestIdentity>>,
    pub(super) started: SystemTime,
    pub(super) visitor: bool,
    pub(super) body: BytesMut,
    pub(super) store: &'static MemoryStore,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let meta = self.meta.take().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "miss handler finished twice")
        })?;
        // The buffer grew by doubling; keeping its slack would cost up to twice the body
        // for as long as the object lives, so store an exact-size copy instead.
        let body = super::body::copy_of(&std::mem::take(&mut self.body));
        let size = body.len();
        let tags = std::mem::take(&mut self.tags);
        // Packing copies the header out of Pingora's socket read buffer, which it would
        // otherwise keep alive (about 8 KB) for as long as the object lives.
        let mut object = StoredObject::new(
            &meta,
            meta.response_header(),
            body,
            tags,
            self.identity.take(),
        )?;
        if let Some(max_bytes) = self.derive {
            let derived = self
                .store
                .derive(meta.response_header(), &object.body, max_bytes);
            object.set_derived(derived);
        }
        if self
            .store
            .recent_purges
            .purged_since(&object.tags, object.pool.as_deref(), self.started)
        {
            // Fetched before a purge of one of its tags: it may show what was purged.
            tracing::debug!("not storing a response whose tags were purged during its fetch");
            return Ok(MissFinishType::Created(size));
        }
        if self.visitor {
            object.heat.hit();
        }
        if let Some(shared) = self.store.shared.get() {
            shared.put(self.key, &object, self.started, &self.store.recent_purges);
        }
        if let Some(disk) = self.store.disk.get() {
            disk.write(self.key, &object, self.started);
        }
        self.store.put(self.key, object).await;
        Ok(MissFinishType::Created(size))
    }
}
