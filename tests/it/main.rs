//! chartcache's integration tests, one module per concern, in one binary so
//! the shared harness (`support/`) and the crate are compiled and linked once.
//! Run one module with `cargo test --test it MODULE::` (for example
//! `cargo test --test it redis_store::`).
//!
//! Three suites are binaries of their own because they read process-wide
//! figures that other tests in the same process would change:
//! `tests/streaming.rs` (peak RSS), `tests/redis_tls.rs` (counts the Redis
//! store's connections, sized by `chartcache::worker`'s process-wide thread
//! count, which it leaves unset) and `tests/chaos/` (latency goals under
//! load). Everything here shares the process: that thread count is set to
//! the same value (`support::PROXY_THREADS`, 2) by every test that sets it.

mod async_queries;
mod async_replicas;
mod async_report;
mod cache_path;
mod config_cli;
mod connection_deadlines;
mod deploy_manifests;
mod drain_per_core;
mod guest_token_expiry;
mod identity_outage;
mod keys_invalidation;
mod memory_budget;
mod module_graph;
mod operations;
mod passthrough;
mod readiness;
mod redis_cluster;
mod redis_cluster_events;
mod redis_hostile_entries;
mod redis_invalidation_messages;
mod redis_pubsub_failover;
mod redis_replicas;
mod redis_sentinel;
mod redis_startup;
mod redis_store;
mod security_credentials;
mod security_identity;
mod security_limits;
mod security_tls;
mod support;
mod tiers;
mod tiers_replicas;
mod upstream_keepalive;
