//! Origin slots per client address (`limits.max_inflight_per_client`), taken before the
//! limiter's own slot, so one address (a scraper, a POST flood) can hold only a part of
//! the pool while its other requests wait or are shed, and nobody else notices.
//!
//! Invariant: an address holds at most `cap` permits at once; an address with no permit
//! out and nobody waiting has no entry, so the map is as large as the set of clients
//! with origin requests in flight, not as every address ever seen.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Default)]
pub struct ClientSlots {
    clients: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

/// One origin slot of one client; given back when dropped.
pub struct ClientPermit {
    permit: Option<OwnedSemaphorePermit>,
    client: IpAddr,
    slots: Arc<ClientSlots>,
}

impl ClientSlots {
    /// Waits up to `wait` for one of `client`'s `cap` slots; `None` when none came free.
    pub async fn acquire(
        self: &Arc<Self>,
        client: IpAddr,
        cap: usize,
        wait: Duration,
    ) -> Option<ClientPermit> {
        let semaphore = {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            // A cap changed by a reload applies to clients that arrive idle after it.
            clients
                .entry(client)
                .or_insert_with(|| Arc::new(Semaphore::new(cap)))
                .clone()
        };
        // Every clone of the semaphore is gone by the end of this match, so an idle
        // client's entry is only the map's.
        let permit = match semaphore.clone().try_acquire_owned() {
            Ok(permit) => {
                drop(semaphore);
                Some(permit)
            }
            Err(_) => tokio::time::timeout(wait, semaphore.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        };
        match permit {
            Some(permit) => Some(ClientPermit {
                permit: Some(permit),
                client,
                slots: self.clone(),
            }),
            None => {
                self.forget_if_idle(client);
                None
            }
        }
    }

    fn forget_if_idle(&self, client: IpAddr) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map's own reference left: no permit out, nobody waiting.
        if clients
            .get(&client)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            clients.remove(&client);
        }
    }

    /// Addresses with an origin request in flight or waiting.
    pub fn tracked(&self) -> usize {
        self.clients.lock().map_or(0, |c| c.len())
    }
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.slots.forget_if_idle(self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_client_is_capped_and_others_are_not() {
        let slots = Arc::new(ClientSlots::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let wait = Duration::from_millis(20);
        let first = slots.acquire(a, 2, wait).await.expect("first");
        let second = slots.acquire(a, 2, wait).await.expect("second");
        assert!(
            slots.acquire(a, 2, wait).await.is_none(),
            "third is over the cap"
        );
        assert!(
            slots.acquire(b, 2, wait).await.is_some(),
            "another client is free"
        );
        drop(first);
        let third = slots.acquire(a, 2, wait).await.expect("a slot came back");
        drop((second, third));
        assert_eq!(slots.tracked(), 0, "idle clients are forgotten");
    }
}
