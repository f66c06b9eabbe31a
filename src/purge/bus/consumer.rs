//! The bus's reading side: the other nodes' purges applied in stream order, resuming
//! after the last one; a gap in the sequence numbers, or a node that began reading only
//! after it had cached pages, drops the memory tier.
use super::{BusError, EntryId, PurgeBus, READ_BATCH, READ_BLOCK, RETRY};
use crate::cluster::Connection;
use pingora::server::ShutdownWatch;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};

impl PurgeBus {
    /// Applies the other nodes' purges, in stream order, resuming after the last one.
    pub(super) async fn consumer(&self, mut shutdown: ShutdownWatch) {
        let mut last: Option<EntryId> = None;
        let mut last_seq: Option<u64> = None;
        // The data set this node read from (`<stream>:epoch`).
        let mut epoch: Option<String> = None;
        let mut connection: Option<Connection> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let Some(con) = connection.as_mut() else {
                connection = self.connect().await;
                if connection.is_none() {
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => {}
                        _ = shutdown.changed() => return,
                    }
                    continue;
                }
                continue;
            };
            // The data set: a Redis that lost its data (restarted empty) has a new epoch.
            let now_epoch = match self.epoch(con).await {
                Ok(now) => now,
                Err(why) => {
                    self.disconnected(&why.to_string());
                    connection = None;
                    continue;
                }
            };
            let same_data = epoch.as_ref().is_none_or(|e| *e == now_epoch);
            // A Redis that came back without the sequence this node had read up to lost
            // entries. With its data set (a replica promoted by a failover) it lost only
            // what the old primary had not replicated, which its publishers send again:
            // reading goes on from the new primary's end. Without it, whatever this node
            // did not read yet is gone, so nothing old can be trusted.
            if let Some(seen) = last_seq {
                match self.sequence_now(con).await {
                    Ok(now) if now.unwrap_or(0) < seen && same_data => {
                        tracing::warn!(
                            read_up_to = seen,
                            primary_has = ?now,
                            "the purge stream's primary changed (a failover): its unreplicated purges are sent again; reading on from its end"
                        );
                        match self.newest(con).await {
                            Ok(id) => last = Some(id),
                            Err(why) => {
                                self.disconnected(&why.to_string());
                                connection = None;
                                continue;
                            }
                        }
                        last_seq = Some(now.unwrap_or(0));
                    }
                    Ok(now) if now.unwrap_or(0) < seen || !same_data => {
                        self.lost_history(seen, now).await;
                        last_seq = Some(now.unwrap_or(0));
                    }
                    Ok(_) => {}
                    Err(why) => {
                        self.disconnected(&why.to_string());
                        connection = None;
                        continue;
                    }
                }
            }
            epoch = Some(now_epoch);
            let from = match last {
                Some(id) => id,
                // A disk tier that knows where its pages were valid catches up from there;
                // anything else starts at the stream's end (this node's memory is empty,
                // so older purges concern nothing it holds).
                None => match self.newest(con).await {
                    Ok(id) => {
                        match self
                            .catch_up(con, epoch.as_deref().unwrap_or_default())
                            .await
                        {
                            Ok(Some((at, seq))) => {
                                last = Some(at);
                                last_seq = Some(seq);
                                self.set_connected(true);
                                self.own.following.set(1);
                            }
                            Ok(None) => {
                                last = Some(id);
                                self.started_following().await;
                                // Where the numbers stand, so a Redis that loses them
                                // later is noticed even if this node never read an entry.
                                if let Ok(now) = self.sequence_now(con).await {
                                    last_seq = Some(now.unwrap_or(0));
                                }
                            }
                            Err(why) => {
                                self.disconnected(&why.to_string());
                                connection = None;
                                continue;
                            }
                        }
                        self.record_position(epoch.as_deref(), last_seq, last);
                        last.unwrap_or(id)
                    }
                    Err(why) => {
                        self.disconnected(&why.to_string());
                        connection = None;
                        continue;
                    }
                },
            };
            let read = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_BATCH)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(from.to_string())
                .to_owned();
            let reply = tokio::select! {
                reply = tokio::time::timeout(READ_BLOCK + self.timeout, read.query_async::<Option<StreamReadReply>>(con)) => reply,
                _ = shutdown.changed() => return,
            };
            match reply {
                Ok(Ok(reply)) => {
                    self.set_connected(true);
                    let entries: Vec<StreamId> = reply
                        .into_iter()
                        .flat_map(|r| r.keys)
                        .flat_map(|k| k.ids)
                        .collect();
                    let mut rewound = None;
                    for entry in &entries {
                        if let Some(id) = EntryId::parse(&entry.id) {
                            last = Some(id);
                        }
                        let seq = entry
                            .get::<String>("seq")
                            .and_then(|s| s.parse::<u64>().ok());
                        if let (Some(prev), Some(seq)) = (last_seq, seq) {
                            if seq <= prev {
                                // The numbers went back: a failover (decided below).
                                rewound.get_or_insert((prev, seq));
                            } else if missed(prev, seq) {
                                self.lost_history(prev, Some(seq)).await;
                            }
                        }
                        if seq.is_some() {
                            last_seq = seq;
                        }
                        self.apply(entry).await;
                    }
                    self.record_position(epoch.as_deref(), last_seq, last);
                    // Numbers that went back under a connection that stayed up (a primary
                    // demoted and resynced from the new one): the same data set means a
                    // failover, whose lost tail is being sent again; another means a
                    // Redis that lost its data.
                    if let Some((prev, seq)) = rewound {
                        match self.epoch(con).await {
                            Ok(now) if epoch.as_ref() == Some(&now) => {
                                tracing::warn!(
                                    read_up_to = prev,
                                    next = seq,
                                    "the purge stream's primary changed (a failover): its unreplicated purges are sent again"
                                );
                            }
                            Ok(_) => self.lost_history(prev, Some(seq)).await,
                            Err(why) => {
                                self.disconnected(&why.to_string());
                                connection = None;
                            }
                        }
                    }
                }
                Ok(Err(e)) => {
                    self.disconnected(&e.to_string());
                    connection = None;
                }
                Err(_) => {
                    self.disconnected("XREAD timed out");
                    connection = None;
                }
            }
        }
    }

    /// Tells the disk tier that every purge up to here is applied to it.
    fn record_position(&self, epoch: Option<&str>, seq: Option<u64>, at: Option<EntryId>) {
        let (Some(disk), Some(epoch), Some(seq), Some(at)) =
            (self.purger.store().disk(), epoch, seq, at)
        else {
            return;
        };
        disk.record_bus_position(crate::cache::disk::BusPosition {
            epoch: epoch.to_string(),
            seq,
            id: at.to_string(),
        });
    }

    /// A restarted disk tier's pages were valid at a position on this stream: the purges
    /// since then are applied (to the disk and to memory), in order, and its pages served
    /// again. `Ok(None)` when that cannot be: no disk or no position, another data set,
    /// or entries since then trimmed away (the caller drops what it holds).
    async fn catch_up(
        &self,
        con: &mut Connection,
        epoch: &str,
    ) -> Result<Option<(EntryId, u64)>, BusError> {
        let Some(disk) = self.purger.store().disk() else {
            return Ok(None);
        };
        let Some(position) = disk.bus_position().await else {
            return Ok(None);
        };
        if position.epoch != epoch {
            tracing::warn!("the disk tier's pages belong to another purge history (Redis lost its data): dropping them");
            return Ok(None);
        }
        let Some(mut from) = EntryId::parse(&position.id) else {
            return Ok(None);
        };
        let mut seq = position.seq;
        let mut replayed = 0u64;
        loop {
            let range = redis::cmd("XRANGE")
                .arg(&self.stream)
                .arg(format!("({from}"))
                .arg("+")
                .arg("COUNT")
                .arg(READ_BATCH)
                .to_owned();
            let reply = match tokio::time::timeout(
                self.timeout * 4,
                range.query_async::<StreamRangeReply>(con),
            )
            .await
            {
                Ok(Ok(reply)) => reply,
                Ok(Err(source)) => {
                    return Err(BusError::Redis {
                        command: "XRANGE of the purges missed",
                        source,
                    })
                }
                Err(_) => return Err(BusError::TimedOut("XRANGE of the purges missed")),
            };
            if reply.ids.is_empty() {
                break;
            }
            for entry in &reply.ids {
                let next = entry
                    .get::<String>("seq")
                    .and_then(|s| s.parse::<u64>().ok());
                // A jump forward: entries after the position were trimmed away. (A step
                // back is a failover's re-sent tail, on the same data set.)
                if next.is_some_and(|n| n > seq + 1) {
                    tracing::warn!(
                        at = seq,
                        next = ?next,
                        "purges since the disk tier's position are gone from the stream: dropping its pages"
                    );
                    return Ok(None);
                }
                if let Some(id) = EntryId::parse(&entry.id) {
                    from = id;
                }
                if let Some(n) = next {
                    seq = n;
                }
                self.apply(entry).await;
                replayed += 1;
            }
        }
        // Numbers past the last entry read with nothing to read: trimmed, or lost.
        if self.sequence_now(con).await?.unwrap_or(0) > seq {
            return Ok(None);
        }
        self.purger.settle();
        disk.trust();
        tracing::info!(
            replayed,
            "disk tier caught up with the purges sent while this node was down"
        );
        Ok(Some((from, seq)))
    }

    /// Entries after `seen` may never reach this node (trimmed, or lost with a Redis
    /// that restarted empty): it cannot know what they purged, so it drops its memory.
    async fn lost_history(&self, seen: u64, now: Option<u64>) {
        tracing::warn!(
            after = seen,
            next = ?now,
            "purges this node may have missed are gone from Redis: dropping the memory tier"
        );
        self.flush().await;
    }

    /// Drops everything this node holds, memory and disk.
    async fn flush(&self) {
        if let Err(reason) = self.purger.store().flush().await {
            tracing::error!(%reason, "the disk tier could not be cleared; it is off");
        }
        self.own.flushes.inc();
    }

    /// The consumer has its place in the stream: purges from now on reach this node.
    /// Objects cached before that (Redis was slow or down at the start) may have been
    /// purged by another node in between, unseen here, so they are dropped: a page
    /// served after a purge's 200 is the one thing the bus must never allow.
    async fn started_following(&self) {
        self.set_connected(true);
        let store = self.purger.store();
        store.sync().await;
        let (mut objects, _) = store.usage();
        if let Some(disk) = store.disk() {
            objects += disk.usage().0 as u64;
        }
        if objects > 0 {
            tracing::warn!(
                objects,
                "the purge bus reached Redis after this node had cached pages: dropping \
                 them, since purges sent meanwhile by other nodes cannot be known"
            );
            self.flush().await;
        }
        self.own.following.set(1);
    }

    /// The data set's epoch: written once (a random value) by the first node to ask, so
    /// a Redis that lost its data answers a new one.
    async fn epoch(&self, con: &mut Connection) -> Result<String, BusError> {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = crate::cache::FastHasher::default().build_hasher();
        hasher.write(self.node.as_bytes());
        // The moment too: this node writing it again after Redis lost it gives another.
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let fresh = format!("{:016x}", hasher.finish());
        let set = redis::cmd("SET")
            .arg(&self.epoch)
            .arg(fresh)
            .arg("NX")
            .arg("GET")
            .to_owned();
        match tokio::time::timeout(self.timeout, set.query_async::<Option<String>>(con)).await {
            Ok(Ok(Some(kept))) => Ok(kept),
            Ok(Ok(None)) => {
                let get = redis::cmd("GET").arg(&self.epoch).to_owned();
                match tokio::time::timeout(self.timeout, get.query_async::<Option<String>>(con))
                    .await
                {
                    Ok(Ok(value)) => Ok(value.unwrap_or_default()),
                    Ok(Err(source)) => Err(BusError::Redis {
                        command: "GET of the purge epoch",
                        source,
                    }),
                    Err(_) => Err(BusError::TimedOut("GET of the purge epoch")),
                }
            }
            Ok(Err(source)) => Err(BusError::Redis {
                command: "SET of the purge epoch",
                source,
            }),
            Err(_) => Err(BusError::TimedOut("SET of the purge epoch")),
        }
    }

    /// The stream's sequence counter now (`None`: Redis has none, it restarted empty).
    async fn sequence_now(&self, con: &mut Connection) -> Result<Option<u64>, BusError> {
        let get = redis::cmd("GET").arg(&self.sequence).to_owned();
        match tokio::time::timeout(self.timeout, get.query_async::<Option<u64>>(con)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(BusError::Redis {
                command: "GET of the purge sequence",
                source,
            }),
            Err(_) => Err(BusError::TimedOut("GET of the purge sequence")),
        }
    }

    async fn apply(&self, entry: &StreamId) {
        let field = |name: &str| entry.get::<String>(name);
        if field("node").as_deref() == Some(self.node.as_str()) {
            return; // applied when it was received
        }
        // Sent again after a failover that may have lost it: applied once.
        if let Some(id) = field("id").and_then(|id| id.parse::<u64>().ok()) {
            if !self.first_time(id) {
                return;
            }
        }
        let pattern = field("pattern");
        let pool = field("pool");
        let soft = field("soft").as_deref() == Some("1");
        if field("everything").as_deref() == Some("1") {
            match self.purger.apply_everything().await {
                Ok(report) => {
                    self.own.applied.inc();
                    self.purger
                        .metrics()
                        .purged_remote(report.objects, 0, report.took);
                }
                Err(reason) => {
                    tracing::warn!(id = %entry.id, %reason, "a flush from another node could not be applied to disk");
                }
            }
            return;
        }
        match self
            .purger
            .apply(
                pattern.as_deref(),
                pool.as_deref(),
                soft,
                fleet_purge(&field),
            )
            .await
        {
            Ok(report) => {
                self.purger.settle();
                self.own.applied.inc();
                self.purger
                    .metrics()
                    .purged_remote(report.objects, report.tags, report.took);
            }
            Err(reason) => {
                tracing::warn!(id = %entry.id, %reason, "a purge from another node could not be applied");
            }
        }
    }

    /// The newest entry's ID, or 0-0 for an empty stream.
    async fn newest(&self, con: &mut Connection) -> Result<EntryId, BusError> {
        let query = redis::cmd("XREVRANGE")
            .arg(&self.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .to_owned();
        match tokio::time::timeout(self.timeout, query.query_async::<StreamRangeReply>(con)).await {
            Ok(Ok(reply)) => Ok(reply
                .ids
                .first()
                .and_then(|e| EntryId::parse(&e.id))
                .unwrap_or(EntryId(0, 0))),
            Ok(Err(source)) => Err(BusError::Redis {
                command: "XREVRANGE",
                source,
            }),
            Err(_) => Err(BusError::TimedOut("XREVRANGE")),
        }
    }
}

/// Whether entry `next` following entry `prev` (sequence numbers) means entries may
/// have been lost: a jump forward (trimmed), or a start again (a Redis that restarted
/// empty, which may have taken entries this node had not read yet).
pub(super) fn missed(prev: u64, next: u64) -> bool {
    next != prev + 1
}

/// The purge's id and time from its entry, when the node that wrote it sent them.
fn fleet_purge(field: &dyn Fn(&str) -> Option<String>) -> Option<crate::purge::FleetPurge> {
    let id = field("id")?.parse().ok()?;
    let at_ms: u64 = field("at")?.parse().ok()?;
    Some(crate::purge::FleetPurge {
        id,
        at: std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms),
    })
}
