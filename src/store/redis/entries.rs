//! Entries in Redis: `GET`/`SET` of entries and their tag sets, purges by key,
//! tag or everything, and the scripts that keep an entry and its tags together.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{RedisStore, STORE};
use crate::key::CacheKey;
use crate::store::entry::DecodeError;
use crate::store::{Entry, Purge, SharedTier, Store, StoreError};

/// SET the entry, add its key to each tag set and raise the set's TTL.
/// KEYS[1] entry key, KEYS[2..] tag keys; ARGV: value, ttl ms, key hex.
pub(super) const PUT_SCRIPT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local ttl = tonumber(ARGV[2])
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[3])
  local t = redis.call('PTTL', KEYS[i])
  if t == -1 or (t >= 0 and t < ttl) then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1";

/// Delete every entry named by the tag sets, then the sets. KEYS: tag keys;
/// ARGV[1]: entry key prefix. Returns entries deleted.
pub(super) const PURGE_TAGS_SCRIPT: &str = r"
local n = 0
for i = 1, #KEYS do
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    n = n + redis.call('DEL', ARGV[1] .. m)
  end
  redis.call('DEL', KEYS[i])
end
return n";

impl RedisStore {
    /// Delete one entry that could not be read; fails open (counted by `run`).
    async fn discard(&self, key: &CacheKey) {
        let k = self.entry_key(key);
        let _ = self
            .run("delete", self.cfg.timeout(), |mut c| async move {
                redis::cmd("DEL").arg(k).query_async::<u64>(&mut c).await
            })
            .await;
    }

    async fn purge_all(&self) -> Result<u64, StoreError> {
        if self.cluster {
            return self.purge_all_cluster().await;
        }
        let pattern_e = format!("{}:e:*", self.cfg.prefix);
        let pattern_t = format!("{}:t:*", self.cfg.prefix);
        let t = Duration::from_millis(self.cfg.purge_timeout_ms);
        self.run("purge", t, |mut c| async move {
            let mut removed = 0u64;
            for pattern in [pattern_e, pattern_t] {
                let mut cursor: u64 = 0;
                // Bounded: SCAN visits each key at most a few times; the
                // operation timeout bounds the whole loop.
                loop {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await?;
                    if !keys.is_empty() {
                        let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(&mut c).await?;
                        if pattern.ends_with(":e:*") {
                            removed += n;
                        }
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            Ok(removed)
        })
        .await
    }
}

#[async_trait]
impl Store for RedisStore {
    fn name(&self) -> &'static str {
        STORE
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, StoreError> {
        let k = self.entry_key(key);
        let raw = self
            .run("get", self.cfg.timeout(), |mut c| async move {
                redis::cmd("GET")
                    .arg(k)
                    .query_async::<Option<Vec<u8>>>(&mut c)
                    .await
            })
            .await?;
        let Some(raw) = raw else {
            self.count("get", "miss");
            return Ok(None);
        };
        let max = self.max_raw_len.load(std::sync::atomic::Ordering::Relaxed);
        match Entry::decode_within(Bytes::from(raw), max) {
            Ok(e) => {
                self.count("get", "hit");
                Ok(Some(Arc::new(e)))
            }
            // Another entry format (a rolling upgrade): a miss, overwritten
            // on fill; deleting it would have old and new replicas delete
            // each other's entries.
            Err(e @ DecodeError::Version(_)) => {
                tracing::debug!(error = %e, key = %key.short(), "redis entry of another version");
                self.count("get", "miss");
                Ok(None)
            }
            // Untrusted bytes that are no entry of ours: a miss, and deleted
            // so the next reader does not pay for them again.
            Err(e) => {
                tracing::warn!(error = %e, key = %key.short(), "unreadable redis entry; deleting it");
                self.count("get", e.as_str());
                self.discard(key).await;
                Ok(None)
            }
        }
    }

    async fn put(&self, key: &CacheKey, entry: Arc<Entry>) -> Result<(), StoreError> {
        let ttl = entry.meta.stale_until.saturating_sub(self.clock.now_ms());
        if ttl == 0 {
            return Ok(());
        }
        if self.cluster {
            self.put_cluster(key, &entry, ttl).await?;
            self.count("put", "ok");
            return Ok(());
        }
        let value = entry.encode();
        let mut inv = self.put_script.prepare_invoke();
        inv.key(self.entry_key(key));
        for t in &entry.meta.tags {
            inv.key(self.tag_key(t));
        }
        inv.arg(value.as_ref()).arg(ttl).arg(key.to_hex());
        self.run("put", self.cfg.timeout(), |mut c| async move {
            inv.invoke_async::<i64>(&mut c).await
        })
        .await?;
        self.count("put", "ok");
        Ok(())
    }

    async fn purge(&self, purge: &Purge) -> Result<u64, StoreError> {
        let t = Duration::from_millis(self.cfg.purge_timeout_ms);
        let n = match purge {
            Purge::All => self.purge_all().await?,
            Purge::Keys(keys) if keys.is_empty() => 0,
            Purge::Keys(keys) => {
                let ks: Vec<String> = keys.iter().map(|k| self.entry_key(k)).collect();
                if self.cluster {
                    return self.purge_keys_cluster(ks).await.inspect(|_| {
                        self.count("purge", "ok");
                    });
                }
                self.run("purge", t, |mut c| async move {
                    redis::cmd("DEL").arg(ks).query_async::<u64>(&mut c).await
                })
                .await?
            }
            Purge::Tags(tags) if tags.is_empty() => 0,
            Purge::Tags(tags) if self.cluster => self.purge_tags_cluster(tags).await?,
            Purge::Tags(tags) => {
                let mut inv = self.purge_tags_script.prepare_invoke();
                for t in tags {
                    inv.key(self.tag_key(t));
                }
                inv.arg(format!("{}:e:", self.cfg.prefix));
                self.run("purge", t, |mut c| async move {
                    inv.invoke_async::<u64>(&mut c).await
                })
                .await?
            }
        };
        self.count("purge", "ok");
        Ok(n)
    }

    fn shared(&self) -> Option<Arc<dyn SharedTier>> {
        self.me.upgrade().map(|s| s as Arc<dyn SharedTier>)
    }
}
