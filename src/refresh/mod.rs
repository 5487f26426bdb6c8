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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::clock::SharedClock;
use crate::config::{RefreshAheadConfig, ScopeKind};
use crate::identity::{Credentials, Scope};
use crate::key::{CacheKey, DigestHash};
use crate::spec::FetchSpec;
use crate::store::{Entry, Meta};

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
    pub(crate) spec: FetchSpec,
    /// `fresh_until` of the entry this job refreshes.
    pub(crate) generation: u64,
    /// Unix ms at which to refresh.
    due: u64,
    /// The scope the key belongs to and the kind it was resolved as (`None`:
    /// a public entry).
    pub(crate) expect: Option<(ScopeKind, Scope)>,
    /// The credential of the most recent request for the key.
    pub(crate) cred: Mutex<Option<Credentials>>,
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
    /// fresh window ends, as `cred` (checked again before the refresh). The
    /// job, when the key was not tracked yet and the bound allows it.
    pub(crate) fn track(
        &self,
        cfg: &RefreshAheadConfig,
        mut spec: FetchSpec,
        cred: Option<Credentials>,
        expect: Option<(ScopeKind, Scope)>,
        entry: &Entry,
    ) -> Option<Arc<HotJob>> {
        spec.detach();
        let job = self.insert(cfg, spec, cred, expect, &entry.meta)?;
        tracing::debug!(key = %job.spec.key.short(), due = job.due, "entry is hot; refresh scheduled");
        self.wake.notify_one();
        Some(job)
    }

    /// Start the scheduling loop once per process: it hands each due job to
    /// `fire` for as long as `alive` holds.
    pub(crate) fn start(
        self: &Arc<Self>,
        clock: SharedClock,
        alive: impl Fn() -> bool + Send + 'static,
        fire: impl FnMut(Arc<HotJob>) + Send + 'static,
    ) {
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().schedule(clock, alive, fire));
        }
    }

    /// The bound on refreshes running at once (`max_concurrent`).
    pub(crate) fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
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

/// Marks a taken job finished however `fire` returns.
pub(crate) struct Finished<'a>(pub(crate) &'a Refresher);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.finished();
    }
}

#[cfg(test)]
mod tests;
