//! The embedded in-memory store, bounded by bytes. quick_cache does the
//! bounded, concurrent, scan-resistant (S3-FIFO) map; a tag index beside it
//! serves purge-by-tag. A lookup is a hash, a shard read lock and a probe:
//! the hit path makes it on every request, so it carries no per-read
//! bookkeeping. Entries past `stale_until` are dropped when read (and never
//! served); until then they count against the bound like any other entry.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Entry, Purge, Store, StoreError};
use crate::clock::SharedClock;
use crate::fingerprint::CacheKey;

type TagIndex = Arc<Mutex<HashMap<String, HashSet<CacheKey>>>>;

/// In-process store holding decoded entries.
pub struct MemoryStore {
    cache: quick_cache::sync::Cache<
        CacheKey,
        Arc<Entry>,
        EntryWeight,
        quick_cache::DefaultHashBuilder,
        Evicted,
    >,
    /// tag → keys. Keys leave it when their entry is evicted, purged or expires.
    tags: TagIndex,
    clock: SharedClock,
}

/// Weighs an entry by `Entry::weight` (never 0: such items would never be evicted).
#[derive(Clone)]
struct EntryWeight;

impl quick_cache::Weighter<CacheKey, Arc<Entry>> for EntryWeight {
    fn weight(&self, _k: &CacheKey, e: &Arc<Entry>) -> u64 {
        e.weight().max(1)
    }
}

/// Collects what an insert evicted, so the tag index is updated after the
/// cache's shard lock is released.
#[derive(Clone)]
struct Evicted;

impl quick_cache::Lifecycle<CacheKey, Arc<Entry>> for Evicted {
    type RequestState = Vec<(CacheKey, Arc<Entry>)>;
    fn begin_request(&self) -> Self::RequestState {
        Vec::new()
    }
    fn on_evict(&self, state: &mut Self::RequestState, key: CacheKey, val: Arc<Entry>) {
        state.push((key, val));
    }
}

/// Remove `key` from the index sets of `entry`'s tags.
fn unindex(idx: &mut HashMap<String, HashSet<CacheKey>>, key: &CacheKey, entry: &Entry) {
    for t in &entry.meta.tags {
        if let Some(set) = idx.get_mut(t) {
            set.remove(key);
            if set.is_empty() {
                idx.remove(t);
            }
        }
    }
}

impl MemoryStore {
    /// A store holding at most `max_bytes` of entries (by `Entry::weight`).
    pub fn new(max_bytes: u64, clock: SharedClock) -> MemoryStore {
        // Sized for entries of about 16 KB (compressed chart responses).
        let items = (max_bytes / (16 * 1024)).clamp(16, 1 << 20) as usize;
        let cache = quick_cache::sync::Cache::with(
            items,
            max_bytes,
            EntryWeight,
            quick_cache::DefaultHashBuilder::default(),
            Evicted,
        );
        MemoryStore {
            cache,
            tags: TagIndex::default(),
            clock,
        }
    }

    /// Entries and weighted bytes currently held.
    pub fn usage(&self) -> (u64, u64) {
        (self.cache.len() as u64, self.cache.weight())
    }

    /// Kept for callers that want exact numbers first: the counts are always exact.
    pub fn sync(&self) {}

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<CacheKey>>> {
        self.tags.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Synchronous lookup for the hit path (no future, no allocation).
    #[inline]
    pub fn get_sync(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let e = self.cache.get(key)?;
        if e.meta.stale_until > self.clock.now_ms() {
            return Some(e);
        }
        // Past every serving window: drop it (unless a newer entry replaced it meanwhile).
        if let Some((k, old)) = self.cache.remove_if(key, |cur| Arc::ptr_eq(cur, &e)) {
            unindex(&mut self.index(), &k, &old);
        }
        None
    }

    fn put_sync(&self, key: CacheKey, entry: Arc<Entry>) {
        if entry.meta.stale_until <= self.clock.now_ms() {
            return;
        }
        {
            let mut idx = self.index();
            for t in &entry.meta.tags {
                idx.entry(t.clone()).or_default().insert(key);
            }
        }
        let evicted = self.cache.insert_with_lifecycle(key, entry);
        if !evicted.is_empty() {
            let mut idx = self.index();
            for (k, e) in &evicted {
                // An entry can be evicted by its own replacement's insert only
                // if the replacement was rejected as too large; the key is
                // then gone from the cache and must leave the index too.
                if self.cache.peek(k).is_none() {
                    unindex(&mut idx, k, e);
                }
            }
        }
    }

    /// Purge synchronously (invalidation messages from other replicas).
    pub fn purge_now(&self, purge: &Purge) -> u64 {
        self.purge_sync(purge)
    }

    fn purge_sync(&self, purge: &Purge) -> u64 {
        let keys: Vec<CacheKey> = match purge {
            Purge::All => {
                let n = self.cache.len() as u64;
                self.cache.clear();
                self.index().clear();
                return n;
            }
            Purge::Keys(k) => k.clone(),
            Purge::Tags(tags) => {
                let mut idx = self.index();
                let mut out = HashSet::new();
                for t in tags {
                    if let Some(set) = idx.remove(t) {
                        out.extend(set);
                    }
                }
                out.into_iter().collect()
            }
        };
        let mut removed = 0;
        for k in &keys {
            if let Some((k, e)) = self.cache.remove(k) {
                unindex(&mut self.index(), &k, &e);
                removed += 1;
            }
        }
        removed
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
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
        // Stored, then read after its stale_until: not served, and gone from
        // the store and the tag index.
        s.put(&key(2), entry(&["chart:2"], 10, 1_000_000))
            .await
            .unwrap();
        clock.advance_ms(119_999);
        assert!(s.get(&key(2)).await.unwrap().is_some());
        clock.advance_ms(1);
        assert!(s.get(&key(2)).await.unwrap().is_none());
        assert_eq!(s.usage(), (0, 0));
        assert!(s.index().is_empty());
    }

    #[tokio::test]
    async fn evicted_keys_leave_the_tag_index() {
        let clock: SharedClock = Arc::new(SystemClock);
        let now = clock.now_ms();
        let s = MemoryStore::new(1 << 20, clock);
        for i in 0..100u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            s.put(
                &CacheKey(k),
                entry(&["t", &format!("chart:{i}")], 64 * 1024, now),
            )
            .await
            .unwrap();
        }
        let (held, _) = s.usage();
        assert!(held > 0 && held < 100, "{held}");
        let idx = s.index();
        // Exactly the held keys are indexed: one `chart:N` tag each, and all under `t`.
        assert_eq!(idx.len() as u64, held + 1);
        assert_eq!(idx["t"].len() as u64, held);
        for k in &idx["t"] {
            assert!(s.cache.peek(k).is_some());
        }
    }
}
