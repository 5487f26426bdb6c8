//! Chaos, process signals (quick scale): SIGTERM with requests in flight on
//! every proxy thread, SIGHUP reloads under load — the real `chartcache`
//! binary on loopback. See RELIABILITY.md.

use crate::support::{Scale, scenarios_process};

use crate::bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_request_in_flight_on_every_thread() {
    scenarios_process::sigterm_in_flight(bin(), &Scale::quick())
        .await
        .assert_goals();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_under_load_lose_nothing() {
    scenarios_process::sighup_under_load(bin(), &Scale::quick())
        .await
        .assert_goals();
}
