//! Bounded top lists over a sliding window: the Space-Saving algorithm (Metwally,
//! Agrawal, El Abbadi, 2005) per time slice, the slices merged when asked.
//!
//! Invariant: a list never holds more than `capacity` keys per slice, so its memory is
//! bounded whatever the traffic; a key's count is never under its true count in the
//! window, and over it by at most the `error` carried with it (the highest count evicted
//! before it came). The least counted tenth is evicted at once (`evict_least`), so only
//! keys at or under the tenth-lowest count leave: a frequent key stays listed (the test
//! below keeps one key of every ten events among 10,000 distinct ones).
//!
//! Written here rather than taken from a crate: the sketch crates (pdatastructs'
//! count-min top-k, streaming_algorithms) keep a bare count per key, while each entry
//! here carries what explains it (reason counts, objects purged, origin time, a
//! distinct-value sketch) and slices must merge into a window. The algorithm is 40 lines.

use std::collections::{HashMap, VecDeque};

/// What an entry carries beside its count, merged when slices are.
pub trait Extra: Default + Clone {
    fn merge(&mut self, other: &Self);
}

impl Extra for () {
    fn merge(&mut self, _: &Self) {}
}

impl Extra for u64 {
    fn merge(&mut self, other: &Self) {
        *self += other;
    }
}

/// Counts per reason: arrays of the sizes the lists use (`Default` is not generic over
/// an array's length).
macro_rules! counts_extra {
    ($($n:literal),*) => {$(
        impl Extra for [u64; $n] {
            fn merge(&mut self, other: &Self) {
                for (a, b) in self.iter_mut().zip(other) {
                    *a += b;
                }
            }
        }
    )*};
}
counts_extra!(5, 6, 8);

#[derive(Debug, Clone)]
pub struct Entry<V> {
    pub count: u64,
    /// How much of `count` may belong to keys this one replaced.
    pub error: u64,
    pub extra: V,
}

/// Ranks a merged entry (by default, its count).
pub type Rank<'a, V> = &'a dyn Fn(&Entry<V>) -> u64;

/// One slice: at most `capacity` keys, the least counted one replaced by a newcomer.
#[derive(Debug, Clone)]
pub struct SpaceSaving<V> {
    capacity: usize,
    entries: HashMap<Box<str>, Entry<V>>,
    /// The highest count evicted so far: what a newcomer may have had before.
    floor: u64,
}

impl<V: Extra> SpaceSaving<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            floor: 0,
        }
    }

    /// Counts `weight` for `key`; returns its entry for the caller's extra.
    pub fn add(&mut self, key: &str, weight: u64) -> &mut Entry<V> {
        if !self.entries.contains_key(key) {
            if self.entries.len() >= self.capacity {
                self.evict_least();
            }
            // Space-Saving: a newcomer may have been seen before and evicted, at most
            // `floor` times: it starts there, so its count is never under the truth.
            self.entries.insert(
                key.into(),
                Entry {
                    count: self.floor,
                    error: self.floor,
                    extra: V::default(),
                },
            );
        }
        let entry = self
            .entries
            .get_mut(key)
            .expect("the key was inserted just above");
        entry.count += weight;
        entry
    }

    /// Drops the least counted tenth at once, rather than the least counted key for each
    /// newcomer: one scan per `capacity / 10` newcomers instead of one each (a purge of
    /// 100 new tags paid 100 scans, on the core that answered it).
    fn evict_least(&mut self) {
        let mut counts: Vec<u64> = self.entries.values().map(|e| e.count).collect();
        let nth = (counts.len() / 10).max(1) - 1;
        let (_, threshold, _) = counts.select_nth_unstable(nth);
        let threshold = *threshold;
        self.entries.retain(|_, e| e.count > threshold);
        self.floor = self.floor.max(threshold);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A top list over the last `slices` slices: the newest takes events, the oldest is
/// dropped at each `rotate`.
#[derive(Debug, Clone)]
pub struct Windowed<V> {
    capacity: usize,
    slices: VecDeque<SpaceSaving<V>>,
    max_slices: usize,
}

impl<V: Extra> Windowed<V> {
    pub fn new(capacity: usize, slices: usize) -> Self {
        let mut deque = VecDeque::with_capacity(slices);
        deque.push_back(SpaceSaving::new(capacity));
        Self {
            capacity,
            slices: deque,
            max_slices: slices.max(1),
        }
    }

    pub fn add(&mut self, key: &str, weight: u64) -> &mut Entry<V> {
        self.slices
            .back_mut()
            .expect("a window always has its newest slice")
            .add(key, weight)
    }

    /// Starts a new slice; the oldest falls out of the window.
    pub fn rotate(&mut self) {
        self.slices.push_back(SpaceSaving::new(self.capacity));
        while self.slices.len() > self.max_slices {
            self.slices.pop_front();
        }
    }

    /// Every key in the window with its merged entry, most counted first, by `rank`
    /// (the count when `None`), at most `n`.
    pub fn top(&self, n: usize, rank: Option<Rank<'_, V>>) -> Vec<(String, Entry<V>)> {
        let mut merged: HashMap<&str, Entry<V>> = HashMap::new();
        for slice in &self.slices {
            for (key, entry) in &slice.entries {
                let into = merged.entry(key).or_insert_with(|| Entry {
                    count: 0,
                    error: 0,
                    extra: V::default(),
                });
                into.count += entry.count;
                into.error += entry.error;
                into.extra.merge(&entry.extra);
            }
        }
        let mut list: Vec<(String, Entry<V>)> = merged
            .into_iter()
            .map(|(k, e)| (k.to_string(), e))
            .collect();
        let score = |e: &Entry<V>| rank.map_or(e.count, |r| r(e));
        list.sort_by(|a, b| score(&b.1).cmp(&score(&a.1)).then_with(|| a.0.cmp(&b.0)));
        list.truncate(n);
        list
    }

    /// Keys held now, all slices together (for the memory bound's test).
    #[cfg(test)]
    fn keys_held(&self) -> usize {
        self.slices.iter().map(SpaceSaving::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frequent_key_is_always_listed_and_memory_stays_bounded() {
        let mut list: Windowed<()> = Windowed::new(10, 3);
        // 10,000 distinct keys once each, and one key every 10th event.
        for i in 0..10_000 {
            list.add(&format!("/rare/{i}"), 1);
            if i % 10 == 0 {
                list.add("/hot", 1);
            }
        }
        assert!(list.keys_held() <= 10);
        let top = list.top(3, None);
        assert_eq!(top[0].0, "/hot");
        // Never under the true count, over it by at most the error.
        assert!(top[0].1.count >= 1000);
        assert!(top[0].1.count - top[0].1.error <= 1000);
    }

    #[test]
    fn old_slices_leave_the_window() {
        let mut list: Windowed<u64> = Windowed::new(10, 2);
        list.add("/a", 5).extra += 7;
        list.rotate();
        list.add("/a", 1).extra += 1;
        list.add("/b", 2);
        let top = list.top(10, None);
        assert_eq!(top[0].0, "/a");
        assert_eq!((top[0].1.count, top[0].1.extra), (6, 8));
        list.rotate();
        let top = list.top(10, None);
        assert_eq!(
            top.iter()
                .map(|(k, e)| (k.as_str(), e.count))
                .collect::<Vec<_>>(),
            [("/b", 2), ("/a", 1)]
        );
        list.rotate();
        assert!(list.top(10, None).is_empty());
    }
}
