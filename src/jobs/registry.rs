//! The async-query jobs of this process: job id → where its data goes (the
//! originating POST's key, scope and policy), `result_url` key → job once its
//! `done` event was seen (here, or on another replica: [`super::shared`]),
//! and POST key → the waiters of its running job. Bounded by a count and
//! [`JOB_TTL`]; the miss path drives it (`proxy::async_query`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::TierConfig;
use crate::key::CacheKey;
use crate::store::Entry;
use crate::store::lock::RemoteLock;

/// How long a job is remembered for its data to fill the POST's entry: the
/// life of a Superset async result is of this order too.
pub const JOB_TTL: Duration = Duration::from_secs(600);

/// Where a job's data goes: the originating POST's key, scope and policy.
pub struct Job {
    pub job_id: String,
    pub post_key: CacheKey,
    /// The POST's identity scope as hashed into keys (`Scope::key_part`):
    /// the `result_url` key of the job's data is built with it.
    pub scope: String,
    pub tier: Option<Arc<TierConfig>>,
    pub tags: Vec<String>,
    pub respect_superset_timeout: bool,
    pub custom_cache_timeout: Option<u64>,
    pub created: Instant,
    /// Started on another replica (read from the shared tier).
    pub adopted: bool,
}

/// Waiters for the data of a running job of one POST key.
struct Wait {
    serial: u64,
    tx: watch::Sender<Option<Arc<Entry>>>,
    /// The cross-replica fetch lock of the key, held while the job runs:
    /// other replicas wait for its release, then read the entry. Released
    /// when the wait ends (dropped).
    _lock: Option<RemoteLock>,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Arc<Job>>,
    results: HashMap<CacheKey, Arc<Job>>,
    waits: HashMap<CacheKey, Wait>,
}

/// The registry (see the module docs).
#[derive(Default)]
pub struct Jobs {
    inner: Mutex<Inner>,
    /// Jobs and links remembered: readers skip the lock while it is 0.
    count: AtomicUsize,
    serial: AtomicU64,
}

/// What [`Jobs::register`] did.
pub enum Registered {
    /// Remembered; the wait (if any) has this serial and holds the lock.
    Yes(Option<u64>),
    /// The registry is full: the lock is given back.
    Full(Option<RemoteLock>),
}

impl Jobs {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sync_count(&self, inner: &Inner) {
        self.count
            .store(inner.jobs.len() + inner.results.len(), Ordering::Relaxed);
    }

    /// Jobs and links remembered.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remember `job` (at most `max` jobs and links); with `wait`, open the
    /// wait for its data, holding `lock`. A wait already open for the key
    /// (its waiters gave up, or a forced refresh started another job) is
    /// replaced: its waiters are released.
    pub fn register(
        &self,
        job: Arc<Job>,
        max: usize,
        wait: bool,
        lock: Option<RemoteLock>,
    ) -> Registered {
        let mut inner = self.lock();
        if inner.jobs.len() + inner.results.len() >= max {
            inner.jobs.retain(|_, j| j.created.elapsed() < JOB_TTL);
            inner.results.retain(|_, j| j.created.elapsed() < JOB_TTL);
        }
        if inner.jobs.len() + inner.results.len() >= max {
            self.sync_count(&inner);
            return Registered::Full(lock);
        }
        let key = job.post_key;
        inner.jobs.insert(job.job_id.clone(), job);
        let serial = wait.then(|| {
            let serial = self.serial.fetch_add(1, Ordering::Relaxed);
            let (tx, _) = watch::channel(None);
            let w = Wait {
                serial,
                tx,
                _lock: lock,
            };
            inner.waits.insert(key, w);
            serial
        });
        self.sync_count(&inner);
        Registered::Yes(serial)
    }

    /// Remember `job`, started on another replica, as linked to the
    /// `result_url` key `result_key` (no wait: its waiters are there); false
    /// when the registry is full.
    pub fn adopt(&self, job: Arc<Job>, result_key: CacheKey, max: usize) -> bool {
        let mut inner = self.lock();
        if inner.jobs.len() + inner.results.len() + 2 > max {
            return false;
        }
        inner.jobs.insert(job.job_id.clone(), job.clone());
        inner.results.insert(result_key, job);
        self.sync_count(&inner);
        true
    }

    /// The job `job_id` was filled on another replica with `entry` (stored
    /// under `key`, its POST's key): forget it and its links, and hand the
    /// entry to the waiters of wait `serial` (releasing the lock). False when
    /// that wait had ended already.
    pub fn filled_elsewhere(
        &self,
        key: &CacheKey,
        serial: u64,
        job_id: &str,
        entry: Arc<Entry>,
    ) -> bool {
        let wait = {
            let mut inner = self.lock();
            inner.jobs.remove(job_id);
            inner.results.retain(|_, j| j.job_id != job_id);
            self.sync_count(&inner);
            if inner.waits.get(key).is_some_and(|w| w.serial == serial) {
                inner.waits.remove(key)
            } else {
                None
            }
        };
        let Some(w) = wait else { return false };
        let _ = w.tx.send(Some(entry));
        true
    }

    /// The wait bound passed: release the waiters (and the lock) of the
    /// wait `serial` of `key`, unless it ended already.
    pub fn end_wait(&self, key: &CacheKey, serial: u64) {
        let mut inner = self.lock();
        if inner.waits.get(key).is_some_and(|w| w.serial == serial) {
            inner.waits.remove(key);
        }
    }

    /// A receiver for the data of the running job of `key`, if one runs.
    pub fn subscribe(&self, key: &CacheKey) -> Option<watch::Receiver<Option<Arc<Entry>>>> {
        if self.is_empty() {
            return None;
        }
        Some(self.lock().waits.get(key)?.tx.subscribe())
    }

