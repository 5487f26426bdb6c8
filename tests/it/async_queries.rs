//! Superset with GLOBAL_ASYNC_QUERIES behind chartcache: chart-data POSTs are
//! answered 202 with a ticket for the client's own async channel, the client
//! polls `/api/v1/async_event/` and fetches `result_url`. The fake upstream's
//! GAQ mode (`fake_superset::gaq`) behaves as Superset 6.1 does; each test
//! drives clients the way Superset's front end does (`support::browser`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::browser::*;
use crate::support::redis_server::RedisProc;
use crate::support::*;
use chartcache::app::App;
use chartcache::clock::{SharedClock, SystemClock};
use chartcache::config::{Config, RedisConfig};
use chartcache::metrics::Metrics;
use chartcache::store::setup;
use serde_json::json;

pub(crate) fn metric(p: &Proxy, labels: &str) -> f64 {
    let text = String::from_utf8(p.app.metrics.render()).unwrap();
    text.lines()
        .filter(|l| l.starts_with("chartcache_async_queries_total") && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_channels_of_one_user_make_one_job_and_each_gets_its_data() {
    let up = Upstream::start().await;
    gaq_upstream(&up, Duration::from_millis(300));
    let p = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();

    let first = stampede(&c, &[&p], 20).await;
    for r in &first {
        let l = r.as_ref().expect("every browser gets its data");
        assert_eq!(user_of(&l.data), "alice");
    }
    assert_eq!(up.state.gaq.jobs(), 1, "one job for 20 identical POSTs");
    // One ticket, for its own channel; everyone else waited for the job's
    // data (directly, or behind a request that waited for it).
    let tickets = first
        .iter()
        .filter(|r| r.as_ref().unwrap().post.status == 202);
    assert_eq!(tickets.count(), 1);
    let statuses: Vec<String> = first
        .iter()
        .map(|r| r.as_ref().unwrap().post.cache_status())
        .collect();
    let waited = statuses
        .iter()
        .filter(|s| s.contains("detail=async-wait"))
        .count();
    assert!(waited >= 1, "{statuses:?}");
    let collapsed = statuses.iter().filter(|s| s.contains("collapsed")).count();
    assert_eq!(collapsed, 19, "{statuses:?}");
    assert!(
        up.state.gaq.result_gets() <= 1,
        "one result_url GET upstream"
    );
    assert_eq!(metric(&p, "event=\"ticket\""), 1.0);
    assert_eq!(metric(&p, "event=\"linked\""), 1.0);
    assert_eq!(metric(&p, "event=\"filled\""), 1.0);
    assert!(metric(&p, "event=\"wait\"") >= 1.0);
    assert_eq!(metric(&p, "event=\"wait_timeout\""), 0.0);
    assert!(p.app.jobs.is_empty(), "a filled job is forgotten");

    // The second load is all hits.
    let second = stampede(&c, &[&p], 20).await;
    for r in &second {
        let l = r.as_ref().expect("second load");
        assert_eq!(l.post.status, 200);
        assert!(
            l.post.cache_status().starts_with("chartcache; hit"),
            "second load hit: {}",
            l.post.cache_status()
        );
        assert_eq!(user_of(&l.data), "alice");
    }
    assert_eq!(up.state.gaq.jobs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_url_is_cached_per_user_and_never_leaks_rows() {
    let up = Upstream::start().await;
    gaq_upstream(&up, Duration::from_millis(50));
    let proxy = Proxy::start(test_config(&up.url())).await;
    let p = &proxy.url("");
    let c = TestClient::new();
    let alice = Browser::new(2, "alice", "alice-ch");
    let bob = Browser::new(3, "bob", "bob-ch");

    let a = load(&c, p, &alice, &body(false)).await.unwrap();
    let b = load(&c, p, &bob, &body(false)).await.unwrap();
    assert_eq!(user_of(&a.data), "alice");
    assert_eq!(user_of(&b.data), "bob");
    let (ua, ra) = a.result.unwrap();
    let (ub, _) = b.result.unwrap();
    assert_eq!(ua, ub, "Superset gives both users the same result_url");
    assert!(
        ra.cache_status().contains("detail=async-filled"),
        "{}",
        ra.cache_status()
    );
    assert_eq!(up.state.gaq.result_gets(), 2);

    for _ in 0..2 {
        for (who, name) in [(&alice, "alice"), (&bob, "bob")] {
            let r = get(&c, p, who, &ua).await;
            assert_eq!(r.status, 200);
            assert_eq!(user_of(&r.json()), name, "own rows only");
            assert!(
                r.cache_status().starts_with("chartcache; hit"),
                "{}",
                r.cache_status()
            );
        }
    }
    assert_eq!(up.state.gaq.result_gets(), 2, "repeats are hits");
    // And the POSTs are hits with each user's own data.
    for (who, name) in [(&alice, "alice"), (&bob, "bob")] {
        let r = post(&c, p, who, &body(false)).await;
        assert!(
            r.cache_status().starts_with("chartcache; hit"),
            "{}",
            r.cache_status()
        );
        assert_eq!(user_of(&r.json()), name);
    }
    assert_eq!(up.state.gaq.jobs(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_refresh_answered_202_replaces_the_entry_with_the_jobs_data() {
    let up = Upstream::start().await;
    gaq_upstream(&up, Duration::from_millis(50));
    let proxy = Proxy::start(test_config(&up.url())).await;
    let p = &proxy.url("");
    let c = TestClient::new();
    let alice = Browser::new(2, "alice", "alice-ch");

    let first = load(&c, p, &alice, &body(false)).await.unwrap();
    assert_eq!(generation(&first.data), 1);
    let hit = post(&c, p, &alice, &body(false)).await;
    assert!(
        hit.cache_status().starts_with("chartcache; hit"),
        "{}",
        hit.cache_status()
    );

    let ticket = post(&c, p, &alice, &body(true)).await;
    // While the forced job runs, the entry it replaces is stale.
    let meanwhile = post(&c, p, &alice, &body(false)).await;
    assert!(
        meanwhile.cache_status().contains("detail=stale"),
        "{}",
        meanwhile.cache_status()
    );
    assert_eq!(generation(&meanwhile.json()), 1);
    // No revalidation races the job with Superset's older data.
    let text = String::from_utf8(proxy.app.metrics.render()).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("chartcache_background_refreshes_total")
                && l.contains("async_job")),
        "the revalidation is left to the job"
    );
    let forced = finish(&c, p, &alice, ticket).await.unwrap();
    assert_eq!(forced.post.status, 202);
    assert!(
        forced.post.cache_status().contains("detail=async-202"),
        "{}",
        forced.post.cache_status()
    );
    assert_eq!(generation(&forced.data), 2);
    let after = post(&c, p, &alice, &body(false)).await;
    assert_eq!(after.status, 200);
    assert!(
        after.cache_status().starts_with("chartcache; hit"),
        "{}",
        after.cache_status()
    );
    assert_eq!(
        generation(&after.json()),
        2,
        "the job's data replaced the entry"
    );
    assert_eq!(up.state.gaq.jobs(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_clients_without_async_token_get_supersets_401_unless_cached() {
    let up = Upstream::start().await;
    gaq_upstream(&up, Duration::from_millis(50));
    let p = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();

    let r = c.chart(&p, "alice-token", &body(false)).await;
    assert_eq!(r.status, 401, "Superset's answer on a miss");
    assert!(
        r.header("set-cookie")
            .is_some_and(|v| v.starts_with("async-token="))
    );
    assert_eq!(up.state.gaq.jobs(), 0);

    let alice = Browser::new(2, "alice", "alice-ch");
    load(&c, &p.url(""), &alice, &body(false)).await.unwrap();
    let r = c.chart(&p, "alice-token", &body(false)).await;
    assert_eq!(r.status, 200, "alice's entry, filled by her browser");
    assert!(
        r.cache_status().starts_with("chartcache; hit"),
        "{}",
        r.cache_status()
    );
    assert_eq!(user_of(&r.json()), "alice");
    // bob has no entry: his Bearer client gets Superset's 401.
    let r = c.chart(&p, "bob-token", &body(false)).await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_run_one_job() {
    let redis = RedisProc::server(&[]);
    let up = Upstream::start().await;
    gaq_upstream(&up, Duration::from_millis(500));
    let a = start_redis(&up, &redis).await;
    let b = start_redis(&up, &redis).await;
    let c = TestClient::new();

    let loads = stampede(&c, &[&a, &b], 20).await;
    for r in &loads {
        let l = r.as_ref().expect("every browser gets its data");
        assert_eq!(user_of(&l.data), "alice");
    }
    assert_eq!(up.state.gaq.jobs(), 1, "one job across both replicas");
    let again = stampede(&c, &[&a, &b], 20).await;
    for r in &again {
        let l = r.as_ref().unwrap();
        assert!(
            l.post.cache_status().starts_with("chartcache; hit"),
            "{}",
            l.post.cache_status()
        );
    }
    assert_eq!(up.state.gaq.jobs(), 1);
}

async fn start_redis(up: &Upstream, r: &RedisProc) -> Proxy {
    start_redis_with(up, r, |_| {}).await
}

pub(crate) async fn start_redis_with(
    up: &Upstream,
    r: &RedisProc,
    tweak: impl FnOnce(&mut Config),
) -> Proxy {
    Proxy::expect_threads();
    let mut cfg = test_config(&up.url());
    tweak(&mut cfg);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_wait_bound_a_post_is_forwarded_with_its_own_ticket() {
    let up = Upstream::start().await;
    gaq_upstream(&up, Duration::from_millis(1_500));
    let mut cfg = test_config(&up.url());
    cfg.cache.async_wait_ms = 200;
    let proxy = Proxy::start(cfg).await;
    let p = &proxy.url("");
    let c = TestClient::new();
    let (one, two) = (
        Browser::new(2, "alice", "one"),
        Browser::new(2, "alice", "two"),
    );

    let first = post(&c, p, &one, &body(false)).await;
    assert_eq!(first.status, 202);
    let started = Instant::now();
    let second = post(&c, p, &two, &body(false)).await;
    assert_eq!(second.status, 202, "forwarded once the wait ran out");
    assert_eq!(second.json()["channel_id"], json!("two"), "its own ticket");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(up.state.gaq.jobs(), 2);
    assert_eq!(metric(&proxy, "event=\"wait_timeout\""), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_of_the_posts_tags_removes_the_result_url_entry_too() {
    let up = Upstream::start().await;
    gaq_upstream(&up, Duration::from_millis(50));
    let proxy = Proxy::start(test_config(&up.url())).await;
    let p = &proxy.url("");
    let c = TestClient::new();
    let alice = Browser::new(2, "alice", "alice-ch");

    let l = load(&c, p, &alice, &body(false)).await.unwrap();
    let (url, _) = l.result.unwrap();
    let hit = get(&c, p, &alice, &url).await;
    assert!(hit.cache_status().starts_with("chartcache; hit"));
    // The fixture's datasource is table 1: the POST's tag, given to its result_url.
    let r = proxy.purge(&c, r#"{"tags": ["dataset:1__table"]}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let again = get(&c, p, &alice, &url).await;
    assert!(
        again.cache_status().contains("fwd=miss"),
        "{}",
        again.cache_status()
    );
    let post_again = post(&c, p, &alice, &body(false)).await;
    assert!(
        !post_again.cache_status().starts_with("chartcache; hit"),
        "{}",
        post_again.cache_status()
    );
}
