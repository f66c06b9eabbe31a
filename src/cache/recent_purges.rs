//! What was purged in the last few minutes, so a response that was already on its way
//! when a purge arrived is not stored as fresh under a purged tag.
//!
//! A fetch that started before a purge may carry the old price; the purge could not
//! remove it because it was not stored yet. The store asks here before storing, with the
//! time its fetch started. Entries older than the longest possible fetch are forgotten.
//!
//! Invariant: bounded. Regular-expression purges are kept at most `MAX_EXPRESSIONS` of
//! each kind; older ones fold into the broader record that covers them (a tag pattern
//! into "every tagged page", a pool into "everything"), so an object is never stored as
//! fresh past a purge that selected it, and a flood of pattern purges holds a few
//! megabytes, not one compiled program each for minutes. Forgetting also runs when a
//! store asks, not only when the next purge comes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use regex::Regex;

use super::Tags;

const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// Regular-expression purges (tag patterns, pools) remembered one by one, each kind.
const MAX_EXPRESSIONS: usize = 32;

#[derive(Default)]
struct Log {
    tags: HashMap<Box<str>, SystemTime, super::FastHasher>,
    patterns: Vec<(Regex, SystemTime)>,
    pools: Vec<(Regex, SystemTime)>,
    all_tagged: Option<SystemTime>,
    /// An emergency flush of everything, tagged or not.
    everything: Option<SystemTime>,
    last_pruned: Option<SystemTime>,
}

impl Log {
    fn is_empty(&self) -> bool {
        self.tags.is_empty()
            && self.patterns.is_empty()
            && self.pools.is_empty()
            && self.all_tagged.is_none()
            && self.everything.is_none()
    }

    /// Folds the oldest expressions past `MAX_EXPRESSIONS` into the record covering them.
    fn fold(&mut self) {
        fn oldest_half(list: &mut Vec<(Regex, SystemTime)>) -> Option<SystemTime> {
            if list.len() <= MAX_EXPRESSIONS {
                return None;
            }
            let folded: Vec<_> = list.drain(..list.len() - MAX_EXPRESSIONS / 2).collect();
            folded.iter().map(|(_, at)| *at).max()
        }
        let latest = |a: Option<SystemTime>, b: Option<SystemTime>| a.max(b);
        if let Some(at) = oldest_half(&mut self.patterns) {
            self.all_tagged = latest(self.all_tagged, Some(at));
        }
        if let Some(at) = oldest_half(&mut self.pools) {
            self.everything = latest(self.everything, Some(at));
        }
    }

    fn forget_before(&mut self, horizon: SystemTime) {
        self.tags.retain(|_, at| *at >= horizon);
        self.patterns.retain(|(_, at)| *at >= horizon);
        self.pools.retain(|(_, at)| *at >= horizon);
        if self.all_tagged.is_some_and(|at| at < horizon) {
            self.all_tagged = None;
        }
        if self.everything.is_some_and(|at| at < horizon) {
            self.everything = None;
        }
    }
}

pub struct RecentPurges {
    log: Mutex<Log>,
    /// How long a fetch can take (the origin's first-byte timeout, plus the body).
    remember: Duration,
}

impl RecentPurges {
    pub fn new(remember: Duration) -> Self {
        Self {
            log: Mutex::new(Log::default()),
            remember,
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, at: SystemTime, change: impl FnOnce(&mut Log)) {
        let mut log = self.log();
        change(&mut log);
        log.fold();
        self.prune_if_due(&mut log, at);
    }

    /// Pruning walks the whole log; at 1,000 purges a minute once a second is plenty.
    fn prune_if_due(&self, log: &mut Log, now: SystemTime) {
        let due = log
            .last_pruned
            .is_none_or(|last| now.duration_since(last).unwrap_or_default() >= PRUNE_EVERY);
        if due {
            log.forget_before(
                now.checked_sub(self.remember)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            );
            log.last_pruned = Some(now);
        }
    }

    /// Forgets what no fetch can be older than any more; the store calls it when it
    /// checks a fill, so memory is given back without waiting for the next purge.
    pub fn prune(&self, now: SystemTime) {
        let mut log = self.log();
        if !log.is_empty() {
            self.prune_if_due(&mut log, now);
        }
    }

    /// Regular-expression purges remembered one by one now (tag patterns and pools).
    pub fn expressions(&self) -> usize {
        let log = self.log();
        log.patterns.len() + log.pools.len()
    }

    pub fn tags<'t>(&self, tags: impl Iterator<Item = &'t str>, at: SystemTime) {
        self.record(at, |log| log.tags.extend(tags.map(|t| (t.into(), at))));
    }

