//! Magento's cache invalidation: `PURGE` with `X-Magento-Tags-Pattern` and/or `X-Pool`,
//! answered from the tag index in time proportional to the objects purged.

pub mod acl;
pub mod bus;
pub mod metrics;
pub mod pattern;

use metrics::PurgeMetrics;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::cache::disk::DiskError;
use crate::cache::shared_tier::{SharedError, SharedTier};
use crate::cache::{MemoryStore, RequestIdentity};
use crate::insights::Insights;
use crate::warm::claims::WarmClaims;
use crate::warm::WarmQueue;
use pingora::cache::key::HashBinary;

pub use acl::PurgeAcl;
pub use bus::{PurgeBus, PurgeMessage};
use pattern::Selector;

/// Why a purge was not applied (then nothing was), or its shared copies not removed.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("X-Magento-Tags-Pattern is not a valid regular expression: {0}")]
    Pattern(regex::Error),
    #[error("X-Pool is not a valid regular expression: {0}")]
    Pool(regex::Error),
    /// Redis did not take the removal of the shared copies.
    #[error("the shared tier: {0}")]
    Shared(#[from] SharedError),
    /// The disk tier could not make the purge durable; memory was purged.
    #[error("{0}")]
    Disk(#[from] DiskError),
}

impl PurgeError {
    /// How a purge request is answered when this went wrong: bad input is the client's
    /// to fix (400); a disk that refused is ours, and the purge is worth retrying (503).
    pub fn status(&self) -> u16 {
        match self {
            Self::Pattern(_) | Self::Pool(_) => 400,
            Self::Shared(_) | Self::Disk(_) => 503,
        }
    }

    /// What the client is told, with what happened to the purge.
    pub fn answer(&self) -> String {
        match self.status() {
            400 => format!("{self}; nothing was purged"),
            _ => format!("{self}; memory was purged, retry the purge to be sure it is on disk"),
        }
    }

    /// The label the purge counts under.
    pub fn refusal(&self) -> metrics::PurgeRefusal {
        match self.status() {
            400 => metrics::PurgeRefusal::Invalid,
            _ => metrics::PurgeRefusal::Failed,
        }
    }
}

/// One purge as the fleet knows it: its id, and when it was made (on the node Magento
/// sent it to), the same on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetPurge {
    pub id: u64,
    pub at: SystemTime,
}

/// What one purge did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    pub objects: usize,
    /// Tags named by the purge, or known tags its pattern matched.
    pub tags: usize,
    /// Invalidated objects that were requested recently, queued for re-warming.
    pub queued_for_warming: usize,
    /// Time spent finding and invalidating the objects.
    pub took: Duration,
}

/// Tags of one purge told to the insights at most (a pattern can match thousands).
const MAX_TAGS_REPORTED: usize = 1000;

pub struct Purger {
    store: &'static MemoryStore,
    warm: Option<Arc<WarmQueue>>,
    /// An object served within this window counts as hot enough to re-warm.
    hot_window: Duration,
    /// Where purges go to reach the other nodes, when there are any (Redis).
    bus: OnceLock<Arc<PurgeBus>>,
    /// The shared tier in Redis, whose copies purges remove too.
    shared: OnceLock<Arc<SharedTier>>,
    /// With a fleet: which node re-warms each purged page.
    claims: OnceLock<Arc<WarmClaims>>,
    metrics: PurgeMetrics,
    /// Told which tags were purged and how many objects each selected.
    insights: Arc<Insights>,
}

impl Purger {
    pub fn new(
        store: &'static MemoryStore,
        warm: Option<Arc<WarmQueue>>,
        hot_window: Duration,
        metrics: PurgeMetrics,
        insights: Arc<Insights>,
    ) -> Self {
        Self {
            store,
            warm,
            hot_window,
            bus: OnceLock::new(),
            shared: OnceLock::new(),
            claims: OnceLock::new(),
            metrics,
            insights,
        }
    }

    /// The purge metrics: every purge comes through here, wherever it was asked for.
    pub fn metrics(&self) -> &PurgeMetrics {
        &self.metrics
    }

    /// Purged hot pages are then re-warmed by one node of the fleet each.
    pub fn attach_claims(&self, claims: Arc<WarmClaims>) {
        let _ = self.claims.set(claims);
    }

    /// Purges then also remove the shared tier's copies.
    pub fn attach_shared(&self, shared: Arc<SharedTier>) {
        let _ = self.shared.set(shared);
    }

    /// Removes the shared copies a purge selects. `Ok` without a shared tier. `wait`:
    /// wait for a connection to Redis (background work only).
    /// Only copies fetched before `at` (when the purge was made) go.
    pub async fn purge_shared(
        &self,
        tags_pattern: Option<&str>,
        pool: Option<&str>,
        wait: bool,
        at: SystemTime,
    ) -> Result<usize, PurgeError> {
        let Some(shared) = self.shared.get() else {
            return Ok(0);
        };
        let selector = tags_pattern.map(pattern::parse).transpose()?;
        let pool = pool.map(pattern::pool).transpose()?;
        shared
            .purge(selector.as_ref(), pool.as_ref(), wait, at)
            .await
            .map_err(PurgeError::Shared)
    }

