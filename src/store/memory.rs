//! The embedded in-memory store, bounded by bytes. moka does the bounded,
//! concurrent, TinyLFU-admitted map; a tag index beside it serves purge-by-tag.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Entry, Peek, Purge, Store, StoreError};
use crate::clock::SharedClock;
use crate::key::{CacheKey, DigestHash};

/// In-process store holding decoded entries.
pub struct MemoryStore {
    cache: moka::sync::Cache<CacheKey, Arc<Entry>, DigestHash>,
    /// tag → keys. Keys of evicted entries are removed by the eviction listener.
    tags: Arc<Mutex<HashMap<String, HashSet<CacheKey>>>>,
    clock: SharedClock,
    /// Entries dropped by moka itself: [over capacity, past stale_until].
    /// Plain atomics (the listener has no metrics); `Metrics` catches up at scrape.
    evicted: Arc<[AtomicU64; 2]>,
    max_bytes: u64,
}

impl MemoryStore {
    /// A store holding at most `max_bytes` of entries (by `Entry::weight`).
    pub fn new(max_bytes: u64, clock: SharedClock) -> MemoryStore {
        let tags: Arc<Mutex<HashMap<String, HashSet<CacheKey>>>> = Arc::default();
        let listener_tags = tags.clone();
        let evicted: Arc<[AtomicU64; 2]> = Arc::default();
        let listener_evicted = evicted.clone();
        let expiry_clock = clock.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &CacheKey, e: &Arc<Entry>| e.weight().min(u32::MAX as u64) as u32)
            .expire_after(StaleExpiry {
                clock: expiry_clock,
            })
            .eviction_listener(move |k: Arc<CacheKey>, e: Arc<Entry>, cause| {
                // A replaced entry's key is still live under the new value.
                use moka::notification::RemovalCause;
                match cause {
                    RemovalCause::Replaced => return,
                    RemovalCause::Size => listener_evicted[0].fetch_add(1, Ordering::Relaxed),
                    RemovalCause::Expired => listener_evicted[1].fetch_add(1, Ordering::Relaxed),
                    RemovalCause::Explicit => 0,
                };
                let mut idx = listener_tags.lock().unwrap_or_else(|p| p.into_inner());
                for t in &e.meta.tags {
                    if let Some(set) = idx.get_mut(t) {
                        set.remove(&*k);
                        if set.is_empty() {
                            idx.remove(t);
                        }
                    }
                }
            })
            .build_with_hasher(DigestHash);
        MemoryStore {
            cache,
            tags,
            clock,
            evicted,
            max_bytes,
        }
    }

    /// Entries evicted so far: (over capacity, past their stale window).
    pub fn evictions(&self) -> (u64, u64) {
        (
            self.evicted[0].load(Ordering::Relaxed),
            self.evicted[1].load(Ordering::Relaxed),
        )
    }

    /// The capacity in weighted bytes (`memory.max_bytes`).
    pub fn capacity(&self) -> u64 {
        self.max_bytes
    }

    /// Entries and weighted bytes currently held (approximate until pending tasks run).
    pub fn usage(&self) -> (u64, u64) {
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// Run moka's pending maintenance (tests and metrics want exact numbers).
    pub fn sync(&self) {
        self.cache.run_pending_tasks();
    }

    /// Synchronous lookup for the hit path (no future, no allocation).
    #[inline]
    pub fn get_sync(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.cache.get(key)
    }

    fn put_sync(&self, key: CacheKey, entry: Arc<Entry>) {
        if entry.meta.stale_until <= self.clock.now_ms() {
            return;
        }
        {
            let mut idx = self.tags.lock().unwrap_or_else(|p| p.into_inner());
            for t in &entry.meta.tags {
                idx.entry(t.clone()).or_default().insert(key);
            }
        }
        self.cache.insert(key, entry);
    }

    /// Purge synchronously (invalidation messages from other replicas).
    pub fn purge_now(&self, purge: &Purge) -> u64 {
        self.purge_sync(purge)
    }

    fn purge_sync(&self, purge: &Purge) -> u64 {
        let keys: Vec<CacheKey> = match purge {
            Purge::All => {
                self.cache.run_pending_tasks();
                let n = self.cache.entry_count();
                self.cache.invalidate_all();
                self.cache.run_pending_tasks();
                self.tags.lock().unwrap_or_else(|p| p.into_inner()).clear();
                return n;
            }
            Purge::Keys(k) => k.clone(),
            Purge::Tags(tags) => {
                let mut idx = self.tags.lock().unwrap_or_else(|p| p.into_inner());
                let mut out = HashSet::new();
                for t in tags {
                    if let Some(set) = idx.remove(t) {
                        out.extend(set);
                    }
                }
                out.into_iter().collect()
            }
        };
        keys.iter()
            .filter(|k| self.cache.remove(*k).is_some())
            .count() as u64
    }
}

