//! The fault-injection ("chaos") suite: real processes on loopback — the
//! `chartcache` binary, `redis-server` and sentinels, a Superset-shaped
//! upstream — with faults injected by signal (SIGKILL, SIGSTOP, SIGTERM,
//! SIGHUP to the pids the suite started, never by name) while keep-alive
//! clients of two users send chart-data requests.
//!
//! Each scenario is bounded in time and count and returns a [`Report`]:
//! requests, non-200 answers, wrong-user answers, p50/p99 before/during/after
//! the fault, and the goals checked. The same scenarios run quick (a few
//! seconds each, in `cargo test --test chaos`: `tests/chaos/chaos_*.rs`) and
//! long (the release build, `loadtests/chaos.sh`), at the [`Scale`] given.

#![allow(dead_code)]

pub mod load;
pub mod procs;
pub mod proxy;
pub mod redis;
pub mod report;
pub mod scenarios_clients;
pub mod scenarios_cluster;
pub mod scenarios_process;
pub mod scenarios_redis;
pub mod scenarios_upstream;
pub mod upstream;

use std::time::Duration;

pub use report::Report;

/// How long and how hard each scenario runs.
#[derive(Debug, Clone)]
pub struct Scale {
    pub name: &'static str,
    /// Load before the fault, during it (beyond the fault's own length), after it.
    pub before: Duration,
    pub during: Duration,
    pub after: Duration,
    /// Keep-alive load clients and distinct chart requests.
    pub conns: usize,
    pub keys: u64,
    /// SIGTERM rounds with a slow request in flight.
    pub sigterm_rounds: usize,
    /// SIGHUPs sent under load.
    pub sighups: usize,
    /// Slow connections of each kind, and the bound within which the proxy
    /// must have closed every one of them.
    pub slow_per_kind: usize,
    pub slow_close_bound: Duration,
    /// Configuration the slow-client scenario runs with: shorter deadlines
    /// than the defaults at the quick scale, so it ends in seconds.
    pub slow_toml: &'static str,
    /// Distinct ~20 KB answers pushed through a memory store of this size.
    pub mem_entries: u64,
    pub mem_cap_bytes: u64,
}

impl Scale {
    /// A few seconds per scenario: for `cargo test`.
    pub fn quick() -> Scale {
        Scale {
            name: "quick",
            before: Duration::from_millis(1200),
            during: Duration::from_millis(1500),
            after: Duration::from_millis(1200),
            conns: 6,
            keys: 12,
            sigterm_rounds: 2,
            sighups: 10,
            slow_per_kind: 10,
            slow_close_bound: Duration::from_secs(6),
            slow_toml: "[server]\nheader_read_timeout_ms = 3000\nbody_read_timeout_ms = 3000\nidle_timeout_ms = 3000\n",
            mem_entries: 2_000,
            mem_cap_bytes: 8 << 20,
        }
    }

    /// Minutes in all: for `loadtests/chaos.sh` against the release build.
    pub fn long() -> Scale {
        Scale {
            name: "long",
            before: Duration::from_secs(5),
            during: Duration::from_secs(8),
            after: Duration::from_secs(5),
            conns: 24,
            keys: 200,
            sigterm_rounds: 6,
            sighups: 50,
            slow_per_kind: 100,
            // The defaults: head 10 s, body 30 s.
            slow_close_bound: Duration::from_secs(35),
            slow_toml: "",
            mem_entries: 20_000,
            mem_cap_bytes: 64 << 20,
        }
    }

    /// The load every scenario runs next to its fault.
    pub fn load(&self, targets: &[String]) -> load::LoadSpec {
        let mut s = load::LoadSpec::new(&targets[0]);
        s.targets = targets.to_vec();
        s.conns = self.conns;
        s.keys = self.keys;
        s
    }
}

/// Every scenario by name, for the long runner.
pub const SCENARIOS: &[&str] = &[
    "sentinel_master_killed",
    "sentinel_master_frozen",
    "redis_killed_restarted",
    "cluster_master_killed",
    "cluster_reshard",
    "sigterm_in_flight",
    "sighup_under_load",
    "upstream_500",
    "upstream_slow",
    "upstream_killed",
    "slow_clients",
    "memory_cap",
];

/// Run one scenario by name.
pub async fn run(name: &str, bin: &std::path::Path, scale: &Scale) -> Option<Report> {
    Some(match name {
        "sentinel_master_killed" => scenarios_redis::sentinel_master_killed(bin, scale).await,
        "sentinel_master_frozen" => scenarios_redis::sentinel_master_frozen(bin, scale).await,
        "redis_killed_restarted" => scenarios_redis::redis_killed_restarted(bin, scale).await,
        "cluster_master_killed" => scenarios_cluster::cluster_master_killed(bin, scale).await,
        "cluster_reshard" => scenarios_cluster::cluster_reshard(bin, scale).await,
        "sigterm_in_flight" => scenarios_process::sigterm_in_flight(bin, scale).await,
        "sighup_under_load" => scenarios_process::sighup_under_load(bin, scale).await,
        "upstream_500" => scenarios_upstream::upstream_fault(bin, scale, UpFault::Status500).await,
        "upstream_slow" => scenarios_upstream::upstream_fault(bin, scale, UpFault::Slow).await,
        "upstream_killed" => scenarios_upstream::upstream_fault(bin, scale, UpFault::Killed).await,
        "slow_clients" => scenarios_clients::slow_clients(bin, scale).await,
        "memory_cap" => scenarios_clients::memory_cap(bin, scale).await,
        _ => return None,
    })
}

pub use scenarios_upstream::UpFault;

/// Sleep without blocking the runtime.
pub async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}
