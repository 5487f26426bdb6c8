//! Invalidations across a hung master's failover, with real processes: 1
//! master, 2 replicas, 3 sentinels, two tiered chartcache replicas. The
//! master is frozen (SIGSTOP: its sockets stay open and nothing answers),
//! Sentinel promotes a replica, and a purge on replica A must stop replica B
//! from serving the purged entry: B's subscriptions follow the new master
//! (`PUBSUB NUMSUB` shows them within a bound), and while they cannot, B does
//! not serve its L1 copies.

use std::sync::Arc;
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

/// A tiered replica on the sentinel set, once its subscriptions are made.
async fn replica(up: &Upstream, set: &SentinelSet) -> (Proxy, Arc<RedisStore>) {
    Proxy::expect_threads();
    let mut cfg = test_config(&up.url());
    cfg.redis = RedisConfig {
        sentinels: set.sentinel_addrs(),
        master_name: "mymaster".into(),
        tiered: true,
        breaker_failures: 3,
        breaker_cooldown_ms: 200,
        // Far beyond the test: an L1 copy that is served after the purge was
        // kept because the purge was missed, not because it had not expired.
        l1_max_ttl_secs: 3_600,
        ..RedisConfig::default()
    };
    let metrics = Arc::new(Metrics::new());
    let clock: SharedClock = Arc::new(SystemClock);
    let built = setup::build(&cfg, metrics.clone(), clock.clone())
        .await
        .unwrap();
    assert!(built.redis_error.is_none(), "{:?}", built.redis_error);
    let redis = built.redis.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.subscriptions() == 0 || redis.release_subscriptions() == 0 {
        assert!(Instant::now() < deadline, "no subscriptions");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let app = App::new(cfg, built.store, built.memory, metrics, clock).unwrap();
    (Proxy::start_app(app).await, redis)
}

fn metric(p: &Proxy, name: &str, labels: &str) -> f64 {
    let text = String::from_utf8(p.app.metrics.render()).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Subscribers of `channel` on the server at `url`.
async fn numsub(url: &str, channel: &str) -> i64 {
    let v: (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut client(url).await)
        .await
        .unwrap();
    v.1
}

async fn entry_keys(url: &str) -> usize {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("chartcache:e:*")
        .query_async(&mut client(url).await)
        .await
        .unwrap();
    keys.len()
}

/// Resumes a frozen process when the test ends, however it ends (the
/// process handles then kill it).
struct Frozen<'a>(&'a RedisProc);
impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.0.signal("CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_after_a_hung_master_fails_over_reaches_every_replica() {
    let set = SentinelSet::start().await;
    let up = Upstream::start().await;
    let (a, a_store) = replica(&up, &set).await;
    let (b, _) = replica(&up, &set).await;
    let old_master = set.master.addr();
    let c = TestClient::new();

    // A stores the entry; B reads it from Redis and keeps it in its L1.
    let miss = c.chart(&a, "alice-token", &body(1)).await;
    assert!(
        miss.cache_status().contains("stored"),
        "{}",
        miss.cache_status()
    );
    for _ in 0..2 {
        let hit = c.chart(&b, "alice-token", &body(1)).await;
        assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    }
    let l1_b = b.app.memory.clone().unwrap();
    l1_b.sync();
    assert_eq!(l1_b.usage().0, 1, "B holds the entry in its L1");
    // Both Redis replicas have the entry, whichever is promoted.
    let deadline = Instant::now() + Duration::from_secs(10);
    for r in &set.replicas {
        while entry_keys(&r.url()).await == 0 {
            assert!(Instant::now() < deadline, "entry not replicated");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    set.master.signal("STOP");
    let frozen = Frozen(&set.master);
    let stopped = Instant::now();

    // Sentinels promote a replica; meanwhile B stops trusting its L1.
    let mut b_bypassed = false;
    let new_master = loop {
        b_bypassed |= metric(&b, "chartcache_l1_bypassed", "") == 1.0;
        if let Some((h, p)) = set.reported_master().await {
            let addr = format!("{h}:{p}");
            if addr != old_master && role(&format!("redis://{addr}")).await == "master" {
                break addr;
            }
        }
        assert!(stopped.elapsed() < Duration::from_secs(30), "no failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failover_took = stopped.elapsed();
    let new_url = format!("redis://{new_master}");
    // A's data connections follow (its requests resolve the master again).
    let mut i = 100;
    while a_store.master_addr().as_deref() != Some(new_master.as_str()) {
        b_bypassed |= metric(&b, "chartcache_l1_bypassed", "") == 1.0;
        i += 1;
        assert_eq!(c.chart(&a, "alice-token", &body(i)).await.status, 200);
        assert!(
            stopped.elapsed() < Duration::from_secs(40),
            "A kept the frozen master"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The purge on A lands on the new master and answers 200.
    let resp = a.purge(&c, r#"{"tags": ["chart:1"]}"#).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    // Room for a published message to be delivered on loopback.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // B must not serve the purged entry: a miss, fetched from Superset.
    let after = c.chart(&b, "alice-token", &body(1)).await;
    assert_eq!(after.status, 200);
    assert!(
        after.cache_status().contains("fwd=miss"),
        "B served the purged entry after the failover: {}",
        after.cache_status()
    );

    // Both replicas' subscriptions are on the new master within a bound.
    loop {
        let inv = numsub(&new_url, "chartcache:inv").await;
        let rel = numsub(&new_url, "chartcache:rel").await;
        if inv == 2 && rel == 2 {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(45),
            "PUBSUB NUMSUB on the new master: inv {inv}, rel {rel}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let followed = stopped.elapsed();
    for p in [&a, &b] {
        assert_eq!(metric(p, "chartcache_redis_subscription_live", ""), 1.0);
    }
    assert_eq!(metric(&b, "chartcache_l1_bypassed", ""), 0.0);
    assert!(
        metric(&b, "chartcache_redis_subscription_losses_total", "") >= 1.0,
        "B's loss of its subscription is counted"
    );
    assert!(b_bypassed, "B bypassed its L1 while it had no subscription");

    // Purges keep reaching B's L1 through the new master.
    let stored = c.chart(&a, "alice-token", &body(2)).await;
    assert!(
        stored.cache_status().contains("stored"),
        "{}",
        stored.cache_status()
    );
    assert!(
        c.chart(&b, "alice-token", &body(2))
            .await
            .cache_status()
            .contains("hit")
    );
    l1_b.sync();
    let before = l1_b.usage().0;
    assert!(before >= 1);
    let resp = a.purge(&c, r#"{"tags": ["chart:1"]}"#).await;
    assert_eq!(resp.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        l1_b.sync();
        if l1_b.usage().0 == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B kept its L1 copy after the purge"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = String::from_utf8(b.app.metrics.render()).unwrap();
    let losses: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("chartcache_redis_subscription_losses_total"))
        .collect();
    eprintln!(
        "hung master: sentinels promoted after {failover_took:?}; both replicas subscribed on the new master {followed:?} after SIGSTOP; B: {losses:?}"
    );
    drop(frozen);
}

/// Without Sentinel nothing announces a hung master: the PING on the
/// subscribed connection finds it. While it hangs the replica serves without
/// its L1 (nothing another replica purges meanwhile can reach it); when the
/// master answers again the subscription is made again and L1 is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_standalone_master_is_found_by_the_subscription_check() {
    let r = RedisProc::server(&[]);
    let up = Upstream::start().await;
    Proxy::expect_threads();
    let mut cfg = test_config(&up.url());
    cfg.redis = RedisConfig {
        url: Some(r.url()),
        tiered: true,
        breaker_failures: 2,
        breaker_cooldown_ms: 200,
        l1_max_ttl_secs: 3_600,
        ..RedisConfig::default()
    };
    let (every, timeout) = (
        cfg.redis.pubsub_ping_interval_ms,
        cfg.redis.pubsub_ping_timeout_ms,
    );
    let metrics = Arc::new(Metrics::new());
    let clock: SharedClock = Arc::new(SystemClock);
    let built = setup::build(&cfg, metrics.clone(), clock.clone())
        .await
        .unwrap();
    let store = built.redis.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !store.subscribed() {
        assert!(Instant::now() < deadline, "no subscription");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let p =
        Proxy::start_app(App::new(cfg, built.store, built.memory, metrics, clock).unwrap()).await;
    let c = TestClient::new();
    assert!(
        c.chart(&p, "alice-token", &body(1))
            .await
            .cache_status()
            .contains("stored")
    );
    assert!(
        c.chart(&p, "alice-token", &body(1))
            .await
            .cache_status()
            .contains("hit")
    );
    let l1 = p.app.memory.clone().unwrap();

    r.signal("STOP");
    let frozen = Frozen(&r);
    let stopped = Instant::now();
    // Found within one check interval plus its timeout (and scheduling room).
    let bound = Duration::from_millis(every + timeout) + Duration::from_secs(2);
    while store.subscribed() {
        assert!(stopped.elapsed() < bound, "hung master not found");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let found = stopped.elapsed();
    assert_eq!(metric(&p, "chartcache_l1_bypassed", ""), 1.0);
    assert_eq!(
        metric(
            &p,
            "chartcache_redis_subscription_losses_total",
            "reason=\"ping_timeout\""
        ),
        1.0
    );
    l1.sync();
    assert_eq!(l1.usage().0, 0, "L1 cleared when the subscription was lost");
    // Requests still succeed (Redis skipped after its timeouts), uncached by L1.
    let during = c.chart(&p, "alice-token", &body(1)).await;
    assert_eq!(during.status, 200);
    assert!(
        !during.cache_status().contains("hit"),
        "{}",
        during.cache_status()
    );

    drop(frozen);
    let resumed = Instant::now();
    while !store.subscribed() {
        assert!(
            resumed.elapsed() < Duration::from_secs(10),
            "never subscribed again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metric(&p, "chartcache_l1_bypassed", ""), 0.0);
    // L1 serves again: fill it, then hit it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 10;
    loop {
        i += 1;
        c.chart(&p, "alice-token", &body(i)).await;
        l1.sync();
        if l1.usage().0 > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "L1 never used again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("hung standalone master found by the subscription check after {found:?}");
}
