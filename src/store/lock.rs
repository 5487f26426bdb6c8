//! Cross-replica coalescing: one replica fetches a key, the others wait for
//! its entry instead of sending the same query to Superset.
//!
//! The local leader (see [`crate::coalesce`]) takes the key's lock in the
//! shared tier ([`SharedTier::try_lock`]; in Redis `SET {prefix}:l:{key}
//! token NX PX lock_ttl`, see `store/redis/lock.rs`). If another replica holds it, this replica waits (for
//! at most `lock_wait_ms`) for a fresh entry, taking the lock over if it
//! disappears without one (that leader failed or its response was not
//! storable). A replica that takes the lock reads the store once more before
//! fetching: the entry may have landed between its last read and its lock.
//! Redis trouble at any point means: fetch yourself. The lock is
//! released by compare-and-delete, so an expired lock that another replica
//! took over is never removed by its former holder. While the holder fetches,
//! it extends the lock every `lock_ttl_ms / 3` (compare-and-expire), so a chart
//! query slower than `lock_ttl_ms` is still fetched once; a holder that dies
//! stops extending, and its lock expires within `lock_ttl_ms`.
//!
//! A holder that releases its lock publishes the key on `{prefix}:rel`; every
//! replica's subscription wakes its waiter for that key at once. Polling every
//! `lock_poll_ms` stays as the fallback for a lost message or subscription.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::key::CacheKey;
use crate::store::{Entry, LockTiming, SharedTier, Store};

/// What the cross-replica step decided.
pub enum Remote {
    /// Fetch from Superset; hold the lock (if any) until the entry is stored.
    Fetch(Option<RemoteLock>),
    /// Another replica stored the entry while this one waited.
    Entry(Arc<Entry>),
}

/// A held fetch lock, extended while held and released (by token) when dropped.
pub struct RemoteLock {
    store: Arc<dyn SharedTier>,
    key: CacheKey,
    token: String,
    renewal: tokio::task::AbortHandle,
}

impl RemoteLock {
    /// Hold a lock just taken with `token`: start extending it.
    fn hold(store: Arc<dyn SharedTier>, key: CacheKey, token: String) -> RemoteLock {
        let every = (store.lock_timing().ttl / 3).max(Duration::from_millis(1));
        let (weak, t) = (Arc::downgrade(&store), token.clone());
        let renewal = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(store) = weak.upgrade() else { return };
                // Lost (expired and taken over) or Redis trouble: stop; the
                // lock then lapses by its TTL as it would without renewal.
                if !matches!(store.renew_lock(&key, &t).await, Ok(true)) {
                    return;
                }
            }
        })
        .abort_handle();
        RemoteLock {
            store,
            key,
            token,
            renewal,
        }
    }
}

impl Drop for RemoteLock {
    fn drop(&mut self) {
        self.renewal.abort();
        let store = self.store.clone();
        let key = self.key;
        let token = std::mem::take(&mut self.token);
        // Drop may run outside a runtime only at shutdown; the lock then expires.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // A release lost to a Redis timeout would leave the other
            // replicas' waiters on a lock nobody holds until it lapses
            // (`lock_ttl_ms`, beyond their `lock_wait_ms`): retry a few times,
            // past a breaker's cooldown.
            rt.spawn(async move {
                let mut backoff = Duration::from_millis(100);
                for _ in 0..4 {
                    if store.unlock_and_announce(&key, &token).await.is_ok() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff *= 3;
                }
            });
        }
    }
}

/// This replica's waiters for other replicas' fetch locks, woken by the
/// `{prefix}:rel` subscription. One `watch` per key, kept while someone waits.
#[derive(Default)]
pub struct Releases {
    waiting: Mutex<HashMap<CacheKey, watch::Sender<u64>>>,
}

/// One waiter's interest in a key's lock release; leaves the map when the last
/// waiter for the key is gone.
pub(crate) struct ReleaseWatch {
    rx: watch::Receiver<u64>,
    key: CacheKey,
    owner: Arc<Releases>,
}

impl Releases {
    /// Start watching `key`: releases announced after this call are seen.
    pub(crate) fn watch(self: &Arc<Self>, key: CacheKey) -> ReleaseWatch {
        let mut map = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let rx = map
            .entry(key)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        ReleaseWatch {
            rx,
            key,
            owner: self.clone(),
        }
    }

