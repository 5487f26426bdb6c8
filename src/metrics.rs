//! Prometheus metrics. Every metric name lives here; all carry the `chartcache_`
//! prefix and their unit. One `Metrics` value is built at startup and shared
//! (no global statics), so tests can assert on exact counts.
//!
//! Conventions (checked by `deploy/validate.py` and the tests below):
//! - every metric is registered by one of the helpers in [`Metrics::new`]
//!   (`c`, `cv`, `g`, `gv`, `hv`) with its name constant and label list
//!   written out, so the label names can be read from this file;
//! - `status` is always the full HTTP status code (`"503"`), never a class;
//! - a labelled series whose label values are known up front exists from
//!   startup at zero (see `known.rs`), so `rate()` and `increase()` see the
//!   first event and alerts need no `absent()` guards.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const REQUESTS_TOTAL: &str = "chartcache_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "chartcache_request_duration_seconds";
pub const INFLIGHT_REQUESTS: &str = "chartcache_inflight_requests";
pub const UPSTREAM_REQUESTS_TOTAL: &str = "chartcache_upstream_requests_total";
pub const UPSTREAM_ERRORS_TOTAL: &str = "chartcache_upstream_errors_total";
pub const UPSTREAM_DURATION_SECONDS: &str = "chartcache_upstream_duration_seconds";
pub const COALESCED_TOTAL: &str = "chartcache_coalesced_total";
pub const STORE_OPERATIONS_TOTAL: &str = "chartcache_store_operations_total";
pub const STORE_ERRORS_TOTAL: &str = "chartcache_store_errors_total";
pub const STORE_OPERATION_DURATION_SECONDS: &str = "chartcache_store_operation_duration_seconds";
pub const STORE_BREAKER_OPEN: &str = "chartcache_store_breaker_open";
pub const MEMORY_STORE_BYTES: &str = "chartcache_memory_store_bytes";
pub const MEMORY_STORE_ENTRIES: &str = "chartcache_memory_store_entries";
pub const MEMORY_CACHE_BYTES: &str = "chartcache_memory_cache_bytes";
pub const IDENTITY_LOOKUPS_TOTAL: &str = "chartcache_identity_lookups_total";
pub const PURGES_TOTAL: &str = "chartcache_purges_total";
pub const PURGED_ENTRIES_TOTAL: &str = "chartcache_purged_entries_total";
pub const STORED_BYTES_TOTAL: &str = "chartcache_stored_bytes_total";
pub const NOT_STORED_TOTAL: &str = "chartcache_not_stored_total";
pub const BACKGROUND_REFRESHES_TOTAL: &str = "chartcache_background_refreshes_total";
pub const WORKER_CONNECTIONS: &str = "chartcache_worker_connections";
pub const REDIS_CONNECTIONS: &str = "chartcache_redis_connections";
pub const REDIS_SUBSCRIPTION_LIVE: &str = "chartcache_redis_subscription_live";
pub const REDIS_SUBSCRIPTION_LOSSES_TOTAL: &str = "chartcache_redis_subscription_losses_total";
pub const REDIS_CLUSTER_NODES: &str = "chartcache_redis_cluster_nodes";
pub const REDIS_CLUSTER_NODE_UP: &str = "chartcache_redis_cluster_node_up";
pub const REDIS_CLUSTER_NODE_ERRORS_TOTAL: &str = "chartcache_redis_cluster_node_errors_total";
pub const REDIS_CLUSTER_SLOT_MOVES_TOTAL: &str = "chartcache_redis_cluster_slot_moves_total";
pub const REDIS_CLUSTER_REBUILDS_TOTAL: &str = "chartcache_redis_cluster_rebuilds_total";
pub const L1_BYPASSED: &str = "chartcache_l1_bypassed";
pub const INVALIDATION_MESSAGES_TOTAL: &str = "chartcache_invalidation_messages_total";
pub const CONNECTION_DEADLINES_TOTAL: &str = "chartcache_connection_deadlines_total";
pub const BUFFERED_REQUEST_BODY_BYTES: &str = "chartcache_buffered_request_body_bytes";
pub const REFUSED_TOTAL: &str = "chartcache_refused_total";
pub const ASYNC_QUERIES_TOTAL: &str = "chartcache_async_queries_total";
pub const BUILD_INFO: &str = "chartcache_build_info";
pub const MEMORY_STORE_CAPACITY_BYTES: &str = "chartcache_memory_store_capacity_bytes";
pub const MEMORY_STORE_EVICTIONS_TOTAL: &str = "chartcache_memory_store_evictions_total";
pub const CONFIG_RELOADS_TOTAL: &str = "chartcache_config_reloads_total";
pub const CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS: &str =
    "chartcache_config_last_reload_success_timestamp_seconds";
