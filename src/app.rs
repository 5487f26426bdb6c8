//! Process-wide state shared by every connection: built once at startup.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use http::HeaderName;

use crate::clock::SharedClock;
use crate::coalesce::Coalescer;
use crate::config::Config;
use crate::identity::IdentityResolver;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::refresh::Refresher;
use crate::respond::Fetched;
use crate::store::SharedStore;
use crate::store::memory::MemoryStore;
use crate::upstream::Upstream;

/// Everything a request needs.
pub struct App {
    /// Reloadable part of the configuration (tiers, rules, limits).
    pub config: ArcSwap<Config>,
    pub policy: ArcSwap<Policy>,
    pub upstream: Upstream,
    pub identity: IdentityResolver,
    /// The store requests read and write (memory, redis or tiered).
    pub store: SharedStore,
    /// The in-process store when one is in use (metrics, sync hit path).
    pub memory: Option<Arc<MemoryStore>>,
    pub coalescer: Arc<Coalescer<Arc<Fetched>>>,
    /// Async-query jobs (GLOBAL_ASYNC_QUERIES) whose data fills their POST's entry.
    pub jobs: Arc<crate::jobs::registry::Jobs>,
    /// Canonical forms of recently seen request bodies (hit-path CPU saver).
    pub canon_memo: crate::fingerprint::memo::CanonMemo,
    /// Uncompressed and gzip copies of entries, for clients whose encoding
    /// an entry does not carry (hit-path CPU and socket saver).
    pub copies: crate::respond::copies::Copies,
    /// Threads for compression and large copies, off the runtime threads.
    pub offload: crate::offload::Offload,
    /// Refresh-ahead of hot entries (and its in-memory credentials).
    pub refresher: Arc<Refresher>,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
    pub guest_header: HeaderName,
    /// False once shutdown began.
    pub accepting: AtomicBool,
    /// Unix ms of the last response received from Superset.
    pub last_upstream_ok_ms: AtomicU64,
    /// TLS for the proxy listener (`server.tls`), built at startup.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// TLS (and client-certificate auth) for the admin listener (`admin.tls`).
    pub admin_tls: Option<tokio_rustls::TlsAcceptor>,
}

impl App {
    /// Build the app with the given store (the memory store when `memory` is set).
    pub fn new(
        cfg: Config,
        store: SharedStore,
        memory: Option<Arc<MemoryStore>>,
        metrics: Arc<Metrics>,
        clock: SharedClock,
    ) -> anyhow::Result<Arc<App>> {
        cfg.validate()?;
        let policy = Policy::from_config(&cfg)?;
        let upstream = Upstream::new(&cfg)?;
        let identity = IdentityResolver::new(&cfg.identity, metrics.clone())?;
        let guest_header = HeaderName::from_bytes(cfg.identity.guest_token_header.as_bytes())?;
        // Unreadable certificates are a startup error, not a runtime surprise.
        let tls = match &cfg.server.tls {
            Some(t) => {
                let expiry = metrics.tls_cert_expiry.with_label_values(&["proxy"]);
                Some(
                    crate::tls::acceptor(t, expiry)
                        .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?,
                )
            }
            None => None,
        };
        let admin_tls = match &cfg.admin.tls {
            Some(t) => {
                let expiry = metrics.tls_cert_expiry.with_label_values(&["admin"]);
                Some(
                    crate::tls::acceptor(t, expiry)
                        .map_err(|e| anyhow::anyhow!("admin.tls: {e}"))?,
                )
            }
            None => None,
        };
        let refresher = Refresher::new(&cfg.refresh_ahead);
        let canon_memo = crate::fingerprint::memo::CanonMemo::new(cfg.cache.canonical_memo_bytes);
        let copies = crate::respond::copies::Copies::new(cfg.cache.raw_copy_bytes);
        let offload = crate::offload::Offload::new(cfg.server.workers())?;
        if !cfg.redis.enabled() {
            warn_memory_only();
        }
        if store.shared().is_some() {
            metrics.prime_store("redis", crate::metrics::known::REDIS_OPS);
            for l in crate::store::redis::pubsub::Lost::all() {
                metrics
                    .redis_subscription_losses
                    .with_label_values(&[l.as_str()]);
            }
        }
        Ok(Arc::new(App {
            config: ArcSwap::from_pointee(cfg),
            policy: ArcSwap::from_pointee(policy),
            upstream,
            identity,
            store,
            memory,
            coalescer: Coalescer::new(),
            jobs: Default::default(),
            canon_memo,
            copies,
            offload,
            refresher,
            metrics,
            clock,
            guest_header,
            accepting: AtomicBool::new(true),
            last_upstream_ok_ms: AtomicU64::new(0),
            tls,
            admin_tls,
        }))
    }

