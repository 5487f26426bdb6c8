//! Cache stores behind one narrow async trait. Each backend lives in its own file.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::key::CacheKey;

pub mod breaker;
pub mod entry;
pub mod lock;
pub mod memory;
pub mod redis;
pub mod setup;
pub mod tiered;

pub use entry::{Entry, Meta};

/// A store failure. Callers fail open: a store error is a miss, never a client error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("timed out")]
    Timeout,
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt entry: {0}")]
    Corrupt(String),
}

/// What a purge removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    Tags(Vec<String>),
    Keys(Vec<CacheKey>),
    All,
}

/// get / put / delete / purge. Entries are shared as `Arc` so a hit copies nothing.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short name for metrics (`memory`, `redis`, `tiered`).
    fn name(&self) -> &'static str;
    /// The entry under `key`, if any (expired entries may be returned; the caller
    /// checks `stale_until`).
    async fn get(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, StoreError>;
    /// Store `entry` under `key`, replacing any previous one.
    async fn put(&self, key: &CacheKey, entry: Arc<Entry>) -> Result<(), StoreError>;
    /// Remove what `purge` names; returns how many entries were removed.
    async fn purge(&self, purge: &Purge) -> Result<u64, StoreError>;
    /// Answer from this process's memory without waiting, when the store can:
    /// the hit path's fast lane, with no boxed future. `Unknown` sends the
    /// caller to [`Store::get`].
    fn peek(&self, _key: &CacheKey) -> Peek {
        Peek::Unknown
    }
    /// The tier replicas share, when there is one: cross-replica fetch locks
    /// and reads that skip this process's copy.
    fn shared(&self) -> Option<Arc<dyn SharedTier>> {
        None
    }
    /// Drop this process's own copy of `key`, if it keeps one apart from the
    /// shared tier (another replica stored a newer entry).
    fn forget_local(&self, _key: &CacheKey) {}
}

/// What [`Store::peek`] can tell without waiting.
pub enum Peek {
    /// The entry, from memory.
    Found(Arc<Entry>),
    /// Definitely not stored.
    Absent,
    /// Not known without asking a remote tier.
    Unknown,
}

/// How long fetch locks live and how their waiters wait.
#[derive(Debug, Clone, Copy)]
pub struct LockTiming {
    /// A lock lapses this long after it was taken or last extended.
    pub ttl: Duration,
    /// Waiters re-check at least this often (a lost release message).
    pub poll: Duration,
    /// Waiters give up and fetch themselves after this long.
    pub wait: Duration,
}

/// A store tier shared by every replica (Redis today): what cross-replica
/// coalescing ([`lock`]) and background refreshes need beyond [`Store`].
#[async_trait]
pub trait SharedTier: Send + Sync + 'static {
    /// The shared entry, bypassing any copy in this process.
    async fn get_shared(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, StoreError>;
    /// Take `key`'s fetch lock with `token`: true when taken.
    async fn try_lock(&self, key: &CacheKey, token: &str) -> Result<bool, StoreError>;
    /// Extend our lock (compare-and-expire): true when still ours.
    async fn renew_lock(&self, key: &CacheKey, token: &str) -> Result<bool, StoreError>;
    /// Release our lock (compare-and-delete) and tell every replica's waiters.
    async fn unlock_and_announce(&self, key: &CacheKey, token: &str) -> Result<bool, StoreError>;
    /// This replica's waiters for other replicas' releases.
    fn releases(&self) -> &Arc<lock::Releases>;
    /// Release (and invalidation) messages reach this replica now.
    fn subscribed(&self) -> bool;
    fn lock_timing(&self) -> LockTiming;
    /// The async-query job records replicas share, when this tier keeps them.
    fn jobs(&self) -> Option<&dyn SharedJobs> {
        None
    }
}

/// Async-query jobs shared by every replica, so that the replica that sees a
/// job's `done` event or its `result_url` GET can follow a job another
/// replica started (`crate::jobs::shared` reads and writes them): a small
/// opaque record per job, and per `result_url` the set of jobs whose `done`
/// event named it. One key per command; what comes back is untrusted.
#[async_trait]
pub trait SharedJobs: Send + Sync {
    /// Store the record `value` of job `job_id` (a printable id of at most
    /// 128 bytes) for `ttl`.
    async fn put_job(&self, job_id: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError>;
    /// The record of `job_id`, reading at most `max` bytes: a longer one is
    /// [`StoreError::Corrupt`].
    async fn get_job(&self, job_id: &str, max: usize) -> Result<Option<Vec<u8>>, StoreError>;
    /// Remove the record of `job_id`.
    async fn delete_job(&self, job_id: &str) -> Result<(), StoreError>;
    /// Add `job_id` to the jobs of the `result_url` digest `url`; the set
    /// lives `ttl` from now.
    async fn add_link(&self, url: &CacheKey, job_id: &str, ttl: Duration)
    -> Result<(), StoreError>;
    /// At most `max` of the jobs of `url` (any of them when there are more).
    async fn links(&self, url: &CacheKey, max: usize) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Remove `job_id` from the jobs of `url`.
    async fn remove_link(&self, url: &CacheKey, job_id: &str) -> Result<(), StoreError>;
    /// Tell every replica's waiters for `key` that its entry was stored, as a
    /// lock release does ([`lock`]), without holding its lock.
    async fn announce_stored(&self, key: &CacheKey) -> Result<(), StoreError>;
}

/// Shared store handle.
pub type SharedStore = Arc<dyn Store>;
