//! The fetch lock in Redis (see [`crate::store::lock`] for the protocol):
//! `SET {prefix}:l:{key} token NX PX lock_ttl`, compare-and-expire to extend
//! it, and compare-and-delete that announces the release on `{prefix}:rel`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::RedisStore;
use crate::key::CacheKey;
use crate::store::lock::Releases;
use crate::store::{Entry, LockTiming, SharedTier, Store, StoreError};

/// Release a lock only if it still holds our token, and announce the release
/// on channel `ARGV[2]` (payload `ARGV[3]`, the key) in the same step: one
/// round trip, so a waiting replica hears of the entry as soon as Redis does.
/// Only the holder that really released it announces: an expired lock taken
/// over by another replica is theirs to announce.
pub(crate) const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0";

/// Extend a lock only if it still holds our token.
pub(crate) const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0";

impl RedisStore {
    /// `SET lock token NX PX lock_ttl`: true when taken.
    pub async fn try_lock(&self, key: &CacheKey, token: &str) -> Result<bool, StoreError> {
        let k = self.lock_key(key);
        let ttl = self.config().lock_ttl_ms;
        let token = token.to_string();
        self.run("lock", self.config().timeout(), |mut c| async move {
            redis::cmd("SET")
                .arg(k)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(ttl)
                .query_async::<Option<String>>(&mut c)
                .await
        })
        .await
        .map(|r| r.is_some())
    }

    /// Compare-and-expire: true when our lock was extended to `lock_ttl_ms`.
    pub async fn renew_lock(&self, key: &CacheKey, token: &str) -> Result<bool, StoreError> {
        let mut inv = self.renew_script.prepare_invoke();
        inv.key(self.lock_key(key))
            .arg(token)
            .arg(self.config().lock_ttl_ms);
        self.run("renew", self.config().timeout(), |mut c| async move {
            inv.invoke_async::<i64>(&mut c).await
        })
        .await
        .map(|n| n == 1)
    }

    /// Compare-and-delete, and when our lock was removed, publish the key on
    /// the release channel in the same script: true when removed.
    pub async fn unlock_and_announce(
        &self,
        key: &CacheKey,
        token: &str,
    ) -> Result<bool, StoreError> {
        let mut inv = self.unlock_script.prepare_invoke();
        inv.key(self.lock_key(key))
            .arg(token)
            .arg(self.release_channel())
            .arg(&key.0[..]);
        self.run("unlock", self.config().timeout(), |mut c| async move {
            inv.invoke_async::<i64>(&mut c).await
        })
        .await
        .map(|n| n == 1)
    }
}

#[async_trait]
impl SharedTier for RedisStore {
    async fn get_shared(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, StoreError> {
        self.get(key).await
    }
    async fn try_lock(&self, key: &CacheKey, token: &str) -> Result<bool, StoreError> {
        RedisStore::try_lock(self, key, token).await
    }
    async fn renew_lock(&self, key: &CacheKey, token: &str) -> Result<bool, StoreError> {
        RedisStore::renew_lock(self, key, token).await
    }
    async fn unlock_and_announce(&self, key: &CacheKey, token: &str) -> Result<bool, StoreError> {
        RedisStore::unlock_and_announce(self, key, token).await
    }
    fn releases(&self) -> &Arc<Releases> {
        RedisStore::releases(self)
    }
    fn subscribed(&self) -> bool {
        RedisStore::subscribed(self)
    }
    fn jobs(&self) -> Option<&dyn crate::store::SharedJobs> {
        Some(self)
    }
    fn lock_timing(&self) -> LockTiming {
        let c = self.config();
        LockTiming {
            ttl: Duration::from_millis(c.lock_ttl_ms),
            poll: Duration::from_millis(c.lock_poll_ms),
            wait: Duration::from_millis(c.lock_wait_ms),
        }
    }
}
