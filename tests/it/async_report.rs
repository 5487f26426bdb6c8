//! Numbers for async queries (GLOBAL_ASYNC_QUERIES) behind chartcache, printed
//! rather than asserted, for comparing releases:
//!
//! ```sh
//! cargo test --test it async_report:: -- --ignored --nocapture
//! ```
//!
//! Two dashboard loads of one chart by 20 browser logins of one user at once
//! (a fake Superset in GAQ mode, jobs of 300 ms): Celery jobs started, tickets
//! handed to another channel, `result_url` GETs reaching Superset, and how
//! the second load was answered. Then the same on three replicas sharing a
//! `redis-server`, each request of a load sent to the next replica in turn
//! (no sticky sessions).

use std::time::{Duration, Instant};

use crate::support::browser::*;
use crate::support::redis_server::RedisProc;
use crate::support::*;

fn report(run: usize, loads: &[Result<Load, String>], up: &Upstream, ms: u128) {
    let foreign = loads
        .iter()
        .filter(|l| matches!(l, Err(e) if e.starts_with("ticket of channel")))
        .count();
    let ok = loads.iter().filter(|l| l.is_ok()).count();
    let hits = loads
        .iter()
        .filter_map(|l| l.as_ref().ok())
        .filter(|l| l.post.cache_status().starts_with("chartcache; hit"))
        .count();
    let tickets = loads
        .iter()
        .filter_map(|l| l.as_ref().ok())
        .filter(|l| l.post.status == 202)
        .count();
    println!(
        "load {run}: {ok}/{} got their data, {foreign} handed another channel's ticket, \
         {tickets} own tickets, {hits} hits; jobs so far {}, result_url GETs upstream {}, {ms} ms",
        loads.len(),
        up.state.gaq.jobs(),
        up.state.gaq.result_gets(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints numbers; run with --ignored --nocapture"]
async fn twenty_logins_two_loads() {
    let up = Upstream::start().await;
    gaq_upstream(&up, Duration::from_millis(300));
    let p = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    for run in 1..=2 {
        let started = Instant::now();
        let loads = stampede(&c, &[&p], 20).await;
        report(run, &loads, &up, started.elapsed().as_millis());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints numbers; run with --ignored --nocapture"]
async fn twenty_logins_two_loads_three_replicas_round_robin() {
    let redis = RedisProc::server(&[]);
    let up = Upstream::start().await;
    gaq_upstream(&up, Duration::from_millis(300));
    let ps = crate::async_replicas::three_replicas(&up, &redis, 30_000).await;
    let urls: Vec<String> = ps.iter().map(|p| p.url("")).collect();
    let c = TestClient::new();
    for run in 1..=2 {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (c, urls) = (c.clone(), urls.clone());
            let b = Browser::new(2, "alice", &format!("ch-{run}-{i:02}"));
            tasks.push(tokio::spawn(async move {
                load_via(&c, &urls, i, &b, &body(false)).await
            }));
        }
        let mut loads = Vec::new();
        for t in tasks {
            loads.push(t.await.unwrap());
        }
        report(run, &loads, &up, started.elapsed().as_millis());
    }
}
