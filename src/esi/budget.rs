//! What one page view may spend on includes, all depths together.
//!
//! Invariant: a view fetches or splices at most `esi.max_includes_per_view` includes,
//! however they nest (a page that includes itself 16 times would otherwise cost
//! `max_fragments ^ max_depth` subrequests), and what it leaves out is logged once per
//! view, when the last of its fragments is done, not once per include.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub struct ViewBudget {
    left: AtomicUsize,
    left_out: AtomicUsize,
    /// The first reason an include was left out, for the view's one warning.
    first_reason: Mutex<Option<(String, String)>>,
}

impl std::fmt::Debug for ViewBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewBudget")
            .field("left", &self.left.load(Ordering::Relaxed))
            .finish()
    }
}

impl PartialEq for ViewBudget {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for ViewBudget {}

impl ViewBudget {
    pub fn new(includes: usize) -> Arc<Self> {
        Arc::new(Self {
            left: AtomicUsize::new(includes),
            left_out: AtomicUsize::new(0),
            first_reason: Mutex::new(None),
        })
    }

    /// Takes one include from the budget; `false` when it is spent.
    pub fn take(&self) -> bool {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Notes an include left out of the view (said once, when the view is done).
    pub fn left_out(&self, src: &str, why: &str) {
        self.left_out.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_reason.lock() {
            first.get_or_insert_with(|| (src.to_string(), why.to_string()));
        }
    }

    pub fn left_out_count(&self) -> usize {
        self.left_out.load(Ordering::Relaxed)
    }
}

impl Drop for ViewBudget {
    fn drop(&mut self) {
        let count = *self.left_out.get_mut();
        if count == 0 {
            return;
        }
        let first = self.first_reason.get_mut().ok().and_then(|f| f.take());
        let (src, why) = first.unwrap_or_default();
        tracing::warn!(
            left_out = count,
            first_src = %src,
            "ESI: {count} include(s) left out of one page view; the first: {why}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_exactly_its_budget() {
        let budget = ViewBudget::new(3);
        assert!(budget.take() && budget.take() && budget.take());
        assert!(!budget.take());
        budget.left_out("/x", "spent");
        budget.left_out("/y", "spent");
        assert_eq!(budget.left_out_count(), 2);
    }
}
