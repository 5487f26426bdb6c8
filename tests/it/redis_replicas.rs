//! Several chartcache instances sharing one real Redis: cross-replica
//! coalescing, L2 hits, purges reaching every replica's L1, and serving
//! through a Redis outage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::redis_server::*;
use crate::support::*;
use chartcache::app::App;
use chartcache::clock::{SharedClock, SystemClock};
use chartcache::config::RedisConfig;
use chartcache::metrics::Metrics;
use chartcache::store::setup;
use http::Method;

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";

/// A chartcache instance on the store `setup::build` picks for `redis`.
async fn start(up: &Upstream, redis: RedisConfig) -> Proxy {
    Proxy::expect_threads();
    let mut cfg = test_config(&up.url());
    cfg.redis = redis;
    let metrics = Arc::new(Metrics::new());
    let clock: SharedClock = Arc::new(SystemClock);
    let tiered = cfg.redis.tiered;
    let built = setup::build(&cfg, metrics.clone(), clock.clone())
        .await
        .unwrap();
    // A tiered replica clears its L1 when its invalidation subscription is
    // made: wait for that before filling it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tiered && built.redis.as_ref().unwrap().subscriptions() == 0 {
        assert!(Instant::now() < deadline, "no invalidation subscription");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Proxy::start_app(App::new(cfg, built.store, built.memory, metrics, clock).unwrap()).await
}

fn redis_cfg(url: String, tiered: bool) -> RedisConfig {
    RedisConfig {
        url: Some(url),
        tiered,
        ..RedisConfig::default()
    }
}

/// The fixture body with a distinct row limit: a distinct cache key per `i`.
fn body(i: u64) -> serde_json::Value {
    let mut b = chart_body(BIGNUMBER);
    b["queries"][0]["row_limit"] = serde_json::json!(1000 + i);
    b
}

