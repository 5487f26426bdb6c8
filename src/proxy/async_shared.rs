//! Async-query jobs followed across replicas through the shared tier: the
//! protocol is described in [`crate::jobs::shared`]; this drives it from the
//! request path ([`super::async_query`] calls in). Without a shared tier
//! that keeps job records, every function here does nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::app::App;
use crate::clock::SharedClock;
use crate::fingerprint;
use crate::identity::Scope;
use crate::jobs::registry::{Job, Jobs};
use crate::jobs::shared::{self, MAX_RECORD_BYTES, RECORD_TTL};
use crate::jobs::{self as gaq};
use crate::key::CacheKey;
use crate::metrics::Metrics;
use crate::route::CachedRoute;
use crate::store::{Entry, JobRecord, SharedTier};

/// The key of `result_url` in the scope whose key part is `scope` (that of
/// a job, so of its POST).
pub(super) fn result_key(scope: &str, result_url: &str) -> CacheKey {
    fingerprint::build_key(
        CachedRoute::ResultUrl,
        result_url,
        &[],
        scope,
        &fingerprint::body_digest(b""),
    )
}

/// The shared tier, when it keeps job records.
fn tier(app: &App) -> Option<Arc<dyn SharedTier>> {
    app.store.shared().filter(|t| t.jobs().is_some())
}

fn count(metrics: &Metrics, event: &str) {
    metrics.async_queries.with_label_values(&[event]).inc();
}

/// Whether `done` events may concern jobs of other replicas: a shared tier
/// keeps job records and the poll is a browser's (it has an async channel).
pub(super) fn may_follow(app: &App, headers: &http::HeaderMap) -> bool {
    gaq::has_async_token(headers) && tier(app).is_some()
}

/// A job was registered here (step 1): share its record, and while its
/// waiters wait (`serial`), watch for its data stored by another replica.
pub(super) async fn started(app: &App, job: &Arc<Job>, serial: Option<u64>) {
    let Some(t) = tier(app) else { return };
    let Some(bytes) = shared::encode(job) else {
        return;
    };
    let rec = JobRecord::Job(&job.job_id);
    if let Some(jobs) = t.jobs()
        && let Err(e) = jobs.put_record(rec, bytes, RECORD_TTL).await
    {
        tracing::debug!(error = %e, "sharing an async job failed; it stays local");
        return;
    }
    let (Some(serial), Some(rx)) = (serial, app.jobs.subscribe(&job.post_key)) else {
        return;
    };
    tokio::spawn(watch_fill(
        app.jobs.clone(),
        t,
        app.clock.clone(),
        app.metrics.clone(),
        job.clone(),
        serial,
        rx,
    ));
}

/// Step 4 on the leader: until the wait `serial` ends, read the shared
/// entry of the job's POST key whenever its release is announced (and now
/// and then regardless); a fresh one goes to the waiters, which releases the
/// lock.
async fn watch_fill(
    jobs: Arc<Jobs>,
    tier: Arc<dyn SharedTier>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    job: Arc<Job>,
    serial: u64,
    mut rx: watch::Receiver<Option<Arc<Entry>>>,
) {
    let key = job.post_key;
    let mut release = tier.releases().watch(key);
    let every = tier.lock_timing().poll.max(Duration::from_secs(1));
    loop {
        tokio::select! {
            // Filled here, ended at its bound, or replaced: nothing to watch.
            _ = rx.changed() => return,
            _ = release.released() => {}
            _ = tokio::time::sleep(every) => {}
        }
        match tier.get_shared(&key).await {
            Ok(Some(e)) if clock.now_ms() < e.meta.fresh_until => {
                if jobs.filled_elsewhere(&key, serial, &job.job_id, e) {
                    count(&metrics, "remote_woken");
                }
                return;
            }
            _ => {}
        }
    }
}