pub const TLS_CERT_EXPIRY_TIMESTAMP_SECONDS: &str = "chartcache_tls_cert_expiry_timestamp_seconds";

/// All metrics of one process.
pub struct Metrics {
    pub registry: Registry,
    /// route, outcome (hit|stale|miss|coalesced|bypass|pass|error), status (code)
    pub requests: IntCounterVec,
    /// route, outcome
    pub request_duration: HistogramVec,
    /// The series of `requests` and `request_duration` for a chart-data hit
    /// answered 200, resolved once: most requests are that, and each
    /// `with_label_values` hashes its labels and reads a locked map.
    pub chart_data_hit: (IntCounter, Histogram),
    /// Requests between their head and their handler's response head.
    pub inflight: IntGauge,
    /// kind (chart|pass|write), status (code, e.g. 200, 502)
    pub upstream_requests: IntCounterVec,
    /// kind, error (connect|timeout|protocol: [`UpstreamFailure`])
    pub upstream_errors: IntCounterVec,
    /// kind
    pub upstream_duration: HistogramVec,
    /// where (local|distributed)
    pub coalesced: IntCounterVec,
    /// store, op, result (hit|miss|ok|error|skipped: breaker open)
    pub store_ops: IntCounterVec,
    /// store, op
    pub store_errors: IntCounterVec,
    /// store, op
    pub store_duration: HistogramVec,
    /// store: 1 while the circuit breaker is open
    pub breaker_open: IntGaugeVec,
    pub memory_bytes: IntGauge,
    pub memory_entries: IntGauge,
    /// `memory.max_bytes`: what `memory_bytes` may reach before evictions
    pub memory_capacity: IntGauge,
    /// cause (size|expired): entries the memory store dropped on its own
    pub memory_evictions: IntCounterVec,
    /// cache (memo|copies): bytes of the other in-process caches of the memory budget
    pub memory_cache_bytes: IntGaugeVec,
    /// result (principal|denied|error|...)
    pub identity_lookups: IntCounterVec,
    /// source (admin|write)
    pub purges: IntCounterVec,
    pub purged_entries: IntCounter,
    pub stored_bytes: IntCounter,
    /// reason ([`crate::policy::NotStorable`])
    pub not_stored: IntCounterVec,
    /// kind (swr|ahead), result (stored|not_stored|error|skipped|inflight|elsewhere|no_credential|async_job)
    pub background_refreshes: IntCounterVec,
    /// worker: open client connections per proxy thread (`server.runtime = "per_core"`)
    pub worker_connections: IntGaugeVec,
    /// set (shared|thread): Redis data connections the store holds open
    pub redis_connections: IntGaugeVec,
    /// 1 while the pub/sub connection is subscribed and answers its checks
    pub redis_subscription_live: IntGauge,
    /// reason (closed|ping_timeout|master_changed|channels_changed)
    pub redis_subscription_losses: IntCounterVec,
    /// role (master|replica): Redis Cluster nodes serving slots, as last read
    pub redis_cluster_nodes: IntGaugeVec,
    /// node (host:port): 1 while the node answers its checks on the cluster
    /// connection (series made when the node is first seen)
    pub redis_cluster_node_up: IntGaugeVec,
    /// node (host:port): checks of the node that failed or timed out
    pub redis_cluster_node_errors: IntCounterVec,
    /// Slots whose master changed between two reads (failover, reshard)
    pub redis_cluster_slot_moves: IntCounter,
    /// Cluster connections dropped and made again after node trouble
    pub redis_cluster_rebuilds: IntCounter,
    /// 1 while the tiered store serves without its L1 (no live subscription)
    pub l1_bypassed: IntGauge,
    /// result (applied|own|unreadable): messages received on `{prefix}:inv`
    pub invalidation_messages: IntCounterVec,
    /// phase (head|body|idle|http2_keepalive): connections ended by a deadline
    pub connection_deadlines: IntCounterVec,
    /// Bytes of chart-data request bodies being received (`server.max_buffered_body_bytes`)
    pub buffered_body_bytes: IntGauge,
    /// reason (max_connections|refusals_busy|body_budget): connections or requests turned away
    pub refused: IntCounterVec,

    // Async queries (GLOBAL_ASYNC_QUERIES).
    /// event (ticket|untracked|wait|wait_timeout|linked|filled|marked_stale):
    /// jobs remembered from `202` answers, POSTs that waited for a job's data
    /// and how that ended, `done` events matched to a job, entries filled
    pub async_queries: IntCounterVec,
    /// version, key_schema: always 1
    pub build_info: IntGaugeVec,
    /// result (success|failure): SIGHUP configuration reloads
    pub config_reloads: IntCounterVec,
    /// Unix time of the last configuration load that took effect (startup included)
    pub config_last_reload_success: IntGauge,
    /// listener (proxy|admin): `notAfter` of the certificate served, Unix seconds
    pub tls_cert_expiry: IntGaugeVec,
}

