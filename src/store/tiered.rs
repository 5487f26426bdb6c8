//! L1 (the in-process memory store) in front of L2 (Redis).
//!
//! Reads try L1, then L2; L2 hits fill L1. Writes go to both. Purges go to
//! both and are published on `{prefix}:inv` so every other replica drops its
//! L1 copies.
//!
//! L1 is only used while the subscription is live ([`RedisStore::subscribed`]):
//! without it, another replica's purge would be missed and L1 would keep
//! serving the purged entry. So when the subscription is lost (connection
//! closed, master hung or changed) L1 is cleared and bypassed (reads and
//! fills go to L2 alone), and it is cleared again when the subscription is
//! made (messages may have been missed in between). L1 copies also never
//! outlive `l1_max_ttl_secs`, a last bound if a message is lost anyway.
//! L2 trouble never fails an operation.
//!
//! A message is untrusted input: one that cannot be read (not JSON, too
//! large, wrong types, a key that is not 64 hex digits) is logged and counted
//! (`chartcache_invalidation_messages_total{result="unreadable"}`) and changes
//! nothing beyond the keys it names readably: it never clears all of L1, or
//! anyone able to publish garbage could empty every replica's L1 at will.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use prometheus::{IntCounter, IntGauge};

use super::memory::MemoryStore;
use super::redis::RedisStore;
use super::{Entry, Peek, Purge, SharedTier, Store, StoreError};
use crate::clock::SharedClock;
use crate::key::CacheKey;

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

    /// What to purge, and how many keys could not be read (those are skipped:
    /// the readable ones are still purged).
    fn purge(&self) -> (Purge, usize) {
        if self.all {
            return (Purge::All, 0);
        }
        if !self.tags.is_empty() {
            return (Purge::Tags(self.tags.clone()), 0);
        }
        let keys: Vec<CacheKey> = self.keys.iter().filter_map(|h| parse_key(h)).collect();
        let bad = self.keys.len() - keys.len();
        (Purge::Keys(keys), bad)
    }
}

/// Longest invalidation message read (bytes). A purge request is at most
/// 1 MiB (the admin API's limit), so a real message stays well below this.
const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// What a received invalidation message means for this replica.
#[derive(Debug, PartialEq)]
enum Received {
    /// Another replica's purge. `bad_keys` > 0: some keys were unreadable.
    Purge { purge: Purge, bad_keys: usize },
    /// Sent by this replica (its own L1 is already purged).
    Own,
    /// Not a message: too large, not JSON, or of the wrong shape.
    Unreadable(String),
}

impl Received {
    fn read(payload: &[u8], me: &str) -> Received {
        if payload.len() > MAX_MESSAGE_BYTES {
            return Received::Unreadable(format!("{} bytes", payload.len()));
        }
        match serde_json::from_slice::<Message>(payload) {
            Ok(m) if m.origin == me => Received::Own,
            Ok(m) => {
                let (purge, bad_keys) = m.purge();
                Received::Purge { purge, bad_keys }
            }
            Err(e) => Received::Unreadable(e.to_string()),
        }
    }
}

/// Applies received messages to L1 and counts them.
struct Receiver {
    l1: Arc<MemoryStore>,
    origin: String,
    applied: IntCounter,
    own: IntCounter,
    unreadable: IntCounter,
}

