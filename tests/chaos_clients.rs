//! Chaos, client pressure (quick scale): silent connections, slow heads, slow
//! bodies and idle keep-alive next to normal clients; the memory cap under
//! many distinct answers — the real `chartcache` binary on loopback. See
//! RELIABILITY.md.

mod chaos_support;

use chaos_support::{Scale, scenarios_clients};

fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_chartcache"))
}

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
