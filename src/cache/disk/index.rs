//! What is on disk, in memory: each object's summary, its tags and pool (so purges find
//! disk objects as they find memory ones, by index), and the order of last use (so
//! eviction keeps the pages visitors ask for).
//!
//! Invariant: changed only by the tier's writers, after their transaction committed and
//! before the next one begins, so the index is exactly what the file holds.

use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use pingora::cache::key::HashBinary;

use super::super::tag_index::TagIndex;
use super::super::TagSelector;
use super::record::Summary;

/// Tag-index entries of disk objects all have this generation: an object replaced on
/// disk has its old entries removed before its new ones go in.
const GENERATION: u64 = 0;

struct Entry {
    summary: Summary,
    /// When it was last written or read from disk (a counter, not a clock).
    used: u64,
    /// Whether it was read from disk since it last went back to memory: the second
    /// read of a page sends it back (see `touch`).
    read_once: bool,
}

#[derive(Default)]
pub struct DiskIndex {
    entries: HashMap<HashBinary, Entry>,
    /// (last use, key): the least recently used first.
    order: BTreeSet<(u64, HashBinary)>,
    clock: u64,
    bytes: u64,
    tags: TagIndex,
    pools: TagIndex,
}

impl DiskIndex {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn contains(&self, key: &HashBinary) -> bool {
        self.entries.contains_key(key)
    }

    pub fn summary(&self, key: &HashBinary) -> Option<&Summary> {
        self.entries.get(key).map(|e| &e.summary)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    pub fn insert(&mut self, key: HashBinary, summary: Summary) {
        self.remove(&key);
        let used = self.tick();
        self.tags.insert(key, GENERATION, summary.tags.iter());
        if let Some(pool) = &summary.pool {
            self.pools.insert(key, GENERATION, std::iter::once(&**pool));
        }
        self.bytes += summary.size;
        self.order.insert((used, key));
        self.entries.insert(
            key,
            Entry {
                summary,
                used,
                read_once: false,
            },
        );
    }

    pub fn remove(&mut self, key: &HashBinary) -> Option<Summary> {
        let entry = self.entries.remove(key)?;
        self.order.remove(&(entry.used, *key));
        self.tags.remove(key, GENERATION, entry.summary.tags.iter());
        if let Some(pool) = &entry.summary.pool {
            self.pools.remove(key, GENERATION, std::iter::once(&**pool));
        }
        self.bytes -= entry.summary.size;
        Some(entry.summary)
    }

    /// Marks `key` as just read: the last to be evicted. Whether it should go back to
    /// memory: on its second read since it last did. A page read once from disk is
    /// served from disk; only one that comes back earns a place in memory, so a scan
    /// over the long tail (a crawler, every page alike) does not churn memory's hot set.
    pub fn touch(&mut self, key: &HashBinary) -> bool {
        let now = self.tick();
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        self.order.remove(&(entry.used, *key));
        entry.used = now;
        self.order.insert((now, *key));
        let promote = entry.read_once;
        entry.read_once = !promote;
        promote
    }

    pub fn clear(&mut self) {
        *self = Self {
            clock: self.clock,
            ..Self::default()
        };
    }

    /// The objects a purge selects: by tags (named, all, or matching), or by pool.
    pub fn select(
        &self,
        tags: Option<&TagSelector>,
        pool: Option<&regex::Regex>,
    ) -> Vec<HashBinary> {
        let mut keys: Vec<HashBinary> = match tags {
            Some(TagSelector::Tags(tags)) => {
                tags.iter().flat_map(|t| self.tags.objects(t)).collect()
            }
            Some(TagSelector::AllTagged) => self.tags.all_tagged(),
            Some(TagSelector::Pattern(re)) => self
                .tags
                .known_tags()
                .iter()
                .filter(|t| re.is_match(t))
                .flat_map(|t| self.tags.objects(t))
                .collect(),
            None => Vec::new(),
        };
        if let Some(re) = pool {
            keys.extend(
                self.pools
                    .known_tags()
                    .iter()
                    .filter(|p| re.is_match(p))
                    .flat_map(|p| self.pools.objects(p)),
            );
        }
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Objects that may no longer be served at all at `now`.
    pub fn unusable(&self, now: SystemTime) -> Vec<HashBinary> {
        self.entries
            .iter()
            .filter(|(_, e)| e.summary.usable_until <= now)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Which objects to evict so that at most `budget` bytes stay: the least recently
    /// used first, except that one still held in memory (so still being served) gets a
    /// second chance, once per call, instead of going.
    pub fn victims(
        &mut self,
        budget: u64,
        in_memory: impl Fn(&HashBinary) -> bool,
    ) -> Vec<HashBinary> {
        let mut victims = Vec::new();
        let mut freed = 0;
        let mut spared = 0;
        let mut second_chance = Vec::new();
        for (_, key) in &self.order {
            if self.bytes - freed <= budget {
                break;
            }
            if in_memory(key) && spared < self.entries.len() / 2 {
                spared += 1;
                second_chance.push(*key);
                continue;
            }
            if let Some(entry) = self.entries.get(key) {
                freed += entry.summary.size;
                victims.push(*key);
            }
        }
        // Hot in memory: moved to the back of the line.
        for key in second_chance {
            self.touch(&key);
        }
        victims
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Tags;
    use std::time::Duration;

    fn summary(size: u64, tags: &str) -> Summary {
        Summary {
            usable_until: SystemTime::now() + Duration::from_secs(60),
            size,
            tags: Tags::from_normalised(tags),
            pool: None,
        }
    }

    #[test]
    fn eviction_takes_the_least_recently_used_and_spares_what_memory_serves() {
        let mut index = DiskIndex::default();
        for i in 0..4u8 {
            index.insert([i; 16], summary(100, "cat_p_1"));
        }
        assert!(!index.touch(&[0; 16]), "a first read stays on disk");
        // Order of use now: 1, 2, 3, 0. Object 1 is in memory: spared once.
        let victims = index.victims(200, |k| *k == [1; 16]);
        assert_eq!(victims, vec![[2; 16], [3; 16]]);
        for v in &victims {
            index.remove(v);
        }
        assert_eq!(index.bytes(), 200);
        assert!(index.touch(&[0; 16]), "a second read goes back to memory");
        assert!(!index.touch(&[0; 16]), "and the count starts again");
        assert_eq!(
            index
                .select(Some(&TagSelector::Tags(vec!["cat_p_1".into()])), None)
                .len(),
            2
        );
    }

    #[test]
    fn a_replaced_object_is_counted_once_and_keeps_only_its_new_tags() {
        let mut index = DiskIndex::default();
        index.insert([7; 16], summary(100, "a,b"));
        index.insert([7; 16], summary(50, "b"));
        assert_eq!(index.bytes(), 50);
        assert!(index
            .select(Some(&TagSelector::Tags(vec!["a".into()])), None)
            .is_empty());
        assert_eq!(
            index.select(Some(&TagSelector::AllTagged), None),
            vec![[7; 16]]
        );
        index.remove(&[7; 16]);
        assert_eq!((index.len(), index.bytes()), (0, 0));
    }
}
