//! Async-query jobs followed across replicas through the shared tier: the
//! protocol is described in [`crate::jobs::shared`]; this drives it from the
//! request path ([`super::async_query`] and the cached path call in).
//! Without a shared tier that keeps job records, every function here does
//! nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::app::App;
use crate::clock::SharedClock;
use crate::fingerprint;
use crate::identity::Scope;
use crate::jobs::registry::{Job, Jobs};
use crate::jobs::shared::{self, MAX_LINKS, MAX_RECORD_BYTES, RECORD_TTL};
use crate::jobs::{self as gaq};
use crate::key::CacheKey;
use crate::metrics::Metrics;
use crate::route::CachedRoute;
use crate::store::{Entry, SharedStore, SharedTier};

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
    if let Some(jobs) = t.jobs()
        && let Err(e) = jobs.put_job(&job.job_id, bytes, RECORD_TTL).await
    {
        tracing::debug!(error = %e, "sharing an async job failed; it stays local");
        return;
    }
    let (Some(serial), Some(rx)) = (serial, app.jobs.subscribe(&job.post_key)) else {
        return;
    };
    tokio::spawn(watch_fill(
        app.jobs.clone(),
        app.store.clone(),
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
#[allow(clippy::too_many_arguments)]
async fn watch_fill(
    jobs: Arc<Jobs>,
    store: SharedStore,
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
                // This process's copy (a forced refresh's stale mark) is older.
                store.forget_local(&key);
                if jobs.filled_elsewhere(&key, serial, &job.job_id, e) {
                    count(&metrics, "remote_woken");
                }
                return;
            }
            _ => {}
        }
    }
}

/// A `done` event (step 2): add the job to the shared jobs of its
/// `result_url`. One command, spawned: the poll answer that carried the
/// event is not held up, and the client's `result_url` GET that follows
/// finds it in all but the rarest interleavings.
pub(super) fn done(app: &App, d: &gaq::Done, local: bool) {
    let Some(t) = tier(app) else { return };
    let (d, metrics) = (d.clone(), app.metrics.clone());
    tokio::spawn(async move {
        let Some(jobs) = t.jobs() else { return };
        let url = shared::url_digest(&d.result_url);
        if jobs.add_link(&url, &d.job_id, RECORD_TTL).await.is_ok() && !local {
            count(&metrics, "remote_linked");
        }
    });
}

fn decode(app: &App, bytes: &[u8]) -> Option<Job> {
    let policy = app.policy.load();
    shared::decode(bytes, |name| policy.tier(name))
}

/// The job whose data the `result_url` GET of `scope` (key `key`, path
/// `path`) will carry, among the jobs shared for that `result_url` (step 3):
/// only a job of that very scope.
pub(super) async fn link(app: &App, key: &CacheKey, scope: &Scope, path: &str) -> Option<Job> {
    let t = tier(app)?;
    let jobs = t.jobs()?;
    let ids = jobs
        .links(&shared::url_digest(path), MAX_LINKS)
        .await
        .ok()?;
    if ids.is_empty() {
        return None;
    }
    let part = scope.key_part();
    for id in ids.iter().take(MAX_LINKS) {
        let Some(id) = std::str::from_utf8(id).ok().filter(|id| gaq::plain_id(id)) else {
            count(&app.metrics, "remote_unknown");
            continue;
        };
        let bytes = match jobs.get_job(id, MAX_RECORD_BYTES).await {
            Ok(Some(b)) => b,
            // Filled and forgotten, or expired.
            Ok(None) => continue,
            Err(_) => {
                count(&app.metrics, "remote_unknown");
                continue;
            }
        };
        match decode(app, &bytes) {
            // Another scope's job for the same URL (the digest of a
            // result_url does not hold the user): not this GET's data.
            Some(j) if j.job_id == id && j.scope != part => {}
            Some(j) if j.job_id == id && result_key(&j.scope, path) == *key => return Some(j),
            _ => count(&app.metrics, "remote_unknown"),
        }
    }
    None
}

/// Step 3 before the lookup: adopt the shared job of a `result_url` key not
/// linked here, so the request skips an older entry under the key (a forced
/// refresh's job, say) and the miss path fills the job's POST as for a
/// local job.
pub(super) async fn adopt(app: &App, key: &CacheKey, scope: &Scope, path: &str) {
    if app.jobs.linked(key).is_some() || tier(app).is_none() {
        return;
    }
    if let Some(job) = link(app, key, scope, path).await {
        let max = app.config.load().cache.async_max_jobs as usize;
        app.jobs.adopt(Arc::new(job), *key, max);
    }
}

/// The job's data is stored under its POST key (by this replica, from the
/// `result_url` at `path`): tell the leader and the replicas waiting for its
/// lock when the job is another replica's, and forget it in the shared
/// tier. Spawned, off the response.
pub(super) fn filled(app: &App, job: &Job, path: &str) {
    let Some(t) = tier(app) else { return };
    if job.adopted {
        count(&app.metrics, "remote_filled");
    }
    let (post_key, job_id, adopted) = (job.post_key, job.job_id.clone(), job.adopted);
    let url = shared::url_digest(path);
    tokio::spawn(async move {
        let Some(jobs) = t.jobs() else { return };
        if adopted {
            let _ = jobs.announce_stored(&post_key).await;
        }
        let _ = jobs.remove_link(&url, &job_id).await;
        let _ = jobs.delete_job(&job_id).await;
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
    Some(Arc::new(entry.with_meta(meta)))
}
