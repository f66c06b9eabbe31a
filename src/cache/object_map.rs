//! The memory tier's map: stored objects by key, bounded in bytes, evicted by CLOCK
//! (second chance), dropped once nobody may be served them.
//!
//! Why not moka, which held them before: an entry there cost about 310 bytes beyond the
//! object (its node, its deques, its frequency sketch, its timer wheel), the size of a
//! small page's header and tags together; and a removal there took a per-key lock and
//! rehashed tombstones, 45 % of a 100-page purge. Here an entry is a 32-byte slot and
//! a 20-byte index entry in a sharded map, a look-up is one short lock and a hash probe,
//! and a removal frees its slot.
//!
//! Why not quick_cache, the light crate of this kind (S3-FIFO, weights): it has no
//! expiry per entry (an object must give its memory back at TTL + keep) and tells only
//! evictions, not replacements or expiries, while the tag index must hear of every
//! object that leaves. What is here is a slot table, a hash map and a clock hand.
//!
//! Policy: CLOCK, as Varnish's LRU is approximated by most caches: a hit sets the slot's
//! bit; eviction sweeps a shard's slots, clearing bits, and takes the first slot whose
//! bit is clear (a page nobody asked for since the hand last passed). A stored object
//! starts with its bit clear, so a crawl of pages nobody reads again leaves first.
//! Shards are evicted in turn, so all of memory ages at one pace.
//!
//! Expiry: an object past its usable time (TTL + max(grace, keep)) is never returned;
//! the look-up that finds it removes it, the eviction hand drops it as it passes, and
//! `sweep_expired` (every few thousand inserts, and on `sync`) gives the memory of the
//! rest back.
//!
//! Invariant: every object that leaves (evicted, expired, replaced, removed) is handed
//! to `on_leave` exactly once, after the shard's lock is released (the store keeps its
//! indexes in step there); the byte and object counts are those of the objects held.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use pingora::cache::key::HashBinary;

use super::object::StoredObject;
use super::FastHasher;

/// Few enough that a sweep of all of them is cheap, enough that the proxy's threads
/// rarely meet on one.
const SHARDS: usize = 64;
/// A sweep for expired objects every this many inserts (one shard each time).
const SWEEP_EVERY: u64 = 256;

/// Why an object left the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// Evicted to keep within the byte budget.
    Size,
    /// Past its usable time.
    Expired,
    /// Replaced by a newer object under its key.
    Replaced,
    /// Removed by the store (a purge, a flush).
    Removed,
}

/// Told of every object that leaves.
pub(super) type OnLeave = Box<dyn Fn(HashBinary, Arc<StoredObject>, Cause) + Send + Sync>;

struct Slot {
    key: HashBinary,
    object: Option<Arc<StoredObject>>,
    weight: u32,
    /// Hit since the hand last passed.
    referenced: bool,
}

/// A shard's key -> slot map.
type Index = std::collections::HashMap<HashBinary, u32, FastHasher>;

#[derive(Default)]
struct Shard {
    index: Index,
    slots: Vec<Slot>,
    /// Slots whose object left, reused first.
    free: Vec<u32>,
    hand: usize,
}

/// What left while a shard was locked, told once it is not.
type Leaving = Vec<(HashBinary, Arc<StoredObject>, Cause)>;

/// One turn of the eviction hand in one shard.
enum Turn {
    /// The shard holds nothing.
    Empty,
    /// Every object there was read since the hand last passed: spared, bits cleared.
    Spared,
    /// Memory given back: one object evicted, or expired ones dropped.
    Evicted(Leaving),
}

impl Shard {
    fn take(&mut self, at: usize) -> Option<(HashBinary, Arc<StoredObject>, u32)> {
        let slot = &mut self.slots[at];
        let object = slot.object.take()?;
        self.index.remove(&slot.key);
        self.free.push(at as u32);
        Some((slot.key, object, slot.weight))
    }
}

pub(super) struct ObjectMap {
    shards: Box<[Mutex<Shard>]>,
    capacity: u64,
    bytes: AtomicU64,
    objects: AtomicU64,
    inserts: AtomicU64,
    /// The shard the next eviction starts in.
    evict_next: AtomicUsize,
    sweep_next: AtomicUsize,
    hasher: FastHasher,
    on_leave: OnLeave,
}

