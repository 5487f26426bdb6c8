//! L1 (the in-process memory store) in front of L2 (Redis).
//!
//! Reads try L1, then L2; L2 hits fill L1. Writes go to both. Purges go to
//! both and are published on `{prefix}:inv` so every other replica drops its
//! L1 copies. A replica that was not subscribed may have missed messages, so
//! it clears its L1 whenever it (re)subscribes; and L1 copies never outlive
//! `l1_max_ttl_secs`, which bounds staleness if a message is lost anyway.
//! L2 trouble never fails an operation: L1 keeps serving.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::memory::MemoryStore;
use super::redis::RedisStore;
use super::{Entry, Purge, Store, StoreError};
use crate::clock::SharedClock;
use crate::fingerprint::CacheKey;

/// The wire form of an invalidation message.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Message {
    /// Sender id: a replica ignores its own messages.
    origin: String,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
}

impl Message {
    fn new(origin: &str, p: &Purge) -> Message {
        let mut m = Message {
            origin: origin.to_string(),
            all: false,
            keys: Vec::new(),
            tags: Vec::new(),
        };
        match p {
            Purge::All => m.all = true,
            Purge::Keys(k) => m.keys = k.iter().map(|k| k.to_hex()).collect(),
            Purge::Tags(t) => m.tags = t.clone(),
        }
        m
    }

    fn purge(&self) -> Option<Purge> {
        if self.all {
            return Some(Purge::All);
        }
        if !self.tags.is_empty() {
            return Some(Purge::Tags(self.tags.clone()));
        }
        let keys: Option<Vec<CacheKey>> = self.keys.iter().map(|h| parse_key(h)).collect();
        // An unreadable key list: drop everything rather than keep stale data.
        Some(keys.map(Purge::Keys).unwrap_or(Purge::All))
    }
}

fn parse_key(h: &str) -> Option<CacheKey> {
    let v = hex::decode(h).ok()?;
    Some(CacheKey(v.try_into().ok()?))
}

/// Memory in front of Redis.
pub struct TieredStore {
    l1: Arc<MemoryStore>,
    l2: Arc<RedisStore>,
    clock: SharedClock,
    origin: String,
    l1_max_ttl_ms: u64,
    /// Add the gzip copy to entries read from L2 (`cache.store_gzip`): Redis
    /// holds only zstd, and gzip-only clients should not cost a decompression per hit.
    gzip: bool,
}

impl TieredStore {
    /// Build and subscribe to the invalidation channel.
    pub fn new(
        l1: Arc<MemoryStore>,
        l2: Arc<RedisStore>,
        clock: SharedClock,
        gzip: bool,
    ) -> Arc<TieredStore> {
        let origin = format!("{:016x}", rand::random::<u64>());
        let l1_max_ttl_ms = l2.config().l1_max_ttl_secs * 1000;
        let (mem, me) = (l1.clone(), origin.clone());
        let mem_all = l1.clone();
        l2.subscribe(
            move |payload| match serde_json::from_slice::<Message>(payload) {
                Ok(m) if m.origin == me => {}
                Ok(m) => {
                    if let Some(p) = m.purge() {
                        let n = mem.purge_now(&p);
                        tracing::debug!(purge = ?p, removed = n, "L1 invalidated by another replica");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable invalidation message; clearing L1");
                    mem.purge_now(&Purge::All);
                }
            },
            move || {
                mem_all.purge_now(&Purge::All);
            },
        );
        Arc::new(TieredStore {
            l1,
            l2,
            clock,
            origin,
            l1_max_ttl_ms,
            gzip,
        })
    }

    /// The L1 store.
    pub fn l1(&self) -> &Arc<MemoryStore> {
        &self.l1
    }

    /// The L2 store.
    pub fn l2(&self) -> &Arc<RedisStore> {
        &self.l2
    }

    /// The copy L1 keeps: at most `l1_max_ttl_secs` before it is read from L2 again.
    fn l1_copy(&self, entry: &Arc<Entry>) -> Arc<Entry> {
        let cap = self.clock.now_ms() + self.l1_max_ttl_ms;
        if entry.meta.stale_until <= cap {
            return entry.clone();
        }
        let mut e = (**entry).clone();
        e.meta.stale_until = cap;
        Arc::new(e)
    }
}

#[async_trait]
impl Store for TieredStore {
    fn name(&self) -> &'static str {
        "tiered"
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, StoreError> {
        if let Some(e) = self.l1.get_sync(key) {
            return Ok(Some(e));
        }
        match self.l2.get(key).await {
            Ok(Some(e)) => {
                let e = if self.gzip {
                    match (*e).clone().with_gzip() {
                        Ok(g) => Arc::new(g),
                        Err(_) => e,
                    }
                } else {
                    e
                };
                self.l1.put(key, self.l1_copy(&e)).await?;
                Ok(Some(e))
            }
            Ok(None) => Ok(None),
            // Counted and logged by the L2 store; fail open to L1 (a miss here).
            Err(_) => Ok(None),
        }
    }

    async fn put(&self, key: &CacheKey, entry: Arc<Entry>) -> Result<(), StoreError> {
        self.l1.put(key, self.l1_copy(&entry)).await?;
        // L1 holds it; an L2 failure is counted by the L2 store and not raised.
        let _ = self.l2.put(key, entry).await;
        Ok(())
    }

    async fn purge(&self, purge: &Purge) -> Result<u64, StoreError> {
        let local = self.l1.purge(purge).await?;
        let remote = self.l2.purge(purge).await;
        let msg = serde_json::to_vec(&Message::new(&self.origin, purge))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let published = self.l2.publish(msg).await;
        match (remote, published) {
            (Ok(n), Ok(())) => Ok(n.max(local)),
            // Other replicas may keep L1 copies (bounded by l1_max_ttl_secs): say so.
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }

    fn remote(&self) -> Option<Arc<RedisStore>> {
        Some(self.l2.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_roundtrip() {
        let k = CacheKey([3; 32]);
        for p in [
            Purge::All,
            Purge::Keys(vec![k]),
            Purge::Tags(vec!["chart:1".into(), "dataset:2__table".into()]),
        ] {
            let m = Message::new("o", &p);
            let back: Message = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
            assert_eq!(back.purge(), Some(p));
        }
        let bad = Message {
            origin: "o".into(),
            all: false,
            keys: vec!["zz".into()],
            tags: vec![],
        };
        assert_eq!(bad.purge(), Some(Purge::All));
    }
}
