//! One re-warm per purged page across the fleet: every node applies a purge and finds
//! the pages it had hot, and each page is re-warmed by the first node to claim it.
//!
//! Invariant: a claim is keyed by the purge (an id its first node gave it, the same on
//! every node) and the page's key, so one purge re-warms a page once fleet-wide and the
//! next purge of it again. The other nodes get the fresh copy through the shared tier
//! (and, while it is being fetched, through cross-node coalescing), not from PHP. When
//! Redis cannot say, a node re-warms its own hot pages itself: a page is never left cold
//! because a claim was lost.

use std::time::Duration;

use pingora::cache::key::HashBinary;

use crate::cluster::{Client, Link, LinkError};

/// How long a claim is kept: longer than any re-warm queue drains.
const CLAIM_TTL: Duration = Duration::from_secs(600);

/// Claims one SET NX per page, all in one script call.
const CLAIM: &str = r"
local won = {}
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) then
    won[#won + 1] = 1
  else
    won[#won + 1] = 0
  end
end
return won
";

pub struct WarmClaims {
    link: Link,
    prefix: String,
    node: String,
    script: redis::Script,
}

impl WarmClaims {
    pub fn new(client: Client, key_prefix: &str, timeout: Duration, node: String) -> Self {
        let prefix = format!("{key_prefix}{}:", client.slot_tag("warm"));
        Self {
            link: Link::new(client, timeout),
            prefix,
            node,
            script: redis::Script::new(CLAIM),
        }
    }

    /// For each page of purge `purge`, whether this node re-warms it (it claimed it
    /// first). `Err` when Redis could not say: the caller re-warms them all.
    pub async fn claim(&self, purge: u64, pages: &[HashBinary]) -> Result<Vec<bool>, LinkError> {
        let mut won = Vec::with_capacity(pages.len());
        // A few hundred keys per call keeps each script short.
        for batch in pages.chunks(256) {
            let mut invocation = self.script.prepare_invoke();
            for key in batch {
                invocation.key(format!("{}{purge:016x}:{}", self.prefix, hex(key)));
            }
            invocation.arg(&self.node).arg(CLAIM_TTL.as_millis() as u64);
            let answer: Vec<u8> = self.link.invoke(&invocation).await?;
            won.extend(answer.into_iter().map(|w| w == 1));
        }
        won.resize(pages.len(), true);
        Ok(won)
    }
}

fn hex(key: &HashBinary) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}
