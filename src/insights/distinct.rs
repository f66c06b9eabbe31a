//! How many distinct values a query parameter took: a K-minimum-values sketch (Bar-Yossef
//! et al., 2002). It keeps the `K` smallest hashes seen; exact below `K` values, within
//! about 1/sqrt(K) (12 % at K = 64) above, in 512 bytes whatever the traffic. Sketches
//! merge exactly (the smallest of both), so window slices add up.
//!
//! Written here rather than taken from a crate: a HyperLogLog crate would answer the
//! same question in more memory per parameter at these counts, and this is 30 lines.

use std::hash::BuildHasher;

const K: usize = 64;

/// The hasher every sketch shares, so that sketches of the same values merge: fixed
/// keys, so the same value hashes the same in every slice.
fn hash(value: &str) -> u64 {
    std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(value)
}

#[derive(Debug, Clone, Default)]
pub struct Distinct {
    /// The smallest hashes seen, ascending, at most `K`.
    smallest: Vec<u64>,
}

impl Distinct {
    pub fn add(&mut self, value: &str) {
        self.add_hash(hash(value));
    }

    fn add_hash(&mut self, h: u64) {
        if self.smallest.len() == K && self.smallest.last().is_some_and(|&max| h >= max) {
            return;
        }
        if let Err(at) = self.smallest.binary_search(&h) {
            self.smallest.insert(at, h);
            self.smallest.truncate(K);
        }
    }

    /// The number of distinct values seen, estimated.
    pub fn estimate(&self) -> u64 {
        match self.smallest.last() {
            Some(&kth) if self.smallest.len() == K => {
                // The K-th smallest of n uniform hashes sits near K/n of the range.
                let fraction = (kth as f64 + 1.0) / (u64::MAX as f64);
                ((K - 1) as f64 / fraction).round() as u64
            }
            _ => self.smallest.len() as u64,
        }
    }

    pub fn merge(&mut self, other: &Distinct) {
        for &h in &other.smallest {
            self.add_hash(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_when_few_and_close_when_many() {
        let mut few = Distinct::default();
        for i in 0..40 {
            few.add(&format!("v{}", i % 20));
        }
        assert_eq!(few.estimate(), 20);
        let mut many = Distinct::default();
        for i in 0..4000 {
            many.add(&format!("campaign-{i}"));
            many.add(&format!("campaign-{i}"));
        }
        let n = many.estimate();
        assert!(
            (2400..=5600).contains(&n),
            "4000 distinct values estimated as {n}"
        );
    }

    #[test]
    fn merged_sketches_count_the_union() {
        let (mut a, mut b) = (Distinct::default(), Distinct::default());
        for i in 0..30 {
            a.add(&i.to_string());
        }
        for i in 20..50 {
            b.add(&i.to_string());
        }
        a.merge(&b);
        assert_eq!(a.estimate(), 50);
    }
}
