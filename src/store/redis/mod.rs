//! The Redis store: entries shared by every replica.
//!
//! Keys: `{prefix}:e:{keyhex}` holds `Entry::encode()` with a PX TTL reaching
//! `stale_until`; `{prefix}:t:{tag}` is the set of key hexes carrying a tag (its
//! TTL is raised to the longest member's); `{prefix}:l:{keyhex}` are fetch locks
//! ([`crate::store::lock`]); `{prefix}:j:{job_id}` and `{prefix}:u:{urlhex}`
//! are async-query jobs ([`jobs`]); channel `{prefix}:inv` carries invalidations and
//! `{prefix}:rel` lock releases, both on one subscription ([`pubsub`]).
//! With Redis Cluster the key hex and the tag are hash tags
//! (`chartcache:e:{ab12…}`): an entry and its lock share a slot, and each tag
//! set has its own ([`cluster`]).
//!
//! Every operation is bounded by `timeout_ms` and goes through a circuit
//! breaker: a slow or dead Redis turns into misses, never into client errors.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisResult, Script};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::StoreError;
use super::breaker::Breaker;
use crate::clock::SharedClock;
use crate::key::CacheKey;
use crate::metrics::Metrics;

pub mod cluster;
pub mod conn;
mod entries;
mod jobs;
pub mod lock;
pub mod pubsub;
mod slots;
mod watch;

use crate::config::RedisConfig;
use cluster::Conn;
use conn::{ConnError, Connector};

const STORE: &str = "redis";

/// Redis-backed store. Cheap to share as `Arc`.
pub struct RedisStore {
    cfg: RedisConfig,
    conn: Arc<Connector>,
    /// Redis Cluster: keys carry hash tags, multi-key work goes per slot.
    cluster: bool,
    breaker: Breaker,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    put_script: Script,
    purge_tags_script: Script,
    tag_add_script: Script,
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
        let conn = Connector::new(
            &cfg,
            &metrics.redis_connections,
            &metrics.redis_cluster_rebuilds,
        )?;
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
            cluster: conn.is_cluster(),
            conn,
            breaker,
            metrics,
            clock,
            put_script: Script::new(entries::PUT_SCRIPT),
            purge_tags_script: Script::new(entries::PURGE_TAGS_SCRIPT),
            tag_add_script: Script::new(slots::TAG_ADD_SCRIPT),
            unlock_script: Script::new(lock::UNLOCK_SCRIPT),
            renew_script: Script::new(lock::RENEW_SCRIPT),
            _stop_guard: stop.clone().drop_guard(),
            stop,
            cfg,
        });
        if store.cluster {
            tokio::spawn(watch::watch_cluster(
                Arc::downgrade(&store),
                store.stop.clone(),
            ));
        }
        if store.conn.is_sentinel() {
            tokio::spawn(watch::watch_switch_master(
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
        if self.cluster {
            let seeds = self
                .cfg
                .cluster_seeds()
                .map(|s| s.nodes)
                .unwrap_or_default();
            let seeds: Vec<String> = seeds.iter().map(|(h, p)| format!("{h}:{p}")).collect();
            return format!("cluster {}", seeds.join(","));
        }
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

    // Standalone and sentinel keep the key names they always had (a new
    // schema would empty every cache on rollout); in a cluster the hex and
    // the tag are hash tags, so an entry and its lock share a slot.
    pub(crate) fn entry_key(&self, key: &CacheKey) -> String {
        self.key_of('e', &key.to_hex())
    }
    fn tag_key(&self, tag: &str) -> String {
        self.key_of('t', tag)
    }
    pub(crate) fn lock_key(&self, key: &CacheKey) -> String {
        self.key_of('l', &key.to_hex())
    }
    fn key_of(&self, kind: char, id: &str) -> String {
        if self.cluster {
            format!("{}:{kind}:{{{id}}}", self.cfg.prefix)
        } else {
            format!("{}:{kind}:{id}", self.cfg.prefix)
        }
    }
    /// Cluster mode is in use (tests, health).
    pub fn is_cluster(&self) -> bool {
        self.cluster
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
        F: FnOnce(Conn) -> Fut,
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
}

fn is_auth_error(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(
            e.code(),
            Some("WRONGPASS") | Some("NOAUTH") | Some("NOPERM")
        )
        || e.to_string().contains("WRONGPASS")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::store::Store;

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
    async fn cluster_key_layout_shares_slots() {
        let cfg = RedisConfig {
            cluster_nodes: vec!["127.0.0.1:1".into()],
            prefix: "cc".into(),
            ..RedisConfig::default()
        };
        let s = RedisStore::new(cfg, Arc::new(Metrics::new()), Arc::new(SystemClock)).unwrap();
        let k = CacheKey([0xab; 32]);
        let e = s.entry_key(&k);
        assert_eq!(e, format!("cc:e:{{{}}}", "ab".repeat(32)));
        assert_eq!(
            cluster::slot(e.as_bytes()),
            cluster::slot(s.lock_key(&k).as_bytes())
        );
        assert_eq!(s.tag_key("chart:7"), "cc:t:{chart:7}");
        assert_eq!(s.channel(), "cc:inv");
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