impl Receiver {
    fn on_message(&self, payload: &[u8]) {
        match Received::read(payload, &self.origin) {
            Received::Own => self.own.inc(),
            Received::Purge { purge, bad_keys } => {
                let n = self.l1.purge_now(&purge);
                tracing::debug!(?purge, removed = n, "L1 invalidated by another replica");
                if bad_keys > 0 {
                    tracing::warn!(
                        bad_keys,
                        "invalidation message with unreadable keys; purged the readable ones"
                    );
                    self.unreadable.inc();
                } else {
                    self.applied.inc();
                }
            }
            Received::Unreadable(why) => {
                tracing::warn!(error = %why, bytes = payload.len(), "unreadable invalidation message; ignored");
                self.unreadable.inc();
            }
        }
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
    /// Build and subscribe to the invalidation channel. L1 is bypassed until
    /// the subscription is live.
    pub fn new(
        l1: Arc<MemoryStore>,
        l2: Arc<RedisStore>,
        clock: SharedClock,
        gzip: bool,
    ) -> Arc<TieredStore> {
        let origin = format!("{:016x}", rand::random::<u64>());
        let l1_max_ttl_ms = l2.config().l1_max_ttl_secs * 1000;
        let m = l2.metrics();
        let msgs = &m.invalidation_messages;
        let rx = Receiver {
            l1: l1.clone(),
            origin: origin.clone(),
            applied: msgs.with_label_values(&["applied"]),
            own: msgs.with_label_values(&["own"]),
            unreadable: msgs.with_label_values(&["unreadable"]),
        };
        let bypassed: IntGauge = m.l1_bypassed.clone();
        bypassed.set(1);
        let (on_sub, on_lost) = ((l1.clone(), bypassed.clone()), (l1.clone(), bypassed));
        l2.subscribe_with(
            move |payload| rx.on_message(payload),
            // Messages may have been missed before: start from an empty L1.
            move || {
                on_sub.0.purge_now(&Purge::All);
                on_sub.1.set(0);
            },
            // From now on purges may be missed: nothing in L1 may be served.
            move || {
                on_lost.1.set(1);
                let n = on_lost.0.purge_now(&Purge::All);
                // The subscription loop logs the loss and its reason.
                tracing::debug!(
                    removed = n,
                    "L1 cleared and bypassed until the subscription is back"
                );
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
        // Without a live subscription L1 could hold entries purged elsewhere.
        let use_l1 = self.l2.subscribed();
        if use_l1 && let Some(e) = self.l1.get_sync(key) {
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
                if use_l1 {
                    self.l1.put(key, self.l1_copy(&e)).await?;
                }
                Ok(Some(e))
            }
            Ok(None) => Ok(None),
            // Counted and logged by the L2 store; fail open to L1 (a miss here).
            Err(_) => Ok(None),
        }
    }

    async fn put(&self, key: &CacheKey, entry: Arc<Entry>) -> Result<(), StoreError> {
        if self.l2.subscribed() {
            self.l1.put(key, self.l1_copy(&entry)).await?;
        }
        // An L2 failure is counted by the L2 store and not raised.
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

    fn peek(&self, key: &CacheKey) -> Peek {
        // Without a live subscription L1 could hold entries purged elsewhere.
        if self.l2.subscribed()
            && let Some(e) = self.l1.get_sync(key)
        {
            return Peek::Found(e);
        }
        Peek::Unknown
    }

    fn shared(&self) -> Option<Arc<dyn SharedTier>> {
        Some(self.l2.clone())
    }

    fn forget_local(&self, key: &CacheKey) {
        self.l1.purge_now(&Purge::Keys(vec![*key]));
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
            assert_eq!(back.purge(), (p, 0));
        }
    }

    #[test]
    fn unreadable_messages_never_mean_purge_all() {
        let k = CacheKey([7; 32]);
        let mixed = serde_json::json!({"origin": "o", "keys": ["zz", k.to_hex(), "ab"]});
        assert_eq!(
            Received::read(&serde_json::to_vec(&mixed).unwrap(), "me"),
            Received::Purge {
                purge: Purge::Keys(vec![k]),
                bad_keys: 2
            }
        );
        let garbage: [&[u8]; 5] = [
            b"not json",
            b"{\"origin\": 1, \"keys\": \"x\"}",
            b"{\"all\": true}",
            b"[1,2,3]",
            b"",
        ];
        for g in garbage {
            assert!(
                matches!(Received::read(g, "me"), Received::Unreadable(_)),
                "{}",
                String::from_utf8_lossy(g)
            );
        }
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            Received::read(&huge, "me"),
            Received::Unreadable(_)
        ));
        let own = serde_json::to_vec(&Message::new("me", &Purge::All)).unwrap();
        assert_eq!(Received::read(&own, "me"), Received::Own);
    }
}
