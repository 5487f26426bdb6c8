//! Label values known before the first event. Their series are created at
//! zero at startup: a counter that appears only with its first increment is
//! invisible to `rate()`/`increase()` for that increment, and an alert on it
//! would need an `absent()` guard.
//!
//! Labels that come from an enum are listed through a `match` on the enum,
//! so a new variant does not compile until it is listed here too.

use super::Metrics;
use crate::deadline::{Deadline, Refusal};
use crate::error::UpstreamFailure;
use crate::policy::NotStorable;

/// `kind` of requests to Superset (`proxy::send`'s callers).
pub const UPSTREAM_KINDS: &[&str] = &["chart", "pass", "write"];
/// `where` of coalesced requests.
pub const COALESCED_WHERE: &[&str] = &["local", "distributed"];
/// `op` of the Redis store's operations (`store_errors`, `breaker_open`).
pub const REDIS_OPS: &[&str] = &[
    "get", "put", "purge", "delete", "publish", "lock", "renew", "unlock",
];
/// `role` of Redis Cluster nodes. Their `node` labels (host:port) are
/// known only once the cluster is read: those series are made at zero then.
pub const CLUSTER_ROLES: &[&str] = &["master", "replica"];
/// `source` of purges.
pub const PURGE_SOURCES: &[&str] = &["admin", "write"];
/// `kind` and `result` of background refreshes.
pub const REFRESH_KINDS: &[&str] = &["swr", "ahead"];
pub const REFRESH_RESULTS: &[&str] = &[
    "stored",
    "not_stored",
    "error",
    "skipped",
    "inflight",
    "elsewhere",
    "no_credential",
    "async_job",
];

/// `chartcache_async_queries_total{event}` (see `proxy/async_query.rs`).
pub const ASYNC_EVENTS: &[&str] = &[
    "ticket",
    "untracked",
    "wait",
    "wait_timeout",
    "linked",
    "filled",
    "marked_stale",
    "remote_linked",
    "remote_filled",
    "remote_woken",
    "remote_unknown",
];
/// `cause` of memory-store evictions.
pub const EVICTION_CAUSES: &[&str] = &["size", "expired"];

fn not_storable() -> [NotStorable; 7] {
    use NotStorable::*;
    let all = [Status, Async, NoStore, NotJson, Encoded, TooLarge, Bypass];
    for r in all {
        match r {
            Status | Async | NoStore | NotJson | Encoded | TooLarge | Bypass => {}
        }
    }
    all
}

fn deadlines() -> [Deadline; 4] {
    use Deadline::*;
    let all = [Head, Body, Idle, Http2KeepAlive];
    for d in all {
        match d {
            Head | Body | Idle | Http2KeepAlive => {}
        }
    }
    all
}

fn refusals() -> [Refusal; 3] {
    use Refusal::*;
    let all = [MaxConnections, RefusalsBusy, BodyBudget];
    for r in all {
        match r {
            MaxConnections | RefusalsBusy | BodyBudget => {}
        }
    }
    all
}

fn upstream_failures() -> [UpstreamFailure; 3] {
    use UpstreamFailure::*;
    for f in UpstreamFailure::ALL {
        match f {
            Connect | Timeout | Protocol => {}
        }
    }
    UpstreamFailure::ALL
}

/// Create every known series at zero. Store-specific series (`breaker_open`,
/// `store_errors`, the Redis subscription losses) are created when the store
/// is built: see [`Metrics::prime_store`] and `App::new`.
pub(super) fn prime(m: &Metrics) {
    for kind in UPSTREAM_KINDS {
        for f in upstream_failures() {
            m.upstream_errors.with_label_values(&[kind, f.as_str()]);
        }
    }
    for w in COALESCED_WHERE {
        m.coalesced.with_label_values(&[w]);
    }
    for r in not_storable() {
        m.not_stored.with_label_values(&[r.as_str()]);
    }
    for d in deadlines() {
        m.connection_deadlines.with_label_values(&[d.as_str()]);
    }
    for r in refusals() {
        m.refused.with_label_values(&[r.as_str()]);
    }
    for r in CLUSTER_ROLES {
        m.redis_cluster_nodes.with_label_values(&[r]);
    }
    for s in PURGE_SOURCES {
        m.purges.with_label_values(&[s]);
    }
    for k in REFRESH_KINDS {
        for r in REFRESH_RESULTS {
            m.background_refreshes.with_label_values(&[k, r]);
        }
    }
    for c in EVICTION_CAUSES {
        m.memory_evictions.with_label_values(&[c]);
    }
    for r in ["success", "failure"] {
        m.config_reloads.with_label_values(&[r]);
    }
    for e in ASYNC_EVENTS {
        m.async_queries.with_label_values(&[e]);
    }
}
