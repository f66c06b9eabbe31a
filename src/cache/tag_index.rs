//! Tag -> stored objects, so a purge touches only the objects it removes.
//!
//! Varnish answers Magento's purges with bans that every later lookup must test; here
//! a purge of `cat_p_42` is one map look-up. Entries carry the object's generation, so
//! the removal of a replaced object cannot take away the entries of its successor.
//! Sharded by tag so concurrent purges and inserts rarely meet on one lock.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use pingora::cache::key::HashBinary;

const SHARDS: usize = 64;

type Shard = HashMap<Box<str>, HashMap<HashBinary, u64>>;

pub struct TagIndex {
    shards: Vec<Mutex<Shard>>,
}

impl Default for TagIndex {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl TagIndex {
    fn shard(&self, tag: &str) -> std::sync::MutexGuard<'_, Shard> {
        let mut hasher = DefaultHasher::new();
        tag.hash(&mut hasher);
        let shard = &self.shards[hasher.finish() as usize % SHARDS];
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
            self.shard(tag)
                .entry(tag.into())
                .or_default()
                .insert(key, generation);
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
            if let Some(objects) = shard.get_mut(tag) {
                if objects.get(key) == Some(&generation) {
                    objects.remove(key);
                }
                if objects.is_empty() {
                    shard.remove(tag);
                }
            }
        }
    }

    /// The objects carrying `tag`, at the moment of the call.
    pub fn objects(&self, tag: &str) -> Vec<HashBinary> {
        self.shard(tag)
            .get(tag)
            .map(|objects| objects.keys().copied().collect())
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
            for objects in shard.values() {
                keys.extend(objects.keys().copied());
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
}
