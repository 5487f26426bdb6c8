//! Background refreshes: stale-while-revalidate and refresh-ahead of hot entries.
//!
//! * **Stale-while-revalidate**: a request that finds its entry past `fresh` but
//!   inside the tier's SWR window is answered from the entry at once;
//!   [`revalidate`] refreshes the entry in the background. The refresh takes the
//!   key's coalescing lead without waiting, so any number of concurrent stale
//!   hits start one refresh, and misses arriving meanwhile follow it.
//! * **Refresh-ahead**: every fresh hit adds one to a relaxed atomic on the
//!   entry. The hit that reaches `hot_hits` hands the request (head and body) to
//!   the [`Refresher`], which refreshes the entry `lead_secs` before it stops
//!   being fresh, with at most `max_concurrent` refreshes at once. Later hits on
//!   a hot entry replace the credential the refresh will use, so it runs with
//!   the most recent one. Credentials live only in this process's memory, in the
//!   job; they are never part of an entry or of any store.
//!
//! Both kinds re-check the store after taking the lead (someone may have
//! stored a newer entry meanwhile), so a key is refreshed once per generation.
//! Across replicas they take the shared fetch lock (`store::lock`), the same
//! one cross-replica coalescing of misses uses: a replica that finds it held
//! leaves the refresh to its holder.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::header;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

use crate::app::App;
use crate::clock::SharedClock;
use crate::coalesce::LeaderGuard;
use crate::fingerprint::{CacheKey, DigestHash};
use crate::identity::{Credentials, Scope, ScopeOutcome};
use crate::policy::{ScopeKind, TierConfig};
use crate::proxy::Fetched;
use crate::proxy::cached::{self, FetchSpec};
use crate::store::{Entry, Meta, Purge, Store};

/// `[refresh_ahead]`: refreshing popular entries before they expire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RefreshAheadConfig {
    /// Fresh hits (in this process) that make an entry hot; 0 turns
    /// refresh-ahead off.
    pub hot_hits: u32,
    /// Refresh a hot entry this many seconds before its `fresh` ends (at most
    /// half of the entry's fresh lifetime).
    pub lead_secs: u64,
    /// Refresh-ahead queries sent to Superset at once (read at start; the other
    /// keys follow configuration reloads).
    pub max_concurrent: usize,
    /// Hot entries tracked at once; each holds its request and a credential in
    /// memory. Entries that become hot beyond this are not refreshed ahead.
    pub max_tracked: usize,
}

impl Default for RefreshAheadConfig {
    fn default() -> Self {
        Self {
            hot_hits: 10,
            lead_secs: 10,
            max_concurrent: 4,
            max_tracked: 10_000,
        }
    }
}

/// Where an entry stands in its tier's windows at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Before `fresh_until`: serve.
    Fresh,
    /// Inside the stale-while-revalidate window: serve and refresh.
    Revalidate,
    /// Past SWR but still stored: fetch, and serve it only if Superset fails
    /// within the stale-if-error window.
    IfError,
    /// Past every window.
    Expired,
}

/// Classify `meta` at `now` under `tier` (the tier of the current decision, so
/// a changed configuration applies to entries already stored).
pub fn window(meta: &Meta, tier: &TierConfig, now: u64) -> Window {
    if now < meta.fresh_until {
        return Window::Fresh;
    }
    if now >= meta.stale_until {
        return Window::Expired;
    }
    let past = now - meta.fresh_until;
    if past < tier.stale_while_revalidate_secs.saturating_mul(1000) {
        Window::Revalidate
    } else if past < tier.stale_if_error_secs.saturating_mul(1000) {
        Window::IfError
    } else {
        Window::Expired
    }
}

/// Which refresh this is (metric label and what "already done" means).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Stale-while-revalidate: done once the stored entry is fresh again.
    Revalidate,
    /// Refresh-ahead of the generation whose `fresh_until` is given: done once
    /// that generation is no longer the stored one.
    Ahead(u64),
}

impl Kind {
    fn label(&self) -> &'static str {
        match self {
            Kind::Revalidate => "swr",
            Kind::Ahead(_) => "ahead",
        }
    }
}

