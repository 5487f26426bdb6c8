//! The Redis store: entries shared by every replica.
//!
//! Keys: `{prefix}:e:{keyhex}` holds `Entry::encode()` with a PX TTL reaching
//! `stale_until`; `{prefix}:t:{tag}` is the set of key hexes carrying a tag (its
//! TTL is raised to the longest member's); `{prefix}:l:{keyhex}` are fetch locks
//! ([`crate::store::lock`]); channel `{prefix}:inv` carries invalidations and
//! `{prefix}:rel` lock releases, both on one subscription ([`pubsub`]).
//!
//! Every operation is bounded by `timeout_ms` and goes through a circuit
//! breaker: a slow or dead Redis turns into misses, never into client errors.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::{RedisResult, Script};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::breaker::Breaker;
use super::entry::DecodeError;
use super::{Entry, Purge, SharedTier, Store, StoreError};
use crate::clock::SharedClock;
use crate::key::CacheKey;
use crate::metrics::Metrics;

pub mod conn;
pub mod lock;
pub mod pubsub;

use crate::config::RedisConfig;
use conn::{ConnError, Connector};

const STORE: &str = "redis";

/// SET the entry, add its key to each tag set and raise the set's TTL.
/// KEYS[1] entry key, KEYS[2..] tag keys; ARGV: value, ttl ms, key hex.
const PUT_SCRIPT: &str = r"
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
const PURGE_TAGS_SCRIPT: &str = r"
local n = 0
for i = 1, #KEYS do
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    n = n + redis.call('DEL', ARGV[1] .. m)
  end
  redis.call('DEL', KEYS[i])
end
return n";

/// Redis-backed store. Cheap to share as `Arc`.
pub struct RedisStore {
    cfg: RedisConfig,
    conn: Arc<Connector>,
    breaker: Breaker,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    put_script: Script,
    purge_tags_script: Script,
    pub(crate) unlock_script: Script,
    pub(crate) renew_script: Script,
    /// Stops background tasks (sentinel watcher, subscribers) when dropped.
    stop: CancellationToken,
    me: std::sync::Weak<RedisStore>,
    /// Successful subscriptions to the invalidation channel so far.
    subscriptions: Arc<std::sync::atomic::AtomicU64>,
    /// Successful subscriptions to the lock-release channel so far.
    release_subscriptions: Arc<std::sync::atomic::AtomicU64>,
    /// Replicas waiting here for another replica's fetch lock on a key.
    releases: Arc<crate::store::lock::Releases>,
    /// The channels subscribed and whether the subscription is live.
    subs: Arc<pubsub::Subscriptions>,
    /// Largest body (uncompressed) an entry read back may claim: the
    /// process's `max_object_bytes` ([`RedisStore::limit_entries`]).
    max_raw_len: std::sync::atomic::AtomicU64,
    _stop_guard: DropGuard,
}

/// A startup check that failed; the message is meant for operators.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

impl RedisStore {
    /// Build the store (connects lazily; call [`RedisStore::check`] to probe).
    /// In sentinel mode this starts the `+switch-master` watcher.
    pub fn new(
        cfg: RedisConfig,
        metrics: Arc<Metrics>,
        clock: SharedClock,
    ) -> Result<Arc<RedisStore>, crate::config::RedisConfigError> {
        let conn = Connector::new(&cfg, &metrics.redis_connections)?;
        let gauge = metrics.breaker_open.with_label_values(&[STORE]);
        let breaker = Breaker::new(
            cfg.breaker_failures,
            Duration::from_millis(cfg.breaker_cooldown_ms),
            Some(gauge),
        );
        let stop = CancellationToken::new();
        let store = Arc::new_cyclic(|me| RedisStore {
            me: me.clone(),
            subscriptions: Arc::default(),
            release_subscriptions: Arc::default(),
            releases: Arc::default(),
            subs: Arc::new(pubsub::Subscriptions::new(
                metrics.redis_subscription_live.clone(),
                metrics.redis_subscription_losses.clone(),
            )),
            max_raw_len: std::sync::atomic::AtomicU64::new(
                crate::config::CacheConfig::default().max_object_bytes,
            ),
            conn,
            breaker,
            metrics,
            clock,
            put_script: Script::new(PUT_SCRIPT),
            purge_tags_script: Script::new(PURGE_TAGS_SCRIPT),
            unlock_script: Script::new(lock::UNLOCK_SCRIPT),
            renew_script: Script::new(lock::RENEW_SCRIPT),
            _stop_guard: stop.clone().drop_guard(),
            stop,
            cfg,
        });
        if store.conn.is_sentinel() {
            tokio::spawn(watch_switch_master(
                Arc::downgrade(&store),
                store.stop.clone(),
            ));
        }
        Ok(store)
    }