    /// Build with the embedded memory store sized from config.
    pub fn with_memory_store(cfg: Config, clock: SharedClock) -> anyhow::Result<Arc<App>> {
        let mem = Arc::new(MemoryStore::new(cfg.memory.max_bytes, clock.clone()));
        App::new(cfg, mem.clone(), Some(mem), Arc::new(Metrics::new()), clock)
    }

    /// Swap in a new configuration (SIGHUP): tiers, rules, limits, timeouts and
    /// routes take effect for the next request; in-flight requests and open
    /// connections are untouched. Settings bound at startup (listen addresses,
    /// upstream URL and its pool, store sizes) need a restart and are reported.
    /// An invalid configuration is rejected and the old one stays.
    pub fn reload(&self, new: Config) -> anyhow::Result<Vec<&'static str>> {
        new.validate()?;
        let policy = Policy::from_config(&new)?;
        let old = self.config.load();
        let mut needs_restart = Vec::new();
        if old.listen != new.listen {
            needs_restart.push("listen");
        }
        if old.admin_listen != new.admin_listen {
            needs_restart.push("admin_listen");
        }
        if old.upstream != new.upstream {
            needs_restart.push("upstream");
        }
        if old.memory.max_bytes != new.memory.max_bytes {
            needs_restart.push("memory.max_bytes");
        }
        // Sized once at startup.
        if old.cache.canonical_memo_bytes != new.cache.canonical_memo_bytes {
            needs_restart.push("cache.canonical_memo_bytes");
        }
        if old.cache.raw_copy_bytes != new.cache.raw_copy_bytes {
            needs_restart.push("cache.raw_copy_bytes");
        }
        if old.server.worker_threads != new.server.worker_threads {
            needs_restart.push("server.worker_threads");
        }
        if old.server.runtime != new.server.runtime {
            needs_restart.push("server.runtime");
        }
        if old.server.transparent_huge_pages != new.server.transparent_huge_pages {
            needs_restart.push("server.transparent_huge_pages");
        }
        // The resolver (TTLs, cookie and header names, JWT secrets) is built once.
        if serde_json::to_value(&old.identity).ok() != serde_json::to_value(&new.identity).ok() {
            needs_restart.push("identity");
        }
        // Listener TLS is built once; rotated certificate files are picked up
        // without a reload, but other TLS settings need a restart.
        if old.server.tls != new.server.tls {
            needs_restart.push("server.tls");
        }
        if old.admin.tls != new.admin.tls {
            needs_restart.push("admin.tls");
        }
        if old.refresh_ahead.max_concurrent != new.refresh_ahead.max_concurrent {
            needs_restart.push("refresh_ahead.max_concurrent");
        }
        // The pool is built once; only the readiness coupling is read per probe.
        let pool = |c: &Config| {
            let mut u = c.upstream_client.clone();
            u.ready_requires_upstream = false;
            serde_json::to_value(u).ok()
        };
        if pool(&old) != pool(&new) {
            needs_restart.push("upstream_client");
        }
        self.policy.store(Arc::new(policy));
        self.config.store(Arc::new(new));
        Ok(needs_restart)
    }

    /// Record that Superset answered (readiness).
    pub fn upstream_ok(&self) {
        self.last_upstream_ok_ms
            .store(self.clock.now_ms(), Ordering::Relaxed);
    }

    /// Refresh store gauges (called when metrics are scraped).
    pub fn refresh_gauges(&self) {
        if let Some(m) = &self.memory {
            m.sync();
            let (entries, bytes) = m.usage();
            self.metrics.memory_entries.set(entries as i64);
            self.metrics.memory_bytes.set(bytes as i64);
            self.metrics.memory_capacity.set(m.capacity() as i64);
            let (size, expired) = m.evictions();
            let ev = &self.metrics.memory_evictions;
            Metrics::catch_up(&ev.with_label_values(&["size"]), size);
            Metrics::catch_up(&ev.with_label_values(&["expired"]), expired);
        }
        let parts = &self.metrics.memory_cache_bytes;
        parts
            .with_label_values(&["memo"])
            .set(self.canon_memo.bytes() as i64);
        parts
            .with_label_values(&["copies"])
            .set(self.copies.bytes() as i64);
    }
}

/// Memory-only replicas do not see each other's writes and purges: say so at
/// startup, as a warning where replicas are likely (Kubernetes).
fn warn_memory_only() {
    const WHY: &str = "no Redis configured: writes and purges through this process do not reach \
        other replicas, which keep serving old entries for up to their tier's fresh_secs; \
        run one replica or configure redis.url / redis.sentinels";
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        tracing::warn!("{WHY}");
    } else {
        tracing::info!("{WHY}");
    }
}
