//! Sentinel failover with real processes: 1 master, 2 replicas, 3 sentinels.
//! The master is killed while a client loop sends chart requests through
//! chartcache; no request fails, and afterwards entries are written to and
//! read from the new master.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::redis_server::*;
use crate::support::*;
use chartcache::app::App;
use chartcache::clock::{SharedClock, SystemClock};
use chartcache::config::RedisConfig;
use chartcache::metrics::Metrics;
use chartcache::store::redis::RedisStore;
use chartcache::store::setup;

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";

fn body(i: u64) -> serde_json::Value {
    let mut b = chart_body(BIGNUMBER);
    b["queries"][0]["row_limit"] = serde_json::json!(1000 + i);
    b
}

async fn start(up: &Upstream, redis: RedisConfig) -> (Proxy, Arc<RedisStore>) {
    Proxy::expect_threads();
    let mut cfg = test_config(&up.url());
    cfg.redis = redis;
    let metrics = Arc::new(Metrics::new());
    let clock: SharedClock = Arc::new(SystemClock);
    let built = setup::build(&cfg, metrics.clone(), clock.clone())
        .await
        .unwrap();
    assert!(built.redis_error.is_none(), "{:?}", built.redis_error);
    let redis = built.redis.clone().unwrap();
    let app = App::new(cfg, built.store, built.memory, metrics, clock).unwrap();
    (Proxy::start_app(app).await, redis)
}

async fn entry_keys(url: &str) -> usize {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("chartcache:e:*")
        .query_async(&mut client(url).await)
        .await
        .unwrap();
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_mid_traffic_no_request_fails_and_new_master_takes_over() {
    let mut set = SentinelSet::start().await;
    let up = Upstream::start().await;
    let (proxy, store) = start(
        &up,
        RedisConfig {
            sentinels: set.sentinel_addrs(),
            master_name: "mymaster".into(),
            // Redis only: every hit below is read from Redis.
            tiered: false,
            breaker_failures: 3,
            breaker_cooldown_ms: 200,
            ..RedisConfig::default()
        },
    )
    .await;
    let old_master = set.master.addr();
    assert_eq!(store.master_addr().as_deref(), Some(old_master.as_str()));
    let proxy = Arc::new(proxy);

    // The client loop: bounded in count and time, stopped after the failover.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let looper = tokio::spawn({
        let (proxy, stop, sent) = (proxy.clone(), stop.clone(), sent.clone());
        async move {
            let c = TestClient::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut failures = Vec::new();
            for i in 0..20_000u64 {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let r = c.chart(&proxy, "alice-token", &body(i % 25)).await;
                sent.fetch_add(1, Ordering::SeqCst);
                let ok = r.status == 200 && r.json()["result"][0]["user"] == "alice";
                if !ok {
                    failures.push((i, r.status, String::from_utf8_lossy(&r.body).to_string()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failures
        }
    });

    // Let traffic flow with entries cached on the old master, then kill it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent.load(Ordering::SeqCst) < 50 {
        assert!(Instant::now() < deadline, "client loop stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(entry_keys(&set.master.url()).await > 0);
    set.master.kill();
    let killed_at = Instant::now();

    // Sentinels promote a replica.
    let new_master = loop {
        if let Some((h, p)) = set.reported_master().await {
            let a = format!("{h}:{p}");
            if a != old_master {
                break a;
            }
        }
        assert!(killed_at.elapsed() < Duration::from_secs(30), "no failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let failover_took = killed_at.elapsed();
    // chartcache follows: its connections point at the new master.
    loop {
        if store.master_addr().as_deref() == Some(new_master.as_str()) {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(40),
            "chartcache kept the old master"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // More traffic after the switch, then stop the loop.
    let after = sent.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent.load(Ordering::SeqCst) < after + 50 {
        assert!(
            Instant::now() < deadline,
            "client loop stalled after failover"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let failures = looper.await.unwrap();
    let total = sent.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {failures:?}",
        failures.len()
    );
    eprintln!(
        "failover: {total} requests, none failed; sentinels promoted after {failover_took:?}"
    );

    // New entries land on the new master, and are read back from it.
    let url = format!("redis://{new_master}");
    assert_eq!(role(&url).await, "master");
    let before = entry_keys(&url).await;
    let c = TestClient::new();
    let miss = c.chart(&proxy, "alice-token", &body(5000)).await;
    assert!(
        miss.cache_status().contains("stored"),
        "{}",
        miss.cache_status()
    );
    assert_eq!(entry_keys(&url).await, before + 1);
    let hit = c.chart(&proxy, "alice-token", &body(5000)).await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(hit.json(), miss.json());
}

/// A manual failover leaves the old master running as a replica: pooled
/// connections to it would answer READONLY (the known gap). chartcache must
/// move to the new master without any failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demoted_master_is_left_for_the_new_one() {
    let set = SentinelSet::start().await;
    let up = Upstream::start().await;
    let (proxy, store) = start(
        &up,
        RedisConfig {
            sentinels: set.sentinel_addrs(),
            master_name: "mymaster".into(),
            tiered: false,
            breaker_cooldown_ms: 200,
            ..RedisConfig::default()
        },
    )
    .await;
    let old_master = set.master.addr();
    let c = TestClient::new();
    assert!(
        c.chart(&proxy, "bob-token", &body(1))
            .await
            .cache_status()
            .contains("stored")
    );

    let _: String = redis::cmd("SENTINEL")
        .arg("failover")
        .arg("mymaster")
        .query_async(&mut client(&set.sentinels[0].url()).await)
        .await
        .unwrap();
    let started = Instant::now();
    let new_master = loop {
        let reported = set.reported_master().await.map(|(h, p)| format!("{h}:{p}"));
        if let Some(a) = reported.filter(|a| *a != old_master)
            && role(&format!("redis://{a}")).await == "master"
        {
            break a;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Keep sending new keys until one lands on the new master; every request succeeds.
    let url = format!("redis://{new_master}");
    let mut i = 100;
    loop {
        i += 1;
        let r = c.chart(&proxy, "bob-token", &body(i)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["result"][0]["user"], "bob");
        let key_on_new: Vec<String> = redis::cmd("KEYS")
            .arg("chartcache:e:*")
            .query_async(&mut client(&url).await)
            .await
            .unwrap();
        if r.cache_status().contains("stored")
            && store.master_addr().as_deref() == Some(new_master.as_str())
            && key_on_new.len() >= 2
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "writes never reached the new master"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hit = c.chart(&proxy, "bob-token", &body(i)).await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    // Sentinels turn the old master into a replica; chartcache stays on the new one.
    while role(&format!("redis://{old_master}")).await != "slave" {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "old master never demoted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = c.chart(&proxy, "bob-token", &body(9999)).await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    assert_eq!(store.master_addr().as_deref(), Some(new_master.as_str()));
    assert!(
        c.chart(&proxy, "bob-token", &body(9999))
            .await
            .cache_status()
            .contains("hit")
    );
}