    /// Refuse entries whose body claims more than `max_object_bytes`
    /// (uncompressed): no entry this process stores is larger, and reading
    /// one back would allocate what its header claims.
    pub fn limit_entries(&self, max_object_bytes: u64) {
        self.max_raw_len
            .store(max_object_bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The configuration in use.
    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    /// The breaker (tests, health).
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// `host:port` of the master in use, once resolved.
    pub fn master_addr(&self) -> Option<String> {
        self.conn.current_addr()
    }

    /// Connect and PING within `connect_timeout_ms`, with an operator-facing
    /// message on failure (wrong password, unknown master, nothing listening).
    pub async fn check(&self) -> Result<(), StartupError> {
        let t = Duration::from_millis(self.cfg.connect_timeout_ms);
        let res = tokio::time::timeout(t, async {
            let (mut c, _) = self.conn.get().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map_err(ConnError::from)
        })
        .await;
        let target = self.describe();
        match res {
            Ok(Ok(_)) => {
                self.breaker.success();
                Ok(())
            }
            Err(_) => Err(StartupError(format!(
                "redis at {target} did not answer within {} ms",
                t.as_millis()
            ))),
            Ok(Err(ConnError::Redis(e))) if is_auth_error(&e) => Err(StartupError(format!(
                "redis at {target} refused the credentials ({e}); check redis.username / \
                 redis.password (CHARTCACHE_REDIS__PASSWORD or redis.password_file)"
            ))),
            Ok(Err(e)) if e.to_string().contains("certificate") => Err(StartupError(format!(
                "redis at {target} is unavailable: {e}; check redis.tls_ca_file (the CA that \
                 issued the server certificate) and redis.tls_client_cert_file / \
                 tls_client_key_file"
            ))),
            Ok(Err(e)) => Err(StartupError(format!(
                "redis at {target} is unavailable: {e}"
            ))),
        }
    }

    fn describe(&self) -> String {
        match (&self.cfg.url, self.conn.current_addr()) {
            (Some(u), _) => crate::config::redis::redact(u),
            (None, Some(a)) => format!("{a} (master {:?})", self.cfg.master_name),
            (None, None) => format!(
                "sentinels {} (master {:?})",
                self.cfg.sentinels.join(","),
                self.cfg.master_name
            ),
        }
    }

    pub(crate) fn entry_key(&self, key: &CacheKey) -> String {
        format!("{}:e:{}", self.cfg.prefix, key.to_hex())
    }
    fn tag_key(&self, tag: &str) -> String {
        format!("{}:t:{}", self.cfg.prefix, tag)
    }
    pub(crate) fn lock_key(&self, key: &CacheKey) -> String {
        format!("{}:l:{}", self.cfg.prefix, key.to_hex())
    }
    /// The invalidation channel.
    pub fn channel(&self) -> String {
        format!("{}:inv", self.cfg.prefix)
    }
    /// The channel on which a replica announces it released a fetch lock.
    pub(crate) fn release_channel(&self) -> String {
        format!("{}:rel", self.cfg.prefix)
    }
    /// Waiters for lock releases (see `store::lock`).
    pub fn releases(&self) -> &Arc<crate::store::lock::Releases> {
        &self.releases
    }

    /// Run one operation under the breaker and the timeout. `op` labels metrics.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(redis::aio::MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.breaker.allow() {
            self.count(op, "skipped");
            return Err(StoreError::Unavailable("circuit breaker open".into()));
        }
        let started = Instant::now();
        let res = tokio::time::timeout(timeout, async {
            let (c, used) = self.conn.get().await.map_err(|e| (e, None))?;
            f(c).await.map_err(|e| (ConnError::from(e), Some(used)))
        })
        .await;
        self.metrics
            .store_duration
            .with_label_values(&[STORE, op])
            .observe(started.elapsed().as_secs_f64());
        let err = match res {
            Ok(Ok(v)) => {
                self.breaker.success();
                return Ok(v);
            }
            Err(_) => StoreError::Timeout,
            Ok(Err((e, used))) => {
                self.conn.on_error(&e, used.as_ref());
                StoreError::Unavailable(e.to_string())
            }
        };
        self.breaker.failure();
        self.count(op, "error");
        self.metrics
            .store_errors
            .with_label_values(&[STORE, op])
            .inc();
        Err(err)
    }

