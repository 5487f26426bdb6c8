//! Chaos, Superset faults (quick scale): the upstream answers 500, answers
//! too slowly, or is killed, while stored entries may be served stale on
//! error — the real `chartcache` binary on loopback. See RELIABILITY.md.

use crate::support::{Scale, UpFault, scenarios_upstream};

use crate::bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_500_is_answered_from_stale_entries() {
    scenarios_upstream::upstream_fault(bin(), &Scale::quick(), UpFault::Status500)
        .await
        .assert_goals();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_answered_from_stale_entries() {
    scenarios_upstream::upstream_fault(bin(), &Scale::quick(), UpFault::Slow)
        .await
        .assert_goals();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upstream_is_answered_from_stale_entries() {
    scenarios_upstream::upstream_fault(bin(), &Scale::quick(), UpFault::Killed)
        .await
        .assert_goals();
}