    /// A release message: the payload is the 32-byte key. Anything else is ignored.
    pub(crate) fn released(&self, payload: &[u8]) {
        let Ok(k) = <[u8; 32]>::try_from(payload) else {
            return;
        };
        let map = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(&CacheKey(k)) {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// Keys with a waiter (tests).
    pub fn waiting(&self) -> usize {
        self.waiting.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl ReleaseWatch {
    /// Wait for the next release of the key after the last one seen.
    pub(crate) async fn released(&mut self) {
        if self.rx.changed().await.is_err() {
            // Cannot happen while this receiver keeps the entry; never spin.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for ReleaseWatch {
    fn drop(&mut self) {
        let mut map = self.owner.waiting.lock().unwrap_or_else(|p| p.into_inner());
        // Our own receiver is still alive here: 1 means no one else waits.
        if map
            .get(&self.key)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            map.remove(&self.key);
        }
    }
}

/// Elect a leader for `key` across replicas sharing `store`'s shared tier, or
/// wait for the leader's entry. Stores without one always answer `Fetch(None)`.
pub async fn coordinate(store: &dyn Store, key: &CacheKey, clock: &SharedClock) -> Remote {
    let Some(redis) = store.shared() else {
        return Remote::Fetch(None);
    };
    let token = format!("{:032x}", rand::random::<u128>());
    // Watch before trying the lock, so a release right after a failed try is seen.
    let mut release = redis.releases().watch(*key);
    match redis.try_lock(key, &token).await {
        Ok(true) => {
            let held = RemoteLock::hold(redis, *key, token);
            return recheck(store, held, clock).await;
        }
        Ok(false) => {}
        Err(_) => return Remote::Fetch(None),
    }
    let LockTiming { poll, wait, .. } = redis.lock_timing();
    let deadline = tokio::time::Instant::now() + wait;
    // Each round follows a release or a poll; releases only come from lock
    // holders, so the rounds stay few, and the deadline bounds them anyway.
    loop {
        tokio::select! {
            _ = release.released() => {}
            _ = tokio::time::sleep_until((tokio::time::Instant::now() + poll).min(deadline)) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        match store.get(key).await {
            Ok(Some(e)) if clock.now_ms() < e.meta.fresh_until => return Remote::Entry(e),
            Ok(_) => {}
            Err(_) => return Remote::Fetch(None),
        }
        match redis.try_lock(key, &token).await {
            Ok(true) => {
                let held = RemoteLock::hold(redis, *key, token);
                return recheck(store, held, clock).await;
            }
            Ok(false) => {}
            Err(_) => return Remote::Fetch(None),
        }
    }
    tracing::debug!(key = %key.short(), "cross-replica lock wait timed out; fetching");
    Remote::Fetch(None)
}

/// The lock is ours, but the read that missed came before it: in between,
/// another replica may have stored the entry and released its lock (our read
/// misses, their `put` and unlock land, our `SET NX` succeeds). Read once more
/// so that replica's query is not sent to Superset again; an entry found now
/// is served, and dropping the lock releases and announces it at once.
async fn recheck(store: &dyn Store, held: RemoteLock, clock: &SharedClock) -> Remote {
    match store.get(&held.key).await {
        Ok(Some(e)) if clock.now_ms() < e.meta.fresh_until => Remote::Entry(e),
        _ => Remote::Fetch(Some(held)),
    }
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

    #[tokio::test]
    async fn a_release_wakes_the_waiter_of_that_key_only() {
        let r = Arc::new(Releases::default());
        let (a, b) = (CacheKey([1; 32]), CacheKey([2; 32]));
        let mut wa = r.watch(a);
        let mut wb = r.watch(b);
        // Announced before the waiter awaits: still seen.
        r.released(&a.0);
        tokio::time::timeout(Duration::from_secs(5), wa.released())
            .await
            .expect("release of a wakes a's waiter");
        // b was not released; garbage payloads are ignored.
        r.released(b"not a key");
        assert!(
            futures_util::FutureExt::now_or_never(wb.released()).is_none(),
            "b's waiter must keep waiting"
        );
        assert_eq!(r.waiting(), 2);
        drop(wa);
        assert_eq!(r.waiting(), 1);
        let wb2 = r.watch(b);
        drop(wb);
        assert_eq!(r.waiting(), 1, "b still has a waiter");
        drop(wb2);
        assert_eq!(r.waiting(), 0);
    }
}