/// Refresh `spec` in the background unless a fetch of its key is in flight.
/// Returns whether a refresh was started.
pub(crate) fn revalidate(app: &Arc<App>, mut spec: FetchSpec) -> bool {
    detach(&mut spec);
    let Some(guard) = app.coalescer.try_lead(spec.key) else {
        count(app, Kind::Revalidate, "inflight");
        return false;
    };
    let app = app.clone();
    tokio::spawn(async move {
        run(&app, &spec, guard, Kind::Revalidate).await;
    });
    true
}

/// Drop what ties a request to its client connection (extensions such as the
/// upgrade handle): a refresh outlives the request it was made from.
fn detach(spec: &mut FetchSpec) {
    spec.parts.extensions = http::Extensions::new();
    // No client waits for a background refresh, and a refresh-ahead may run
    // with another requester's credential: the request's own other cookies
    // (an async channel's `async-token`, say) stay with the request. The
    // fetch sends the resolved session cookie only.
    spec.parts.headers.remove(header::COOKIE);
    spec.creds = spec.creds.as_ref().map(Credentials::detached);
    // The job outlives the request: keep no slice of the connection's buffers.
    for v in spec.parts.headers.values_mut() {
        *v = crate::upstream::owned_header_value(v);
    }
    spec.body = bytes::Bytes::copy_from_slice(&spec.body);
}

/// Fetch and store as the key's leader, then hand the result to followers.
async fn run(app: &App, spec: &FetchSpec, guard: LeaderGuard<Arc<Fetched>>, kind: Kind) {
    // A newer entry may have landed between the caller's lookup and the lead.
    if already_done(app, &spec.key, kind).await {
        count(app, kind, "skipped");
        return;
    }
    // Across replicas: the shared fetch lock (`store::lock`). If another
    // replica is refreshing the key, its entry is handed to local followers.
    let _remote_lock = match cached::remote_leader(app, &spec.key, false).await {
        Ok(lock) => lock,
        Err(fetched) => {
            count(app, kind, "elsewhere");
            guard.publish(fetched);
            return;
        }
    };
    // Taken after waiting: the previous holder may have refreshed it.
    if _remote_lock.is_some() && already_done(app, &spec.key, kind).await {
        count(app, kind, "elsewhere");
        return;
    }
    match cached::background_fetch(app, spec).await {
        Ok(f) if f.entry.is_some() => {
            count(app, kind, "stored");
            guard.publish(f);
        }
        // Not storable (error status, no-store, ...): release followers so they
        // fetch themselves (and may serve stale-if-error) rather than share it.
        Ok(f) => {
            tracing::debug!(key = %spec.key.short(), status = %f.status, kind = kind.label(), "background refresh not stored");
            count(app, kind, "not_stored");
        }
        Err(e) => {
            tracing::debug!(key = %spec.key.short(), error = %e, kind = kind.label(), "background refresh failed");
            count(app, kind, "error");
        }
    }
}

/// Whether the refresh has nothing left to do: for SWR, a fresh entry is
/// stored; for refresh-ahead, the generation it was scheduled for is gone or
/// replaced. With a shared store, Redis is asked too, because this process's
/// L1 copy does not show another replica's refresh. A replica that finds a
/// newer shared entry drops its L1 copy so the next request reads it.
async fn already_done(app: &App, key: &CacheKey, kind: Kind) -> bool {
    let now = app.clock.now_ms();
    let done = |e: Option<&Arc<Entry>>| match (kind, e) {
        (Kind::Revalidate, Some(e)) => now < e.meta.fresh_until,
        (Kind::Revalidate, None) => false,
        // Purged, evicted or replaced: the next request decides what to do.
        (Kind::Ahead(generation), Some(e)) => e.meta.fresh_until != generation,
        (Kind::Ahead(_), None) => true,
    };
    let local = cached::lookup(app, key).await;
    if done(local.as_ref()) {
        return true;
    }
    let Some(remote) = app.store.remote() else {
        return false;
    };
    // Redis trouble: refresh anyway (fail open).
    let Ok(shared) = remote.get(key).await else {
        return false;
    };
    if !done(shared.as_ref()) {
        return false;
    }
    let newer = shared.is_some_and(|s| local.is_none_or(|l| s.meta.stored_at > l.meta.stored_at));
    if let (Some(mem), true, true) = (&app.memory, newer, app.store.name() == "tiered") {
        mem.purge_now(&Purge::Keys(vec![*key]));
    }
    true
}

