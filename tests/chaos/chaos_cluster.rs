//! Chaos, Redis Cluster faults (quick scale): a master killed and 2 000
//! slots resharded under load — a real 3 + 3 cluster and the real
//! `chartcache` binary on loopback. See RELIABILITY.md.

use crate::support::{Scale, scenarios_cluster};

use crate::bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed_under_load() {
    scenarios_cluster::cluster_master_killed(bin(), &Scale::quick())
        .await
        .assert_goals();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_resharded_under_load() {
    scenarios_cluster::cluster_reshard(bin(), &Scale::quick())
        .await
        .assert_goals();
}
