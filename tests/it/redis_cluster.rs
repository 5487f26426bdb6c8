//! chartcache on a real Redis Cluster (3 masters + 3 replicas on loopback,
//! password required, and an ACL user for the store's own checks): the store's key layout and purges across slots, hits
//! and purges across two tiered replicas, cross-replica coalescing, and the
//! subscription leaving a hung node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::redis_cluster::*;
use crate::support::redis_server::client;
use crate::support::*;
use chartcache::app::App;
use chartcache::clock::{SharedClock, SystemClock};
use chartcache::config::RedisConfig;
use chartcache::key::CacheKey;
use chartcache::metrics::Metrics;
use chartcache::store::redis::RedisStore;
use chartcache::store::redis::cluster::slot;
use chartcache::store::{Entry, Meta, Purge, SharedJobs, Store, setup};
use http::Method;

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";
const PASSWORD: &str = "cl-s3cret";
/// The store part runs as this user: prefix `st`, the commands of docs/redis.md.
const ACL_USER: &str = "user stacl on >acl-pw ~st:* &st:* -@all +@connection +get +set \
    +del +unlink +scan +smembers +sadd +srem +pttl +pexpire +publish +subscribe +evalsha \
    +eval +script +role +cluster +asking +getrange +srandmember +multi +exec";

/// The fixture body with a distinct row limit: a distinct cache key per `i`.
pub fn body(i: u64) -> serde_json::Value {
    let mut b = chart_body(BIGNUMBER);
    b["queries"][0]["row_limit"] = serde_json::json!(1000 + i);
    b
}

/// `[redis]` for `cluster`, Redis only or tiered.
pub fn cluster_cfg(cluster: &RedisCluster, prefix: &str, tiered: bool) -> RedisConfig {
    RedisConfig {
        cluster_nodes: cluster.seeds(),
        password: Some(PASSWORD.into()),
        prefix: prefix.into(),
        tiered,
        // Correctness, not latency, is under test on a loaded machine.
        timeout_ms: 2_000,
        breaker_cooldown_ms: 200,
        l1_max_ttl_secs: 3_600,
        ..RedisConfig::default()
    }
}

