//! Chaos, client pressure (quick scale): silent connections, slow heads, slow
//! bodies and idle keep-alive next to normal clients; the memory cap under
//! many distinct answers — the real `chartcache` binary on loopback. See
//! RELIABILITY.md.

use crate::support::{Scale, scenarios_clients};

use crate::bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_next_to_normal_ones() {
    scenarios_clients::slow_clients(bin(), &Scale::quick())
        .await
        .assert_goals();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cap_under_many_distinct_answers() {
    scenarios_clients::memory_cap(bin(), &Scale::quick())
        .await
        .assert_goals();
}