fn count(app: &App, kind: Kind, result: &'static str) {
    app.metrics
        .background_refreshes
        .with_label_values(&[kind.label(), result])
        .inc();
}

/// What one fresh hit meant for refresh-ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hotness {
    /// Not hot (or refresh-ahead is off).
    Cold,
    /// This hit made the entry hot: hand over the request.
    Became,
    /// Already hot: hand over the newest credential.
    Hot,
}

/// A hot entry waiting for its refresh.
pub(crate) struct HotJob {
    spec: FetchSpec,
    /// `fresh_until` of the entry this job refreshes.
    generation: u64,
    /// Unix ms at which to refresh.
    due: u64,
    /// The scope the key belongs to and the kind it was resolved as (`None`:
    /// a public entry).
    expect: Option<(ScopeKind, Scope)>,
    /// The credential of the most recent request for the key.
    cred: Mutex<Option<Credentials>>,
}

const SHARDS: usize = 16;
/// The scheduler re-reads the clock at least this often, so it follows wall
/// clock jumps (and manual clocks) without a timer per job.
const MAX_TICK: Duration = Duration::from_secs(1);

/// Tracks hot entries and refreshes them ahead of expiry.
pub struct Refresher {
    /// Hot jobs by key, sharded so credential updates on hot hits rarely contend.
    shards: [Mutex<HashMap<CacheKey, Arc<HotJob>, DigestHash>>; SHARDS],
    tracked: AtomicUsize,
    /// Jobs taken off the schedule whose refresh has not finished.
    running: AtomicUsize,
    permits: Arc<Semaphore>,
    wake: Notify,
    started: AtomicBool,
}

