//! Why keys left memory lately (evicted, expired, purged by which tag), so the miss that
//! follows can say why: asked only on a miss, written by purges and by the store's
//! removal listener.
//!
//! Invariant: bounded: at most `capacity` keys, the oldest forgotten first, and nothing
//! older than `keep` is answered. A key stored again is forgotten (`forget`), so an old
//! removal never explains a later miss.
//!
//! One mutex over a map and a queue rather than a moka cache: a purge notes all its keys
//! under one lock (a purge of 100 objects paid a tenth of a millisecond for 100 separate
//! cache inserts), and the request path never takes it on a hit.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pingora::cache::key::HashBinary;

/// Why an object left memory, remembered for a while (`MemoryStore::removed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Evicted to make room.
    Evicted,
    /// Dropped after its TTL and keep.
    Expired,
    /// Removed by a purge of this tag (or `.*`, `X-Pool`, `everything`).
    Purged(Arc<str>),
}

#[derive(Default)]
struct Inner {
    /// The key's removal, the sequence number it was noted under, and when.
    map: HashMap<HashBinary, (Removal, u64, Instant), super::FastHasher>,
    /// Keys in the order they were noted, with their sequence numbers: a key noted again
    /// has a newer number, and its older place in the queue is skipped.
    order: VecDeque<(HashBinary, u64)>,
    next: u64,
}

pub struct Removals {
    inner: Mutex<Inner>,
    capacity: usize,
    keep: Duration,
}

impl Removals {
    pub fn new(capacity: usize, keep: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            keep,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing here can be left half-done by a panic that matters: a lost note.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `keys` left memory for `why`.
    pub fn note(&self, keys: impl IntoIterator<Item = HashBinary>, why: &Removal) {
        let now = Instant::now();
        let mut inner = self.lock();
        for key in keys {
            let seq = inner.next;
            inner.next += 1;
            inner.map.insert(key, (why.clone(), seq, now));
            inner.order.push_back((key, seq));
        }
        while inner.order.len() > self.capacity || (inner.order.len() > inner.map.len() * 2 + 64) {
            let Some((key, seq)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&key).is_some_and(|(_, s, _)| *s == seq) {
                inner.map.remove(&key);
            }
        }
    }

    /// Why `key` left memory, if it did within `keep`.
    pub fn get(&self, key: &HashBinary) -> Option<Removal> {
        let inner = self.lock();
        let (why, _, at) = inner.map.get(key)?;
        (at.elapsed() <= self.keep).then(|| why.clone())
    }

    /// `key` is stored again: its removal explains nothing any more.
    pub fn forget(&self, key: &HashBinary) {
        let mut inner = self.lock();
        if inner.map.is_empty() {
            return;
        }
        inner.map.remove(key);
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.map.len(), inner.order.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> HashBinary {
        let mut k = [0u8; 16];
        k[..4].copy_from_slice(&i.to_le_bytes());
        k
    }

    #[test]
    fn bounded_latest_wins_and_forgotten_when_stored_again() {
        let r = Removals::new(100, Duration::from_secs(60));
        let tag: Arc<str> = Arc::from("cat_p_1");
        r.note((0..1000).map(key), &Removal::Evicted);
        let (map, order) = r.held();
        assert!(map <= 100 && order <= 100, "{map} {order}");
        assert_eq!(r.get(&key(0)), None, "the oldest went first");
        assert_eq!(r.get(&key(999)), Some(Removal::Evicted));
        r.note([key(999)], &Removal::Purged(tag.clone()));
        assert_eq!(r.get(&key(999)), Some(Removal::Purged(tag)));
        r.forget(&key(999));
        assert_eq!(r.get(&key(999)), None);
        // Noting the same keys again and again does not grow the queue without bound.
        for _ in 0..100 {
            r.note([key(1), key(2)], &Removal::Expired);
        }
        let (_, order) = r.held();
        assert!(order <= 100);
    }
}