impl ObjectMap {
    pub(super) fn new(capacity: u64, on_leave: OnLeave) -> Self {
        let hasher = FastHasher::default();
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        index: Index::with_hasher(hasher.clone()),
                        ..Shard::default()
                    })
                })
                .collect(),
            capacity,
            bytes: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            evict_next: AtomicUsize::new(0),
            sweep_next: AtomicUsize::new(0),
            hasher,
            on_leave,
        }
    }

    fn shard_of(&self, key: &HashBinary) -> usize {
        // Keys are digests, but of URLs a visitor picks: the keyed hash keeps them from
        // piling into one shard.
        (self.hasher.hash_one(key) >> 58) as usize % SHARDS
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // Every change to a shard is complete before anything that can panic: a poisoned
        // shard is still consistent.
        self.shards[shard]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tell(&self, leaving: Leaving) {
        for (key, object, cause) in leaving {
            (self.on_leave)(key, object, cause);
        }
    }

    fn forget(&self, weight: u32) {
        self.bytes.fetch_sub(u64::from(weight), Ordering::Relaxed);
        self.objects.fetch_sub(1, Ordering::Relaxed);
    }

    /// The object under `key`, if it is still usable; marks it used.
    pub(super) fn get(&self, key: &HashBinary) -> Option<Arc<StoredObject>> {
        let expired = {
            let mut shard = self.lock(self.shard_of(key));
            let at = *shard.index.get(key)? as usize;
            let slot = &mut shard.slots[at];
            let object = slot.object.as_ref()?;
            if object.unusable_at() > SystemTime::now() {
                slot.referenced = true;
                return Some(object.clone());
            }
            let (key, object, weight) = shard.take(at)?;
            self.forget(weight);
            (key, object)
        };
        (self.on_leave)(expired.0, expired.1, Cause::Expired);
        None
    }

    /// Whether `key` is held (usable or not; no bookkeeping).
    pub(super) fn contains_key(&self, key: &HashBinary) -> bool {
        self.lock(self.shard_of(key)).index.contains_key(key)
    }

    /// Stores `object` under `key`, replacing what was there, then evicts until the
    /// budget holds. An object heavier than the whole budget is not kept (it leaves as
    /// evicted at once).
    pub(super) fn insert(&self, key: HashBinary, object: Arc<StoredObject>) {
        let weight = object.weight();
        if u64::from(weight) > self.capacity {
            (self.on_leave)(key, object, Cause::Size);
            return;
        }
        let replaced = {
            let mut shard = self.lock(self.shard_of(&key));
            let replaced = match shard.index.get(&key) {
                Some(&at) => {
                    let slot = &mut shard.slots[at as usize];
                    let old_weight = std::mem::replace(&mut slot.weight, weight);
                    let old = slot.object.replace(object);
                    self.bytes.fetch_add(u64::from(weight), Ordering::Relaxed);
                    self.bytes
                        .fetch_sub(u64::from(old_weight), Ordering::Relaxed);
                    old
                }
                None => {
                    let slot = Slot {
                        key,
                        object: Some(object),
                        weight,
                        referenced: false,
                    };
                    let at = match shard.free.pop() {
                        Some(at) => {
                            shard.slots[at as usize] = slot;
                            at
                        }
                        None => {
                            shard.slots.push(slot);
                            (shard.slots.len() - 1) as u32
                        }
                    };
                    shard.index.insert(key, at);
                    self.bytes.fetch_add(u64::from(weight), Ordering::Relaxed);
                    self.objects.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            replaced
        };
        if let Some(old) = replaced {
            (self.on_leave)(key, old, Cause::Replaced);
        }
        self.evict_to_budget();
        if self
            .inserts
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
        {
            let shard = self.sweep_next.fetch_add(1, Ordering::Relaxed) % SHARDS;
            self.sweep_shard(shard, SystemTime::now());
        }
    }

    /// Evicts, shard after shard, until the bytes held are within the budget.
    fn evict_to_budget(&self) {
        // Each turn looks at one shard. A turn that evicts nothing has cleared that
        // shard's bits, so a page read since the hand last passed is spared in every
        // shard before any is evicted: after a full round without an eviction the hand
        // takes what it meets (bits set again meanwhile by hits cannot keep it turning).
        // A full round of empty shards means nothing is left to evict (the counts are
        // only over while an insert is under way).
        let mut empty_in_a_row = 0;
        let mut spared_in_a_row = 0;
        while self.bytes.load(Ordering::Relaxed) > self.capacity && empty_in_a_row < SHARDS {
            let shard = self.evict_next.fetch_add(1, Ordering::Relaxed) % SHARDS;
            match self.evict_one(shard, spared_in_a_row >= SHARDS) {
                Turn::Empty => empty_in_a_row += 1,
                Turn::Spared => {
                    empty_in_a_row = 0;
                    spared_in_a_row += 1;
                }
                Turn::Evicted(leaving) => {
                    empty_in_a_row = 0;
                    spared_in_a_row = 0;
                    self.tell(leaving);
                }
            }
        }
    }

    /// Runs `shard`'s hand once round to the first slot not used since it last passed,
    /// clearing the bits it passes and dropping expired objects on the way; with
    /// `force`, a second time round if needed, so it evicts whatever is there.
    fn evict_one(&self, shard: usize, force: bool) -> Turn {
        let now = SystemTime::now();
        let mut shard = self.lock(shard);
        let len = shard.slots.len();
        if len == shard.free.len() {
            return Turn::Empty;
        }
        let mut leaving = Leaving::new();
        let turns = if force { 2 } else { 1 };
        for _ in 0..turns * len {
            let at = shard.hand;
            shard.hand = (at + 1) % len;
            let slot = &mut shard.slots[at];
            let Some(object) = &slot.object else { continue };
            let cause = if object.unusable_at() <= now {
                Cause::Expired
            } else if slot.referenced {
                slot.referenced = false;
                continue;
            } else {
                Cause::Size
            };
            if let Some((key, object, weight)) = shard.take(at) {
                self.forget(weight);
                leaving.push((key, object, cause));
            }
            if cause == Cause::Size {
                return Turn::Evicted(leaving);
            }
        }
        // Expired objects dropped on the way still gave memory back.
        if leaving.is_empty() {
            Turn::Spared
        } else {
            Turn::Evicted(leaving)
        }
    }

    fn sweep_shard(&self, shard: usize, now: SystemTime) {
        let leaving: Leaving = {
            let mut shard = self.lock(shard);
            let mut leaving = Leaving::new();
            for at in 0..shard.slots.len() {
                let expired = shard.slots[at]
                    .object
                    .as_ref()
                    .is_some_and(|o| o.unusable_at() <= now);
                if expired {
                    if let Some((key, object, weight)) = shard.take(at) {
                        self.forget(weight);
                        leaving.push((key, object, Cause::Expired));
                    }
                }
            }
            leaving
        };
        self.tell(leaving);
    }

    /// Drops every object past its usable time now.
    pub(super) fn sweep_expired(&self) {
        let now = SystemTime::now();
        for shard in 0..SHARDS {
            self.sweep_shard(shard, now);
        }
    }

    /// Removes `key`; the object it held.
    pub(super) fn remove(&self, key: &HashBinary) -> Option<Arc<StoredObject>> {
        let (key, object) = {
            let mut shard = self.lock(self.shard_of(key));
            let at = *shard.index.get(key)? as usize;
            let (key, object, weight) = shard.take(at)?;
            self.forget(weight);
            (key, object)
        };
        (self.on_leave)(key, object.clone(), Cause::Removed);
        Some(object)
    }

    /// Removes every object.
    pub(super) fn clear(&self) {
        for shard in 0..SHARDS {
            let leaving: Leaving = {
                let mut shard = self.lock(shard);
                let slots = std::mem::take(&mut shard.slots);
                shard.index = Index::with_hasher(self.hasher.clone());
                shard.free = Vec::new();
                shard.hand = 0;
                slots
                    .into_iter()
                    .filter_map(|slot| {
                        let object = slot.object?;
                        self.forget(slot.weight);
                        Some((slot.key, object, Cause::Removed))
                    })
                    .collect()
            };
            self.tell(leaving);
        }
    }

    /// Objects and bytes held.
    pub(super) fn usage(&self) -> (u64, u64) {
        (
            self.objects.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Every object held now (a copy of the list: for operators' questions, not hits).
    pub(super) fn objects(&self) -> Vec<Arc<StoredObject>> {
        let mut all = Vec::new();
        for shard in 0..SHARDS {
            let shard = self.lock(shard);
            all.extend(shard.slots.iter().filter_map(|s| s.object.clone()));
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use pingora::http::ResponseHeader;

    use super::*;
    use crate::cache::{CompactHeader, Tags};

    fn object(body: usize, usable_for: Duration) -> Arc<StoredObject> {
        let header = ResponseHeader::build(200, None).expect("a header");
        Arc::new(StoredObject::restored(
            SystemTime::now() + usable_for,
            SystemTime::now(),
            0,
            0,
            CompactHeader::pack(&header, &[], &[]),
            Bytes::from(vec![b'x'; body]),
            Tags::default(),
            None,
            None,
        ))
    }

    /// What `on_leave` was told, in order.
    type Told = Arc<Mutex<Vec<(HashBinary, Cause)>>>;

    fn recording() -> (OnLeave, Told) {
        let left = Arc::new(Mutex::new(Vec::new()));
        let told = left.clone();
        let on_leave: OnLeave = Box::new(move |key, _, cause| {
            told.lock().expect("not poisoned").push((key, cause));
        });
        (on_leave, left)
    }

    fn key(n: u32) -> HashBinary {
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(&n.to_le_bytes());
        key
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn stays_within_budget_and_keeps_what_is_read() {
        let (on_leave, left) = recording();
        let weight = u64::from(object(1000, HOUR).weight());
        let map = ObjectMap::new(weight * 100, on_leave);
        for n in 0..100 {
            map.insert(key(n), object(1000, HOUR));
        }
        assert_eq!(map.usage(), (100, weight * 100));
        assert!(left.lock().expect("lock").is_empty(), "all fit");
        // Pages 0..10 are read all along; 200 more pages nobody reads pass through.
        for n in 100..300 {
            if n % 20 == 0 {
                for read in 0..10 {
                    assert!(
                        map.get(&key(read)).is_some(),
                        "read page {read} was evicted"
                    );
                }
            }
            map.insert(key(n), object(1000, HOUR));
            assert!(map.usage().1 <= weight * 100, "over budget after {n}");
        }
        for n in 0..10 {
            assert!(map.get(&key(n)).is_some(), "read page {n} was evicted");
        }
        let left = left.lock().expect("lock");
        assert_eq!(left.len(), 200);
        assert!(left.iter().all(|(_, cause)| *cause == Cause::Size));
        let (objects, _) = map.usage();
        assert_eq!(objects, 100);
        assert_eq!(map.objects().len(), 100);
    }

    #[test]
    fn every_departure_is_told_once_with_its_cause() {
        let (on_leave, left) = recording();
        let map = ObjectMap::new(1 << 20, on_leave);
        map.insert(key(1), object(10, HOUR));
        map.insert(key(1), object(20, HOUR));
        map.insert(key(2), object(10, Duration::ZERO));
        map.insert(key(3), object(10, HOUR));
        map.insert(key(4), object(2 << 20, HOUR));
        assert!(map.get(&key(2)).is_none(), "past its usable time");
        assert!(map.remove(&key(3)).is_some());
        assert!(map.remove(&key(3)).is_none());
        assert!(map.get(&key(1)).is_some());
        map.clear();
        assert_eq!(map.usage(), (0, 0));
        assert!(map.get(&key(1)).is_none());
        assert_eq!(
            *left.lock().expect("lock"),
            vec![
                (key(1), Cause::Replaced),
                (key(4), Cause::Size),
                (key(2), Cause::Expired),
                (key(3), Cause::Removed),
                (key(1), Cause::Removed),
            ]
        );
        // Slots are reused after a clear and a removal.
        map.insert(key(5), object(10, HOUR));
        assert_eq!(map.usage().0, 1);
    }

    #[test]
    fn expired_objects_are_swept_without_being_looked_up() {
        let (on_leave, left) = recording();
        let map = ObjectMap::new(1 << 20, on_leave);
        for n in 0..50 {
            map.insert(key(n), object(10, Duration::ZERO));
        }
        map.insert(key(99), object(10, HOUR));
        map.sweep_expired();
        assert_eq!(map.usage().0, 1);
        assert_eq!(left.lock().expect("lock").len(), 50);
        assert!(map.contains_key(&key(99)));
    }

    /// Four threads insert, read, replace and remove over one small budget at once: the
    /// budget holds after every insert settles, every object is told once, and the
    /// counts are those of the objects held.
    #[test]
    fn concurrent_use_keeps_the_budget_and_the_counts() {
        let (on_leave, left) = recording();
        let weight = u64::from(object(500, HOUR).weight());
        let map = Arc::new(ObjectMap::new(weight * 64, on_leave));
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let map = map.clone();
                std::thread::spawn(move || {
                    for n in 0..2_000u32 {
                        let k = key((n * 7 + t) % 300);
                        match n % 5 {
                            0 => {
                                map.remove(&k);
                            }
                            1 => {
                                map.get(&k);
                            }
                            _ => map.insert(k, object(500, HOUR)),
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no panic");
        }
        let (objects, bytes) = map.usage();
        assert!(
            bytes <= weight * 64,
            "{bytes} bytes over a budget of {}",
            weight * 64
        );
        let held = map.objects();
        assert_eq!(held.len() as u64, objects);
        assert_eq!(bytes, objects * weight);
        // Each of the 4 x 1,200 inserts is either held or was told to have left.
        assert_eq!(left.lock().expect("lock").len() as u64 + objects, 4 * 1_200);
    }
}