/// A chartcache instance on `redis`, once its subscriptions are made.
pub async fn start(up: &Upstream, redis: RedisConfig) -> (Proxy, Arc<RedisStore>) {
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while cfg.redis.tiered && redis.subscriptions() == 0 || redis.release_subscriptions() == 0 {
        assert!(Instant::now() < deadline, "no subscriptions");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let app = App::new(cfg, built.store, built.memory, metrics, clock).unwrap();
    (Proxy::start_app(app).await, redis)
}

pub fn metric(p: &Proxy, name: &str, labels: &str) -> f64 {
    let text = String::from_utf8(p.app.metrics.render()).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn entry(tags: &[&str]) -> Arc<Entry> {
    use chartcache::clock::Clock;
    let now = SystemClock.now_ms();
    let body = format!("{{\"result\": [{{\"data\": \"{}\"}}]}}", "x".repeat(200));
    let meta = Meta {
        status: 200,
        headers: vec![(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )],
        stored_at: now,
        fresh_until: now + 60_000,
        stale_until: now + 120_000,
        upstream_ms: 12,
        raw_len: body.len() as u32,
        tags: tags.iter().map(|s| s.to_string()).collect(),
    };
    Arc::new(Entry::build(meta, body.as_bytes(), 3, false).unwrap())
}

/// Keys on the node at `port` matching `pattern`.
async fn keys_on(port: u16, pattern: &str) -> Vec<String> {
    let mut c = client(&format!("redis://:{PASSWORD}@127.0.0.1:{port}")).await;
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut c)
        .await
        .unwrap()
}

async fn store_layout_and_purges(cluster: &RedisCluster) {
    // An ACL user with only the keys, channels and commands docs/redis.md
    // lists (see the cluster's `user` line below).
    let cfg = RedisConfig {
        username: Some("stacl".into()),
        password: Some("acl-pw".into()),
        ..cluster_cfg(cluster, "st", false)
    };
    let s = RedisStore::new(cfg, Arc::new(Metrics::new()), Arc::new(SystemClock)).unwrap();
    s.check().await.unwrap();
    assert!(s.is_cluster());
    // 40 entries: "chart:1" on the even ones, "chart:2" on the odd, "all" on each.
    for i in 0..40u8 {
        let tag = if i % 2 == 0 { "chart:1" } else { "chart:2" };
        s.put(&CacheKey([i; 32]), entry(&[tag, "all"]))
            .await
            .unwrap();
    }
    for i in 0..40u8 {
        assert!(s.get(&CacheKey([i; 32])).await.unwrap().is_some(), "{i}");
    }
    // The entries are spread over every master; each entry's lock key has
    // the entry's slot (hash tags).
    let mut masters_with_entries = 0;
    for m in cluster.masters().await {
        let keys = keys_on(cluster.nodes[m].port, "st:e:*").await;
        masters_with_entries += usize::from(!keys.is_empty());
        for k in keys {
            let lock = k.replacen(":e:", ":l:", 1);
            assert_eq!(slot(k.as_bytes()), slot(lock.as_bytes()), "{k}");
        }
    }
    assert_eq!(masters_with_entries, 3, "entries on every master");

    // A purge by tag deletes entries of many slots (one script per slot in a
    // cluster would be a CROSSSLOT error).
    assert_eq!(
        s.purge(&Purge::Tags(vec!["chart:1".into()])).await.unwrap(),
        20
    );
    for i in 0..40u8 {
        let got = s.get(&CacheKey([i; 32])).await.unwrap();
        assert_eq!(got.is_some(), i % 2 == 1, "{i}");
    }
    // The tag set of the other tag lost the purged members only.
    let n = s
        .purge(&Purge::Keys(vec![CacheKey([1; 32]), CacheKey([3; 32])]))
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(s.purge(&Purge::Tags(vec!["all".into()])).await.unwrap(), 18);
    for i in 0..10u8 {
        s.put(&CacheKey([i; 32]), entry(&["chart:3"]))
            .await
            .unwrap();
    }
    assert_eq!(s.purge(&Purge::All).await.unwrap(), 10);
    for m in cluster.masters().await {
        assert!(keys_on(cluster.nodes[m].port, "st:*").await.is_empty());
    }

    // Async-query job records and result_url links: one key per command
    // (the link's MULTI too), so they need no hash tags.
    let ttl = Duration::from_secs(60);
    for i in 0..10u8 {
        let id = format!("job-{i}");
        s.put_job(&id, vec![i; 8], ttl).await.unwrap();
        s.add_link(&CacheKey([i; 32]), &id, ttl).await.unwrap();
    }
    for i in 0..10u8 {
        let id = format!("job-{i}");
        assert_eq!(s.get_job(&id, 64).await.unwrap(), Some(vec![i; 8]));
        assert_eq!(
            s.links(&CacheKey([i; 32]), 4).await.unwrap(),
            vec![id.as_bytes().to_vec()]
        );
        s.remove_link(&CacheKey([i; 32]), &id).await.unwrap();
        s.delete_job(&id).await.unwrap();
        assert_eq!(s.get_job(&id, 64).await.unwrap(), None);
    }
}

async fn hits_and_purges_across_two_replicas(cluster: &RedisCluster, up: &Upstream) {
    let (a, _) = start(up, cluster_cfg(cluster, "two", true)).await;
    let (b, b_store) = start(up, cluster_cfg(cluster, "two", true)).await;
    let c = TestClient::new();
    let before = up.chart_queries();
    for i in 0..6 {
        let miss = c.chart(&a, "admin-token", &body(i)).await;
        assert!(
            miss.cache_status().contains("stored"),
            "{}",
            miss.cache_status()
        );
    }
    for i in 0..6 {
        let hit = c.chart(&b, "admin-token", &body(i)).await;
        assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    }
    assert_eq!(up.chart_queries() - before, 6);
    let l1_b = b.app.memory.clone().unwrap();
    l1_b.sync();
    assert_eq!(l1_b.usage().0, 6);
    assert!(b_store.subscribed());

    // Purge the chart's tag (entries of several slots) through a's admin API:
    // b's L1 copies go away through the invalidation channel.
    let resp = a.purge(&c, r#"{"tags": ["chart:1"]}"#).await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        l1_b.sync();
        if l1_b.usage().0 == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b kept its L1 copies after the purge"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..6 {
        let again = c.chart(&b, "admin-token", &body(i)).await;
        assert!(
            again.cache_status().contains("fwd=miss"),
            "{}",
            again.cache_status()
        );
    }
}

async fn one_query_for_three_replicas_times_30(cluster: &RedisCluster, up: &Upstream) {
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(start(up, cluster_cfg(cluster, "co", true)).await.0);
    }
    let c = TestClient::new();
    for p in &proxies {
        assert_eq!(c.chart(p, "admin-token", &body(999)).await.status, 200);
    }
    up.set_delay(Duration::from_millis(1_000));
    let before = up.chart_queries();
    let mut tasks = Vec::new();
    for p in &proxies {
        for _ in 0..30 {
            let (c, url) = (c.clone(), p.url("/api/v1/chart/data"));
            tasks.push(tokio::spawn(async move {
                c.send(
                    Method::POST,
                    &url,
                    &[
                        ("authorization", "Bearer admin-token"),
                        ("content-type", "application/json"),
                    ],
                    serde_json::to_vec(&body(7)).unwrap(),
                )
                .await
            }));
        }
    }
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        bodies.push(r.json());
    }
    up.set_delay(Duration::ZERO);
    assert_eq!(
        up.chart_queries() - before,
        1,
        "one Superset query for 90 requests"
    );
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    let distributed: f64 = proxies
        .iter()
        .map(|p| metric(p, "chartcache_coalesced_total", "where=\"distributed\""))
        .sum();
    assert_eq!(
        distributed, 2.0,
        "two replicas waited for the third's fetch"
    );
}

