//! The Redis store against real redis-server processes: key layout and TTLs,
//! purges, the circuit breaker, credentials, and the fetch lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::redis_server::*;
use chartcache::clock::{SharedClock, SystemClock};
use chartcache::config::RedisConfig;
use chartcache::key::CacheKey;
use chartcache::metrics::Metrics;
use chartcache::store::breaker::BreakerState;
use chartcache::store::redis::RedisStore;
use chartcache::store::{Entry, Meta, Purge, Store, StoreError};

fn clock() -> SharedClock {
    Arc::new(SystemClock)
}

fn now() -> u64 {
    use chartcache::clock::Clock;
    SystemClock.now_ms()
}

fn entry(tags: &[&str], fresh_ms: u64, stale_ms: u64) -> Arc<Entry> {
    let now = now();
    let body = format!("{{\"result\": [{{\"data\": \"{}\"}}]}}", "x".repeat(200));
    let meta = Meta {
        status: 200,
        headers: vec![(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )],
        stored_at: now,
        fresh_until: now + fresh_ms,
        stale_until: now + fresh_ms + stale_ms,
        upstream_ms: 12,
        raw_len: body.len() as u32,
        tags: tags.iter().map(|s| s.to_string()).collect(),
    };
    Arc::new(Entry::build(meta, body.as_bytes(), 3, false).unwrap())
}

fn key(i: u8) -> CacheKey {
    CacheKey([i; 32])
}

fn cfg(url: String) -> RedisConfig {
    RedisConfig {
        url: Some(url),
        // These tests are about what the store does, not how fast: the
        // production 50 ms times out a GET on a loaded two-core test machine.
        timeout_ms: 1000,
        ..RedisConfig::default()
    }
}

fn store(cfg: RedisConfig) -> Arc<RedisStore> {
    RedisStore::new(cfg, Arc::new(Metrics::new()), clock()).unwrap()
}

#[tokio::test]
async fn get_put_purge_with_key_layout_and_ttls() {
    let r = RedisProc::server(&[]);
    let s = store(RedisConfig {
        prefix: "cc1".into(),
        ..cfg(r.url())
    });
    s.check().await.unwrap();
    let e1 = entry(&["chart:1", "dataset:7__table"], 60_000, 60_000);
    s.put(&key(1), e1.clone()).await.unwrap();
    s.put(
        &key(2),
        entry(&["chart:2", "dataset:7__table"], 60_000, 600_000),
    )
    .await
    .unwrap();
    s.put(&key(3), entry(&["chart:3"], 60_000, 0))
        .await
        .unwrap();

    // Round trip: the same meta and body.
    let got = s.get(&key(1)).await.unwrap().unwrap();
    assert_eq!(got.meta, e1.meta);
    assert_eq!(got.decompress().unwrap(), e1.decompress().unwrap());
    assert!(s.get(&key(9)).await.unwrap().is_none());

    // Layout: entry under {prefix}:e:{hex} with PX TTL = stale_until - now.
    let mut c = client(&r.url()).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("cc1:e:{}", key(1).to_hex()))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((110_000..=120_000).contains(&pttl), "{pttl}");
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("cc1:t:dataset:7__table")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(members.len(), 2);
    // The tag set lives as long as its longest-lived member.
    let tag_ttl: i64 = redis::cmd("PTTL")
        .arg("cc1:t:dataset:7__table")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((650_000..=660_000).contains(&tag_ttl), "{tag_ttl}");

    // Purges.
    assert_eq!(
        s.purge(&Purge::Tags(vec!["dataset:7__table".into()]))
            .await
            .unwrap(),
        2
    );
    assert!(s.get(&key(1)).await.unwrap().is_none());
    assert!(s.get(&key(2)).await.unwrap().is_none());
    assert!(s.get(&key(3)).await.unwrap().is_some());
    assert_eq!(
        s.purge(&Purge::Keys(vec![key(3), key(4)])).await.unwrap(),
        1
    );

    // Purge all touches only this prefix.
    let other = store(RedisConfig {
        prefix: "cc2".into(),
        ..cfg(r.url())
    });
    other
        .put(&key(5), entry(&["chart:5"], 60_000, 0))
        .await
        .unwrap();
    for i in 10..20 {
        s.put(&key(i), entry(&["chart:x"], 60_000, 0))
            .await
            .unwrap();
    }
    assert_eq!(s.purge(&Purge::All).await.unwrap(), 10);
    assert!(s.get(&key(10)).await.unwrap().is_none());
    assert!(other.get(&key(5)).await.unwrap().is_some());
}

