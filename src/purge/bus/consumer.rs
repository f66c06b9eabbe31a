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
            // A Redis that came back without the sequence this node had read up to lost
            // entries: whatever it did not read yet is gone, so nothing old can be
            // trusted.
            if let Some(seen) = last_seq {
                match self.sequence_now(con).await {
                    Ok(now) if now.unwrap_or(0) < seen => {
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
            let from = match last {
                Some(id) => id,
                // Start at the stream's end: this node's memory is empty, so older purges
                // concern nothing it holds.
                None => match self.newest(con).await {
                    Ok(id) => {
                        last = Some(id);
                        self.started_following().await;
                        // Where the numbers stand, so a Redis that loses them later is
                        // noticed even if this node never read an entry.
                        if let Ok(now) = self.sequence_now(con).await {
                            last_seq = Some(now.unwrap_or(0));
                        }
                        id
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
                    for entry in &entries {
                        if let Some(id) = EntryId::parse(&entry.id) {
                            last = Some(id);
                        }
                        let seq = entry
                            .get::<String>("seq")
                            .and_then(|s| s.parse::<u64>().ok());
                        if let (Some(prev), Some(seq)) = (last_seq, seq) {
                            if missed(prev, seq) {
                                self.lost_history(prev, Some(seq)).await;
                            }
                        }
                        if seq.is_some() {
                            last_seq = seq;
                        }
                        self.apply(entry).await;
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
