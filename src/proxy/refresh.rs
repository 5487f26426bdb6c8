//! Background refresh jobs: stale-while-revalidate and refresh-ahead fetches
//! (the scheduling of hot entries is [`crate::refresh::Refresher`]).
//!
//! Both kinds re-check the store after taking the lead (someone may have
//! stored a newer entry meanwhile), so a key is refreshed once per generation.
//! Across replicas they take the shared fetch lock (`store::lock`), the same
//! one cross-replica coalescing of misses uses: a replica that finds it held
//! leaves the refresh to its holder.

use std::sync::Arc;

use crate::app::App;
use crate::coalesce::LeaderGuard;
use crate::config::ScopeKind;
use crate::identity::{Credentials, Scope, ScopeOutcome};
use crate::key::CacheKey;
use crate::refresh::{Finished, HotJob};
use crate::respond::Fetched;
use crate::spec::FetchSpec;
use crate::store::Entry;

use super::fetch;

/// Start refreshing a hot entry ahead of its expiry (see [`crate::refresh`]).
pub(crate) fn track(
    app: &Arc<App>,
    spec: FetchSpec,
    cred: Option<Credentials>,
    expect: Option<(ScopeKind, Scope)>,
    entry: &Entry,
) {
    let cfg = app.config.load();
    if app
        .refresher
        .track(&cfg.refresh_ahead, spec, cred, expect, entry)
        .is_none()
    {
        return;
    }
    let weak = Arc::downgrade(app);
    let alive = weak.clone();
    app.refresher.start(
        app.clock.clone(),
        move || alive.strong_count() > 0,
        move |job| {
            if let Some(app) = weak.upgrade() {
                tokio::spawn(fire(app, job));
            }
        },
    );
}

/// Which refresh this is (metric label and what "already done" means).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Stale-while-revalidate: done once the stored entry is fresh again.
    Revalidate,
    /// Refresh-ahead of the generation whose `fresh_until` is given: done once
    /// that generation is no longer the stored one.
    Ahead(u64),
}

impl Kind {
    fn label(&self) -> &'static str {
        match self {
            Kind::Revalidate => "swr",
            Kind::Ahead(_) => "ahead",
        }
    }
}

/// Refresh `spec` in the background unless a fetch of its key is in flight.
/// Returns whether a refresh was started.
pub(crate) fn revalidate(app: &Arc<App>, mut spec: FetchSpec) -> bool {
    spec.detach();
    // An async job of the key (a forced refresh) will replace the entry:
    // a revalidation would only race it with older data.
    if super::async_query::job_running(app, &spec.key) {
        count(app, Kind::Revalidate, "async_job");
        return false;
    }
    let Some(guard) = app.coalescer.try_lead(spec.key) else {
        count(app, Kind::Revalidate, "inflight");
        return false;
    };
    let app = app.clone();
    tokio::spawn(async move {
        run(&app, &spec, guard, Kind::Revalidate).await;
    });
    true
}

/// Fetch and store as the key's leader, then hand the result to followers.
async fn run(app: &App, spec: &FetchSpec, guard: LeaderGuard<Arc<Fetched>>, kind: Kind) {
    // A newer entry may have landed between the caller's lookup and the lead.
    if already_done(app, &spec.key, kind).await {
        count(app, kind, "skipped");
        return;
    }
    // Across replicas: the shared fetch lock (`store::lock`). If another
    // replica is refreshing the key, its entry is handed to local followers.
    let _remote_lock = match fetch::remote_leader(app, &spec.key, false).await {
        Ok(lock) => lock,
        Err(fetched) => {
            count(app, kind, "elsewhere");
            guard.publish(fetched);
            return;
        }
    };
    // Taken after waiting: the previous holder may have refreshed it.
    if _remote_lock.is_some() && already_done(app, &spec.key, kind).await {
        count(app, kind, "elsewhere");
        return;
    }
    match fetch::background_fetch(app, spec).await {
        Ok(f) if f.entry.is_some() => {
            count(app, kind, "stored");
            guard.publish(f);
        }
        // Not storable (error status, no-store, ...): release followers so they
        // fetch themselves (and may serve stale-if-error) rather than share it.
        Ok(f) => {
            tracing::debug!(key = %spec.key.short(), status = %f.status, kind = kind.label(), "background refresh not stored");
            count(app, kind, "not_stored");
        }
        Err(e) => {
            tracing::debug!(key = %spec.key.short(), error = %e, kind = kind.label(), "background refresh failed");
            count(app, kind, "error");
        }
    }
}

/// Whether the refresh has nothing left to do: for SWR, a fresh entry is
/// stored; for refresh-ahead, the generation it was scheduled for is gone or
/// replaced. With a shared store, Redis is asked too, because this process's
/// L1 copy does not show another replica's refresh. A replica that finds a
/// newer shared entry drops its L1 copy so the next request reads it.
async fn already_done(app: &App, key: &CacheKey, kind: Kind) -> bool {
    let now = app.clock.now_ms();
    let done = |e: Option<&Arc<Entry>>| match (kind, e) {
        (Kind::Revalidate, Some(e)) => now < e.meta.fresh_until,
        (Kind::Revalidate, None) => false,
        // Purged, evicted or replaced: the next request decides what to do.
        (Kind::Ahead(generation), Some(e)) => e.meta.fresh_until != generation,
        (Kind::Ahead(_), None) => true,
    };
    let local = fetch::lookup(app, key).await;
    if done(local.as_ref()) {
        return true;
    }
    let Some(shared) = app.store.shared() else {
        return false;
    };
    // Redis trouble: refresh anyway (fail open).
    let Ok(shared) = shared.get_shared(key).await else {
        return false;
    };
    if !done(shared.as_ref()) {
        return false;
    }
    let newer = shared.is_some_and(|s| local.is_none_or(|l| s.meta.stored_at > l.meta.stored_at));
    if newer {
        app.store.forget_local(key);
    }
    true
}

fn count(app: &App, kind: Kind, result: &'static str) {
    app.metrics
        .background_refreshes
        .with_label_values(&[kind.label(), result])
        .inc();
}

/// Refresh one hot entry: bounded concurrency, the key's coalescing lead, the
/// most recent credential (re-resolved: it must still name the key's principal).
async fn fire(app: Arc<App>, job: Arc<HotJob>) {
    let refresher = app.refresher.clone();
    let kind = Kind::Ahead(job.generation);
    let _running = Finished(&refresher);
    let Ok(_permit) = refresher.permits().clone().acquire_owned().await else {
        return;
    };
    let Some(guard) = app.coalescer.try_lead(job.spec.key) else {
        count(&app, kind, "inflight");
        return;
    };
    let cred = job.cred.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some((scope_kind, scope)) = &job.expect {
        // The key belongs to one scope: the credential must still resolve to it.
        let ok = match &cred {
            Some(c) => matches!(
                app.identity.scope(c, *scope_kind, &app.upstream).await,
                Ok(ScopeOutcome::Scope(s)) if s == *scope
            ),
            None => false,
        };
        if !ok {
            count(&app, kind, "no_credential");
            return;
        }
    }
    // The fetch sends exactly this set (`credentials::apply` in the fetch),
    // whatever credential headers the request that made the entry hot had.
    let mut spec = job.spec.clone();
    spec.creds = cred;
    run(&app, &spec, guard, kind).await;
}
