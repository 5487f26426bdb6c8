//! Async queries across replicas sharing a `redis-server`, without sticky
//! sessions: the POST answered `202`, the `async_event` polls and the
//! `result_url` GET of one chart load reach different replicas, and the job
//! is followed through the shared tier (`jobs::shared`). Each test fails
//! when the registry of jobs is per process only.

use std::time::{Duration, Instant};

use crate::async_queries::{metric, start_redis_with};
use crate::support::browser::*;
use crate::support::redis_server::RedisProc;
use crate::support::*;
use chartcache::config::Config;

/// Three replicas on one `redis-server`, `cache.async_wait_ms` set to `wait_ms`.
pub(crate) async fn three_replicas(up: &Upstream, r: &RedisProc, wait_ms: u64) -> [Proxy; 3] {
    let tweak = |c: &mut Config| c.cache.async_wait_ms = wait_ms;
    [
        start_redis_with(up, r, tweak).await,
        start_redis_with(up, r, tweak).await,
        start_redis_with(up, r, tweak).await,
    ]
}

/// A `redis-server`, the fake Superset in GAQ mode with jobs of `job_ms`,
/// and three replicas waiting up to `wait_ms` for a running job.
async fn three_on_redis(job_ms: u64, wait_ms: u64) -> (RedisProc, Upstream, [Proxy; 3]) {
    let redis = RedisProc::server(&[]);
    let up = Upstream::start().await;
    gaq_upstream(&up, Duration::from_millis(job_ms));
    let ps = three_replicas(&up, &redis, wait_ms).await;
    (redis, up, ps)
}

