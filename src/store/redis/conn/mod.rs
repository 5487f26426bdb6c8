//! Connections to the current Redis master: a small fixed set of multiplexed
//! connections (each carries many concurrent, pipelined commands), opened
//! together and replaced together.
//!
//! Why not a checkout pool: a pool that PINGs on every checkout doubles the
//! round trips of a cache hit, and under a burst of misses it opens
//! connections one request at a time, each handshake eating into the 50 ms
//! operation budget. A multiplexed connection needs neither.
//!
//! Cluster ([`super::cluster`]): each connection is a cluster connection that
//! routes every command to its slot's master and follows the cluster's
//! changes itself; nothing here is dropped on a node's errors.
//!
//! Standalone: the configured URL. Sentinel: the master address is
//! asked from the sentinels (first that answers) and confirmed with `ROLE`.
//! Pooled connections to a demoted master stay open and answer `READONLY` (or
//! accept writes that are then lost), so on connection errors, `READONLY`, or a
//! `+switch-master` event the connections are dropped and the master resolved
//! again (standalone: reconnected on connection errors).
//! Resolution runs in a spawned task: a caller waits for it only up to its own
//! operation timeout, and a slow sentinel never makes resolution restart.
//!
//! Each per-core runtime thread ([`crate::worker`]) opens its own share of
//! the connections, so their driver tasks run on the thread that sends the
//! commands. With one shared set, every command would wake the thread that
//! opened it and every answer would wake the caller's thread again. The share
//! is opened in a task of that thread when it first asks, and until it is
//! ready (or if it cannot be opened) the thread uses the set resolution
//! opened, as other threads (the work-stealing runtime, the admin side) do:
//! no request waits for it, and a request's timeout never cuts it short.
//! With per-core threads that shared set is a single connection, so a
//! process holds `connections` (rounded up to a multiple of the threads)
//! plus one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use prometheus::{IntCounter, IntGauge, IntGaugeVec};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError,
    RedisResult,
};

use super::cluster::{Cluster, Conn, addr};

mod nodes;
mod sentinel;
use crate::config::redis::{RedisConfig, RedisConfigError, Topology, redact, split_host_port};
pub use sentinel::role;

/// Why no connection could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnError {
    #[error("{0}")]
    Redis(Arc<RedisError>),
    #[error("no master: {0}")]
    NoMaster(String),
}

impl From<RedisError> for ConnError {
    fn from(e: RedisError) -> Self {
        ConnError::Redis(Arc::new(e))
    }
}

/// Connections handed out in turn, counted in a gauge while held.
struct Set {
    conns: Vec<Conn>,
    next: AtomicUsize,
    held: IntGauge,
}

impl Drop for Set {
    fn drop(&mut self) {
        self.held.sub(self.conns.len() as i64);
    }
}

impl Set {
    fn new(conns: Vec<Conn>, held: &IntGauge) -> Set {
        held.add(conns.len() as i64);
        Set {
            conns,
            next: AtomicUsize::new(0),
            held: held.clone(),
        }
    }

    fn pick(&self) -> Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }
}

/// A per-core thread's own connections: opened once per [`Current`].
#[derive(Default)]
struct Own {
    set: OnceLock<Set>,
    /// An open was started (it may have failed: the thread then keeps using
    /// the shared set until the master is resolved again).
    started: AtomicBool,
}

/// The master currently in use.
pub struct Current {
    /// Opened by resolution; used by threads that are not per-core workers,
    /// and by a worker until its own set is ready (or if it cannot be opened).
    shared: Set,
    /// Per-core worker `i`'s own set, opened on that thread when it first asks.
    per_worker: Vec<Own>,
    pub info: ConnectionInfo,
    /// `host:port`, for logs and tests.
    pub addr: String,
}

enum Mode {
    Standalone(ConnectionInfo),
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master_name: String,
        tls: bool,
        /// Credentials and db for the master.
        data: redis::RedisConnectionInfo,
    },
    Cluster(Box<Cluster>),
}

type Resolving = Shared<BoxFuture<'static, Result<Arc<Current>, ConnError>>>;

/// Hands out connections to the current master.
pub struct Connector {
    mode: Mode,
    current: ArcSwapOption<Current>,
    resolving: Mutex<Option<Resolving>>,
    connections: usize,
    connect_timeout: Duration,
    /// CA bundle / client certificate for TLS connections (`None`: system roots).
    tls: Option<redis::TlsCertificates>,
    /// Cluster mode: when the connections were last dropped for trouble
    /// ([`Connector::rebuild_cluster_if_due`]).
    rebuilt: Mutex<Option<std::time::Instant>>,
    /// `chartcache_redis_cluster_rebuilds_total`
    rebuilds: IntCounter,
    /// Connections held by shared sets and by the threads' own.
    held_shared: IntGauge,
    held_own: IntGauge,
}

