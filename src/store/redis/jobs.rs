//! Async-query job records in Redis ([`SharedJobs`]; what they hold and who
//! reads them: `crate::jobs::shared`): `{prefix}:j:{job_id}` (a job a replica
//! got the `202` of) and `{prefix}:r:{keyhex}` (the job whose data a
//! `result_url` key will hold), each a plain string with a PX TTL. Every
//! command names one key, so the layout works on Redis Cluster as it is.
//! Reads are `GETRANGE 0 max`: a value longer than the caller's bound is
//! never read whole. A stored entry is announced on `{prefix}:rel` with the
//! payload of a lock release (the 32-byte key).

use std::time::Duration;

use async_trait::async_trait;

use super::RedisStore;
use crate::key::CacheKey;
use crate::store::{JobRecord, SharedJobs, StoreError};

impl RedisStore {
    /// The Redis key of a job record.
    pub(crate) fn job_record_key(&self, rec: JobRecord<'_>) -> String {
        let prefix = &self.config().prefix;
        match rec {
            JobRecord::Job(id) => format!("{prefix}:j:{id}"),
            JobRecord::Link(key) => format!("{prefix}:r:{}", key.to_hex()),
        }
    }
}

#[async_trait]
impl SharedJobs for RedisStore {
    async fn put_record(
        &self,
        rec: JobRecord<'_>,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let k = self.job_record_key(rec);
        let ttl = ttl.as_millis().max(1) as u64;
        self.run("job_put", self.config().timeout(), |mut c| async move {
            redis::cmd("SET")
                .arg(k)
                .arg(value)
                .arg("PX")
                .arg(ttl)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn get_record(
        &self,
        rec: JobRecord<'_>,
        max: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let k = self.job_record_key(rec);
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

    async fn delete_record(&self, rec: JobRecord<'_>) -> Result<(), StoreError> {
        let k = self.job_record_key(rec);
        self.run("job_delete", self.config().timeout(), |mut c| async move {
            redis::cmd("DEL").arg(k).query_async::<i64>(&mut c).await
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
        assert_eq!(s.job_record_key(JobRecord::Job("job-1")), "p:j:job-1");
        let k = CacheKey([0xcd; 32]);
        assert_eq!(
            s.job_record_key(JobRecord::Link(&k)),
            format!("p:r:{}", "cd".repeat(32))
        );
    }
}
