//! Purging the shared tier: the copies a purge selects are found through the tag and
//! pool sets kept beside them in Redis and deleted, one key per command (the keys may
//! live in different cluster slots), but only copies whose fetch began before the purge:
//! every node applies a purge when it reaches it, and by then another node may have
//! re-warmed the page (a copy fetched after the purge, which must stay).

use regex::Regex;

use super::{SharedError, SharedTier};
use crate::cache::TagSelector;
use crate::cluster::{self};

/// Deletes a shared copy whose fetch began before ARGV[1] (unix ms, the copy's first 8
/// bytes, big-endian), or that is too short to say.
const DELETE_IF_BEFORE: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if string.len(v) < 8 then return redis.call('DEL', KEYS[1]) end
local started = 0
for i = 1, 8 do started = started * 256 + string.byte(v, i) end
if started < tonumber(ARGV[1]) then return redis.call('DEL', KEYS[1]) end
return 0
";

impl SharedTier {
    /// Removes the shared copies a purge selects, by index; how many objects went.
    /// `Err` when Redis could not be asked: the caller keeps the purge to retry.
    /// With `wait`, waits for a connection (background work); without, a missing
    /// connection is an error at once (a PURGE request is being answered).
    /// `at`: when the purge was made (on the node Magento sent it to).
    pub async fn purge(
        &self,
        selector: Option<&TagSelector>,
        pool: Option<&Regex>,
        wait: bool,
        at: std::time::SystemTime,
    ) -> Result<usize, SharedError> {
        let p = &self.prefix;
        let mut sets: Vec<String> = Vec::new();
        let mut names: Vec<(String, String)> = Vec::new(); // (list, member) to forget
        let listed = |list: &str| redis::cmd("SMEMBERS").arg(format!("{p}{list}")).to_owned();
        match selector {
            Some(TagSelector::Tags(tags)) => {
                for tag in tags {
                    sets.push(format!("{p}tag:{tag}"));
                    names.push(("tags".into(), tag.clone()));
                }
            }
            Some(TagSelector::AllTagged) | Some(TagSelector::Pattern(_)) => {
                let all: Vec<String> = self
                    .run(&listed("tags"))
                    .await
                    .ok_or(SharedError::NotDone("list the shared tags"))?;
                for tag in all {
                    let selected = match selector {
                        Some(TagSelector::Pattern(re)) => re.is_match(&tag),
                        _ => true,
                    };
                    if selected {
                        sets.push(format!("{p}tag:{tag}"));
                        names.push(("tags".into(), tag));
                    }
                }
            }
            None => {}
        }
        if let Some(re) = pool {
            let all: Vec<String> = self
                .run(&listed("pools"))
                .await
                .ok_or(SharedError::NotDone("list the shared pools"))?;
            for value in all.into_iter().filter(|v| re.is_match(v)) {
                sets.push(format!("{p}pool:{value}"));
                names.push(("pools".into(), value));
            }
        }
        if sets.is_empty() {
            return Ok(0);
        }
        let con = if wait {
            self.connection_waiting().await
        } else {
            self.connection()
        }
        .ok_or(SharedError::Unreachable)?;
        // On a request's path Redis gets its timeout; the publisher retries what is left.
        let limit = if wait { self.timeout * 4 } else { self.timeout };
        let listed = cluster::each(
            &con,
            sets.iter()
                .map(|set| redis::cmd("SMEMBERS").arg(set).to_owned())
                .collect(),
            limit,
        )
        .await
        .inspect_err(|_| self.broken())
        .map_err(SharedError::Batch)?;
        let mut members = std::collections::BTreeSet::new();
        for reply in listed {
            let names: Vec<String> = redis::from_redis_value(&reply)?;
            members.extend(names);
        }
        // One key per command: the keys may live in different cluster slots. The sets
        // stay: a copy fetched after the purge is still listed in them (an entry whose
        // object went costs a few bytes until the set expires).
        let before = super::unix_ms(at);
        let commands: Vec<redis::Cmd> = members
            .iter()
            .map(|m| {
                redis::cmd("EVAL")
                    .arg(DELETE_IF_BEFORE)
                    .arg(1)
                    .arg(format!("{p}obj:{m}"))
                    .arg(before)
                    .to_owned()
            })
            .collect();
        cluster::each(&con, commands, limit)
            .await
            .inspect_err(|_| self.broken())
            .map_err(SharedError::Batch)?;
        Ok(members.len())
    }
}