impl Refresher {
    /// `max_concurrent` is fixed for the process; the other settings are read
    /// from the current configuration, so a reload applies them.
    pub fn new(cfg: &RefreshAheadConfig) -> Arc<Refresher> {
        Arc::new(Refresher {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::with_hasher(DigestHash))),
            tracked: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            permits: Arc::new(Semaphore::new(cfg.max_concurrent.max(1))),
            wake: Notify::new(),
            started: AtomicBool::new(false),
        })
    }

    /// Count a fresh hit on `entry`: one relaxed atomic add. `hot_hits` is
    /// `refresh_ahead.hot_hits` (0: off).
    #[inline]
    pub fn count_hit(&self, entry: &Entry, hot: u32) -> Hotness {
        if hot == 0 {
            return Hotness::Cold;
        }
        let n = entry.hits.hit();
        if n < hot {
            Hotness::Cold
        } else if n == hot {
            Hotness::Became
        } else {
            Hotness::Hot
        }
    }

    fn shard(&self, key: &CacheKey) -> &Mutex<HashMap<CacheKey, Arc<HotJob>, DigestHash>> {
        &self.shards[key.0[0] as usize % SHARDS]
    }

    /// Start tracking a hot entry: refresh `spec` shortly before `entry`'s
    /// fresh window ends, as `user` (checked again before the refresh).
    pub(crate) fn track(
        self: &Arc<Self>,
        app: &Arc<App>,
        spec: FetchSpec,
        cred: Option<Credentials>,
        expect: Option<(ScopeKind, Scope)>,
        entry: &Entry,
    ) {
        let mut spec = spec;
        detach(&mut spec);
        let cfg = app.config.load();
        let Some(job) = self.insert(&cfg.refresh_ahead, spec, cred, expect, &entry.meta) else {
            return;
        };
        tracing::debug!(key = %job.spec.key.short(), due = job.due, "entry is hot; refresh scheduled");
        if !self.started.swap(true, Ordering::AcqRel) {
            let weak: Weak<App> = Arc::downgrade(app);
            let alive = weak.clone();
            let me = self.clone();
            tokio::spawn(me.schedule(
                app.clock.clone(),
                move || alive.strong_count() > 0,
                move |job| {
                    if let Some(app) = weak.upgrade() {
                        tokio::spawn(fire(app, job));
                    }
                },
            ));
        }
        self.wake.notify_one();
    }

    /// Add a job unless the key is tracked already or the bound is reached.
    fn insert(
        &self,
        cfg: &RefreshAheadConfig,
        spec: FetchSpec,
        cred: Option<Credentials>,
        expect: Option<(ScopeKind, Scope)>,
        meta: &Meta,
    ) -> Option<Arc<HotJob>> {
        let life = meta.fresh_until.saturating_sub(meta.stored_at);
        let lead = cfg.lead_secs.saturating_mul(1000).min(life / 2);
        let job = Arc::new(HotJob {
            generation: meta.fresh_until,
            due: meta.fresh_until - lead,
            expect,
            cred: Mutex::new(cred.map(|c| c.detached())),
            spec,
        });
        let mut map = self
            .shard(&job.spec.key)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&job.spec.key) {
            return None;
        }
        // Reserve a slot first so concurrent inserts never overshoot the bound.
        if self.tracked.fetch_add(1, Ordering::AcqRel) >= cfg.max_tracked {
            self.tracked.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        map.insert(job.spec.key, job.clone());
        Some(job)
    }

    /// A hit on a hot entry: its refresh will use this credential.
    pub(crate) fn touch(&self, key: &CacheKey, cred: Option<Credentials>) {
        let Some(cred) = cred else { return };
        let map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = map.get(key) {
            let mut slot = job.cred.lock().unwrap_or_else(|p| p.into_inner());
            // Usually the same user again: nothing to write.
            if slot.as_ref() != Some(&cred) {
                *slot = Some(cred.detached());
            }
        }
    }

    /// Hot entries waiting for their refresh.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Acquire)
    }

    /// True when nothing is due at `now` and no refresh is running (tests poll
    /// this instead of sleeping).
    pub fn idle(&self, now: u64) -> bool {
        self.running.load(Ordering::Acquire) == 0
            && self.shards.iter().all(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .all(|j| j.due > now)
            })
    }

    /// Look at the schedule now (e.g. after a manual clock moved).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Remove and return the jobs due at `now`, and the next due time.
    fn take_due(&self, now: u64) -> (Vec<Arc<HotJob>>, Option<u64>) {
        let mut due = Vec::new();
        let mut next: Option<u64> = None;
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, j| {
                if j.due <= now {
                    due.push(j.clone());
                    false
                } else {
                    next = Some(next.map_or(j.due, |n| n.min(j.due)));
                    true
                }
            });
        }
        // Counted as running before they leave the schedule's sight.
        self.running.fetch_add(due.len(), Ordering::AcqRel);
        self.tracked.fetch_sub(due.len(), Ordering::AcqRel);
        (due, next)
    }

    fn finished(&self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }

    /// The scheduling loop: hands due jobs to `fire` until `alive` says the
    /// app is gone. Sleeps until the next due time, at most [`MAX_TICK`], or
    /// until woken by a new job.
    async fn schedule(
        self: Arc<Self>,
        clock: SharedClock,
        alive: impl Fn() -> bool,
        mut fire: impl FnMut(Arc<HotJob>),
    ) {
        while alive() {
            let now = clock.now_ms();
            let (due, next) = self.take_due(now);
            for job in due {
                fire(job);
            }
            let wait = next.map_or(MAX_TICK, |n| {
                Duration::from_millis(n.saturating_sub(now)).min(MAX_TICK)
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// Refresh one hot entry: bounded concurrency, the key's coalescing lead, the
/// most recent credential (re-resolved: it must still name the key's principal).
async fn fire(app: Arc<App>, job: Arc<HotJob>) {
    let refresher = app.refresher.clone();
    let kind = Kind::Ahead(job.generation);
    let _running = Finished(&refresher);
    let Ok(_permit) = refresher.permits.clone().acquire_owned().await else {
        return;
    };
    let Some(guard) = app.coalescer.try_lead(job.spec.key) else {
        count(&app, kind, "inflight");
        return;
    };
    let cred = job.cred.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some((scope_kind, scope)) = &job.expect {
        // The key belongs to one scope: the credential must still resolve to it.
        let ok = match &cred {
            Some(c) => matches!(
                app.identity.scope(c, *scope_kind, &app.upstream).await,
                Ok(ScopeOutcome::Scope(s)) if s == *scope
            ),
            None => false,
        };
        if !ok {
            count(&app, kind, "no_credential");
            return;
        }
    }
    // The fetch sends exactly this set (`credentials::apply` in the fetch),
    // whatever credential headers the request that made the entry hot had.
    let mut spec = job.spec.clone();
    spec.creds = cred;
    run(&app, &spec, guard, kind).await;
}

/// Marks a taken job finished however `fire` returns.
struct Finished<'a>(&'a Refresher);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

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
        detach(&mut s);
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
}