#[tokio::test]
async fn entries_expire_at_stale_until() {
    let r = RedisProc::server(&[]);
    let s = store(cfg(r.url()));
    s.put(&key(1), entry(&[], 100, 200)).await.unwrap();
    assert!(s.get(&key(1)).await.unwrap().is_some());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if s.get(&key(1)).await.unwrap().is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "entry outlived stale_until");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Already expired: not written at all.
    let mut past = (*entry(&[], 0, 0)).clone();
    past.meta.stale_until = now() - 1;
    s.put(&key(2), Arc::new(past)).await.unwrap();
    assert!(s.get(&key(2)).await.unwrap().is_none());
}

#[tokio::test]
async fn garbage_under_an_entry_key_is_a_miss() {
    let r = RedisProc::server(&[]);
    let s = store(cfg(r.url()));
    let mut c = client(&r.url()).await;
    let _: () = redis::cmd("SET")
        .arg(format!("chartcache:e:{}", key(1).to_hex()))
        .arg("not an entry")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(s.get(&key(1)).await.unwrap().is_none());
    assert_eq!(s.breaker().state(), BreakerState::Closed);
}

#[tokio::test]
async fn breaker_opens_when_redis_stops_and_closes_when_it_returns() {
    let mut r = RedisProc::server(&[]);
    let s = store(RedisConfig {
        breaker_failures: 3,
        breaker_cooldown_ms: 200,
        // The production timeout: failures must cost at most this.
        timeout_ms: 50,
        ..cfg(r.url())
    });
    // Seeds the key; not asserted (50 ms can pass on a loaded machine, and
    // the gets below fail either way once Redis is gone).
    s.put(&key(1), entry(&[], 60_000, 0)).await.ok();
    r.kill();
    let timeout = Duration::from_millis(s.config().timeout_ms);
    for _ in 0..3 {
        let t = Instant::now();
        assert!(s.get(&key(1)).await.is_err());
        assert!(
            t.elapsed() < timeout + Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }
    assert_eq!(s.breaker().state(), BreakerState::Open);
    // Open: no Redis wait at all.
    let t = Instant::now();
    for _ in 0..100 {
        assert!(matches!(
            s.get(&key(1)).await,
            Err(StoreError::Unavailable(_))
        ));
    }
    assert!(t.elapsed() < Duration::from_millis(20), "{:?}", t.elapsed());

    r.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if s.put(&key(2), entry(&[], 60_000, 0)).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "breaker never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.breaker().state(), BreakerState::Closed);
    assert!(s.get(&key(2)).await.unwrap().is_some());
}

#[tokio::test]
async fn slow_redis_costs_at_most_the_timeout() {
    let r = RedisProc::server(&["enable-debug-command yes"]);
    let s = store(RedisConfig {
        breaker_failures: 1000,
        timeout_ms: 50,
        ..cfg(r.url())
    });
    s.put(&key(1), entry(&[], 60_000, 0)).await.ok();
    // Block the server for 1 s, then time a get.
    let blocker = tokio::spawn({
        let url = r.url();
        async move {
            let mut c = client(&url).await;
            let _: redis::RedisResult<()> = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg("1")
                .query_async(&mut c)
                .await;
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let res = s.get(&key(1)).await;
    assert!(matches!(res, Err(StoreError::Timeout)), "{res:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(45) && took < Duration::from_millis(150),
        "{took:?}"
    );
    blocker.await.unwrap();
}

#[tokio::test]
async fn password_and_acl_user() {
    let r = RedisProc::server(&[
        "requirepass defaultpw",
        "user app on >apppw ~chartcache:* &* +@all",
    ]);
    // Default user with a password in the URL.
    let s = store(cfg(format!("redis://:defaultpw@{}", r.addr())));
    s.check().await.unwrap();
    s.put(&key(1), entry(&["chart:1"], 60_000, 0))
        .await
        .unwrap();
    // ACL user from config (not the URL): sees the same entry.
    let s2 = store(RedisConfig {
        username: Some("app".into()),
        password: Some("apppw".into()),
        ..cfg(r.url())
    });
    s2.check().await.unwrap();
    assert!(s2.get(&key(1)).await.unwrap().is_some());
    // The ACL user may not touch keys outside its prefix.
    let s3 = store(RedisConfig {
        prefix: "other".into(),
        username: Some("app".into()),
        password: Some("apppw".into()),
        breaker_failures: 1000,
        ..cfg(r.url())
    });
    assert!(s3.put(&key(1), entry(&[], 60_000, 0)).await.is_err());
}

#[tokio::test]
async fn wrong_password_is_a_clear_error() {
    let r = RedisProc::server(&["requirepass rightpw"]);
    let s = store(cfg(format!("redis://:wrongpw@{}", r.addr())));
    let msg = s.check().await.unwrap_err().to_string();
    assert!(msg.contains("refused the credentials"), "{msg}");
    assert!(msg.contains("redis.password"), "{msg}");
    assert!(!msg.contains("wrongpw"), "password leaked: {msg}");
    // No password at all against a protected server: same kind of message.
    let s = store(cfg(r.url()));
    let msg = s.check().await.unwrap_err().to_string();
    assert!(msg.contains("refused the credentials"), "{msg}");
}

#[tokio::test]
async fn nothing_listening_is_a_clear_error() {
    let port = free_port();
    let s = store(cfg(format!("redis://127.0.0.1:{port}")));
    let msg = s.check().await.unwrap_err().to_string();
    assert!(
        msg.contains("unavailable") || msg.contains("did not answer"),
        "{msg}"
    );
}

#[tokio::test]
async fn fetch_lock_is_exclusive_and_released_by_token() {
    let r = RedisProc::server(&[]);
    let s = store(RedisConfig {
        lock_ttl_ms: 300,
        ..cfg(r.url())
    });
    assert!(s.try_lock(&key(1), "a").await.unwrap());
    assert!(!s.try_lock(&key(1), "b").await.unwrap());
    // Not ours: stays.
    assert!(!s.unlock_and_announce(&key(1), "b").await.unwrap());
    assert!(!s.try_lock(&key(1), "b").await.unwrap());
    assert!(s.unlock_and_announce(&key(1), "a").await.unwrap());
    assert!(s.try_lock(&key(1), "b").await.unwrap());
    // It expires by itself (lock_ttl_ms), so a dead holder cannot wedge a key.
    let mut c = client(&r.url()).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("chartcache:l:{}", key(1).to_hex()))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((1..=300).contains(&pttl), "{pttl}");
}

/// Releasing a lock announces it on `{prefix}:rel` in the same script, and
/// only a release that really removed our lock is announced.
#[tokio::test]
async fn a_release_is_announced_only_by_its_holder() {
    use futures_util::StreamExt;
    let r = RedisProc::server(&[]);
    let s = store(cfg(r.url()));
    let raw = redis::Client::open(r.url()).unwrap();
    let mut ps = raw.get_async_pubsub().await.unwrap();
    ps.subscribe("chartcache:rel").await.unwrap();
    assert!(s.try_lock(&key(6), "a").await.unwrap());
    // Not ours: the lock stays and nothing is announced.
    assert!(!s.unlock_and_announce(&key(6), "b").await.unwrap());
    assert!(!s.try_lock(&key(6), "c").await.unwrap());
    assert!(s.unlock_and_announce(&key(6), "a").await.unwrap());
    // Already gone: nothing to announce either.
    assert!(!s.unlock_and_announce(&key(6), "a").await.unwrap());
    let mut c = client(&r.url()).await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg("chartcache:rel")
        .arg("end")
        .query_async(&mut c)
        .await
        .unwrap();
    // Messages arrive in order: exactly one announcement, then the marker.
    let mut msgs = ps.on_message();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), msgs.next())
            .await
            .expect("a message within 5 s")
            .expect("subscription open")
            .get_payload_bytes()
            .to_vec()
    };
    assert_eq!(next().await, key(6).0.to_vec());
    assert_eq!(next().await, b"end".to_vec());
}

