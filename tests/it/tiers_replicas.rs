//! Stale-while-revalidate across replicas: three chartcache instances sharing
//! one real Redis (tiered: memory L1 in front) and one manual clock refresh a
//! stale entry once in total, not once each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::redis_server::*;
use crate::support::*;
use chartcache::app::App;
use chartcache::clock::{ManualClock, SharedClock};
use chartcache::config::RedisConfig;
use chartcache::config::TierConfig;
use chartcache::metrics::Metrics;
use chartcache::store::setup;
use http::Method;

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";

/// A tiered replica on `redis` whose entry times come from `clock`.
async fn replica(up: &Upstream, redis: &RedisProc, clock: Arc<ManualClock>) -> Proxy {
    let mut cfg = test_config(&up.url());
    cfg.redis = RedisConfig {
        url: Some(redis.url()),
        tiered: true,
        // Election, not timeouts, is under test: room for a loaded machine.
        timeout_ms: 2_000,
        // L1 copies would otherwise end 30 s after they were made, on the
        // manual clock: keep them through the stale window under test, so each
        // replica serves its own stale copy as it would in real time.
        l1_max_ttl_secs: 3_600,
        ..RedisConfig::default()
    };
    cfg.tiers = vec![TierConfig {
        name: "t".into(),
        fresh_secs: 60,
        stale_while_revalidate_secs: 600,
        stale_if_error_secs: 600,
    }];
    cfg.default_tier = "t".into();
    let metrics = Arc::new(Metrics::new());
    let clock: SharedClock = clock;
    Proxy::expect_threads();
    let built = setup::build(&cfg, metrics.clone(), clock.clone())
        .await
        .unwrap();
    // The L1 is cleared when the invalidation subscription is made: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while built.redis.as_ref().unwrap().subscriptions() == 0 {
        assert!(Instant::now() < deadline, "no invalidation subscription");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Proxy::start_app(App::new(cfg, built.store, built.memory, metrics, clock).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_refresh_a_stale_entry_once() {
    let r = RedisProc::server(&[]);
    let up = Upstream::start().await;
    let clock = ManualClock::new(1_764_000_000_000);
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(replica(&up, &r, clock.clone()).await);
    }
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    assert!(
        c.chart(&proxies[0], "alice-token", &body)
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    // Every replica holds the entry in its L1 now.
    for p in &proxies {
        assert!(
            c.chart(p, "alice-token", &body)
                .await
                .cache_status()
                .contains("hit")
        );
    }
    assert_eq!(up.chart_queries(), 1);

    clock.advance_ms(70_000);
    up.set_delay(Duration::from_millis(1_000));
    let mut tasks = Vec::new();
    for round in 0..20 {
        for p in &proxies {
            let (c, body, url) = (c.clone(), body.clone(), p.url("/api/v1/chart/data"));
            tasks.push(tokio::spawn(async move {
                let r = c
                    .send(
                        Method::POST,
                        &url,
                        &[
                            ("authorization", "Bearer alice-token"),
                            ("content-type", "application/json"),
                        ],
                        serde_json::to_vec(&body).unwrap(),
                    )
                    .await;
                (round, r)
            }));
        }
    }
    for t in tasks {
        let (round, r) = t.await.unwrap();
        assert_eq!(r.status, 200);
        // Served at once from the stale entry, or (late) from the refreshed one.
        let cs = r.cache_status();
        assert!(
            cs.starts_with("chartcache; hit; ttl="),
            "round {round}: {cs}"
        );
    }
    // Every replica ends up serving the one refreshed entry.
    for (i, p) in proxies.iter().enumerate() {
        let mut fresh = false;
        for _ in 0..1_000 {
            let r = c.chart(p, "alice-token", &body).await;
            if !r.cache_status().contains("stale") {
                assert_eq!(r.json()["result"][0]["query_no"], 2, "replica {i}");
                fresh = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(fresh, "replica {i} never saw the refreshed entry");
    }
    assert_eq!(up.chart_queries(), 2, "one refresh across three replicas");
}
