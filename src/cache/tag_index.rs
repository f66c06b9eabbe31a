//! Tag -> stored objects, so a purge touches only the objects it removes.
//!
//! Varnish answers Magento's purges with bans that every later lookup must test; here
//! a purge of `cat_p_42` is one map look-up. Entries carry the object's generation, so
//! the removal of a replaced object cannot take away the entries of its successor.
//! Sharded by tag so concurrent purges and inserts rarely meet on one lock.
//!
//! Most tags name one object (Magento's `cat_p_42` on its product page), so a tag held
//! by one object keeps it inline: a map per tag would cost an allocation of about 128
//! bytes per object for a tag that never names a second one.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use pingora::cache::key::HashBinary;

use super::FastHasher;

const SHARDS: usize = 64;

type Shard = HashMap<Box<str>, Holders, FastHasher>;

/// The objects (key, generation) carrying one tag.
enum Holders {
    One(HashBinary, u64),
    Many(HashMap<HashBinary, u64, FastHasher>),
}

impl Holders {
    fn insert(&mut self, key: HashBinary, generation: u64) {
        match self {
            Holders::One(held, held_generation) if *held == key => *held_generation = generation,
            Holders::One(held, held_generation) => {
                let mut many = HashMap::with_capacity_and_hasher(2, FastHasher::default());
                many.insert(*held, *held_generation);
                many.insert(key, generation);
                *self = Holders::Many(many);
            }
            Holders::Many(objects) => {
                objects.insert(key, generation);
            }
        }
    }

    /// Forgets `key` if it is still of `generation`; `true` when no object is left.
    fn remove(&mut self, key: &HashBinary, generation: u64) -> bool {
        match self {
            Holders::One(held, held_generation) => *held == *key && *held_generation == generation,
            Holders::Many(objects) => {
                if objects.get(key) == Some(&generation) {
                    objects.remove(key);
                }
                objects.is_empty()
            }
        }
    }

    fn keys(&self) -> impl Iterator<Item = HashBinary> + '_ {
        let (one, many) = match self {
            Holders::One(key, _) => (Some(*key), None),
            Holders::Many(objects) => (None, Some(objects.keys().copied())),
        };
        // Without boxing: a purge asks this once per tag.
        one.into_iter().chain(many.into_iter().flatten())
    }
}

pub struct TagIndex {
    shards: Vec<Mutex<Shard>>,
    /// Picks a tag's shard.
    spread: FastHasher,
}

impl Default for TagIndex {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            spread: FastHasher::default(),
        }
    }
}

impl TagIndex {
    fn shard(&self, tag: &str) -> std::sync::MutexGuard<'_, Shard> {
        let shard = &self.shards[self.spread.hash_one(tag) as usize % SHARDS];
        shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that object `key` of `generation` carries `tags`.
    pub fn insert<'t>(
        &self,
        key: HashBinary,
        generation: u64,
        tags: impl Iterator<Item = &'t str>,
    ) {
        for tag in tags {
            let mut shard = self.shard(tag);
            match shard.get_mut(tag) {
                Some(holders) => holders.insert(key, generation),
                None => {
                    shard.insert(tag.into(), Holders::One(key, generation));
                }
            }
        }
    }

    /// Forgets object `key` of `generation`; a newer generation's entries stay.
    pub fn remove<'t>(
        &self,
        key: &HashBinary,
        generation: u64,
        tags: impl Iterator<Item = &'t str>,
    ) {
        for tag in tags {
            let mut shard = self.shard(tag);
            if shard
                .get_mut(tag)
                .is_some_and(|holders| holders.remove(key, generation))
            {
                shard.remove(tag);
            }
        }
    }

    /// The objects carrying `tag`, at the moment of the call.
    pub fn objects(&self, tag: &str) -> Vec<HashBinary> {
        self.shard(tag)
            .get(tag)
            .map(|holders| holders.keys().collect())
            .unwrap_or_default()
    }

    /// Every tag some stored object carries (for regular-expression purges).
    pub fn known_tags(&self) -> Vec<String> {
        let mut tags = Vec::new();
        for shard in &self.shards {
            let shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            tags.extend(shard.keys().map(|t| t.to_string()));
        }
        tags
    }

    /// Every object that carries at least one tag (for `.*`).
    pub fn all_tagged(&self) -> Vec<HashBinary> {
        let mut keys = std::collections::HashSet::new();
        for shard in &self.shards {
            let shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for holders in shard.values() {
                keys.extend(holders.keys());
            }
        }
        keys.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_objects_removal_keeps_its_successor() {
        let index = TagIndex::default();
        let key = [1u8; 16];
        index.insert(key, 1, ["cat_p_1", "store"].into_iter());
        index.insert(key, 2, ["cat_p_1"].into_iter());
        index.remove(&key, 1, ["cat_p_1", "store"].into_iter());
        assert_eq!(index.objects("cat_p_1"), vec![key]);
        assert!(index.objects("store").is_empty());
        assert_eq!(index.known_tags(), vec!["cat_p_1".to_string()]);
        index.remove(&key, 2, ["cat_p_1"].into_iter());
        assert!(index.all_tagged().is_empty());
    }

    #[test]
    fn a_tag_moves_from_one_object_to_many_and_back() {
        let index = TagIndex::default();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        index.insert(a, 1, ["cat_c_3"].into_iter());
        index.insert(b, 2, ["cat_c_3"].into_iter());
        let mut both = index.objects("cat_c_3");
        both.sort_unstable();
        assert_eq!(both, vec![a, b]);
        // A stale generation's removal of the single holder keeps it.
        index.remove(&a, 1, ["cat_c_3"].into_iter());
        index.remove(&b, 1, ["cat_c_3"].into_iter());
        assert_eq!(index.objects("cat_c_3"), vec![b]);
        index.remove(&b, 2, ["cat_c_3"].into_iter());
        assert!(index.known_tags().is_empty());
        // One holder, replaced by a newer generation of itself, then a stale removal.
        index.insert(a, 3, ["cat_p_1"].into_iter());
        index.insert(a, 4, ["cat_p_1"].into_iter());
        index.remove(&a, 3, ["cat_p_1"].into_iter());
        assert_eq!(index.objects("cat_p_1"), vec![a]);
    }
}