fn all_metric(ps: &[Proxy], labels: &str) -> f64 {
    ps.iter().map(|p| metric(p, labels)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_polls_and_result_on_three_replicas_fill_the_post_for_every_replica() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let (_redis, up, ps) = three_on_redis(100, 10_000).await;
        let [a, b, cc] = &ps;
        let c = TestClient::new();
        let alice = Browser::new(2, "alice", "alice-ch");

        // The POST reaches A, the polls B, the result_url GET C.
        let ticket = post(&c, &a.url(""), &alice, &body(false)).await;
        assert_eq!(ticket.status, 202);
        let mut route = |s| match s {
            Step::Poll => b.url(""),
            Step::Result => cc.url(""),
        };
        let l = finish_via(&c, &mut route, &alice, ticket).await.unwrap();
        assert_eq!(user_of(&l.data), "alice");
        let (_, r) = l.result.unwrap();
        assert!(
            r.cache_status().contains("detail=async-filled"),
            "{}",
            r.cache_status()
        );

        // The next identical POST is a hit on every replica.
        for (i, p) in ps.iter().enumerate() {
            let other = Browser::new(2, "alice", &format!("again-{i}"));
            let r = post(&c, &p.url(""), &other, &body(false)).await;
            assert_eq!(r.status, 200, "replica {i}");
            assert!(
                r.cache_status().starts_with("chartcache; hit"),
                "replica {i}: {}",
                r.cache_status()
            );
            assert_eq!(user_of(&r.json()), "alice");
        }
        assert_eq!(up.state.gaq.jobs(), 1);
        assert_eq!(up.state.gaq.result_gets(), 1);
        assert_eq!(metric(b, "event=\"remote_linked\""), 1.0);
        assert_eq!(metric(cc, "event=\"remote_filled\""), 1.0);
        assert_eq!(metric(a, "event=\"remote_woken\""), 1.0);
        assert!(a.app.jobs.is_empty(), "the leader forgot the job");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_round_robin_over_three_replicas_make_one_job() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (_redis, up, ps) = three_on_redis(300, 20_000).await;
        let urls: Vec<String> = ps.iter().map(|p| p.url("")).collect();
        let c = TestClient::new();

        for round in 0..2 {
            let mut tasks = Vec::new();
            for i in 0..20 {
                let (c, urls) = (c.clone(), urls.clone());
                let b = Browser::new(2, "alice", &format!("ch-{round}-{i:02}"));
                tasks.push(tokio::spawn(async move {
                    load_via(&c, &urls, i, &b, &body(false)).await
                }));
            }
            for t in tasks {
                // `finish` refuses a ticket of another channel.
                let l = t.await.unwrap().expect("every client gets its data");
                assert_eq!(user_of(&l.data), "alice");
                if round == 1 {
                    assert!(
                        l.post.cache_status().starts_with("chartcache; hit"),
                        "{}",
                        l.post.cache_status()
                    );
                }
            }
            assert_eq!(up.state.gaq.jobs(), 1, "one job across three replicas");
        }
        assert!(up.state.gaq.result_gets() <= 1);
        assert_eq!(all_metric(&ps, "event=\"wait_timeout\""), 0.0);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_result_url_get_never_fills_the_first_users_post() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let (_redis, up, ps) = three_on_redis(100, 10_000).await;
        let [a, b, cc] = &ps;
        let c = TestClient::new();
        let alice = Browser::new(2, "alice", "alice-ch");
        let bob = Browser::new(3, "bob", "bob-ch");
        // Bob ran the same query straight at Superset: his rows are there.
        load(&c, &up.url(), &bob, &body(false)).await.unwrap();

        let ticket = post(&c, &a.url(""), &alice, &body(false)).await;
        assert_eq!(ticket.status, 202);
        // Alice's job is done and linked (her polls on B), but Bob fetches
        // the result_url (the same URL for both) on C before she does.
        let done = poll_until_done(&c, &b.url(""), &alice, &ticket)
            .await
            .unwrap();
        let r = get(&c, &cc.url(""), &bob, &done).await;
        assert_eq!(r.status, 200);
        assert_eq!(user_of(&r.json()), "bob", "bob's own rows");
        assert!(
            !r.cache_status().contains("async-filled"),
            "{}",
            r.cache_status()
        );
        assert_eq!(all_metric(&ps, "event=\"filled\""), 0.0);
        assert_eq!(all_metric(&ps, "event=\"remote_filled\""), 0.0);

        // Alice's own GET fills her POST; her POST is then a hit with her rows.
        let r = get(&c, &cc.url(""), &alice, &done).await;
        assert_eq!(user_of(&r.json()), "alice");
        assert!(
            r.cache_status().contains("detail=async-filled"),
            "{}",
            r.cache_status()
        );
        for p in &ps {
            let r = post(&c, &p.url(""), &Browser::new(2, "alice", "x"), &body(false)).await;
            assert!(
                r.cache_status().starts_with("chartcache; hit"),
                "{}",
                r.cache_status()
            );
            assert_eq!(user_of(&r.json()), "alice");
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_waiters_are_answered_soon_after_a_fill_elsewhere() {
    tokio::time::timeout(Duration::from_secs(30), async {
        // Waiters would wait a minute for a job their replica never sees done.
        let (_redis, up, ps) = three_on_redis(300, 60_000).await;
        let [a, b, cc] = &ps;
        let c = TestClient::new();
        let alice = Browser::new(2, "alice", "alice-ch");

        let ticket = post(&c, &a.url(""), &alice, &body(false)).await;
        assert_eq!(ticket.status, 202);
        // One waiter on the leader's replica, one on another replica (behind
        // the leader's fetch lock).
        let mut waiters = Vec::new();
        for (i, p) in [a, b].into_iter().enumerate() {
            let (c, url) = (c.clone(), p.url(""));
            let w = Browser::new(2, "alice", &format!("waiter-{i}"));
            waiters.push(tokio::spawn(async move {
                post(&c, &url, &w, &body(false)).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut route = |s| match s {
            Step::Poll => b.url(""),
            Step::Result => cc.url(""),
        };
        finish_via(&c, &mut route, &alice, ticket).await.unwrap();
        let filled = Instant::now();
        for w in waiters {
            let r = tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("answered soon after the fill")
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.cache_status());
            assert_eq!(user_of(&r.json()), "alice");
        }
        assert!(filled.elapsed() < Duration::from_secs(5));
        assert_eq!(up.state.gaq.jobs(), 1);
        assert!(a.app.jobs.is_empty(), "the leader's wait ended");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_job_records_in_redis_are_unknown_jobs() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let (redis, _up, ps) = three_on_redis(100, 1_000).await;
        let [a, b, cc] = &ps;
        let c = TestClient::new();
        let mut r = crate::support::redis_server::client(&redis.url()).await;

        for (i, junk) in [
            b"not json".to_vec(),
            br#"{"v":9,"job":"x"}"#.to_vec(),
            vec![b'{'; 64 * 1024],
        ]
        .into_iter()
        .enumerate()
        {
            let alice = Browser::new(2, "alice", &format!("ch-{i}"));
            // Forced: Superset answers each with a job (never from its cache).
            let ticket = post(&c, &a.url(""), &alice, &body(true)).await;
            assert_eq!(ticket.status, 202);
            let job = ticket.json()["job_id"].as_str().unwrap().to_string();
            let _: () = redis::cmd("SET")
                .arg(format!("chartcache:j:{job}"))
                .arg(junk)
                .query_async(&mut r)
                .await
                .unwrap();
            let mut route = |s| match s {
                Step::Poll => b.url(""),
                Step::Result => cc.url(""),
            };
            let l = finish_via(&c, &mut route, &alice, ticket).await.unwrap();
            let (_, res) = l.result.unwrap();
            assert_eq!(res.status, 200);
            assert_eq!(user_of(&l.data), "alice");
            assert!(
                !res.cache_status().contains("async-filled"),
                "{}",
                res.cache_status()
            );
        }
        // Linked by B (as the answers went by), unreadable for C (the too
        // long one is not read).
        let deadline = Instant::now() + Duration::from_secs(5);
        while metric(b, "event=\"remote_linked\"") < 3.0 {
            assert!(Instant::now() < deadline, "B linked every job");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(metric(cc, "event=\"remote_unknown\"") >= 3.0);
        assert_eq!(all_metric(&ps, "event=\"filled\""), 0.0);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_refresh_followed_on_other_replicas_replaces_the_entry() {
    tokio::time::timeout(Duration::from_secs(40), async {
        let (_redis, up, ps) = three_on_redis(100, 30_000).await;
        let [a, b, cc] = &ps;
        let c = TestClient::new();
        for (round, (force, generation_seen)) in [(false, 1), (true, 2)].into_iter().enumerate() {
            // A channel of its own per load: its polls carry that load's job only.
            let alice = Browser::new(2, "alice", &format!("alice-ch-{round}"));
            let ticket = post(&c, &a.url(""), &alice, &body(force)).await;
            assert_eq!(ticket.status, 202);
            let url = poll_until_done(&c, &b.url(""), &alice, &ticket)
                .await
                .unwrap();
            // B adds the link as the poll answer's last bytes go by; a GET
            // sent before it lands is served the older entry C holds (the
            // known window): this client is slower.
            let deadline = Instant::now() + Duration::from_secs(10);
            while metric(b, "event=\"remote_linked\"") < (round + 1) as f64 {
                assert!(Instant::now() < deadline, "B did not link the job");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let r = get(&c, &cc.url(""), &alice, &url).await;
            // C held the first job's result_url entry: the second job's
            // data is fetched, not the older entry served.
            assert_eq!(
                generation(&r.json()),
                generation_seen,
                "{}",
                r.cache_status()
            );
            assert!(
                r.cache_status().contains("detail=async-filled"),
                "{}",
                r.cache_status()
            );
            // The leader hears of the fill (and drops its stale-marked copy)
            // within moments.
            let deadline = Instant::now() + Duration::from_secs(10);
            while metric(a, "event=\"remote_woken\"") < (round + 1) as f64 {
                assert!(Instant::now() < deadline, "the leader was not woken");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for (name, p) in [("a", a), ("c", cc)] {
            let alice = Browser::new(2, "alice", "alice-later");
            let r = post(&c, &p.url(""), &alice, &body(false)).await;
            assert!(
                r.cache_status().starts_with("chartcache; hit"),
                "{name}: {}",
                r.cache_status()
            );
            assert_eq!(generation(&r.json()), 2, "{name}: the forced job's data");
        }
        assert_eq!(up.state.gaq.jobs(), 2);
    })
    .await
    .expect("bounded");
}
