//! Pick and build the store from configuration: memory (no Redis configured),
//! redis, or tiered (memory in front of Redis, the default with Redis).
//!
//! An unreachable Redis or refused credentials do not stop startup: every
//! request passes through chartcache, so refusing to start would take Superset
//! down with Redis. The problem is logged as an error and the store starts with
//! its breaker open; it is retried every `breaker_cooldown_ms` and caching
//! resumes by itself once Redis answers.

use std::sync::Arc;

use super::SharedStore;
use super::memory::MemoryStore;
use super::redis::{RedisStore, StartupError};
use super::tiered::TieredStore;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::metrics::Metrics;

/// The store requests use, the memory store (when there is one), and the
/// startup problem with Redis, if any (already logged).
pub struct Built {
    pub store: SharedStore,
    pub memory: Option<Arc<MemoryStore>>,
    pub redis: Option<Arc<RedisStore>>,
    pub redis_error: Option<StartupError>,
}

/// Build the configured store. Errors only for invalid configuration.
pub async fn build(
    cfg: &Config,
    metrics: Arc<Metrics>,
    clock: SharedClock,
) -> anyhow::Result<Built> {
    if !cfg.redis.enabled() {
        let mem = Arc::new(MemoryStore::new(cfg.memory.max_bytes, clock));
        return Ok(Built {
            store: mem.clone(),
            memory: Some(mem),
            redis: None,
            redis_error: None,
        });
    }
    let redis = RedisStore::new(cfg.redis.clone(), metrics, clock.clone())?;
    redis.limit_entries(cfg.cache.max_object_bytes);
    redis.watch_lock_releases();
    let redis_error = match redis.check().await {
        Ok(()) => {
            tracing::info!(master = ?redis.master_addr(), tiered = cfg.redis.tiered, "redis connected");
            None
        }
        Err(e) => {
            tracing::error!(
                "{e}; serving without the shared cache (retrying every {} ms)",
                cfg.redis.breaker_cooldown_ms
            );
            // Skip Redis at once instead of paying a timeout per request.
            for _ in 0..cfg.redis.breaker_failures {
                redis.breaker().failure();
            }
            Some(e)
        }
    };
    if cfg.redis.tiered {
        let mem = Arc::new(MemoryStore::new(cfg.memory.max_bytes, clock.clone()));
        let store = TieredStore::new(mem.clone(), redis.clone(), clock, cfg.cache.store_gzip);
        Ok(Built {
            store,
            memory: Some(mem),
            redis: Some(redis),
            redis_error,
        })
    } else {
        Ok(Built {
            store: redis.clone(),
            memory: None,
            redis: Some(redis),
            redis_error,
        })
    }
}
