//! Cross-replica coalescing: one replica fetches a key, the others wait for
//! its entry instead of sending the same query to Superset.
//!
//! The local leader (see [`crate::coalesce`]) takes `SET {prefix}:l:{key}
//! token NX PX lock_ttl`. If another replica holds it, this replica polls (at
//! `lock_poll_ms`, for at most `lock_wait_ms`) for a fresh entry, taking the
//! lock over if it disappears without one (that leader failed or its response
//! was not storable). Redis trouble at any point means: fetch yourself. The
//! lock is released by compare-and-delete, so an expired lock that another
//! replica took over is never removed by its former holder.

use std::sync::Arc;
use std::time::Duration;

use super::redis::RedisStore;
use super::{Entry, Store, StoreError};
use crate::clock::SharedClock;
use crate::fingerprint::CacheKey;

/// Release a lock only if it still holds our token.
pub(crate) const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// What the cross-replica step decided.
pub enum Remote {
    /// Fetch from Superset; hold the lock (if any) until the entry is stored.
    Fetch(Option<RemoteLock>),
    /// Another replica stored the entry while this one waited.
    Entry(Arc<Entry>),
}

/// A held fetch lock; released (by token) when dropped.
pub struct RemoteLock {
    store: Arc<RedisStore>,
    key: CacheKey,
    token: String,
}

impl Drop for RemoteLock {
    fn drop(&mut self) {
        let store = self.store.clone();
        let key = self.key;
        let token = std::mem::take(&mut self.token);
        // Drop may run outside a runtime only at shutdown; the lock then expires.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = store.unlock(&key, &token).await;
            });
        }
    }
}

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

    /// Compare-and-delete: true when our lock was removed.
    pub async fn unlock(&self, key: &CacheKey, token: &str) -> Result<bool, StoreError> {
        let mut inv = self.unlock_script.prepare_invoke();
        inv.key(self.lock_key(key)).arg(token);
        self.run("unlock", self.config().timeout(), |mut c| async move {
            inv.invoke_async::<i64>(&mut c).await
        })
        .await
        .map(|n| n == 1)
    }
}

/// Elect a leader for `key` across replicas sharing `store`'s Redis, or wait
/// for the leader's entry. Stores without Redis always answer `Fetch(None)`.
pub async fn coordinate(store: &dyn Store, key: &CacheKey, clock: &SharedClock) -> Remote {
    let Some(redis) = store.remote() else {
        return Remote::Fetch(None);
    };
    let token = format!("{:032x}", rand::random::<u128>());
    let lock = |redis: Arc<RedisStore>, token: String| RemoteLock {
        store: redis,
        key: *key,
        token,
    };
    match redis.try_lock(key, &token).await {
        Ok(true) => return Remote::Fetch(Some(lock(redis, token))),
        Ok(false) => {}
        Err(_) => return Remote::Fetch(None),
    }
    let cfg = redis.config();
    let poll = Duration::from_millis(cfg.lock_poll_ms);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.lock_wait_ms);
    let max_polls = cfg.lock_wait_ms / cfg.lock_poll_ms + 1;
    for _ in 0..max_polls {
        tokio::time::sleep_until((tokio::time::Instant::now() + poll).min(deadline)).await;
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        match store.get(key).await {
            Ok(Some(e)) if clock.now_ms() < e.meta.fresh_until => return Remote::Entry(e),
            Ok(_) => {}
            Err(_) => return Remote::Fetch(None),
        }
        match redis.try_lock(key, &token).await {
            Ok(true) => return Remote::Fetch(Some(lock(redis, token))),
            Ok(false) => {}
            Err(_) => return Remote::Fetch(None),
        }
    }
    tracing::debug!(key = %key.short(), "cross-replica lock wait timed out; fetching");
    Remote::Fetch(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn stores_without_redis_always_fetch() {
        let clock: SharedClock = Arc::new(SystemClock);
        let mem = MemoryStore::new(1 << 20, clock.clone());
        assert!(matches!(
            coordinate(&mem, &CacheKey([1; 32]), &clock).await,
            Remote::Fetch(None)
        ));
    }
}
