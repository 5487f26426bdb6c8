//! Topology changes of a real Redis Cluster under load, through two
//! Redis-only chartcache replicas (every request reads Redis): a master
//! killed (SIGKILL) and replaced by its replica, and slots migrated with
//! `redis-cli --cluster reshard`. Clients see 200s only; afterwards every
//! entry is served from the cluster again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::redis_cluster::{body, metric, start};
use crate::support::redis_cluster::*;
use crate::support::*;
use chartcache::config::RedisConfig;
use http::Method;

const KEYS: u64 = 40;
const WORKERS: usize = 12;

fn cfg(cluster: &RedisCluster, prefix: &str) -> RedisConfig {
    RedisConfig {
        cluster_nodes: cluster.seeds(),
        prefix: prefix.into(),
        tiered: false,
        timeout_ms: 250,
        breaker_cooldown_ms: 200,
        ..RedisConfig::default()
    }
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    ok: u64,
    failed: Vec<String>,
    /// Latencies (ms) of the requests made while `during` was set.
    during: Vec<f64>,
}

/// Requests from `WORKERS` clients over `KEYS` keys and both replicas until
/// `stop`; latencies sampled while `event` is set.
async fn load(urls: Vec<String>, stop: Arc<AtomicBool>, event: Arc<AtomicBool>) -> Seen {
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (urls, stop, event) = (urls.clone(), stop.clone(), event.clone());
        tasks.push(tokio::spawn(async move {
            let c = TestClient::new();
            let mut seen = Seen::default();
            let mut n = w as u64;
            while !stop.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let key = (n >> 33) % KEYS;
                let url = &urls[((n >> 20) % urls.len() as u64) as usize];
                let started = Instant::now();
                let r = c
                    .send(
                        Method::POST,
                        url,
                        &[
                            ("authorization", "Bearer admin-token"),
                            ("content-type", "application/json"),
                        ],
                        serde_json::to_vec(&body(key)).unwrap(),
                    )
                    .await;
                if event.load(Ordering::Relaxed) {
                    seen.during.push(started.elapsed().as_secs_f64() * 1e3);
                }
                if r.status == 200 {
                    seen.ok += 1;
                } else {
                    seen.failed.push(format!("{} {:?}", r.status, r.body));
                }
            }
            seen
        }));
    }
    let mut all = Seen::default();
    for t in tasks {
        let s = t.await.unwrap();
        all.ok += s.ok;
        all.failed.extend(s.failed);
        all.during.extend(s.during);
    }
    all
}

/// `check` holds within 10 s (the topology is read once a second).
async fn eventually(check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "metrics never showed the change");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn p99(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Every key is a hit on `p` again within the bound (stored again after a
/// miss where the entry was lost with its master).
/// Print what the load saw during the event `what` (with `note`) and
/// require that no request failed.
fn no_failures(mut seen: Seen, what: &str, note: String) -> Seen {
    eprintln!(
        "{what}: {} requests, {} non-200, p99 during the event {:.1} ms, {note}",
        seen.ok + seen.failed.len() as u64,
        seen.failed.len(),
        p99(&mut seen.during),
    );
    assert!(
        seen.failed.is_empty(),
        "{:?}",
        &seen.failed[..seen.failed.len().min(5)]
    );
    seen
}

async fn all_hits_again(p: &Proxy, within: Duration) {
    let c = TestClient::new();
    let deadline = Instant::now() + within;
    for k in 0..KEYS {
        loop {
            let r = c.chart(p, "admin-token", &body(k)).await;
            assert_eq!(r.status, 200);
            if r.cache_status().contains("hit") {
                break;
            }
            assert!(Instant::now() < deadline, "key {k} never a hit again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_costs_no_request() {
    let mut cluster = RedisCluster::start(&[]).await;
    let up = Upstream::start().await;
    let (a, _) = start(&up, cfg(&cluster, "kill")).await;
    let (b, b_store) = start(&up, cfg(&cluster, "kill")).await;
    all_hits_again(&a, Duration::from_secs(10)).await;
    let (stop, event) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let urls = vec![a.url("/api/v1/chart/data"), b.url("/api/v1/chart/data")];
    let running = tokio::spawn(load(urls, stop.clone(), event.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let victim = cluster.masters().await[0];
    event.store(true, Ordering::Relaxed);
    let killed = Instant::now();
    cluster.kill(victim);
    // Its replica takes over after the node timeout.
    cluster.wait_ok(Duration::from_secs(20)).await;
    let replaced = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    event.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let seen = no_failures(
        running.await.unwrap(),
        "master kill",
        format!("replaced after {replaced:?}"),
    );
    assert!(seen.ok > 100, "{} requests", seen.ok);
    // The killed master's slots are served by its replica: entries are read
    // and written there again, and purges reach both replicas.
    all_hits_again(&a, Duration::from_secs(20)).await;
    all_hits_again(&b, Duration::from_secs(20)).await;
    assert!(b_store.subscribed());
    // The metrics saw it: the killed node's checks fail, its slots changed master.
    let killed = format!("node=\"127.0.0.1:{}\"", cluster.nodes[victim].port);
    eventually(|| {
        metric(&a, "chartcache_redis_cluster_slot_moves_total", "") >= 1.0
            && metric(&a, "chartcache_redis_cluster_node_errors_total", &killed) >= 1.0
            && metric(&a, "chartcache_redis_cluster_nodes", "role=\"master\"") == 3.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_resharded_under_load_cost_no_request() {
    let cluster = RedisCluster::start(&[]).await;
    let up = Upstream::start().await;
    let (a, _) = start(&up, cfg(&cluster, "resh")).await;
    let (b, _) = start(&up, cfg(&cluster, "resh")).await;
    all_hits_again(&a, Duration::from_secs(10)).await;
    let masters = cluster.masters().await;
    let (from, to) = (cluster.id(masters[0]).await, cluster.id(masters[1]).await);
    let (stop, event) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let urls = vec![a.url("/api/v1/chart/data"), b.url("/api/v1/chart/data")];
    let running = tokio::spawn(load(urls, stop.clone(), event.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    event.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut cmd = cluster.reshard_command(&from, &to, 2_000);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("redis-cli reshard"))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "reshard: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    event.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    no_failures(
        running.await.unwrap(),
        "reshard of 2000 slots",
        format!("took {took:?}"),
    );
    // The slots moved with their entries: all still served from the cluster.
    let table = cluster.node_table().await;
    let to_node = table.iter().find(|n| n.id == to).unwrap();
    let served: u32 = to_node
        .slots
        .iter()
        .filter_map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            Some(b.parse::<u32>().ok()? - a.parse::<u32>().ok()? + 1)
        })
        .sum();
    assert!(served >= 5_461 + 2_000, "{:?}", to_node.slots);
    let queries = up.chart_queries();
    all_hits_again(&a, Duration::from_secs(10)).await;
    all_hits_again(&b, Duration::from_secs(10)).await;
    assert_eq!(
        up.chart_queries(),
        queries,
        "entries moved with their slots"
    );
    eventually(|| metric(&a, "chartcache_redis_cluster_slot_moves_total", "") >= 2_000.0).await;
}