    fn count(&self, op: &str, result: &str) {
        self.metrics
            .store_ops
            .with_label_values(&[STORE, op, result])
            .inc();
    }

    /// How many times the invalidation subscription has been made (tests, health).
    pub fn subscriptions(&self) -> u64 {
        self.subscriptions.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many times the lock-release subscription has been made (tests, health).
    pub fn release_subscriptions(&self) -> u64 {
        self.release_subscriptions
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Publish a message on the invalidation channel.
    pub async fn publish(&self, payload: Vec<u8>) -> Result<(), StoreError> {
        self.publish_on(self.channel(), payload).await
    }

    /// Publish `payload` on `ch`.
    pub(crate) async fn publish_on(&self, ch: String, payload: Vec<u8>) -> Result<(), StoreError> {
        self.run("publish", self.cfg.timeout(), |mut c| async move {
            redis::cmd("PUBLISH")
                .arg(ch)
                .arg(payload)
                .query_async::<i64>(&mut c)
                .await
        })
        .await
        .map(|_| ())
    }

    /// Deliver every message on the invalidation channel to `on_message`, for
    /// as long as the store lives. Each time the subscription is (re)made,
    /// `on_subscribed` runs first: messages may have been missed while this
    /// process was not subscribed (including before the first subscription).
    /// See [`pubsub`] for when it is made again and [`RedisStore::subscribed`].
    pub fn subscribe(
        self: &Arc<Self>,
        on_message: impl Fn(&[u8]) + Send + Sync + 'static,
        on_subscribed: impl Fn() + Send + Sync + 'static,
    ) {
        self.subscribe_with(on_message, on_subscribed, || {});
    }

    /// [`RedisStore::subscribe`], and `on_lost` runs whenever a subscription
    /// made is given up (from then on messages may be missed).
    pub fn subscribe_with(
        self: &Arc<Self>,
        on_message: impl Fn(&[u8]) + Send + Sync + 'static,
        on_subscribed: impl Fn() + Send + Sync + 'static,
        on_lost: impl Fn() + Send + Sync + 'static,
    ) {
        self.add_channel(pubsub::Handler {
            channel: self.channel(),
            on_message: Box::new(on_message),
            on_subscribed: Box::new(on_subscribed),
            on_lost: Box::new(on_lost),
            count: self.subscriptions.clone(),
        });
    }

    /// The metrics this store reports to.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Wake this replica's lock waiters when another replica releases a fetch
    /// lock (`store::lock`), instead of leaving them to their next poll.
    pub fn watch_lock_releases(self: &Arc<Self>) {
        let releases = self.releases.clone();
        self.add_channel(pubsub::Handler {
            channel: self.release_channel(),
            on_message: Box::new(move |payload| releases.released(payload)),
            on_subscribed: Box::new(|| {}),
            on_lost: Box::new(|| {}),
            count: self.release_subscriptions.clone(),
        });
    }

    /// Every channel is subscribed on a healthy connection to the current
    /// master: messages published now reach this replica.
    pub fn subscribed(&self) -> bool {
        self.subs.live()
    }

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
                self.run("purge", t, |mut c| async move {
                    redis::cmd("DEL").arg(ks).query_async::<u64>(&mut c).await
                })
                .await?
            }
            Purge::Tags(tags) if tags.is_empty() => 0,
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

fn is_auth_error(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(
            e.code(),
            Some("WRONGPASS") | Some("NOAUTH") | Some("NOPERM")
        )
        || e.to_string().contains("WRONGPASS")
}

/// Sentinel mode: subscribe to `+switch-master` on every sentinel and drop the
/// connections as soon as one reports a new master for ours.
async fn watch_switch_master(store: std::sync::Weak<RedisStore>, stop: CancellationToken) {
    let Some(me) = store.upgrade() else { return };
    let (sentinels, name) = me.conn.sentinels();
    let sentinels = sentinels.to_vec();
    let name = name.to_string();
    let t = Duration::from_millis(me.cfg.connect_timeout_ms);
    let conn = me.conn.clone();
    drop(me);
    for s in sentinels {
        let conn = conn.clone();
        let store = store.clone();
        let stop = stop.clone();
        let name = name.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let sub = tokio::time::timeout(t, async {
                    let mut ps = conn.client(s.clone())?.get_async_pubsub().await?;
                    ps.subscribe("+switch-master").await?;
                    RedisResult::Ok(ps)
                })
                .await;
                if let Ok(Ok(ps)) = sub {
                    let mut stream = ps.into_on_message();
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            m = stream.next() => match m {
                                // "<name> <old-ip> <old-port> <new-ip> <new-port>"
                                Some(m) => {
                                    let p = String::from_utf8_lossy(m.get_payload_bytes()).to_string();
                                    if p.split(' ').next() == Some(name.as_str()) {
                                        let Some(me) = store.upgrade() else { return };
                                        me.conn.reset("+switch-master");
                                        // The subscriptions follow at once, not at their next check.
                                        me.subs.renew();
                                    }
                                }
                                None => break,
                            },
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn store(prefix: &str) -> Arc<RedisStore> {
        // Nothing listens on port 1; the store connects lazily.
        let cfg = RedisConfig {
            url: Some("redis://127.0.0.1:1".into()),
            prefix: prefix.into(),
            breaker_failures: 2,
            ..RedisConfig::default()
        };
        RedisStore::new(cfg, Arc::new(Metrics::new()), Arc::new(SystemClock)).unwrap()
    }

    #[tokio::test]
    async fn key_layout() {
        let s = store("ss1");
        let k = CacheKey([0xab; 32]);
        assert_eq!(s.entry_key(&k), format!("ss1:e:{}", "ab".repeat(32)));
        assert_eq!(s.lock_key(&k), format!("ss1:l:{}", "ab".repeat(32)));
        assert_eq!(s.tag_key("chart:7"), "ss1:t:chart:7");
        assert_eq!(s.channel(), "ss1:inv");
    }

    #[tokio::test]
    async fn unreachable_redis_fails_fast_then_skips() {
        let s = store("x");
        let k = CacheKey([1; 32]);
        assert!(s.get(&k).await.is_err());
        assert!(s.get(&k).await.is_err());
        assert_eq!(
            s.breaker().state(),
            super::super::breaker::BreakerState::Open
        );
        let text = String::from_utf8(s.metrics.render()).unwrap();
        assert!(
            text.contains("chartcache_store_breaker_open{store=\"redis\"} 1"),
            "{text}"
        );
        assert!(
            matches!(s.get(&k).await, Err(StoreError::Unavailable(m)) if m.contains("breaker"))
        );
    }
}
