//! Async-query jobs across replicas. Behind a Service without sticky
//! sessions the three requests of one chart load (the POST answered `202`,
//! the `async_event` polls, the `result_url` GET) reach different replicas,
//! so the registry of one process ([`super::registry`]) cannot follow a job
//! alone. With a shared tier (Redis) it is followed there too:
//!
//! 1. The replica that gets the `202` (the leader, A) writes the job's
//!    record under `{prefix}:j:{job_id}` (TTL [`JOB_TTL`]) next to its local
//!    entry. It keeps the POST key's fetch lock and its local waiters, as
//!    without replicas.
//! 2. Any replica (B) that reads a `done` event in a poll answer adds the
//!    job id to the set `{prefix}:u:{blake3(result_url)}`: one command,
//!    sent as the answer's last bytes go by (never delaying them).
//! 3. The replica (C) that gets a `result_url` GET it has no link for reads
//!    that set (at most [`MAX_LINKS`] ids) and the records of its jobs. The
//!    URL is the same for every user who ran the query; only a job whose
//!    scope is the GET's own, and whose `result_url` key is the GET's key,
//!    is taken: a GET of another principal never fills another's POST. C
//!    adopts the job locally: an entry under the key is older than the
//!    job's data (a forced refresh's job) and is skipped, and the miss fills
//!    the POST's key as the local path does (same tier, tags, freshness).
//!    These reads happen on `result_url` requests only, which follow jobs;
//!    never on a chart-data request. A GET sent the moment the poll answer
//!    arrives can still reach C before B's link lands: C then looks once
//!    more after its fetch and fills from what it fetched (but an older
//!    entry C held under the key, after a forced refresh, is served to that
//!    GET; the POST's entry then refreshes when it goes stale).
//! 4. C then publishes the POST key on `{prefix}:rel`, the payload of a lock
//!    release, and deletes the job's record and link. A watches that channel
//!    for the key of each job it leads (the `Releases` of `store::lock`): a
//!    message is only a hint to read the shared entry, which must be fresh
//!    before A's waiters get it and A's lock is released (every
//!    `max(lock_poll_ms, 1 s)` it reads anyway, in case the message was
//!    lost). Replicas waiting for A's lock wake on the same message and read
//!    the entry.
//!
//! Records are untrusted bytes: read with a bound ([`MAX_RECORD_BYTES`]),
//! versioned, every field checked; anything else is an unknown job (no
//! fill). Redis trouble leaves the local path as it is.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::registry::{JOB_TTL, Job};
use super::{MAX_ID, plain_id};
use crate::config::TierConfig;
use crate::key::CacheKey;

/// Largest record read back.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
/// Jobs of one `result_url` read at most (one per scope that ran the query
/// at once; filled jobs leave the set).
pub const MAX_LINKS: usize = 16;
/// The record layout written ([`encode`]); others read as unknown jobs.
const VERSION: u32 = 1;
const MAX_TAGS: usize = 256;
const MAX_TAG_BYTES: usize = 512;
const MAX_SCOPE_BYTES: usize = 4 * 1024;

/// Time a record lives in the shared tier: the job's own.
pub const RECORD_TTL: std::time::Duration = JOB_TTL;

#[derive(Serialize, Deserialize)]
struct Record {
    v: u32,
    job: String,
    /// The POST key, hex.
    post: String,
    /// `Scope::key_part` of the POST.
    scope: String,
    tier: Option<String>,
    tags: Vec<String>,
    respect: bool,
    timeout: Option<u64>,
}

/// The digest the shared jobs of a `result_url` are kept under.
pub fn url_digest(result_url: &str) -> CacheKey {
    CacheKey(*blake3::hash(result_url.as_bytes()).as_bytes())
}

/// The record of `job`; `None` when it would exceed the bounds a reader
/// applies (a scope of very many roles, say): the job then stays local.
pub fn encode(job: &Job) -> Option<Vec<u8>> {
    let r = Record {
        v: VERSION,
        job: job.job_id.clone(),
        post: job.post_key.to_hex(),
        scope: job.scope.clone(),
        tier: job.tier.as_ref().map(|t| t.name.clone()),
        tags: job.tags.clone(),
        respect: job.respect_superset_timeout,
        timeout: job.custom_cache_timeout,
    };
    if !valid(&r) {
        return None;
    }
    let bytes = serde_json::to_vec(&r).ok()?;
    (bytes.len() <= MAX_RECORD_BYTES).then_some(bytes)
}