    /// Marks every shared copy stored before now as gone (a flush of everything sent to
    /// the other nodes). `Ok` without a shared tier.
    pub async fn flush_shared(&self) -> Result<(), PurgeError> {
        match self.shared.get() {
            Some(shared) => shared
                .flushed(SystemTime::now())
                .await
                .map_err(PurgeError::Shared),
            None => Ok(()),
        }
    }

    /// Connects the purger to the other nodes: purges applied here are published.
    pub fn attach_bus(&self, bus: Arc<PurgeBus>) {
        let _ = self.bus.set(bus);
    }

    /// The store this purger invalidates.
    pub fn store(&self) -> &'static MemoryStore {
        self.store
    }

    /// A purge's last work, done after its answer is written: the re-warmer woken to the
    /// pages it queued, the index entries of the objects it removed taken out (the
    /// removals were only queued, `cache::index_cleanup`). Every caller of `purge` and
    /// `apply` calls it.
    pub fn settle(&self) {
        if let Some(warm) = &self.warm {
            warm.wake();
        }
        self.store.settle_index();
    }

    /// Applies a purge here and, with a bus, publishes it to every other node.
    pub async fn purge(
        &self,
        tags_pattern: Option<&str>,
        pool: Option<&str>,
        soft: bool,
    ) -> Result<PurgeReport, PurgeError> {
        // Every node applies it as this one purge: one of them re-warms each hot page,
        // and what was fetched after it stays.
        let fleet = FleetPurge {
            id: purge_id(),
            at: SystemTime::now(),
        };
        let report = self.apply(tags_pattern, pool, soft, Some(fleet)).await?;
        if let Some(bus) = self.bus.get() {
            bus.publish(PurgeMessage {
                pattern: tags_pattern.map(str::to_string),
                pool: pool.map(str::to_string),
                soft,
                everything: false,
                fleet: Some(fleet),
            });
        }
        Ok(report)
    }

    /// Queues `hot` pages for re-warming: here, or (with a fleet and the purge's `id`)
    /// those this node claims first, after a round trip that the purge's answer does not
    /// wait for. The worker is woken by `settle` (or the claim), after the answer.
    fn rewarm(&self, hot: Vec<(HashBinary, Arc<RequestIdentity>, u32)>, id: Option<u64>) {
        let Some(warm) = self.warm.clone() else {
            return;
        };
        let (Some(claims), Some(id)) = (self.claims.get().cloned(), id) else {
            for (_, identity, heat) in hot {
                warm.push_quietly(identity, heat);
            }
            return;
        };
        if hot.is_empty() {
            return;
        }
        tokio::spawn(async move {
            let keys: Vec<HashBinary> = hot.iter().map(|(key, _, _)| *key).collect();
            let won = claims.claim(id, &keys).await.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "re-warm claims failed: this node re-warms its own hot pages");
                vec![true; keys.len()]
            });
            for ((_, identity, heat), mine) in hot.into_iter().zip(won) {
                if mine {
                    warm.push_quietly(identity, heat);
                }
            }
            warm.wake();
        });
    }

    /// Queues one page for re-warming now: a visitor was given its kept copy rather than
    /// wait for the origin, and the next visitors should get it fresh.
    pub fn rewarm_now(&self, identity: Arc<RequestIdentity>) {
        if let Some(warm) = &self.warm {
            warm.push(identity, u32::MAX);
        }
    }

    /// Drops every object here, tagged or not, and on every other node: the true
    /// equivalent of Varnish's `ban req.url ~ .`, for an emergency (Magento's `.*`
    /// keeps untagged objects).
    pub async fn everything(&self) -> Result<PurgeReport, PurgeError> {
        let report = self.apply_everything().await?;
        if let Some(bus) = self.bus.get() {
            bus.publish(PurgeMessage {
                pattern: None,
                pool: None,
                soft: false,
                everything: true,
                fleet: None,
            });
        }
        Ok(report)
    }

    /// Drops every object here (memory and disk) and every shared copy stored before
    /// now. `Err` when the disk could not be cleared.
    pub async fn apply_everything(&self) -> Result<PurgeReport, PurgeError> {
        let started = Instant::now();
        let now = SystemTime::now();
        // Fetches already on their way are not stored either.
        self.store.recent_purges().everything(now);
        self.store.sync().await;
        let (objects, _) = self.store.usage();
        self.store.flush().await?;
        if let Some(shared) = self.shared.get() {
            if let Err(reason) = shared.flushed(now).await {
                tracing::warn!(%reason, "the flush could not be recorded in Redis; other nodes apply it from the purge bus");
            }
        }
        tracing::warn!(objects, "every cached object was flushed");
        self.insights
            .purged(vec![(Arc::from("(everything)"), objects)]);
        Ok(PurgeReport {
            objects: objects as usize,
            tags: 0,
            queued_for_warming: 0,
            took: started.elapsed(),
        })
    }

    /// Invalidates here what `tags_pattern` and `pool` select: removed, or with `soft`
    /// expired so the next visitor gets it stale while one refresh runs. Both are
    /// parsed before anything happens, so an invalid one purges nothing (`Err` says why).
    /// `fleet` names the purge across the fleet: each of its hot pages is re-warmed by
    /// the node that claims it first (without: by every node that had it), and it counts
    /// from when it was made, not from when it reached this node.
    pub async fn apply(
        &self,
        tags_pattern: Option<&str>,
        pool: Option<&str>,
        soft: bool,
        fleet: Option<FleetPurge>,
    ) -> Result<PurgeReport, PurgeError> {
        let started = Instant::now();
        let pool_pattern = pool;
        let selector = tags_pattern.map(pattern::parse).transpose()?;
        let pool = pool.map(pattern::pool).transpose()?;
        // A fill that began after the purge was made fetched the new page: it stays,
        // even where the purge arrives later.
        let now = fleet.map_or_else(SystemTime::now, |f| f.at.min(SystemTime::now()));
        let recent = self.store.recent_purges();
        // Recorded before the objects are collected: a fetch that lands in between is
        // then refused by the store instead of slipping past both.
        let mut tag_count = 0;
        // What each tag (or `.*`, or the pool) selected: the insights count it, and the
        // misses that follow name it.
        let mut selected: Vec<(Arc<str>, Vec<HashBinary>)> = Vec::new();
        let mut per_tag = |tags: &[String]| {
            for tag in tags {
                selected.push((Arc::from(tag.as_str()), self.store.tagged(&[tag.as_str()])));
            }
        };
        match &selector {
            Some(Selector::Tags(tags)) => {
                tag_count = tags.len();
                recent.tags(tags.iter().map(String::as_str), now);
                per_tag(tags);
            }
            Some(Selector::AllTagged) => {
                recent.all_tagged(now);
                selected.push((Arc::from(".*"), self.store.all_tagged()));
            }
            Some(Selector::Pattern(re)) => {
                recent.pattern(re.clone(), now);
                let tags = self.store.tags_matching(re);
                tag_count = tags.len();
                per_tag(&tags);
            }
            None => {}
        }
        if let Some(pool) = &pool {
            recent.pool(pool.clone(), now);
            let by = format!("X-Pool: {}", pool_pattern.unwrap_or_default());
            selected.push((Arc::from(by.as_str()), self.store.pooled(pool)));
        }
        let mut keys: Vec<HashBinary> = selected
            .iter()
            .flat_map(|(_, keys)| keys.iter().copied())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let invalidated = self.store.invalidate(&keys, soft).await;
        // After the invalidation, which re-stores kept and soft-purged copies.
        for (by, keys) in &selected {
            self.store.note_purged(keys, by);
        }
        self.insights.purged(
            selected
                .iter()
                .take(MAX_TAGS_REPORTED)
                .map(|(by, keys)| (by.clone(), keys.len() as u64))
                .collect(),
        );
        // On disk before the answer: a crash after it cannot bring a purged page back.
        let on_disk = match self.store.disk() {
            Some(disk) => disk.purge(selector.as_ref(), pool.as_ref(), soft).await?,
            None => 0,
        };
        let hot: Vec<(HashBinary, Arc<RequestIdentity>, u32)> = invalidated
            .iter()
            .filter(|(_, object)| object.heat.recent(self.hot_window))
            .filter_map(|(key, object)| {
                let identity = object.identity.clone()?;
                Some((*key, identity, object.heat.hits()))
            })
            .collect();
        let queued = if self.warm.is_some() { hot.len() } else { 0 };
        self.rewarm(hot, fleet.map(|f| f.id));
        let report = PurgeReport {
            // An object on disk only (not in memory) counts too.
            objects: invalidated.len().max(on_disk),
            tags: tag_count,
            queued_for_warming: queued,
            took: started.elapsed(),
        };
        // Shared copies too, best effort: the publisher retries them with the purge when
        // Redis was away, and every other node removes them again when it applies it (a
        // fill in flight on another node may have landed after this removal).
        if let Err(reason) = self
            .purge_shared(tags_pattern, pool_pattern, false, now)
            .await
        {
            tracing::debug!(%reason, "shared copies not removed yet");
        }
        Ok(report)
    }
}

/// A purge's id across the fleet: random enough that two purges never share one.
fn purge_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = crate::cache::FastHasher::default().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}
