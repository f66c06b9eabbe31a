//! The origin slot: the client's share first, then the limiter's queue; a request that
//! gets neither is shed with the reason, as an upstream error.
//!
//! Invariant: no request reaches the origin without a permit (`limits.max_inflight`),
//! and a shed request's error is an upstream one, so a kept stale copy is served in
//! place of the 503.

use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::{ErrorSource, ErrorType};

use super::{Floodgate, RequestCtx};
use crate::upstream::{ClassId, Shed};

impl Floodgate {
    /// Takes one of the client's origin slots (`limits.max_inflight_per_client`).
    pub(super) async fn client_share(
        &self,
        ctx: &mut RequestCtx,
        class: ClassId,
    ) -> Result<(), Shed> {
        let cap = ctx.rt.config.limits.max_inflight_per_client;
        let Some(client) = ctx.client.filter(|_| cap > 0) else {
            return Ok(());
        };
        let wait = ctx.rt.classes.max_wait(class);
        match self.client_slots.acquire(client, cap, wait).await {
            Some(permit) => {
                ctx.client_permit = Some(permit);
                Ok(())
            }
            None => Err(Shed::ClientCap),
        }
    }

    /// A visitor whose page has a purged copy kept, while the origin has no slot for it:
    /// waits up to `purge.keep_purged_wait_ms` for a slot or for the fresh page to land;
    /// `true` when neither came, and the copy is to be served (the page is then queued
    /// for re-warming, so the next visitors get it fresh).
    pub(super) async fn kept_copy_after_wait(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        class: ClassId,
    ) -> bool {
        let Some(wait) = self.wait_with_kept_copy(ctx, class) else {
            return false;
        };
        let deadline = std::time::Instant::now() + wait;
        loop {
            if !self.origins.would_wait(class) {
                return false;
            }
            let fresh = match ctx.key {
                Some(key) => self
                    .store
                    .get(&key)
                    .await
                    .is_some_and(|o| o.is_fresh() && !o.is_purged_copy()),
                None => false,
            };
            if fresh {
                return false;
            }
            if std::time::Instant::now() >= deadline {
                if let Some(identity) = self.identity(session, ctx) {
                    self.purger.rewarm_now(identity);
                }
                return true;
            }
            // Polled: a slot and a fill have no one waker between them.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// How long a request whose page has a purged copy kept waits for the origin
    /// (`purge.keep_purged_wait_ms`); `None`: its class's wait.
    /// Only a visitor's: the re-warm that fetches the page waits its own class's wait.
    fn wait_with_kept_copy(&self, ctx: &RequestCtx, class: ClassId) -> Option<std::time::Duration> {
        let ms = ctx.rt.config.purge.keep_purged_wait_ms;
        (ctx.purged_copy && ms > 0 && class != ctx.rt.classes.warm())
            .then(|| std::time::Duration::from_millis(ms))
    }

    /// An origin slot for the request (its client's share first), or the reason it is
    /// shed, as an upstream error so a kept stale copy is served instead.
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let class = self.class(session, ctx);
        // A retry gives its slot back first, so it queues like any other request.
        ctx.permit = None;
        ctx.client_permit = None;
        let shared = ctx
            .key
            .and_then(|key| self.shed_fanout.shared(&key, ctx.arrived));
        let admitted = match shared {
            Some(shed) => Err(shed),
            None => match self.client_share(ctx, class).await {
                Err(shed) => Err(shed),
                Ok(()) => {
                    let wait = self.wait_with_kept_copy(ctx, class);
                    self.origins.admit(class, wait).await
                }
            },
        };
        if admitted.is_err() && self.wait_with_kept_copy(ctx, class).is_some() {
            // The visitor gets the kept copy; the fresh page is fetched for the next ones.
            if let Some(identity) = self.identity(session, ctx) {
                self.purger.rewarm_now(identity);
            }
        }
        match admitted {
            Ok((peer, permit)) => {
                ctx.permit = Some(permit);
                Ok(Box::new(peer))
            }
            Err(shed) => {
                ctx.shed = Some(shed);
                if let (Some(key), None) = (ctx.key, shared) {
                    self.shed_fanout.record(key, shed);
                }
                self.origins
                    .metrics()
                    .shed(ctx.rt.classes.name(class), shed);
                let why = match shed {
                    Shed::QueueFull => "the origin's queue is full",
                    Shed::Timeout => "the request waited too long for a free origin slot",
                    Shed::WouldTimeOut => {
                        "the origin's queue would not reach the request within its wait"
                    }
                    Shed::Unhealthy => "no healthy origin: every origin fails its health probe",
                    Shed::Maintenance => "maintenance mode is on",
                    Shed::ClientCap => {
                        "this client holds limits.max_inflight_per_client origin slots already"
                    }
                };
                let mut e = Error::explain(ErrorType::ConnectNoRoute, why);
                // Upstream, so that a stale copy is served if one is kept.
                e.esource = ErrorSource::Upstream;
                e.set_retry(false);
                Err(e)
            }
        }
    }
}
