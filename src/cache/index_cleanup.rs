//! Index entries of objects that left memory, taken out after the work that removed the
//! objects instead of during it.
//!
//! A purge of 100 product pages removes them from moka, whose removal listener used to
//! edit the tag index there and then: every page is also in `store`, `cat_p` and its
//! categories, sets of tens of thousands of entries, and those edits were a fifth of
//! the purge's time before it could answer; freeing the pages was another eighth. The
//! listener now only queues what left; the purge settles the queue after its answer is
//! written (index entries out, memory freed), a fill settles it once it holds more
//! than a few thousand objects or 32 MiB (so evictions give their memory back while the
//! cache fills, bounded), and a metrics scrape settles the rest.
//!
//! Invariant: a queued removal is applied by a later `settle`, never dropped; until then
//! the index names an object that is gone, which the store's invariant allows (a look-up
//! finds nothing), and never misses one that is there: removals carry the generation of
//! the object that left, so a successor stored meanwhile keeps its entries. (A purge in
//! that window of a tag the old object had and its successor dropped removes the
//! successor too: one more miss, never a stale page.)

use std::sync::{Arc, Mutex};

use pingora::cache::key::HashBinary;

use super::object::StoredObject;
use super::tag_index::TagIndex;

/// One object that left, held until its entries are out of both indexes.
struct Left {
    key: HashBinary,
    object: Arc<StoredObject>,
}

/// Queued objects a fill lets wait, at most (more, and the fill settles them all).
const MAX_WAITING: usize = 4096;
/// Their weight at most: memory that left the cache's account but is not free yet.
const MAX_WAITING_BYTES: usize = 32 << 20;

#[derive(Default)]
struct Pending {
    objects: Vec<Left>,
    /// The queued objects' weight.
    bytes: usize,
}

#[derive(Default)]
pub(super) struct IndexCleanup {
    pending: Mutex<Pending>,
}

impl IndexCleanup {
    /// Queues the entries of `object`, stored under `key`, for removal.
    pub(super) fn queue(&self, key: HashBinary, object: Arc<StoredObject>) {
        let mut pending = self.lock();
        pending.bytes += object.weight() as usize;
        pending.objects.push(Left { key, object });
    }

    /// Settles everything if more is waiting than a fill lets wait (`MAX_WAITING`,
    /// `MAX_WAITING_BYTES`); else leaves it for the purge or the scrape that follows.
    pub(super) fn settle_if_over(&self, tags: &TagIndex, pools: &TagIndex) {
        let over = {
            let pending = self.lock();
            pending.objects.len() > MAX_WAITING || pending.bytes > MAX_WAITING_BYTES
        };
        if over {
            self.settle(tags, pools, usize::MAX);
        }
    }

    /// Applies at most `most` queued removals (the oldest first); how many are left.
    pub(super) fn settle(&self, tags: &TagIndex, pools: &TagIndex, most: usize) -> usize {
        let batch: Vec<Left> = {
            let mut pending = self.lock();
            if pending.objects.is_empty() {
                return 0;
            }
            let take = most.min(pending.objects.len());
            let batch: Vec<Left> = pending.objects.drain(..take).collect();
            let weight: usize = batch.iter().map(|l| l.object.weight() as usize).sum();
            pending.bytes = pending.bytes.saturating_sub(weight);
            batch
        };
        // Applied outside the queue's lock: the listener keeps queueing meanwhile.
        for Left { key, object } in &batch {
            tags.remove(key, object.generation, object.tags.iter());
            if let Some(pool) = &object.pool {
                pools.remove(key, object.generation, std::iter::once(&**pool));
            }
        }
        // The objects are freed here, usually their last reference.
        drop(batch);
        self.lock().objects.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding it left a valid queue: it stays usable.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bytes::Bytes;
    use pingora::http::ResponseHeader;

    use super::*;
    use crate::cache::{CompactHeader, Tags};

    fn object(generation: u64, tags: &str, pool: Option<&str>) -> Arc<StoredObject> {
        sized(generation, tags, pool, Bytes::from_static(b"page"))
    }

    fn sized(generation: u64, tags: &str, pool: Option<&str>, body: Bytes) -> Arc<StoredObject> {
        let header = ResponseHeader::build(200, None).expect("a header");
        let mut object = StoredObject::restored(
            SystemTime::now(),
            SystemTime::now(),
            0,
            0,
            CompactHeader::pack(&header, &[], &[]),
            body,
            Tags::from_normalised(tags),
            pool.map(Into::into),
            None,
        );
        object.generation = generation;
        Arc::new(object)
    }

    #[test]
    fn removals_wait_for_settle_and_spare_a_successor() {
        let (tags, pools) = (TagIndex::default(), TagIndex::default());
        let cleanup = IndexCleanup::default();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        tags.insert(a, 1, ["cat_p_1", "store"].into_iter());
        tags.insert(b, 2, ["cat_p_2", "store"].into_iter());
        pools.insert(a, 1, ["pool-a"].into_iter());
        let gone = object(1, "cat_p_1,store", Some("pool-a"));
        cleanup.queue(a, gone.clone());
        cleanup.queue(b, object(2, "cat_p_2,store", None));
        // Queued, not applied: the index still names both (allowed: gone objects), and
        // the object is held until then.
        assert_eq!(tags.objects("cat_p_1"), vec![a]);
        assert_eq!(Arc::strong_count(&gone), 2);
        // b is stored again before its old entries are taken out.
        tags.insert(b, 3, ["cat_p_2", "store"].into_iter());
        assert_eq!(cleanup.settle(&tags, &pools, 1), 1, "one left");
        assert!(tags.objects("cat_p_1").is_empty());
        assert!(pools.objects("pool-a").is_empty());
        assert_eq!(Arc::strong_count(&gone), 1, "released once settled");
        assert_eq!(cleanup.settle(&tags, &pools, usize::MAX), 0);
        assert_eq!(
            tags.objects("cat_p_2"),
            vec![b],
            "the successor keeps its entries"
        );
        assert_eq!(tags.objects("store"), vec![b]);
        assert_eq!(
            cleanup.settle(&tags, &pools, usize::MAX),
            0,
            "nothing queued"
        );
    }

    #[test]
    fn a_fill_lets_a_bounded_queue_wait() {
        let (tags, pools) = (TagIndex::default(), TagIndex::default());
        let cleanup = IndexCleanup::default();
        let waiting = |c: &IndexCleanup| c.lock().objects.len();
        cleanup.queue([1u8; 16], object(1, "cat_p_1", None));
        cleanup.settle_if_over(&tags, &pools);
        assert_eq!(
            waiting(&cleanup),
            1,
            "a purge's few removals wait for its answer"
        );
        for n in 0..MAX_WAITING as u64 {
            cleanup.queue([2u8; 16], object(n + 2, "store", None));
        }
        cleanup.settle_if_over(&tags, &pools);
        assert_eq!(
            waiting(&cleanup),
            0,
            "past the count, a fill settles them all"
        );
        // One evicted object heavier than the bound is not held until a scrape.
        let big = sized(
            9,
            "cat_p_9",
            None,
            Bytes::from(vec![0u8; MAX_WAITING_BYTES + 1]),
        );
        cleanup.queue([9u8; 16], big.clone());
        cleanup.settle_if_over(&tags, &pools);
        assert_eq!(waiting(&cleanup), 0);
        assert_eq!(Arc::strong_count(&big), 1, "its memory is released");
        assert_eq!(cleanup.lock().bytes, 0);
    }
}
