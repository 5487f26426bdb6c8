//! Prometheus metrics. Every metric name lives here; all carry the `chartcache_`
//! prefix and their unit. One `Metrics` value is built at startup and shared
//! (no global statics), so tests can assert on exact counts.

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
pub const L1_BYPASSED: &str = "chartcache_l1_bypassed";
pub const INVALIDATION_MESSAGES_TOTAL: &str = "chartcache_invalidation_messages_total";
pub const CONNECTION_DEADLINES_TOTAL: &str = "chartcache_connection_deadlines_total";
pub const BUFFERED_REQUEST_BODY_BYTES: &str = "chartcache_buffered_request_body_bytes";
pub const REFUSED_TOTAL: &str = "chartcache_refused_total";
pub const ASYNC_QUERIES_TOTAL: &str = "chartcache_async_queries_total";

/// All metrics of one process.
pub struct Metrics {
    pub registry: Registry,
    /// route, outcome (hit|stale|miss|coalesced|bypass|pass|error), status
    pub requests: IntCounterVec,
    /// route, outcome
    pub request_duration: HistogramVec,
    /// The series of `requests` and `request_duration` for a chart-data hit
    /// answered 200, resolved once: most requests are that, and each
    /// `with_label_values` hashes its labels and reads a locked map.
    pub chart_data_hit: (IntCounter, Histogram),
    pub inflight: IntGauge,
    /// kind (chart|identity|pass|write|refresh), status class (2xx..5xx)
    pub upstream_requests: IntCounterVec,
    /// kind, error (connect|timeout|protocol)
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
    /// cache (memo|copies): bytes of the other in-process caches of the memory budget
    pub memory_cache_bytes: IntGaugeVec,
    /// result (principal|denied|error)
    pub identity_lookups: IntCounterVec,
    /// source (admin|write)
    pub purges: IntCounterVec,
    pub purged_entries: IntCounter,
    pub stored_bytes: IntCounter,
    /// reason
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
}

fn buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ]
}

impl Metrics {
    /// Build and register everything, including process metrics.
    pub fn new() -> Metrics {
        let r = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric registered twice");
            c
        }
        let cv =
            |n: &str, h: &str, l: &[&str]| reg(&r, IntCounterVec::new(Opts::new(n, h), l).unwrap());
        let hv = |n: &str, h: &str, l: &[&str]| {
            reg(
                &r,
                HistogramVec::new(HistogramOpts::new(n, h).buckets(buckets()), l).unwrap(),
            )
        };
        let requests = cv(
            REQUESTS_TOTAL,
            "Requests by route, cache outcome and status",
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
            inflight: reg(
                &r,
                IntGauge::new(INFLIGHT_REQUESTS, "Requests in flight").unwrap(),
            ),
            upstream_requests: cv(
                UPSTREAM_REQUESTS_TOTAL,
                "Requests sent to Superset",
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
            breaker_open: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        STORE_BREAKER_OPEN,
                        "1 while a store's circuit breaker is open",
                    ),
                    &["store"],
                )
                .unwrap(),
            ),
            memory_bytes: reg(
                &r,
                IntGauge::new(MEMORY_STORE_BYTES, "Bytes held by the memory store").unwrap(),
            ),
            memory_entries: reg(
                &r,
                IntGauge::new(MEMORY_STORE_ENTRIES, "Entries held by the memory store").unwrap(),
            ),
            memory_cache_bytes: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        MEMORY_CACHE_BYTES,
                        "Bytes held by the canonical memo and the encoding copies",
                    ),
                    &["cache"],
                )
                .unwrap(),
            ),
            identity_lookups: cv(
                IDENTITY_LOOKUPS_TOTAL,
                "Credential lookups at Superset",
                &["result"],
            ),
            purges: cv(PURGES_TOTAL, "Purges by source", &["source"]),
            purged_entries: reg(
                &r,
                IntCounter::new(PURGED_ENTRIES_TOTAL, "Entries removed by purges").unwrap(),
            ),
            stored_bytes: reg(
                &r,
                IntCounter::new(STORED_BYTES_TOTAL, "Compressed bytes written to the store")
                    .unwrap(),
            ),
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
            worker_connections: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        WORKER_CONNECTIONS,
                        "Open client connections per proxy thread (server.runtime = per_core)",
                    ),
                    &["worker"],
                )
                .unwrap(),
            ),
            redis_connections: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        REDIS_CONNECTIONS,
                        "Redis data connections held open: the set opened with the master (shared) and the proxy threads' own shares (thread)",
                    ),
                    &["set"],
                )
                .unwrap(),
            ),
            redis_subscription_live: reg(
                &r,
                IntGauge::new(
                    REDIS_SUBSCRIPTION_LIVE,
                    "1 while the Redis pub/sub connection (invalidations, lock releases) is subscribed on the current master and answers its checks",
                )
                .unwrap(),
            ),
            redis_subscription_losses: cv(
                REDIS_SUBSCRIPTION_LOSSES_TOTAL,
                "Redis pub/sub subscriptions torn down and made again, by reason",
                &["reason"],
            ),
            l1_bypassed: reg(
                &r,
                IntGauge::new(
                    L1_BYPASSED,
                    "1 while the tiered store skips its L1 because purges from other replicas could be missed",
                )
                .unwrap(),
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
            buffered_body_bytes: reg(
                &r,
                IntGauge::new(
                    BUFFERED_REQUEST_BODY_BYTES,
                    "Bytes of chart-data request bodies being received",
                )
                .unwrap(),
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
            registry: r,
        };
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Status class label (`2xx`, ...), without allocating.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Start a histogram timer helper.
pub fn observe(h: &Histogram, started: std::time::Instant) {
    h.observe(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_all_names() {
        let m = Metrics::new();
        m.requests
            .with_label_values(&["chart_data", "hit", "200"])
            .inc();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(
            "chartcache_requests_total{outcome=\"hit\",route=\"chart_data\",status=\"200\"} 1"
        ));
    }
}
