//! Chaos, Redis faults (quick scale): the Sentinel master killed and frozen,
//! a standalone Redis killed and restarted — real `redis-server` processes
//! and the real `chartcache` binary on loopback. See RELIABILITY.md.

use crate::support::{Scale, scenarios_redis};

use crate::bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_killed_under_load() {
    scenarios_redis::sentinel_master_killed(bin(), &Scale::quick())
        .await
        .assert_goals();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_frozen_under_load_and_purges_still_reach_every_replica() {
    scenarios_redis::sentinel_master_frozen(bin(), &Scale::quick())
        .await
        .assert_goals();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load() {
    scenarios_redis::redis_killed_restarted(bin(), &Scale::quick())
        .await
        .assert_goals();
}
