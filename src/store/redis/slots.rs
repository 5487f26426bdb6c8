//! Entries in a Redis Cluster: the writes and purges that touch keys of more
//! than one slot, done as single-slot steps.
//!
//! A put adds the key to each tag set (one small script per tag, each on its
//! tag's slot) and then sets the entry: a purge that runs between the two
//! finds the key in the set and deletes nothing yet, as it would for a fetch
//! still in flight, so the window is the one every cache fill already has.
//! A purge by tag reads the set, deletes the entries in per-slot batches, and
//! then removes just the members it read: keys added meanwhile stay listed.

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt, stream};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::RedisStore;
use super::cluster::{self, Conn};
use crate::key::CacheKey;
use crate::store::{Entry, StoreError};

/// Add ARGV[1] (a key hex) to tag set KEYS[1] and raise the set's TTL to
/// ARGV[2] ms if it is lower.
pub(super) const TAG_ADD_SCRIPT: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
local t = redis.call('PTTL', KEYS[1])
if t == -1 or (t >= 0 and t < ttl) then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1";

/// Slots worked on at once by a purge: enough to keep every master busy,
/// few enough not to queue ahead of the hit path's reads.
const PARALLEL: usize = 16;
/// Members removed from a tag set per command.
const SREM_BATCH: usize = 1_000;

impl RedisStore {
    /// Cluster put: tag sets first (each on its own slot), then the entry.
    pub(super) async fn put_cluster(
        &self,
        key: &CacheKey,
        entry: &Entry,
        ttl: u64,
    ) -> Result<(), StoreError> {
        let hex = key.to_hex();
        let adds: Vec<_> = entry
            .meta
            .tags
            .iter()
            .map(|t| {
                let mut inv = self.tag_add_script.prepare_invoke();
                inv.key(self.tag_key(t)).arg(&hex).arg(ttl);
                inv
            })
            .collect();
        let k = self.entry_key(key);
        let value = entry.encode();
        self.run("put", self.cfg.timeout(), |c| async move {
            futures_util::future::try_join_all(adds.iter().map(|inv| {
                let mut c = c.clone();
                async move { inv.invoke_async::<i64>(&mut c).await }
            }))
            .await?;
            let mut c = c;
            redis::cmd("SET")
                .arg(k)
                .arg(value.as_ref())
                .arg("PX")
                .arg(ttl)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Delete `keys` (any slots), one `DEL` per slot.
    pub(super) async fn purge_keys_cluster(&self, keys: Vec<String>) -> Result<u64, StoreError> {
        let t = Duration::from_millis(self.cfg.purge_timeout_ms);
        self.run("purge", t, |c| del_by_slot(c, keys)).await
    }

    /// Delete every entry named by the tag sets, slot by slot, then the
    /// members read from each set.
    pub(super) async fn purge_tags_cluster(&self, tags: &[String]) -> Result<u64, StoreError> {
        let t = Duration::from_millis(self.cfg.purge_timeout_ms);
        let sets: Vec<String> = tags.iter().map(|t| self.tag_key(t)).collect();
        let entry = |hex: &str| self.key_of('e', hex);
        let mut removed = 0;
        for set in sets {
            let members = self
                .run("purge", t, |mut c| {
                    let set = set.clone();
                    async move {
                        redis::cmd("SMEMBERS")
                            .arg(set)
                            .query_async::<Vec<String>>(&mut c)
                            .await
                    }
                })
                .await?;
            if members.is_empty() {
                continue;
            }
            let keys: Vec<String> = members.iter().map(|m| entry(m)).collect();
            removed += self
                .run("purge", t, |c| async move {
                    let n = del_by_slot(c.clone(), keys).await?;
                    for batch in members.chunks(SREM_BATCH) {
                        let mut c = c.clone();
                        redis::cmd("SREM")
                            .arg(&set)
                            .arg(batch)
                            .query_async::<u64>(&mut c)
                            .await?;
                    }
                    Ok(n)
                })
                .await?;
        }
        Ok(removed)
    }

    /// Everything under the prefix: `SCAN` each master, `UNLINK` per slot.
    pub(super) async fn purge_all_cluster(&self) -> Result<u64, StoreError> {
        let patterns = [
            format!("{}:e:*", self.cfg.prefix),
            format!("{}:t:*", self.cfg.prefix),
        ];
        let t = Duration::from_millis(self.cfg.purge_timeout_ms);
        self.run("purge", t, |c| async move {
            let Conn::Cluster(mut cc) = c.clone() else {
                return Ok(0);
            };
            let masters: Vec<_> = cluster::nodes(&mut cc.clone())
                .await?
                .into_iter()
                .filter(|n| n.master)
                .collect();
            let mut removed = 0u64;
            for node in masters {
                for pattern in &patterns {
                    let mut cursor: u64 = 0;
                    // Bounded: SCAN visits each key at most a few times; the
                    // operation timeout bounds the whole loop.
                    loop {
                        let mut scan = redis::cmd("SCAN");
                        scan.arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(1000);
                        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: node.host.clone(),
                            port: node.port,
                        });
                        let v = cc.route_command(scan, route).await?;
                        let (next, keys): (u64, Vec<String>) = redis::from_redis_value(v)?;
                        let n = del_by_slot(c.clone(), keys).await?;
                        if pattern.ends_with(":e:*") {
                            removed += n;
                        }
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
            }
            Ok(removed)
        })
        .await
    }
}

/// `UNLINK` `keys` grouped by slot, [`PARALLEL`] slots at a time: the count removed.
async fn del_by_slot(c: Conn, keys: Vec<String>) -> redis::RedisResult<u64> {
    if keys.is_empty() {
        return Ok(0);
    }
    stream::iter(cluster::by_slot(keys))
        .map(|group| {
            let mut c = c.clone();
            async move {
                redis::cmd("UNLINK")
                    .arg(group)
                    .query_async::<u64>(&mut c)
                    .await
            }
        })
        .buffer_unordered(PARALLEL)
        .try_fold(0u64, |n, d| async move { Ok(n + d) })
        .await
}
