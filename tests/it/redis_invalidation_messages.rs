//! The invalidation channel is untrusted input: garbage published on it with a
//! real `redis-server` (not JSON, huge, wrong types, unreadable keys) is
//! logged and counted, and never empties a replica's L1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::redis_server::*;
use crate::support::*;
use chartcache::app::App;
use chartcache::clock::{SharedClock, SystemClock};
use chartcache::config::RedisConfig;
use chartcache::metrics::Metrics;
use chartcache::store::setup;

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";

/// A distinct entry per chart id (its tag is `chart:{chart}`).
fn body(chart: u64) -> serde_json::Value {
    let mut b = chart_body(BIGNUMBER);
    b["form_data"]["slice_id"] = serde_json::json!(chart);
    b["queries"][0]["row_limit"] = serde_json::json!(1000 + chart);
    b
}

async fn replica(up: &Upstream, r: &RedisProc) -> Proxy {
    Proxy::expect_threads();
    let mut cfg = test_config(&up.url());
    cfg.redis = RedisConfig {
        url: Some(r.url()),
        tiered: true,
        timeout_ms: 2_000,
        ..RedisConfig::default()
    };
    let metrics = Arc::new(Metrics::new());
    let clock: SharedClock = Arc::new(SystemClock);
    let built = setup::build(&cfg, metrics.clone(), clock.clone())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while built.redis.as_ref().unwrap().subscriptions() == 0 {
        assert!(Instant::now() < deadline, "no invalidation subscription");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Proxy::start_app(App::new(cfg, built.store, built.memory, metrics, clock).unwrap()).await
}

fn metric(p: &Proxy, name: &str, labels: &str) -> f64 {
    let text = String::from_utf8(p.app.metrics.render()).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_invalidation_channel_is_counted_and_keeps_l1() {
    let r = RedisProc::server(&[]);
    let up = Upstream::start().await;
    let a = replica(&up, &r).await;
    let b = replica(&up, &r).await;
    let c = TestClient::new();
    // B holds two entries in its L1 (charts 1 and 2).
    for chart in [1, 2] {
        assert!(
            c.chart(&a, "admin-token", &body(chart))
                .await
                .cache_status()
                .contains("stored")
        );
        assert!(
            c.chart(&b, "admin-token", &body(chart))
                .await
                .cache_status()
                .contains("hit")
        );
    }
    let l1_b = b.app.memory.clone().unwrap();
    l1_b.sync();
    assert_eq!(l1_b.usage().0, 2);

    let mut raw = client(&r.url()).await;
    let huge = vec![b'['; 5 << 20];
    let garbage: Vec<Vec<u8>> = vec![
        b"purge everything".to_vec(),
        br#"{"origin": 7, "keys": "chart:1"}"#.to_vec(),
        br#"{"origin": "x", "tags": [1, 2]}"#.to_vec(),
        br#"{"origin": "x", "keys": ["not-a-key"]}"#.to_vec(),
        huge,
        vec![0xff, 0xfe, 0x00],
    ];
    for g in &garbage {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("chartcache:inv")
            .arg(g.as_slice())
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    // Then a real purge of chart 2 from A: once B has applied it, B has read
    // every message published before it (one connection, in order).
    let resp = a.purge(&c, r#"{"tags": ["chart:2"]}"#).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        l1_b.sync();
        if l1_b.usage().0 < 2 {
            break;
        }
        assert!(Instant::now() < deadline, "B never applied the purge");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    l1_b.sync();
    assert_eq!(
        l1_b.usage().0,
        1,
        "garbage on the channel must not empty B's L1: only chart 2 was purged"
    );
    let hit = c.chart(&b, "admin-token", &body(1)).await;
    assert!(
        hit.cache_status().starts_with("chartcache; hit"),
        "{}",
        hit.cache_status()
    );
    assert_eq!(
        metric(
            &b,
            "chartcache_invalidation_messages_total",
            "result=\"unreadable\""
        ),
        garbage.len() as f64
    );
    assert_eq!(
        metric(
            &b,
            "chartcache_invalidation_messages_total",
            "result=\"applied\""
        ),
        1.0
    );
    // B is still subscribed: the garbage cost it nothing.
    assert_eq!(metric(&b, "chartcache_redis_subscription_live", ""), 1.0);
}
