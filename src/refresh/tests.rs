//! Unit tests of the refresh-ahead scheduler.

use super::*;
use crate::clock::Clock;
use crate::config::TierConfig;
use crate::store::entry::{Window, window};

/// Wall clock that follows tokio's (paused) time.
struct TokioClock {
    start_ms: u64,
    start: tokio::time::Instant,
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.start_ms + self.start.elapsed().as_millis() as u64
    }
}

fn tokio_clock() -> Arc<TokioClock> {
    Arc::new(TokioClock {
        start_ms: 1_000_000,
        start: tokio::time::Instant::now(),
    })
}

fn meta(stored_at: u64, fresh_secs: u64, tier: &TierConfig) -> Meta {
    Meta {
        status: 200,
        headers: vec![],
        stored_at,
        fresh_until: stored_at + fresh_secs * 1000,
        stale_until: stored_at + fresh_secs * 1000 + tier.stale_ms(),
        upstream_ms: 1,
        raw_len: 0,
        tags: vec![],
    }
}

fn spec(k: u8) -> FetchSpec {
    let (parts, ()) = http::Request::post("/api/v1/chart/data")
        .body(())
        .unwrap()
        .into_parts();
    FetchSpec {
        parts,
        body: bytes::Bytes::new(),
        key: CacheKey([k; 32]),
        tags: vec![],
        tier: None,
        respect_superset_timeout: true,
        custom_cache_timeout: None,
        conn: crate::proxy::ConnInfo {
            remote: None,
            proto: "http",
        },
        creds: None,
        origin: None,
    }
}

fn tier(fresh: u64, swr: u64, sie: u64) -> TierConfig {
    TierConfig {
        name: "t".into(),
        fresh_secs: fresh,
        stale_while_revalidate_secs: swr,
        stale_if_error_secs: sie,
    }
}

#[tokio::test(start_paused = true)]
async fn tier_windows_follow_time() {
    let clock = tokio_clock();
    let t = tier(30, 60, 300);
    let m = meta(clock.now_ms(), t.fresh_secs, &t);
    let at = |c: &TokioClock| window(&m, &t, c.now_ms());
    assert_eq!(at(&clock), Window::Fresh);
    tokio::time::advance(Duration::from_millis(29_999)).await;
    assert_eq!(at(&clock), Window::Fresh);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(at(&clock), Window::Revalidate);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(at(&clock), Window::IfError);
    tokio::time::advance(Duration::from_secs(240)).await;
    assert_eq!(at(&clock), Window::Expired);
    // No SWR window: straight to stale-if-error; a larger SWR than SIE
    // keeps revalidating until the entry leaves the store.
    let t = tier(30, 0, 300);
    let m = meta(0, 30, &t);
    assert_eq!(window(&m, &t, 30_000), Window::IfError);
    let t = tier(30, 600, 60);
    let m = meta(0, 30, &t);
    assert_eq!(window(&m, &t, 30_000 + 599_999), Window::Revalidate);
    assert_eq!(window(&m, &t, 30_000 + 600_000), Window::Expired);
}

#[test]
fn hot_after_exactly_hot_hits() {
    let r = Refresher::new(&RefreshAheadConfig::default());
    let t = tier(30, 0, 0);
    let e = Entry::build(meta(0, 30, &t), b"{}", 1, false).unwrap();
    let got: Vec<Hotness> = (0..5).map(|_| r.count_hit(&e, 3)).collect();
    use Hotness::*;
    assert_eq!(got, vec![Cold, Cold, Became, Hot, Hot]);
    // A new copy (a refreshed entry) counts from zero again.
    assert_eq!(r.count_hit(&e.clone(), 3), Cold);
    // 0 turns it off.
    assert!((0..100).all(|_| r.count_hit(&e, 0) == Cold));
}

#[test]
fn jobs_are_bounded_unique_and_keep_the_newest_credential() {
    let cfg = RefreshAheadConfig {
        max_tracked: 2,
        lead_secs: 10,
        ..Default::default()
    };
    let r = Refresher::new(&cfg);
    let t = tier(60, 0, 0);
    let m = meta(0, 60, &t);
    let add = |k: u8| {
        r.insert(
            &cfg,
            spec(k),
            None,
            Some((ScopeKind::User, Scope::User(2))),
            &m,
        )
        .is_some()
    };
    assert!(add(1));
    assert!(!add(1), "already tracked");
    assert!(add(2));
    assert!(!add(3), "bound reached");
    assert_eq!(r.tracked(), 2);
    let cred = |v: &'static str| Credentials {
        authorization: Some(http::HeaderValue::from_static(v)),
        ..Default::default()
    };
    r.touch(&CacheKey([1; 32]), Some(cred("Bearer a")));
    r.touch(&CacheKey([1; 32]), Some(cred("Bearer b")));
    r.touch(&CacheKey([1; 32]), None);
    let (due, next) = r.take_due(50_000);
    assert_eq!(due.len(), 2);
    assert_eq!(next, None);
    let j = due
        .iter()
        .find(|j| j.spec.key == CacheKey([1; 32]))
        .unwrap();
    assert_eq!(*j.cred.lock().unwrap(), Some(cred("Bearer b")));
    assert_eq!(r.tracked(), 0);
}

