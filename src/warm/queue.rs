//! The re-warm queue: bounded, one entry per page, hottest first.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::cache::{FastHasher, RequestIdentity};

#[derive(Default)]
struct Entries {
    /// (heat, sequence, url+headers identity) ordered coldest first.
    order: BTreeSet<(u32, u64, Arc<RequestIdentity>)>,
    /// identity -> its (heat, sequence) in `order`.
    index: HashMap<Arc<RequestIdentity>, (u32, u64), FastHasher>,
    sequence: u64,
}

pub struct WarmQueue {
    entries: Mutex<Entries>,
    capacity: usize,
    dropped: AtomicU64,
    ready: Notify,
}

impl WarmQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            ready: Notify::new(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a page; a page already queued keeps its place unless now hotter. When
    /// full, the coldest entry is dropped (and counted).
    pub fn push(&self, identity: Arc<RequestIdentity>, heat: u32) {
        self.push_quietly(identity, heat);
        self.wake();
    }

    /// `push` without waking the worker: a purge queues its pages while it runs and
    /// wakes the worker once, after its answer (`wake`), so the worker's thread does not
    /// take the core from the purge on a proxy pinned to one.
    pub fn push_quietly(&self, identity: Arc<RequestIdentity>, heat: u32) {
        let mut guard = self.entries();
        let entries = &mut *guard;
        // One hash of the identity (its URL and headers): a purge queues a page each.
        let slot = match entries.index.entry(identity.clone()) {
            Entry::Occupied(held) => {
                let (old_heat, old_seq) = *held.get();
                if heat <= old_heat {
                    return;
                }
                entries.order.remove(&(old_heat, old_seq, identity.clone()));
                held.into_mut()
            }
            Entry::Vacant(free) => free.insert((0, 0)),
        };
        entries.sequence += 1;
        // Among equal heat, earlier purges come first: a larger sequence sorts colder.
        let seq = u64::MAX - entries.sequence;
        *slot = (heat, seq);
        entries.order.insert((heat, seq, identity));
        while entries.order.len() > self.capacity {
            if let Some((_, _, coldest)) = entries.order.pop_first() {
                entries.index.remove(&coldest);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Wakes the worker to what was queued.
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// The hottest queued page, if any.
    pub fn pop(&self) -> Option<Arc<RequestIdentity>> {
        let mut entries = self.entries();
        let (_, _, identity) = entries.order.pop_last()?;
        entries.index.remove(&identity);
        Some(identity)
    }

    /// Waits until something may have been queued.
    pub async fn wait(&self) {
        self.ready.notified().await;
    }

    pub fn len(&self) -> usize {
        self.entries().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(url: &str) -> Arc<RequestIdentity> {
        Arc::new(RequestIdentity::new(
            url.into(),
            vec![("host".into(), "shop".into())],
        ))
    }

    #[test]
    fn hottest_first_deduplicated_and_bounded() {
        let q = WarmQueue::new(3);
        q.push(page("/a"), 5);
        q.push(page("/b"), 50);
        q.push(page("/c"), 1);
        q.push(page("/a"), 2); // already queued hotter: unchanged
        assert_eq!(q.len(), 3);
        q.push(page("/d"), 10); // full: /c, the coldest, is dropped
        assert_eq!(q.dropped(), 1);
        q.push_quietly(page("/a"), 60); // queued again, hotter: moves up, still once
        assert_eq!(q.len(), 3);
        let order: Vec<String> = std::iter::from_fn(|| q.pop())
            .map(|p| p.url.to_string())
            .collect();
        assert_eq!(order, vec!["/a", "/b", "/d"]);
        assert!(q.is_empty());
    }
}
