//! One copy of values many objects hold alike (the header lines every page of a shop
//! sends, the request headers that re-warm them), handed out as cheap clones of it.
//!
//! Invariant: bounded. At most `max` distinct values are remembered; when full the memory
//! starts afresh (objects keep the copies they hold, later ones are shared again), so
//! values that are all different (a request id per response) cost one look-up each and
//! never memory without bound.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Mutex;

use super::FastHasher;

pub(crate) struct Interner<T> {
    held: Mutex<HashSet<T, FastHasher>>,
    max: usize,
}

impl<T: Hash + Eq + Clone> Interner<T> {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            held: Mutex::new(HashSet::with_hasher(FastHasher::default())),
            max,
        }
    }

    /// The copy already held of a value equal to `value`, else `value` (now held).
    pub(crate) fn intern(&self, value: T) -> T {
        // A poisoned set is still a set of complete values.
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(copy) = held.get(&value) {
            return copy.clone();
        }
        if held.len() >= self.max {
            held.clear();
        }
        held.insert(value.clone());
        value
    }

    /// Distinct values held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn equal_values_share_one_copy_and_the_memory_is_bounded() {
        let interner: Interner<Arc<str>> = Interner::new(8);
        let a = interner.intern(Arc::from("host: shop.test"));
        let b = interner.intern(Arc::from("host: shop.test"));
        assert!(Arc::ptr_eq(&a, &b));
        for n in 0..100 {
            let v: Arc<str> = Arc::from(format!("x-request-id: {n}").as_str());
            assert_eq!(interner.intern(v.clone()), v);
            assert!(interner.len() <= 8);
        }
    }
}