/// A holder that fetches for longer than `lock_ttl_ms` keeps its lock (it is
/// extended while held), and releases it when done. (A holder that dies stops
/// extending: its lock lapses by the TTL, as `fetch_lock_is_exclusive_and_released_by_token` shows.)
#[tokio::test]
async fn a_held_fetch_lock_outlives_its_ttl_and_is_released_when_dropped() {
    use chartcache::store::lock::{Remote, coordinate};
    let r = RedisProc::server(&[]);
    let s = store(RedisConfig {
        lock_ttl_ms: 300,
        ..cfg(r.url())
    });
    let clock: chartcache::clock::SharedClock = Arc::new(chartcache::clock::SystemClock);
    let Remote::Fetch(Some(held)) = coordinate(s.as_ref(), &key(2), &clock).await else {
        panic!("the first caller takes the lock");
    };
    // Three TTLs later (the holder is still "fetching"), the lock is still ours.
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        assert!(
            !s.try_lock(&key(2), "other").await.unwrap(),
            "lock lapsed while held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Done: the release (spawned on drop) frees it for the next fetch.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.try_lock(&key(2), "other").await.unwrap() {
        assert!(Instant::now() < deadline, "a released lock stayed taken");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The lookup before the lock missed, and then another replica stored the
/// entry and released its lock: the lock is free again and taking it must not
/// mean a second Superset query. The entry is served, and the lock just taken
/// is given back at once.
#[tokio::test]
async fn an_entry_stored_before_the_lock_was_taken_is_served_not_fetched() {
    use chartcache::store::lock::{Remote, coordinate};
    let r = RedisProc::server(&[]);
    let s = store(cfg(r.url()));
    let stored = entry(&[], 60_000, 0);
    s.put(&key(4), stored.clone()).await.unwrap();
    match coordinate(s.as_ref(), &key(4), &clock()).await {
        Remote::Entry(e) => assert_eq!(e.meta.stored_at, stored.meta.stored_at),
        Remote::Fetch(_) => panic!("a fresh entry was already stored: fetching again"),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.try_lock(&key(4), "other").await.unwrap() {
        assert!(
            Instant::now() < deadline,
            "the lock taken for the re-read stayed held"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A stale-only entry is no answer: the caller fetches, holding the lock.
    s.put(&key(5), entry(&[], 0, 60_000)).await.unwrap();
    assert!(matches!(
        coordinate(s.as_ref(), &key(5), &clock()).await,
        Remote::Fetch(Some(_))
    ));
}

/// Wait (bounded) until Redis counts `want` connections.
async fn reaches(c: &mut redis::aio::MultiplexedConnection, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = clients(c).await;
        if n == want {
            return;
        }
        assert!(
            n < want && Instant::now() < deadline,
            "{n} connections, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A per-core proxy thread stand-in: its own single-threaded runtime, as the
/// proxy's threads have, up (with the connection drivers it runs) until
/// dropped. `serve` has it answer three gets, all of which must be hits.
struct ProxyThread {
    go: Option<std::sync::mpsc::Sender<()>>,
    done: std::sync::mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProxyThread {
    fn start(i: usize, s: Arc<RedisStore>) -> ProxyThread {
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            chartcache::worker::enter(i);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut go_rx = Some(go_rx);
                loop {
                    // Wait off the runtime, so the drivers on it keep running.
                    let rx = go_rx.take().unwrap();
                    let (rx, got) = tokio::task::spawn_blocking(move || {
                        let got = rx.recv();
                        (rx, got)
                    })
                    .await
                    .unwrap();
                    if got.is_err() {
                        return;
                    }
                    go_rx = Some(rx);
                    for _ in 0..3 {
                        let got = s.get(&key(1)).await;
                        assert!(matches!(got, Ok(Some(_))), "thread {i}: {got:?}");
                    }
                    done_tx.send(()).unwrap();
                }
            });
        });
        ProxyThread {
            go: Some(go),
            done,
            thread: Some(thread),
        }
    }

    fn serve(&self) {
        self.go.as_ref().unwrap().send(()).unwrap();
        self.done
            .recv_timeout(Duration::from_secs(10))
            .expect("thread served its gets");
    }
}

impl Drop for ProxyThread {
    fn drop(&mut self) {
        drop(self.go.take());
        let joined = self.thread.take().unwrap().join();
        if !std::thread::panicking() {
            joined.unwrap();
        }
    }
}

/// A store with one entry, its shared connections open, and two per-core
/// threads announced (as main does before the master is resolved); with its
/// metrics, a connection to count Redis's clients, and that count.
async fn per_thread_setup(
    r: &RedisProc,
) -> (
    Arc<RedisStore>,
    Arc<Metrics>,
    redis::aio::MultiplexedConnection,
    usize,
) {
    chartcache::worker::expect(2);
    let metrics = Arc::new(Metrics::new());
    let s = RedisStore::new(cfg(r.url()), metrics.clone(), clock()).unwrap();
    // Resolution, from a thread that is not a per-core one, opens the shared set.
    s.put(&key(1), entry(&[], 60_000, 0)).await.unwrap();
    let mut admin = client(&r.url()).await;
    let base = clients(&mut admin).await;
    (s, metrics, admin, base)
}

/// Connections each per-core thread opens: its share of the default `connections`.
fn share() -> usize {
    RedisConfig::default()
        .connections
        .div_ceil(chartcache::worker::count())
}

/// The store's `chartcache_redis_connections{set}` gauge.
fn held(m: &Metrics, set: &str) -> i64 {
    m.redis_connections.with_label_values(&[set]).get()
}

// Multi-threaded: the shared set's drivers run on this runtime and must keep
// running while the test blocks waiting for a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_proxy_thread_opens_and_keeps_its_own_share_of_connections() {
    let r = RedisProc::server(&[]);
    let (s, metrics, mut admin, base) = per_thread_setup(&r).await;
    let share = share();
    // Per core, the connection opened with the master is a single one.
    assert_eq!(held(&metrics, "shared"), 1);
    assert_eq!(held(&metrics, "thread"), 0);
    let threads = [
        ProxyThread::start(0, s.clone()),
        ProxyThread::start(1, s.clone()),
    ];
    // Thread 0's first gets open its share; more gets open no more.
    threads[0].serve();
    reaches(&mut admin, base + share).await;
    threads[0].serve();
    assert_eq!(clients(&mut admin).await, base + share);
    // Thread 1 opens its own share rather than using thread 0's.
    threads[1].serve();
    reaches(&mut admin, base + 2 * share).await;
    threads[1].serve();
    threads[0].serve();
    assert_eq!(clients(&mut admin).await, base + 2 * share);
    // The gauge counts what Redis counts. Redis counts a connection as soon
    // as it is accepted, a moment before the thread that opened it counts it:
    // wait (bounded) for the gauge to catch up.
    let want = 2 * share as i64;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while held(&metrics, "thread") != want && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(held(&metrics, "thread"), want);
    drop(threads);
    // Threads that are not per-core ones still use the shared set.
    assert!(s.get(&key(1)).await.unwrap().is_some());
}

/// Connections Redis refused since it started (`maxclients` reached).
async fn rejected(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("rejected_connections:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("rejected_connections in INFO stats")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_that_cannot_open_its_share_keeps_using_the_shared_set() {
    let r = RedisProc::server(&[]);
    let (s, metrics, mut admin, base) = per_thread_setup(&r).await;
    let share = share() as u64;
    // Redis refuses any further connection.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(base)
        .query_async(&mut admin)
        .await
        .unwrap();
    let t = ProxyThread::start(0, s.clone());
    t.serve();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rejected(&mut admin).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the thread never tried to open its share"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every get is still a hit (`serve` checks), over the shared set, and the
    // thread does not try again for each request: one attempt's connections
    // were refused, not one per get.
    for _ in 0..5 {
        t.serve();
    }
    assert!(rejected(&mut admin).await <= share);
    assert_eq!(clients(&mut admin).await, base);
    assert_eq!(held(&metrics, "thread"), 0);
}