/// Entries expire from memory at `stale_until` (wall clock), so stale-serving
/// windows work and nothing outlives them.
struct StaleExpiry {
    clock: SharedClock,
}

impl moka::Expiry<CacheKey, Arc<Entry>> for StaleExpiry {
    fn expire_after_create(
        &self,
        _k: &CacheKey,
        e: &Arc<Entry>,
        _now: std::time::Instant,
    ) -> Option<std::time::Duration> {
        let left = e.meta.stale_until.saturating_sub(self.clock.now_ms());
        Some(std::time::Duration::from_millis(left))
    }
    fn expire_after_update(
        &self,
        k: &CacheKey,
        e: &Arc<Entry>,
        now: std::time::Instant,
        _d: Option<std::time::Duration>,
    ) -> Option<std::time::Duration> {
        self.expire_after_create(k, e, now)
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn peek(&self, key: &CacheKey) -> Peek {
        match self.get_sync(key) {
            Some(e) => Peek::Found(e),
            None => Peek::Absent,
        }
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, StoreError> {
        Ok(self.get_sync(key))
    }
    async fn put(&self, key: &CacheKey, entry: Arc<Entry>) -> Result<(), StoreError> {
        self.put_sync(*key, entry);
        Ok(())
    }
    async fn purge(&self, purge: &Purge) -> Result<u64, StoreError> {
        Ok(self.purge_sync(purge))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};
    use crate::store::Meta;

    fn entry(tags: &[&str], body_len: usize, now: u64) -> Arc<Entry> {
        // Incompressible body so weights are predictable.
        let body: Vec<u8> = (0..body_len)
            .map(|i| (i * 7919 % 251) as u8 ^ (i >> 8) as u8)
            .collect();
        let meta = Meta {
            status: 200,
            headers: vec![],
            stored_at: now,
            fresh_until: now + 60_000,
            stale_until: now + 120_000,
            upstream_ms: 1,
            raw_len: body.len() as u32,
            tags: tags.iter().map(|s| s.to_string()).collect(),
        };
        Arc::new(Entry::build(meta, &body, 1, false).unwrap())
    }

    fn key(i: u8) -> CacheKey {
        CacheKey([i; 32])
    }

    #[tokio::test]
    async fn get_put_purge_by_tag_key_all() {
        let clock: SharedClock = Arc::new(SystemClock);
        let now = clock.now_ms();
        let s = MemoryStore::new(64 << 20, clock);
        s.put(&key(1), entry(&["chart:1", "dataset:1__table"], 100, now))
            .await
            .unwrap();
        s.put(&key(2), entry(&["chart:2", "dataset:1__table"], 100, now))
            .await
            .unwrap();
        s.put(&key(3), entry(&["chart:3"], 100, now)).await.unwrap();
        assert!(s.get(&key(1)).await.unwrap().is_some());
        assert_eq!(
            s.purge(&Purge::Tags(vec!["dataset:1__table".into()]))
                .await
                .unwrap(),
            2
        );
        assert!(s.get(&key(1)).await.unwrap().is_none());
        assert!(s.get(&key(2)).await.unwrap().is_none());
        assert!(s.get(&key(3)).await.unwrap().is_some());
        assert_eq!(
            s.purge(&Purge::Keys(vec![key(3), key(9)])).await.unwrap(),
            1
        );
        s.put(&key(4), entry(&[], 100, now)).await.unwrap();
        assert_eq!(s.purge(&Purge::All).await.unwrap(), 1);
        assert!(s.get(&key(4)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn bounded_by_bytes() {
        let clock: SharedClock = Arc::new(SystemClock);
        let now = clock.now_ms();
        let max = 2 << 20;
        let s = MemoryStore::new(max, clock);
        for i in 0..200u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            s.put(&CacheKey(k), entry(&["t"], 64 * 1024, now))
                .await
                .unwrap();
        }
        s.sync();
        let (n, bytes) = s.usage();
        assert!(bytes <= max, "{bytes} > {max}");
        assert!(n > 0 && n < 200, "{n}");
        let (size, expired) = s.evictions();
        assert_eq!(size, 200 - n, "every entry not held was evicted for size");
        assert_eq!(expired, 0);
        assert_eq!(s.capacity(), max);
    }

    #[tokio::test]
    async fn entries_leave_at_stale_until() {
        let clock = ManualClock::new(1_000_000);
        let s = MemoryStore::new(64 << 20, clock.clone());
        // Already past stale_until: not stored at all.
        let mut old = (*entry(&[], 10, 0)).clone();
        old.meta.stale_until = 999_999;
        s.put(&key(1), Arc::new(old)).await.unwrap();
        assert!(s.get(&key(1)).await.unwrap().is_none());
    }
}