/// Latency buckets, seconds: sub-millisecond hits up to the longest timeout
/// (`upstream_client.response_timeout_ms`, 120 s by default), so a slow
/// Superset query lands in a bucket rather than only in `+Inf`.
fn buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 90.0, 120.0,
    ]
}

impl Metrics {
    /// Build and register everything, including process metrics, with the
    /// known label values at zero.
    pub fn new() -> Metrics {
        let r = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric registered twice");
            c
        }
        let c = |n: &str, h: &str| reg(&r, IntCounter::new(n, h).unwrap());
        let cv =
            |n: &str, h: &str, l: &[&str]| reg(&r, IntCounterVec::new(Opts::new(n, h), l).unwrap());
        let g = |n: &str, h: &str| reg(&r, IntGauge::new(n, h).unwrap());
        let gv =
            |n: &str, h: &str, l: &[&str]| reg(&r, IntGaugeVec::new(Opts::new(n, h), l).unwrap());
        let hv = |n: &str, h: &str, l: &[&str]| {
            reg(
                &r,
                HistogramVec::new(HistogramOpts::new(n, h).buckets(buckets()), l).unwrap(),
            )
        };
        let requests = cv(
            REQUESTS_TOTAL,
            "Requests by route, cache outcome and status code",
            &["route", "outcome", "status"],
        );
        let request_duration = hv(
            REQUEST_DURATION_SECONDS,
            "Request duration by route and outcome",
            &["route", "outcome"],
        );
        let m = Metrics {
            chart_data_hit: (
                requests.with_label_values(&["chart_data", "hit", "200"]),
                request_duration.with_label_values(&["chart_data", "hit"]),
            ),
            requests,
            request_duration,
            inflight: g(
                INFLIGHT_REQUESTS,
                "Requests in flight (head received, response head not yet sent)",
            ),
            upstream_requests: cv(
                UPSTREAM_REQUESTS_TOTAL,
                "Requests sent to Superset, by kind and Superset's status code",
                &["kind", "status"],
            ),
            upstream_errors: cv(
                UPSTREAM_ERRORS_TOTAL,
                "Failed requests to Superset",
                &["kind", "error"],
            ),
            upstream_duration: hv(
                UPSTREAM_DURATION_SECONDS,
                "Time to Superset's response head",
                &["kind"],
            ),
            coalesced: cv(
                COALESCED_TOTAL,
                "Requests answered by another request's fetch",
                &["where"],
            ),
            store_ops: cv(
                STORE_OPERATIONS_TOTAL,
                "Store operations",
                &["store", "op", "result"],
            ),
            store_errors: cv(
                STORE_ERRORS_TOTAL,
                "Store operation errors",
                &["store", "op"],
            ),
            store_duration: hv(
                STORE_OPERATION_DURATION_SECONDS,
                "Store operation latency",
                &["store", "op"],
            ),
            breaker_open: gv(
                STORE_BREAKER_OPEN,
                "1 while a store's circuit breaker is open",
                &["store"],
            ),
            memory_bytes: g(MEMORY_STORE_BYTES, "Bytes held by the memory store"),
            memory_entries: g(MEMORY_STORE_ENTRIES, "Entries held by the memory store"),
            memory_capacity: g(
                MEMORY_STORE_CAPACITY_BYTES,
                "Bytes the memory store may hold (memory.max_bytes)",
            ),
            memory_evictions: cv(
                MEMORY_STORE_EVICTIONS_TOTAL,
                "Entries the memory store dropped to stay within its capacity (size) or past their stale window (expired)",
                &["cause"],
            ),
            memory_cache_bytes: gv(
                MEMORY_CACHE_BYTES,
                "Bytes held by the canonical memo and the encoding copies",
                &["cache"],
            ),
            identity_lookups: cv(
                IDENTITY_LOOKUPS_TOTAL,
                "Credential lookups at Superset",
                &["result"],
            ),
            purges: cv(PURGES_TOTAL, "Purges by source", &["source"]),
            purged_entries: c(PURGED_ENTRIES_TOTAL, "Entries removed by purges"),
            stored_bytes: c(STORED_BYTES_TOTAL, "Compressed bytes written to the store"),
            not_stored: cv(
                NOT_STORED_TOTAL,
                "Cached-route responses not stored, by reason",
                &["reason"],
            ),
            background_refreshes: cv(
                BACKGROUND_REFRESHES_TOTAL,
                "Background refreshes (stale-while-revalidate, refresh-ahead) by result",
                &["kind", "result"],
            ),
            worker_connections: gv(
                WORKER_CONNECTIONS,
                "Open client connections per proxy thread (server.runtime = per_core)",
                &["worker"],
            ),
            redis_connections: gv(
                REDIS_CONNECTIONS,
                "Redis data connections held open: the set opened with the master (shared) and the proxy threads' own shares (thread)",
                &["set"],
            ),
            redis_subscription_live: g(
                REDIS_SUBSCRIPTION_LIVE,
                "1 while the Redis pub/sub connection (invalidations, lock releases) is subscribed on the current master and answers its checks",
            ),
            redis_subscription_losses: cv(
                REDIS_SUBSCRIPTION_LOSSES_TOTAL,
                "Redis pub/sub subscriptions torn down and made again, by reason",
                &["reason"],
            ),
            redis_cluster_nodes: gv(
                REDIS_CLUSTER_NODES,
                "Redis Cluster nodes serving slots, by role, as last read from the cluster",
                &["role"],
            ),
            redis_cluster_node_up: gv(
                REDIS_CLUSTER_NODE_UP,
                "1 while a Redis Cluster node answers its checks on the cluster connection",
                &["node"],
            ),
            redis_cluster_node_errors: cv(
                REDIS_CLUSTER_NODE_ERRORS_TOTAL,
                "Checks of a Redis Cluster node that failed or timed out",
                &["node"],
            ),
            redis_cluster_slot_moves: c(
                REDIS_CLUSTER_SLOT_MOVES_TOTAL,
                "Redis Cluster slots whose master changed between two reads (failover, reshard)",
            ),
            redis_cluster_rebuilds: c(
                REDIS_CLUSTER_REBUILDS_TOTAL,
                "Redis Cluster connections dropped and made again after node trouble",
            ),
            l1_bypassed: g(
                L1_BYPASSED,
                "1 while the tiered store skips its L1 because purges from other replicas could be missed",
            ),
            invalidation_messages: cv(
                INVALIDATION_MESSAGES_TOTAL,
                "Messages received on the invalidation channel, by result",
                &["result"],
            ),
            connection_deadlines: cv(
                CONNECTION_DEADLINES_TOTAL,
                "Client connections ended by a deadline, by phase",
                &["phase"],
            ),
            buffered_body_bytes: g(
                BUFFERED_REQUEST_BODY_BYTES,
                "Bytes of chart-data request bodies being received",
            ),
            refused: cv(
                REFUSED_TOTAL,
                "Connections or requests turned away at capacity, by reason",
                &["reason"],
            ),
            async_queries: cv(
                ASYNC_QUERIES_TOTAL,
                "Async-query (GLOBAL_ASYNC_QUERIES) jobs and waits, by event",
                &["event"],
            ),
            build_info: gv(
                BUILD_INFO,
                "Always 1: the chartcache version and the cache key schema it computes keys with",
                &["version", "key_schema"],
            ),
            config_reloads: cv(
                CONFIG_RELOADS_TOTAL,
                "Configuration reloads (SIGHUP), by result",
                &["result"],
            ),
            config_last_reload_success: g(
                CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
                "Unix time of the last configuration load that took effect (startup or SIGHUP)",
            ),
            tls_cert_expiry: gv(
                TLS_CERT_EXPIRY_TIMESTAMP_SECONDS,
                "notAfter of the certificate a TLS listener serves, Unix seconds",
                &["listener"],
            ),
            registry: r,
        };
        let schema = itoa::Buffer::new()
            .format(crate::fingerprint::KEY_SCHEMA_VERSION)
            .to_string();
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), &schema])
            .set(1);
        m.config_last_reload_success.set(unix_now());
        known::prime(&m);
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = m.registry.register(Box::new(pc));
        }
        m
    }

    /// Text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Count a configuration reload (SIGHUP) and, when it took effect, its time.
    pub fn config_reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
        if ok {
            self.config_last_reload_success.set(unix_now());
        }
    }

    /// The series of one store's operations, at zero, once the store is known
    /// (`ops`: the operations it runs; see [`known::REDIS_OPS`]).
    pub fn prime_store(&self, store: &str, ops: &[&str]) {
        self.breaker_open.with_label_values(&[store]);
        for op in ops {
            self.store_errors.with_label_values(&[store, op]);
        }
    }

    /// Bring a counter that is kept elsewhere (as a plain atomic, e.g. the
    /// memory store's eviction listener) up to `total`; called at scrape.
    pub fn catch_up(counter: &IntCounter, total: u64) {
        let now = counter.get();
        if total > now {
            counter.inc_by(total - now);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub mod known;

#[cfg(test)]
mod tests;