fn metric(p: &Proxy, name: &str, labels: &str) -> f64 {
    let text = String::from_utf8(p.app.metrics.render()).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_times_100_identical_misses_make_one_upstream_query() {
    let r = RedisProc::server(&[]);
    let up = Upstream::start().await;
    // Slow enough that all 300 requests arrive while the first fetch runs,
    // with room for a loaded CI machine (Redis round trips of 25 ms and more).
    up.set_delay(Duration::from_millis(1_000));
    // This test is about election, not timeouts: on a loaded machine 300
    // requests at once can push a Redis round trip past 50 ms, and a timed-out
    // lock means "fetch yourself" by design. Give operations room.
    let generous = RedisConfig {
        timeout_ms: 2_000,
        ..redis_cfg(r.url(), true)
    };
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(start(&up, generous.clone()).await);
    }
    let c = TestClient::new();
    let b = body(1);
    // Warm identity on each replica so the requests meet at the cache, not at /me.
    for p in &proxies {
        let r = c.chart(p, "admin-token", &body(999)).await;
        assert_eq!(r.status, 200);
    }
    let before = up.chart_queries();
    let mut tasks = Vec::new();
    for p in &proxies {
        for _ in 0..100 {
            let (c, url, b) = (c.clone(), p.url("/api/v1/chart/data"), b.clone());
            tasks.push(tokio::spawn(async move {
                c.send(
                    Method::POST,
                    &url,
                    &[
                        ("authorization", "Bearer admin-token"),
                        ("content-type", "application/json"),
                    ],
                    serde_json::to_vec(&b).unwrap(),
                )
                .await
            }));
        }
    }
    let mut bodies = Vec::new();
    for t in tasks {
        let resp = t.await.unwrap();
        assert_eq!(resp.status, 200, "{:?}", resp.body);
        bodies.push(resp.json());
    }
    let diag: Vec<String> = proxies
        .iter()
        .map(|p| {
            String::from_utf8(p.app.metrics.render())
                .unwrap()
                .lines()
                .filter(|l| {
                    l.starts_with("chartcache_store_") || l.starts_with("chartcache_coalesced")
                })
                .filter(|l| !l.contains("_bucket"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    assert_eq!(
        up.chart_queries() - before,
        1,
        "one Superset query for 300 requests; store metrics:\n{}",
        diag.join("\n---\n")
    );
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    let distributed: f64 = proxies
        .iter()
        .map(|p| metric(p, "chartcache_coalesced_total", "where=\"distributed\""))
        .sum();
    assert_eq!(
        distributed, 2.0,
        "the two other replicas' leaders waited for the first"
    );

    // An entry one replica wrote is a hit on the others (fresh instance: empty L1).
    let fourth = start(&up, redis_cfg(r.url(), true)).await;
    c.chart(&fourth, "admin-token", &body(999)).await;
    let before = up.chart_queries();
    let hit = c.chart(&fourth, "admin-token", &b).await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(hit.json(), bodies[0]);
    assert_eq!(up.chart_queries(), before);
}

/// A replica waiting for another's fetch lock is woken by the release
/// message, not by its poll: with polling every 60 s, the follower still gets
/// its answer as soon as the leader stores the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_release_wakes_the_other_replica_without_polling() {
    let r = RedisProc::server(&[]);
    let up = Upstream::start().await;
    up.set_delay(Duration::from_millis(300));
    let slow_poll = RedisConfig {
        lock_poll_ms: 60_000,
        lock_wait_ms: 120_000,
        timeout_ms: 2_000,
        ..redis_cfg(r.url(), false)
    };
    let a = start(&up, slow_poll.clone()).await;
    let b = start(&up, slow_poll).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    for p in [&a, &b] {
        while !p.app.store.shared().unwrap().subscribed() {
            assert!(Instant::now() < deadline, "no lock-release subscription");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let c = TestClient::new();
    for p in [&a, &b] {
        assert_eq!(c.chart(p, "admin-token", &body(999)).await.status, 200);
    }
    let before = up.chart_queries();
    let (ca, cb) = (c.clone(), c.clone());
    let leader = tokio::spawn(async move { ca.chart(&a, "admin-token", &body(7)).await });
    // Wait until A holds the fetch lock, then ask B for the same chart.
    let mut conn = client(&r.url()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let locks: Vec<String> = redis::cmd("KEYS")
            .arg("chartcache:l:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        if !locks.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "replica A never took the lock");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let follower = tokio::time::timeout(
        Duration::from_secs(20),
        cb.chart(&b, "admin-token", &body(7)),
    )
    .await
    .expect("B answered long before its first 60 s poll");
    let lead = leader.await.unwrap();
    assert_eq!(lead.status, 200);
    assert_eq!(follower.status, 200);
    assert!(
        follower.cache_status().contains("coalesced"),
        "{}",
        follower.cache_status()
    );
    assert_eq!(follower.json(), lead.json());
    assert_eq!(up.chart_queries() - before, 1);
    assert_eq!(
        metric(&b, "chartcache_coalesced_total", "where=\"distributed\""),
        1.0
    );
    assert_eq!(b.app.store.shared().unwrap().releases().waiting(), 0);
}

/// Redis holds zstd only. A Redis-only replica (no L1) answers gzip-only
/// clients with a gzip copy it makes once per entry, not with the
/// uncompressed body; with `cache.store_gzip = false` they get the
/// uncompressed body (no compression per request either way).
#[tokio::test]
async fn a_redis_only_replica_answers_gzip_clients_with_gzip() {
    let r = RedisProc::server(&[]);
    let up = Upstream::start().await;
    up.set_mode(ChartMode::Large(40_000));
    let a = start(&up, redis_cfg(r.url(), false)).await;
    let b = start(&up, redis_cfg(r.url(), false)).await;
    let c = TestClient::new();
    let lead = c.chart(&a, "admin-token", &body(3)).await;
    assert!(
        lead.cache_status().contains("stored"),
        "{}",
        lead.cache_status()
    );
    let gzip = [("accept-encoding", "gzip")];
    for _ in 0..2 {
        let gz = c.chart_with(&b, "admin-token", &body(3), &gzip).await;
        assert!(gz.cache_status().contains("hit"), "{}", gz.cache_status());
        assert_eq!(gz.header("content-encoding").as_deref(), Some("gzip"));
        assert!(
            gz.body.len() < lead.body.len() / 4,
            "{} bytes",
            gz.body.len()
        );
        assert_eq!(gz.decoded(), lead.body);
    }
    let mut cfg = (**b.app.config.load()).clone();
    cfg.cache.store_gzip = false;
    b.app.reload(cfg).unwrap();
    let plain = c.chart_with(&b, "admin-token", &body(3), &gzip).await;
    assert!(plain.cache_status().contains("hit"));
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.body, lead.body);
    assert_eq!(up.chart_queries(), 1);
}

#[tokio::test]
async fn purge_on_one_replica_evicts_l1_on_the_others() {
    let r = RedisProc::server(&[]);
    let up = Upstream::start().await;
    let a = start(&up, redis_cfg(r.url(), true)).await;
    let b = start(&up, redis_cfg(r.url(), true)).await;
    let c = TestClient::new();
    let miss = c.chart(&a, "admin-token", &body(1)).await;
    assert!(
        miss.cache_status().contains("stored"),
        "{}",
        miss.cache_status()
    );
    // b reads it from Redis and keeps it in its L1.
    let hit = c.chart(&b, "admin-token", &body(1)).await;
    assert!(hit.cache_status().contains("hit"));
    // Redis holds only zstd; the L1 copy gets the gzip one for gzip-only clients.
    let gz = c
        .chart_with(&b, "admin-token", &body(1), &[("accept-encoding", "gzip")])
        .await;
    assert!(gz.cache_status().contains("hit"));
    assert_eq!(gz.header("content-encoding").as_deref(), Some("gzip"));
    let l1_b = b.app.memory.clone().unwrap();
    l1_b.sync();
    assert_eq!(l1_b.usage().0, 1);
    let queries = up.chart_queries();

    // Purge the chart's tag through a's admin API.
    let resp = a.purge(&c, r#"{"tags": ["chart:1"]}"#).await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);

    // b's L1 copy goes away through the invalidation channel.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        l1_b.sync();
        if l1_b.usage().0 == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b kept its L1 copy after the purge"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = c.chart(&b, "admin-token", &body(1)).await;
    assert!(
        again.cache_status().contains("fwd=miss"),
        "{}",
        again.cache_status()
    );
    assert_eq!(up.chart_queries(), queries + 1);
}

#[tokio::test]
async fn l1_resyncs_after_the_subscription_reconnects() {
    let mut r = RedisProc::server(&[]);
    let up = Upstream::start().await;
    let a = start(
        &up,
        RedisConfig {
            breaker_cooldown_ms: 100,
            ..redis_cfg(r.url(), true)
        },
    )
    .await;
    let c = TestClient::new();
    c.chart(&a, "admin-token", &body(1)).await;
    let l1 = a.app.memory.clone().unwrap();
    l1.sync();
    assert_eq!(l1.usage().0, 1);
    // While disconnected, purges by others could have been missed: on
    // resubscribe the replica drops its L1.
    r.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        l1.sync();
        if l1.usage().0 == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "L1 not cleared after resubscribe"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_requests_succeed_with_bounded_latency_and_caching_resumes() {
    let mut r = RedisProc::server(&[]);
    let up = Upstream::start().await;
    // Redis only (no L1), so every cache hit below comes from Redis.
    let p = start(
        &up,
        RedisConfig {
            breaker_failures: 3,
            breaker_cooldown_ms: 200,
            ..redis_cfg(r.url(), false)
        },
    )
    .await;
    let c = TestClient::new();
    c.chart(&p, "admin-token", &body(1)).await;
    assert!(
        c.chart(&p, "admin-token", &body(1))
            .await
            .cache_status()
            .contains("hit")
    );

    r.kill();
    // Baseline: what a request costs without Redis trouble is tiny on loopback;
    // with Redis down, each request may pay at most the store timeouts
    // (get + lock + put = 3 × 50 ms) until the breaker opens, then nothing.
    let mut worst = Duration::ZERO;
    for i in 0..40 {
        let t = Instant::now();
        let resp = c.chart(&p, "admin-token", &body(100 + i)).await;
        worst = worst.max(t.elapsed());
        assert_eq!(resp.status, 200, "request {i} failed: {:?}", resp.body);
        assert_eq!(resp.json()["result"][0]["user"], "admin");
    }
    assert!(
        worst < Duration::from_millis(400),
        "worst latency {worst:?}"
    );
    assert_eq!(
        metric(&p, "chartcache_store_breaker_open", "store=\"redis\""),
        1.0
    );

    r.restart();
    // Caching resumes by itself: a stored miss followed by a hit.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 1000;
    loop {
        i += 1;
        let first = c.chart(&p, "admin-token", &body(i)).await;
        assert_eq!(first.status, 200);
        let second = c.chart(&p, "admin-token", &body(i)).await;
        if second.cache_status().contains("hit") {
            break;
        }
        assert!(Instant::now() < deadline, "caching did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(&p, "chartcache_store_breaker_open", "store=\"redis\""),
        0.0
    );
}