/// A tracked job keeps no slice of the request's buffers: hyper's parsed
/// header values and body chunks share the connection's read buffer.
#[test]
fn tracked_jobs_hold_their_own_copies() {
    let conn_buffer = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let inside = |p: *const u8| {
        let start = conn_buffer.as_ptr() as usize;
        (start..start + conn_buffer.len()).contains(&(p as usize))
    };
    // `n` bytes of the "connection buffer", as hyper hands them out.
    let shared = |n: usize| conn_buffer.slice(conn_buffer.len() - n..);
    let mut s = spec(1);
    s.body = shared(2);
    s.parts.headers.insert(
        "x-test",
        http::HeaderValue::from_maybe_shared(shared(4)).unwrap(),
    );
    assert!(inside(s.body.as_ptr()));
    s.detach();
    assert!(!inside(s.body.as_ptr()));
    assert_eq!(&s.body[..], b"xx");
    let v = s.parts.headers.get("x-test").unwrap();
    assert!(!inside(v.as_bytes().as_ptr()));
    assert_eq!(v.as_bytes(), b"xxxx");

    let cfg = RefreshAheadConfig::default();
    let r = Refresher::new(&cfg);
    let t = tier(60, 0, 0);
    let tok = || Credentials {
        authorization: Some(http::HeaderValue::from_maybe_shared(shared(8)).unwrap()),
        ..Default::default()
    };
    let job = r
        .insert(&cfg, spec(1), Some(tok()), None, &meta(0, 60, &t))
        .unwrap();
    let held = |j: &HotJob| {
        j.cred
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .authorization
            .clone()
            .unwrap()
    };
    assert!(!inside(held(&job).as_bytes().as_ptr()));
    // The same credential again changes nothing; another one is copied too.
    let before = held(&job).as_bytes().as_ptr();
    r.touch(&CacheKey([1; 32]), Some(tok()));
    assert_eq!(held(&job).as_bytes().as_ptr(), before);
    let mut other = tok();
    other.session = Some("s".into());
    r.touch(&CacheKey([1; 32]), Some(other));
    assert!(!inside(held(&job).as_bytes().as_ptr()));
    assert_eq!(
        job.cred
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .session
            .as_deref(),
        Some("s")
    );
}

#[test]
fn lead_is_capped_at_half_the_fresh_lifetime() {
    let cfg = RefreshAheadConfig {
        lead_secs: 10,
        ..Default::default()
    };
    let r = Refresher::new(&cfg);
    let t = tier(4, 0, 0);
    let j = r
        .insert(&cfg, spec(1), None, None, &meta(1_000, 4, &t))
        .unwrap();
    assert_eq!(j.due, 3_000);
    let t = tier(300, 0, 0);
    let j = r
        .insert(&cfg, spec(2), None, None, &meta(0, 300, &t))
        .unwrap();
    assert_eq!(j.due, 290_000);
}

#[tokio::test(start_paused = true)]
async fn scheduler_fires_each_job_once_at_its_due_time() {
    let clock = tokio_clock();
    let start = clock.now_ms();
    let cfg = RefreshAheadConfig {
        lead_secs: 10,
        ..Default::default()
    };
    let r = Refresher::new(&cfg);
    let t = tier(60, 0, 0);
    let fired: Arc<Mutex<Vec<(u8, u64)>>> = Arc::default();
    let alive = Arc::new(AtomicBool::new(true));
    let (f, a, c) = (fired.clone(), alive.clone(), clock.clone());
    let task = tokio::spawn(r.clone().schedule(
        clock.clone(),
        move || a.load(Ordering::SeqCst),
        move |job| {
            f.lock()
                .unwrap()
                .push((job.spec.key.0[0], c.now_ms() - start));
        },
    ));
    // Two hot entries: one stored now (due at 50 s), one stored 20 s later.
    r.insert(&cfg, spec(1), None, None, &meta(start, 60, &t))
        .unwrap();
    r.wake();
    tokio::time::advance(Duration::from_secs(20)).await;
    r.insert(&cfg, spec(2), None, None, &meta(start + 20_000, 60, &t))
        .unwrap();
    r.wake();
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let got = fired.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, 1);
    assert!((50_000..=50_100).contains(&got[0].1), "{got:?}");
    assert_eq!(got[1].0, 2);
    assert!((70_000..=70_100).contains(&got[1].1), "{got:?}");
    assert_eq!(r.tracked(), 0);
    alive.store(false, Ordering::SeqCst);
    r.wake();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("scheduler stops when the app is gone")
        .unwrap();
}