fn valid(r: &Record) -> bool {
    r.v == VERSION
        && plain_id(&r.job)
        && r.job.len() <= MAX_ID
        && r.post.len() == 64
        && !r.scope.is_empty()
        && r.scope.len() <= MAX_SCOPE_BYTES
        && r.tier.as_ref().is_none_or(|t| t.len() <= MAX_TAG_BYTES)
        && r.tags.len() <= MAX_TAGS
        && r.tags.iter().all(|t| t.len() <= MAX_TAG_BYTES)
}

/// Read a record: the job, with its tier looked up by name in this
/// replica's policy (`tier_of`). `None` for anything unreadable, of another
/// version, out of bounds, or naming a tier this replica does not have.
pub fn decode(bytes: &[u8], tier_of: impl Fn(&str) -> Option<Arc<TierConfig>>) -> Option<Job> {
    if bytes.len() > MAX_RECORD_BYTES {
        return None;
    }
    let r: Record = serde_json::from_slice(bytes).ok()?;
    if !valid(&r) {
        return None;
    }
    let post: [u8; 32] = hex::decode(&r.post).ok()?.try_into().ok()?;
    let tier = match &r.tier {
        Some(name) => Some(tier_of(name)?),
        None => None,
    };
    Some(Job {
        job_id: r.job,
        post_key: CacheKey(post),
        scope: r.scope,
        tier,
        tags: r.tags,
        respect_superset_timeout: r.respect,
        custom_cache_timeout: r.timeout,
        created: Instant::now(),
        adopted: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            job_id: "job-1".into(),
            post_key: CacheKey([7; 32]),
            scope: "user:2".into(),
            tier: Some(Arc::new(TierConfig::default())),
            tags: vec!["chart:1".into(), "dataset:1__table".into()],
            respect_superset_timeout: true,
            custom_cache_timeout: Some(60),
            created: Instant::now(),
            adopted: false,
        }
    }

    fn tiers(name: &str) -> Option<Arc<TierConfig>> {
        (name == "standard").then(|| Arc::new(TierConfig::default()))
    }

    #[test]
    fn a_record_reads_back_as_its_job() {
        let bytes = encode(&job()).unwrap();
        let j = decode(&bytes, tiers).unwrap();
        assert_eq!(j.job_id, "job-1");
        assert_eq!(j.post_key, CacheKey([7; 32]));
        assert_eq!(j.scope, "user:2");
        assert_eq!(j.tier.unwrap().name, "standard");
        assert_eq!(j.tags, job().tags);
        assert!(j.respect_superset_timeout);
        assert_eq!(j.custom_cache_timeout, Some(60));
    }

    #[test]
    fn anything_else_is_an_unknown_job() {
        let good = String::from_utf8(encode(&job()).unwrap()).unwrap();
        for bad in [
            String::new(),
            "not json".into(),
            "[]".into(),
            good.replace("\"v\":1", "\"v\":2"),
            good.replace("job-1", "job 1"),
            good.replace(&"07".repeat(32), "07"),
            good.replace(&"07".repeat(32), &"zz".repeat(32)),
            good.replace("\"user:2\"", "\"\""),
            good.replace("standard", "unknown-tier"),
            good.replace("\"respect\":true", "\"respect\":\"yes\""),
        ] {
            assert!(decode(bad.as_bytes(), tiers).is_none(), "{bad}");
        }
        let many = format!(
            r#"{{"v":1,"job":"j","post":"{}","scope":"user:2","tier":null,"tags":[{}],"respect":true,"timeout":null}}"#,
            "07".repeat(32),
            vec!["\"t\""; MAX_TAGS + 1].join(",")
        );
        assert!(decode(many.as_bytes(), tiers).is_none());
        assert!(decode(&vec![b' '; MAX_RECORD_BYTES + 1], tiers).is_none());
    }

    #[test]
    fn jobs_beyond_the_bounds_stay_local() {
        let mut j = job();
        j.scope = format!("roles:[{}]", "\"r\",".repeat(MAX_SCOPE_BYTES));
        assert!(encode(&j).is_none());
    }
}