/// The node a replica subscribes to first hangs (SIGSTOP): the subscription
/// moves to another node within the ping bounds and purges reach it again.
async fn subscription_leaves_a_hung_node(cluster: &RedisCluster, up: &Upstream) {
    let cfg = RedisConfig {
        pubsub_ping_interval_ms: 200,
        pubsub_ping_timeout_ms: 300,
        ..cluster_cfg(cluster, "hung", true)
    };
    let (a, _) = start(up, cfg.clone()).await;
    let (b, b_store) = start(up, cfg).await;
    // The first node b tries is the first master `CLUSTER SLOTS` lists:
    // find the node where b's connection subscribes.
    let mut subscribed_on = None;
    for (i, n) in cluster.nodes.iter().enumerate() {
        let mut conn = client(&format!("redis://:{PASSWORD}@127.0.0.1:{}", n.port)).await;
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .unwrap();
        if list.lines().filter(|l| l.contains("sub=2")).count() >= 2 {
            // Both a's and b's subscriptions: the same first choice.
            subscribed_on = Some(i);
        }
    }
    let hung = subscribed_on.expect("both replicas subscribed on one node");
    cluster.nodes[hung].signal("STOP");
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(
        &b,
        "chartcache_redis_subscription_losses_total",
        "ping_timeout",
    ) < 1.0
        || !b_store.subscribed()
    {
        assert!(
            Instant::now() < deadline,
            "b's subscription stayed on the hung node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Purges reach b again (after the failover of the hung node's slots,
    // if it was a master: retry until the purge succeeded on a).
    let c = TestClient::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hit_a = c.chart(&a, "admin-token", &body(50)).await;
        let hit_b = c.chart(&b, "admin-token", &body(50)).await;
        assert_eq!(hit_a.status, 200);
        assert_eq!(hit_b.status, 200);
        let l1_b = b.app.memory.clone().unwrap();
        l1_b.sync();
        let before = l1_b.usage().0;
        let resp = a.purge(&c, r#"{"tags": ["chart:1"]}"#).await;
        let mut reached = false;
        if resp.status == 200 && before > 0 {
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                l1_b.sync();
                if l1_b.usage().0 == 0 {
                    reached = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if reached {
            break;
        }
        eprintln!("purge {}, b's L1 held {before}: again", resp.status);
        assert!(Instant::now() < deadline, "purges never reached b again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.nodes[hung].signal("CONT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_layout_replicas_coalescing_and_a_hung_node() {
    let pass = format!("requirepass {PASSWORD}");
    let auth = format!("masterauth {PASSWORD}");
    let cluster = RedisCluster::start(&[&pass, &auth, ACL_USER]).await;
    let up = Upstream::start().await;
    store_layout_and_purges(&cluster).await;
    hits_and_purges_across_two_replicas(&cluster, &up).await;
    one_query_for_three_replicas_times_30(&cluster, &up).await;
    subscription_leaves_a_hung_node(&cluster, &up).await;
}

/// `check-config` takes a `redis+cluster://` url, hides its password, and
/// names what is wrong with a seed list.
#[test]
fn check_config_validates_a_cluster_url() {
    let run = |url: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_chartcache"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CHARTCACHE_") {
                c.env_remove(k);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let out = c
            .current_dir(dir.path())
            .args(["--upstream", "http://127.0.0.1:8088", "--redis-url", url])
            .arg("check-config")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run("redis+cluster://app:pw-secret@10.0.0.1:7000,10.0.0.2:7001");
    assert!(ok, "{err}");
    assert!(
        out.contains("redis+cluster://app:***@10.0.0.1:7000,10.0.0.2:7001"),
        "{out}"
    );
    assert!(!out.contains("pw-secret"), "{out}");
    let (ok, _, err) = run("redis+cluster://10.0.0.1");
    assert!(!ok);
    assert!(err.contains("is not host:port"), "{err}");
}