/// A `done` event (step 2): write the shared link of the job's `result_url`
/// key, for the job `local` of this replica or else the job's shared record.
/// Spawned: the poll answer that carried the event is not held up.
pub(super) fn done(app: &Arc<App>, d: &gaq::Done, local: Option<Arc<Job>>) {
    if tier(app).is_none() {
        return;
    }
    let (app, d) = (app.clone(), d.clone());
    tokio::spawn(async move {
        let Some(t) = tier(&app) else { return };
        let Some(jobs) = t.jobs() else { return };
        let job = match local {
            Some(j) => j,
            None => {
                let rec = JobRecord::Job(&d.job_id);
                // Not found: a job no replica registered (or expired).
                let Ok(Some(bytes)) = jobs.get_record(rec, MAX_RECORD_BYTES).await else {
                    return;
                };
                match decode(&app, &bytes) {
                    Some(j) if j.job_id == d.job_id => Arc::new(j),
                    _ => {
                        count(&app.metrics, "remote_unknown");
                        return;
                    }
                }
            }
        };
        let Some(bytes) = shared::encode(&job) else {
            return;
        };
        let rkey = result_key(&job.scope, &d.result_url);
        if jobs
            .put_record(JobRecord::Link(&rkey), bytes, RECORD_TTL)
            .await
            .is_ok()
            && job.adopted
        {
            count(&app.metrics, "remote_linked");
        }
    });
}

fn decode(app: &App, bytes: &[u8]) -> Option<Job> {
    let policy = app.policy.load();
    shared::decode(bytes, |name| policy.tier(name))
}

/// The shared link of the `result_url` key `key` (path `path`) missed by
/// `scope`, if the job it names is of that very scope (step 3).
pub(super) async fn link(app: &App, key: &CacheKey, scope: &Scope, path: &str) -> Option<Job> {
    let t = tier(app)?;
    let rec = JobRecord::Link(key);
    let bytes = t.jobs()?.get_record(rec, MAX_RECORD_BYTES).await.ok()??;
    let job = decode(app, &bytes);
    // The key holds the GET's scope: a record under it that names another
    // scope, or whose key is not this one, was not written by this protocol.
    match job {
        Some(j) if scope.key_part() == j.scope && result_key(&j.scope, path) == *key => Some(j),
        _ => {
            count(&app.metrics, "remote_unknown");
            None
        }
    }
}

/// Step 3 before the fetch: adopt the shared link of a `result_url` miss not
/// linked here, so the miss path fills the job's POST as for a local job.
pub(super) async fn adopt(app: &App, key: &CacheKey, scope: &Scope, path: &str) {
    if app.jobs.linked(key).is_some() || tier(app).is_none() {
        return;
    }
    if let Some(job) = link(app, key, scope, path).await {
        let max = app.config.load().cache.async_max_jobs as usize;
        app.jobs.adopt(Arc::new(job), *key, max);
    }
}

/// The job's data is stored under its POST key (by this replica): tell the
/// leader and the replicas waiting for its lock when the job is another
/// replica's, and drop both records. Spawned, off the response.
pub(super) fn filled(app: &App, job: &Job, result_key: CacheKey) {
    let Some(t) = tier(app) else { return };
    if job.adopted {
        count(&app.metrics, "remote_filled");
    }
    let (post_key, job_id, adopted) = (job.post_key, job.job_id.clone(), job.adopted);
    tokio::spawn(async move {
        let Some(jobs) = t.jobs() else { return };
        if adopted {
            let _ = jobs.announce_stored(&post_key).await;
        }
        let _ = jobs.delete_record(JobRecord::Link(&result_key)).await;
        let _ = jobs.delete_record(JobRecord::Job(&job_id)).await;
    });
}

/// A `result_url` answer stored under `result_url` rules, for a job whose
/// link came only after the fetch began: the entry as the job's tier and
/// tags would have stored it (the same compressed bytes), or `None` when
/// Superset's own timeout says not to store it.
pub(super) fn retag(job: &Job, body: &Bytes, entry: &Entry) -> Option<Arc<Entry>> {
    let tier = job.tier.as_ref()?;
    let mut meta = entry.meta.clone();
    meta.tags = job.tags.clone();
    crate::tags::resolve_from_answer(&mut meta.tags, body);
    let fresh = super::fetch::fresh_secs(
        tier,
        job.respect_superset_timeout,
        job.custom_cache_timeout,
        body,
    )?;
    meta.fresh_until = meta.stored_at + fresh * 1000;
    meta.stale_until = meta.fresh_until + tier.stale_ms();
    Some(Arc::new(Entry {
        meta,
        zstd: entry.zstd.clone(),
        gzip: entry.gzip.clone(),
        hits: Default::default(),
    }))
}
