//! Async-query jobs in Redis ([`SharedJobs`]; what they hold and who reads
//! them: `crate::jobs::shared`): `{prefix}:j:{job_id}`, a string, is the
//! record of a job a replica got the `202` of; `{prefix}:u:{urlhex}`, a set,
//! holds the ids of the jobs whose `done` event named that `result_url`
//! (its blake3 digest). Both expire (PX). Every command names one key, so
//! the layout works on Redis Cluster as it is. Records are read with
//! `GETRANGE 0 max` and sets with `SRANDMEMBER key max`: nothing longer than
//! the caller's bound is read. A stored entry is announced on
//! `{prefix}:rel` with the payload of a lock release (the 32-byte key).

use std::time::Duration;

use async_trait::async_trait;

use super::RedisStore;
use crate::key::CacheKey;
use crate::store::{SharedJobs, StoreError};

impl RedisStore {
    /// The Redis key of a job's record.
    pub(crate) fn job_key(&self, job_id: &str) -> String {
        format!("{}:j:{job_id}", self.config().prefix)
    }

    /// The Redis key of the jobs of a `result_url` digest.
    pub(crate) fn url_jobs_key(&self, url: &CacheKey) -> String {
        format!("{}:u:{}", self.config().prefix, url.to_hex())
    }
}

fn ms(ttl: Duration) -> u64 {
    ttl.as_millis().clamp(1, u64::MAX as u128) as u64
}

#[async_trait]
impl SharedJobs for RedisStore {
    async fn put_job(&self, job_id: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let k = self.job_key(job_id);
        self.run("job_put", self.config().timeout(), |mut c| async move {
            redis::cmd("SET")
                .arg(k)
                .arg(value)
                .arg("PX")
                .arg(ms(ttl))
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn get_job(&self, job_id: &str, max: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let k = self.job_key(job_id);
        // GETRANGE is inclusive: max + 1 bytes tell a value over the bound.
        let v = self
            .run("job_get", self.config().timeout(), |mut c| async move {
                redis::cmd("GETRANGE")
                    .arg(k)
                    .arg(0)
                    .arg(max)
                    .query_async::<Vec<u8>>(&mut c)
                    .await
            })
            .await?;
        match v.len() {
            // A missing key reads as "" (records are never empty).
            0 => Ok(None),
            n if n > max => Err(StoreError::Corrupt(format!(
                "job record longer than {max} bytes"
            ))),
            _ => Ok(Some(v)),
        }
    }

    async fn delete_job(&self, job_id: &str) -> Result<(), StoreError> {
        let k = self.job_key(job_id);
        self.run("job_delete", self.config().timeout(), |mut c| async move {
            redis::cmd("DEL").arg(k).query_async::<i64>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    async fn add_link(
        &self,
        url: &CacheKey,
        job_id: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let k = self.url_jobs_key(url);
        let id = job_id.to_string();
        // One round trip, one key: MULTI/EXEC keeps the set from living on
        // without a TTL.
        self.run("job_link", self.config().timeout(), |mut c| async move {
            redis::pipe()
                .atomic()
                .cmd("SADD")
                .arg(&k)
                .arg(id)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&k)
                .arg(ms(ttl))
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn links(&self, url: &CacheKey, max: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let k = self.url_jobs_key(url);
        self.run("job_links", self.config().timeout(), |mut c| async move {
            redis::cmd("SRANDMEMBER")
                .arg(k)
                .arg(max.max(1))
                .query_async::<Vec<Vec<u8>>>(&mut c)
                .await
        })
        .await
    }

    async fn remove_link(&self, url: &CacheKey, job_id: &str) -> Result<(), StoreError> {
        let k = self.url_jobs_key(url);
        let id = job_id.to_string();
        self.run("job_unlink", self.config().timeout(), |mut c| async move {
            redis::cmd("SREM")
                .arg(k)
                .arg(id)
                .query_async::<i64>(&mut c)
                .await
        })
        .await
        .map(|_| ())
    }

    async fn announce_stored(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.publish_on(self.release_channel(), key.0.to_vec())
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::SystemClock;
    use crate::config::RedisConfig;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn record_keys() {
        let cfg = RedisConfig {
            url: Some("redis://127.0.0.1:1".into()),
            prefix: "p".into(),
            ..RedisConfig::default()
        };
        let s = RedisStore::new(cfg, Arc::new(Metrics::new()), Arc::new(SystemClock)).unwrap();
        assert_eq!(s.job_key("job-1"), "p:j:job-1");
        let k = CacheKey([0xcd; 32]);
        assert_eq!(s.url_jobs_key(&k), format!("p:u:{}", "cd".repeat(32)));
    }
}