impl Connector {
    /// Build from config; connects lazily. `held` counts the connections held,
    /// by set (`shared`, `thread`).
    pub fn new(
        cfg: &RedisConfig,
        held: &IntGaugeVec,
        rebuilds: &IntCounter,
    ) -> Result<Arc<Connector>, RedisConfigError> {
        cfg.validate()?;
        let password = cfg.resolve_password()?;
        let tls = cfg.resolve_tls()?.map(|f| redis::TlsCertificates {
            client_tls: f
                .client
                .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }),
            root_cert: f.ca,
        });
        let bad = |e: RedisError| RedisConfigError::Invalid(e.to_string());
        let mode = if cfg.topology() == Some(Topology::Cluster) {
            Mode::Cluster(Box::new(Cluster::new(cfg, password, tls.clone())?))
        } else if let Some(url) = &cfg.url {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(|e| RedisConfigError::Invalid(format!("url {}: {e}", redact(url))))?;
            let mut settings = info.redis_settings().clone();
            if let Some(u) = &cfg.username {
                settings = settings.set_username(u);
            }
            if let Some(p) = &password {
                settings = settings.set_password(p);
            }
            Mode::Standalone(info.set_redis_settings(settings))
        } else {
            let sentinel_password = cfg.resolve_sentinel_password()?;
            let mut sentinels = Vec::new();
            for s in &cfg.sentinels {
                let (host, port) = split_host_port(s).expect("validated");
                let mut settings = redis::RedisConnectionInfo::default();
                if let Some(u) = &cfg.sentinel_username {
                    settings = settings.set_username(u);
                }
                if let Some(p) = &sentinel_password {
                    settings = settings.set_password(p);
                }
                let info = addr(host, port, cfg.tls)
                    .into_connection_info()
                    .map_err(bad)?;
                sentinels.push(info.set_redis_settings(settings));
            }
            let mut data = redis::RedisConnectionInfo::default().set_db(cfg.db);
            if let Some(u) = &cfg.username {
                data = data.set_username(u);
            }
            if let Some(p) = &password {
                data = data.set_password(p);
            }
            Mode::Sentinel {
                sentinels,
                master_name: cfg.master_name.clone(),
                tls: cfg.tls,
                data,
            }
        };
        Ok(Arc::new(Connector {
            mode,
            current: ArcSwapOption::empty(),
            resolving: Mutex::new(None),
            rebuilt: Mutex::new(None),
            rebuilds: rebuilds.clone(),
            connections: cfg.connections,
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            tls,
            held_shared: held.with_label_values(&["shared"]),
            held_own: held.with_label_values(&["thread"]),
        }))
    }

    /// Sentinel mode is in use.
    pub fn is_sentinel(&self) -> bool {
        matches!(self.mode, Mode::Sentinel { .. })
    }

    /// Cluster mode is in use.
    pub fn is_cluster(&self) -> bool {
        matches!(self.mode, Mode::Cluster(_))
    }

    /// Sentinel connection infos (for the `+switch-master` watcher).
    pub fn sentinels(&self) -> (&[ConnectionInfo], &str) {
        match &self.mode {
            Mode::Sentinel {
                sentinels,
                master_name,
                ..
            } => (sentinels, master_name),
            Mode::Standalone(_) | Mode::Cluster(_) => (&[], ""),
        }
    }

    /// A connection to the current master (a cheap clone of a shared one),
    /// with the set it came from (to report errors against).
    pub async fn get(self: &Arc<Self>) -> Result<(Conn, Arc<Current>), ConnError> {
        let cur = self.current().await?;
        if let Some(i) = crate::worker::index()
            && let Some(own) = cur.per_worker.get(i)
        {
            if let Some(set) = own.set.get() {
                return Ok((set.pick(), cur));
            }
            if !own.started.swap(true, Ordering::Relaxed) {
                self.open_own(cur.clone(), i);
            }
        }
        Ok((cur.shared.pick(), cur))
    }

    /// Open per-core thread `i`'s share of the connections in a task of the
    /// calling thread's runtime, so redis spawns their drivers there too.
    fn open_own(self: &Arc<Self>, cur: Arc<Current>, i: usize) {
        let me = self.clone();
        tokio::spawn(async move {
            let n = me.connections.div_ceil(crate::worker::count().max(1));
            let opened =
                futures_util::future::try_join_all((0..n).map(|_| me.open(cur.info.clone()))).await;
            match opened {
                Ok(conns) => {
                    let _ = cur.per_worker[i].set.set(Set::new(conns, &me.held_own));
                }
                Err(e) => tracing::warn!(
                    master = %cur.addr,
                    error = %e,
                    "cannot open this thread's redis connections; it uses the shared ones"
                ),
            }
        });
    }

    /// The current master, resolving it if needed.
    pub async fn current(self: &Arc<Self>) -> Result<Arc<Current>, ConnError> {
        if let Some(c) = self.current.load_full() {
            return Ok(c);
        }
        let fut = {
            let mut slot = self.resolving.lock().unwrap_or_else(|p| p.into_inner());
            // A resolution may have finished since the check above.
            if let Some(c) = self.current.load_full() {
                return Ok(c);
            }
            match &*slot {
                Some(f) => f.clone(),
                None => {
                    let me = self.clone();
                    let task = tokio::spawn(async move {
                        let res = me.resolve().await;
                        if let Ok(c) = &res {
                            me.current.store(Some(c.clone()));
                        }
                        *me.resolving.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        res
                    });
                    let f = async move {
                        task.await
                            .unwrap_or_else(|e| Err(ConnError::NoMaster(e.to_string())))
                    }
                    .boxed()
                    .shared();
                    *slot = Some(f.clone());
                    f
                }
            }
        };
        fut.await
    }

    /// The address in use, if resolved.
    pub fn current_addr(&self) -> Option<String> {
        self.current.load().as_ref().map(|c| c.addr.clone())
    }

    /// Drop the connections so the next operation resolves the master again.
    pub fn reset(&self, why: &str) {
        self.reset_if(why, None);
    }

    /// Reset only if `used` is still the current set: an operation that failed
    /// on an old set must not drop the fresh one.
    fn reset_if(&self, why: &str, used: Option<&Arc<Current>>) {
        if let (Some(used), Some(cur)) = (used, self.current.load_full())
            && !Arc::ptr_eq(used, &cur)
        {
            return;
        }
        if let Some(old) = self.current.swap(None) {
            tracing::info!(master = %old.addr, why, "dropping redis connections; resolving master again");
        }
    }

    /// Called with every failed operation's error and the set it used.
    pub fn on_error(&self, e: &ConnError, used: Option<&Arc<Current>>) {
        if let (Mode::Cluster(_), ConnError::Redis(re)) = (&self.mode, e) {
            if nodes::node_trouble(re) {
                self.rebuild_cluster_if_due();
            }
            return;
        }
        if let ConnError::Redis(e) = e {
            let readonly = e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                || e.code() == Some("READONLY");
            if readonly || e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
            {
                self.reset_if(
                    if readonly {
                        "READONLY"
                    } else {
                        "connection error"
                    },
                    used,
                );
            }
        } else {
            self.reset_if("no connection", used);
        }
    }

    async fn resolve(&self) -> Result<Arc<Current>, ConnError> {
        let (info, addr_s) = match &self.mode {
            Mode::Standalone(info) => (info.clone(), display_addr(info.addr())),
            Mode::Cluster(c) => {
                let first = c.seeds.first().cloned().ok_or_else(|| {
                    ConnError::NoMaster("no cluster seed nodes configured".into())
                })?;
                let names: Vec<String> = c.seeds.iter().map(|s| display_addr(s.addr())).collect();
                (first, format!("cluster {}", names.join(",")))
            }
            Mode::Sentinel {
                sentinels,
                master_name,
                tls,
                data,
            } => {
                let (host, port) = self.ask_sentinels(sentinels, master_name).await?;
                let info = addr(host.clone(), port, *tls)
                    .into_connection_info()?
                    .set_redis_settings(data.clone());
                self.check_master(&info).await?;
                (info, format!("{host}:{port}"))
            }
        };
        // With per-core threads the shared set only carries the other threads'
        // few commands (admin, startup) and a thread's first ones: one will do.
        let shared = if crate::worker::count() > 0 {
            1
        } else {
            self.connections
        };
        let conns =
            futures_util::future::try_join_all((0..shared).map(|_| self.open(info.clone())))
                .await?;
        tracing::debug!(master = %addr_s, "redis master resolved");
        Ok(Arc::new(Current {
            shared: Set::new(conns, &self.held_shared),
            per_worker: (0..crate::worker::count())
                .map(|_| Own::default())
                .collect(),
            info,
            addr: addr_s,
        }))
    }

    /// A client for `info`, with the configured CA bundle / client
    /// certificate when the address uses TLS.
    pub fn client(&self, info: ConnectionInfo) -> RedisResult<redis::Client> {
        match (&self.tls, info.addr()) {
            (Some(certs), ConnectionAddr::TcpTls { .. }) => {
                redis::Client::build_with_tls(info, certs.clone())
            }
            _ => redis::Client::open(info),
        }
    }

    /// A data connection: to `info` (standalone, sentinel's master), or to
    /// the cluster (`info` unused: the seeds are).
    async fn open(&self, info: ConnectionInfo) -> RedisResult<Conn> {
        match &self.mode {
            Mode::Cluster(c) => Ok(Conn::Cluster(c.client.get_async_connection().await?)),
            _ => Ok(Conn::Single(self.connect(info).await?)),
        }
    }

    async fn connect(&self, info: ConnectionInfo) -> RedisResult<MultiplexedConnection> {
        self.client(info)?
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new().set_connection_timeout(Some(self.connect_timeout)),
            )
            .await
    }
}

fn display_addr(a: &ConnectionAddr) -> String {
    match a {
        ConnectionAddr::Tcp(h, p) => format!("{h}:{p}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
        other => format!("{other:?}"),
    }
}