    pub fn pattern(&self, pattern: Regex, at: SystemTime) {
        self.record(at, |log| log.patterns.push((pattern, at)));
    }

    pub fn pool(&self, pattern: Regex, at: SystemTime) {
        self.record(at, |log| log.pools.push((pattern, at)));
    }

    pub fn all_tagged(&self, at: SystemTime) {
        self.record(at, |log| log.all_tagged = Some(at));
    }

    pub fn everything(&self, at: SystemTime) {
        self.record(at, |log| log.everything = Some(at));
    }

    /// Whether an object fetched from `started` on was purged since.
    pub fn purged_since(&self, tags: &Tags, pool: Option<&str>, started: SystemTime) -> bool {
        let mut log = self.log();
        if log.is_empty() {
            return false;
        }
        self.prune_if_due(&mut log, SystemTime::now());
        let after = |at: &SystemTime| *at >= started;
        if log.everything.as_ref().is_some_and(after) {
            return true;
        }
        if !tags.is_empty() && log.all_tagged.as_ref().is_some_and(after) {
            return true;
        }
        if tags.iter().any(|t| log.tags.get(t).is_some_and(after)) {
            return true;
        }
        if log
            .patterns
            .iter()
            .any(|(re, at)| after(at) && tags.iter().any(|t| re.is_match(t)))
        {
            return true;
        }
        pool.is_some_and(|pool| {
            log.pools
                .iter()
                .any(|(re, at)| after(at) && re.is_match(pool))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(s: &str) -> Tags {
        let mut h = http::HeaderMap::new();
        h.insert("x-magento-tags", s.parse().unwrap());
        Tags::from_headers(&h)
    }

    #[test]
    fn only_purges_after_the_fetch_started_count() {
        let recent = RecentPurges::new(Duration::from_secs(600));
        let t0 = SystemTime::now();
        recent.tags(["cat_p_1"].into_iter(), t0);
        assert!(recent.purged_since(&tags("cat_p_1,store"), None, t0 - Duration::from_secs(1)));
        assert!(!recent.purged_since(&tags("cat_p_1,store"), None, t0 + Duration::from_secs(1)));
        assert!(!recent.purged_since(&tags("cat_p_11"), None, t0 - Duration::from_secs(1)));
        recent.pattern(Regex::new("^cms_").unwrap(), t0);
        assert!(recent.purged_since(&tags("cms_b_3"), None, t0 - Duration::from_secs(1)));
        recent.pool(Regex::new("pool-a").unwrap(), t0);
        assert!(recent.purged_since(
            &Tags::default(),
            Some("pool-a"),
            t0 - Duration::from_secs(1)
        ));
        recent.all_tagged(t0);
        assert!(recent.purged_since(&tags("x"), None, t0 - Duration::from_secs(1)));
        assert!(!recent.purged_since(&Tags::default(), None, t0 - Duration::from_secs(1)));
    }

    #[test]
    fn old_purges_are_forgotten() {
        let recent = RecentPurges::new(Duration::from_secs(10));
        let t0 = SystemTime::now();
        recent.tags(["a"].into_iter(), t0 - Duration::from_secs(60));
        recent.tags(["b"].into_iter(), t0);
        assert!(!recent.purged_since(&tags("a"), None, t0 - Duration::from_secs(120)));
    }

    #[test]
    fn a_flood_of_pattern_purges_is_bounded_and_still_refuses_what_they_selected() {
        let recent = RecentPurges::new(Duration::from_secs(120));
        let t0 = SystemTime::now();
        for i in 0..2_000 {
            let at = t0 + Duration::from_millis(i);
            recent.pattern(Regex::new(&format!("^tag_{i}$")).unwrap(), at);
            recent.pool(Regex::new(&format!("^pool_{i}$")).unwrap(), at);
            assert!(recent.expressions() <= 2 * MAX_EXPRESSIONS);
        }
        let before = t0 - Duration::from_secs(1);
        // The first pattern was folded long ago: what it selected is still refused.
        assert!(recent.purged_since(&tags("tag_0"), None, before));
        assert!(recent.purged_since(&tags("tag_1999"), None, before));
        assert!(recent.purged_since(&Tags::default(), Some("pool_0"), before));
        // A fetch that started after them all is stored.
        let after = t0 + Duration::from_secs(3);
        assert!(!recent.purged_since(&tags("tag_0"), None, after));
        // Once no fetch can be older, all of it is given back, without another purge.
        recent.prune(t0 + Duration::from_secs(200));
        assert_eq!(recent.expressions(), 0);
        assert!(recent.log().is_empty());
    }
}
