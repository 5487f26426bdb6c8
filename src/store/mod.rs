//! Cache stores behind one narrow async trait. Each backend lives in its own file.

use std::sync::Arc;

use async_trait::async_trait;

use crate::key::CacheKey;

pub mod breaker;
pub mod entry;

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
    /// The shared Redis store behind this one, if any (cross-replica coalescing).
    fn remote(&self) -> Option<Arc<redis::RedisStore>> {
        None
    }
}

/// Shared store handle.
pub type SharedStore = Arc<dyn Store>;
