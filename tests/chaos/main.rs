//! The fault-injection ("chaos") suite at quick scale: real `chartcache`,
//! `redis-server` and sentinel processes on loopback, faults injected by
//! signal while keep-alive clients of two users send chart-data requests
//! (`support/` says how; RELIABILITY.md what each scenario guarantees).
//!
//! A binary of its own, apart from `tests/it`: each scenario checks latency
//! goals (p99 before, during and after its fault), which the rest of the
//! integration tests running next to it on the same cores would distort.
//! The long scale of the same scenarios is `loadtests/chaos.sh`.

mod chaos_clients;
mod chaos_cluster;
mod chaos_process;
mod chaos_redis;
mod chaos_upstream;
mod support;

/// The `chartcache` binary under test.
fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_chartcache"))
}