    /// Link the job `job_id` to its `result_url` key (made by `key_of` from
    /// the job); `None` when the job is unknown.
    pub fn link(&self, job_id: &str, key_of: impl FnOnce(&Job) -> CacheKey) -> Option<Arc<Job>> {
        if self.is_empty() {
            return None;
        }
        let mut inner = self.lock();
        let job = inner.jobs.get(job_id).cloned()?;
        inner.results.insert(key_of(&job), job.clone());
        self.sync_count(&inner);
        Some(job)
    }

    /// The job whose data a `result_url` key will hold, if linked.
    pub fn linked(&self, result_key: &CacheKey) -> Option<Arc<Job>> {
        if self.is_empty() {
            return None;
        }
        self.lock().results.get(result_key).cloned()
    }

    /// Forget the link of a `result_url` key whose data did not come.
    pub fn unlink(&self, result_key: &CacheKey) {
        let mut inner = self.lock();
        inner.results.remove(result_key);
        self.sync_count(&inner);
    }

    /// The job's data is stored: forget the job and its link, and hand the
    /// entry to its waiters (releasing the lock).
    pub fn filled(&self, job: &Job, result_key: &CacheKey, entry: Arc<Entry>) {
        let wait = {
            let mut inner = self.lock();
            inner.results.remove(result_key);
            inner.jobs.remove(&job.job_id);
            self.sync_count(&inner);
            inner.waits.remove(&job.post_key)
        };
        if let Some(w) = wait {
            let _ = w.tx.send(Some(entry));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job's data: `{}`.
    fn data() -> Arc<Entry> {
        let meta = crate::store::Meta {
            status: 200,
            headers: vec![],
            stored_at: 0,
            fresh_until: 1,
            stale_until: 1,
            upstream_ms: 0,
            raw_len: 2,
            tags: vec![],
        };
        Arc::new(Entry::build(meta, b"{}", 1, false).unwrap())
    }

    fn job(id: &str, key: u8) -> Arc<Job> {
        Arc::new(Job {
            job_id: id.into(),
            post_key: CacheKey([key; 32]),
            scope: "user:2".into(),
            tier: None,
            tags: vec![],
            respect_superset_timeout: true,
            custom_cache_timeout: None,
            created: Instant::now(),
            adopted: false,
        })
    }

    #[tokio::test]
    async fn a_job_is_linked_filled_and_forgotten() {
        let jobs = Jobs::default();
        assert!(jobs.subscribe(&CacheKey([1; 32])).is_none());
        let j = job("j1", 1);
        assert!(matches!(
            jobs.register(j.clone(), 10, true, None),
            Registered::Yes(Some(_))
        ));
        let mut rx = jobs.subscribe(&CacheKey([1; 32])).expect("a wait is open");
        assert!(jobs.link("unknown", |_| CacheKey([9; 32])).is_none());
        assert!(jobs.link("j1", |_| CacheKey([2; 32])).is_some());
        assert!(jobs.linked(&CacheKey([2; 32])).is_some());
        let e = data();
        jobs.filled(&j, &CacheKey([2; 32]), e);
        assert!(rx.wait_for(Option::is_some).await.is_ok());
        assert!(jobs.is_empty());
        assert!(jobs.subscribe(&CacheKey([1; 32])).is_none());
    }

    #[tokio::test]
    async fn a_job_filled_elsewhere_wakes_its_wait_once() {
        let jobs = Jobs::default();
        let Registered::Yes(Some(serial)) = jobs.register(job("a", 1), 10, true, None) else {
            panic!("registered");
        };
        let mut rx = jobs.subscribe(&CacheKey([1; 32])).unwrap();
        // Another replica's job, adopted with its result_url key.
        assert!(jobs.adopt(job("b", 4), CacheKey([5; 32]), 10));
        assert!(jobs.linked(&CacheKey([5; 32])).is_some());
        assert!(!jobs.adopt(job("c", 6), CacheKey([7; 32]), 4), "bounded");
        let e = data();
        assert!(!jobs.filled_elsewhere(&CacheKey([1; 32]), serial + 1, "a", e.clone()));
        let Registered::Yes(Some(serial)) = jobs.register(job("a", 1), 10, true, None) else {
            panic!("registered");
        };
        let mut rx2 = jobs.subscribe(&CacheKey([1; 32])).unwrap();
        assert!(jobs.filled_elsewhere(&CacheKey([1; 32]), serial, "a", e.clone()));
        assert!(rx2.wait_for(Option::is_some).await.is_ok());
        // The first wait was replaced: its waiters were released (no data).
        assert!(rx.wait_for(Option::is_some).await.is_err());
        assert!(!jobs.filled_elsewhere(&CacheKey([1; 32]), serial, "a", e));
        assert_eq!(jobs.len(), 2, "b and its link remain");
    }

    #[test]
    fn the_registry_is_bounded_and_a_wait_ends_by_its_serial() {
        let jobs = Jobs::default();
        let Registered::Yes(Some(s1)) = jobs.register(job("a", 1), 2, true, None) else {
            panic!("registered");
        };
        assert!(matches!(
            jobs.register(job("b", 1), 2, true, None),
            Registered::Yes(Some(_))
        ));
        assert!(matches!(
            jobs.register(job("c", 3), 2, true, None),
            Registered::Full(None)
        ));
        // The first wait was replaced: ending it leaves the second open.
        jobs.end_wait(&CacheKey([1; 32]), s1);
        assert!(jobs.subscribe(&CacheKey([1; 32])).is_some());
    }
}
