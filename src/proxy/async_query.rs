//! Async queries (Superset's GLOBAL_ASYNC_QUERIES): a chart-data POST is
//! answered `202` with a ticket for the client's own async channel, the job
//! runs in a Celery worker, a `done` event on `/api/v1/async_event/` names
//! its `result_url`, and `GET result_url` returns the data.
//!
//! The registry is [`crate::jobs::registry`]; this drives it:
//! - a `202` answer to a keyed POST is remembered as a job of that POST's key,
//!   scope, tier and tags ([`after_fetch`]); the cross-replica fetch lock of
//!   the key stays held while the job runs;
//! - identical POSTs of that scope wait for the job's data ([`wait_for_job`])
//!   instead of starting more jobs (Superset never deduplicates them), up to
//!   `cache.async_wait_ms`; a ticket is never handed to another client, as it
//!   belongs to the leader's channel only;
//! - a `done` event seen in a poll answer passing through ([`tap_events`])
//!   links the job to the `result_url` key of the job's own scope;
//! - that scope's `GET result_url` then misses once, and its data (the body a
//!   `200` POST would have had) is stored under the result_url key and the
//!   POST's key alike, with the POST's tier and tags; waiters get it, and
//!   the lock is released so other replicas read it.
//!
//! With a shared tier, the replicas follow each job together: the POST, the
//! polls and the `result_url` GET of one client may reach three of them
//! ([`super::async_shared`]; the protocol is in [`crate::jobs::shared`]).
//!
//! Nothing here runs on a chart-data hit; a `result_url` hit looks its key
//! up in the registry, and only while jobs are remembered.

use std::io::Read as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use super::fetch::FetchResult;
use crate::app::App;
use crate::body::{Body, BoxError};
use crate::context::RequestContext;
use crate::error::Error;
use crate::identity::Scope;
use crate::jobs;
use crate::jobs::registry::{Job, Registered};
use crate::key::CacheKey;
use crate::respond::Fetched;
use crate::route::CachedRoute;
use crate::spec::FetchSpec;
use crate::store::Entry;
use crate::store::lock::RemoteLock;

/// `Cache-Status` detail of a POST answered with a job's data it waited for.
pub const ASYNC_WAIT: &str = "async-wait";
/// `Cache-Status` detail of the `result_url` GET whose data filled a job's POST.
pub const ASYNC_FILLED: &str = "async-filled";

/// Step 7 of the cached path, once per miss: note the route and scope, and
/// give a linked `result_url` GET its job's tier and tags (its entry is
/// the POST's data, invalidated with it).
pub(super) fn prepare(app: &App, spec: &mut FetchSpec, route: CachedRoute, scope: &Scope) {
    spec.origin = Some((route, scope.clone()));
    if route != CachedRoute::ResultUrl {
        return;
    }
    if let Some(job) = app.jobs.linked(&spec.key) {
        spec.tier = job.tier.clone().or(spec.tier.take());
        spec.tags = job.tags.clone();
        spec.respect_superset_timeout = job.respect_superset_timeout;
        spec.custom_cache_timeout = job.custom_cache_timeout;
    }
}

/// Whether a `result_url` key has a job whose data is not stored yet: its
/// GET goes to Superset (an older entry under the key is not that data).
pub(super) fn result_pending(app: &App, key: &CacheKey) -> bool {
    app.jobs.linked(key).is_some()
}

/// Whether a job of the POST key `key` is running (its wait is open).
pub(super) fn job_running(app: &App, key: &CacheKey) -> bool {
    app.jobs.subscribe(key).is_some()
}

/// The coalescing key of a miss: requests with and without an `async-token`
/// cookie never share an upstream answer (Superset answers the latter `401`
/// in GAQ mode, the former `202` or `200`).
pub(super) fn coalesce_key(key: CacheKey, headers: &HeaderMap) -> CacheKey {
    if !jobs::has_async_token(headers) {
        return key;
    }
    key.derived(b"async-token")
}

/// If a job of `key` is running, wait (bounded by `cache.async_wait_ms`) for
/// its data. `None`: no job, or it did not deliver in time.
pub(super) async fn wait_for_job(app: &App, key: &CacheKey) -> Option<Arc<Entry>> {
    let mut rx = app.jobs.subscribe(key)?;
    let wait = Duration::from_millis(app.config.load().cache.async_wait_ms);
    let res = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
    match res {
        Ok(Ok(v)) => {
            app.metrics.async_queries.with_label_values(&["wait"]).inc();
            (*v).clone()
        }
        _ => {
            app.metrics
                .async_queries
                .with_label_values(&["wait_timeout"])
                .inc();
            None
        }
    }
}

/// After a miss's fetch: remember the job of a `202` (taking over the fetch
/// lock while it runs), or fill the POST of a linked `result_url` GET. Gives
/// the lock back when it is not kept, for the caller to release.
pub(super) async fn after_fetch(
    app: &App,
    spec: &FetchSpec,
    force: bool,
    fetched: Option<Arc<Fetched>>,
    lock: Option<RemoteLock>,
    ctx: &mut RequestContext,
) -> Option<RemoteLock> {
    let (Some(fetched), Some((route, scope))) = (fetched, &spec.origin) else {
        return lock;
    };
    match route {
        CachedRoute::ChartData if fetched.status == StatusCode::ACCEPTED => {
            started(app, spec, scope, force, &fetched.body, lock).await
        }
        CachedRoute::ResultUrl => {
            match (&fetched.entry, app.jobs.linked(&spec.key)) {
                (Some(entry), Some(job)) => {
                    let path = spec.parts.uri.path();
                    fill(app, &job, spec.key, path, entry.clone()).await;
                    ctx.detail = Some(ASYNC_FILLED);
                }
                // Another replica may have linked the job while this GET
                // was fetched (its poll answer outran its link).
                (Some(entry), None) => {
                    let path = spec.parts.uri.path();
                    if let Some(job) = super::async_shared::link(app, &spec.key, scope, path).await
                        && let Some(entry) = super::async_shared::retag(&job, &fetched.body, entry)
                    {
                        let _ = app.store.put(&spec.key, entry.clone()).await;
                        fill(app, &job, spec.key, path, entry).await;
                        ctx.detail = Some(ASYNC_FILLED);
                    }
                }
                // Superset has no data for it (422: gone, 404: unknown): the
                // link would only keep sending this key's GETs upstream.
                (None, Some(_)) => app.jobs.unlink(&spec.key),
                _ => {}
            }
            lock
        }
        _ => lock,
    }
}

/// The answer a fetch read completely, if it did.
pub(super) fn completed(res: &Result<FetchResult, Error>) -> Option<Arc<Fetched>> {
    match res {
        Ok(FetchResult::Complete { fetched, .. }) => Some(fetched.clone()),
        _ => None,
    }
}

/// A `202` answer: remember its job and open the wait for its data.
async fn started(
    app: &App,
    spec: &FetchSpec,
    scope: &Scope,
    force: bool,
    body: &Bytes,
    lock: Option<RemoteLock>,
) -> Option<RemoteLock> {
    let Some(ticket) = jobs::parse_ticket(body) else {
        return lock;
    };
    let cfg = app.config.load();
    let job = Arc::new(Job {
        job_id: ticket.job_id,
        post_key: spec.key,
        scope: scope.key_part(),
        tier: spec.tier.clone(),
        tags: spec.tags.clone(),
        respect_superset_timeout: spec.respect_superset_timeout,
        custom_cache_timeout: spec.custom_cache_timeout,
        created: Instant::now(),
        adopted: false,
    });
    let wait_ms = cfg.cache.async_wait_ms;
    let max = cfg.cache.async_max_jobs as usize;
    let serial = match app.jobs.register(job.clone(), max, wait_ms > 0, lock) {
        Registered::Yes(serial) => serial,
        Registered::Full(lock) => {
            app.metrics
                .async_queries
                .with_label_values(&["untracked"])
                .inc();
            return lock;
        }
    };
    app.metrics
        .async_queries
        .with_label_values(&["ticket"])
        .inc();
    if let Some(serial) = serial {
        let (jobs, key) = (app.jobs.clone(), spec.key);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            // Waiters forward; the lock is released.
            jobs.end_wait(&key, serial);
        });
    }
    if force {
        mark_stale(app, &spec.key).await;
    }
    // After the entry is marked stale: a fresh entry is then the job's data.
    super::async_shared::started(app, &job, serial).await;
    None
}

/// A forced refresh is running: the entry it replaces is served as stale
/// (within the tier's windows) until the job's data arrives.
async fn mark_stale(app: &App, key: &CacheKey) {
    let Some(e) = super::fetch::lookup(app, key).await else {
        return;
    };
    let now = app.clock.now_ms();
    if now >= e.meta.fresh_until {
        return;
    }
    let mut meta = e.meta.clone();
    meta.fresh_until = now;
    if app
        .store
        .put(key, Arc::new(e.with_meta(meta)))
        .await
        .is_ok()
    {
        app.metrics
            .async_queries
            .with_label_values(&["marked_stale"])
            .inc();
    }
}

/// The job's data arrived (stored under its `result_url` key): store it under
/// the POST's key too, wake the waiters and release the lock.
async fn fill(app: &App, job: &Job, result_key: CacheKey, path: &str, entry: Arc<Entry>) {
    if let Err(e) = app.store.put(&job.post_key, entry.clone()).await {
        tracing::warn!(error = %e, key = %job.post_key.short(), "storing a job's data failed");
    }
    app.jobs.filled(job, &result_key, entry);
    super::async_shared::filled(app, job, path);
    app.metrics
        .async_queries
        .with_label_values(&["filled"])
        .inc();
}

/// A `done` event for `job_id`: link the job to its `result_url` key in the
/// job's own scope (a `done` event names a URL that is the same for every
/// user; the data is the job's principal's).
fn done(app: &App, d: &jobs::Done) {
    let local = app.jobs.link(&d.job_id, |job| {
        super::async_shared::result_key(&job.scope, &d.result_url)
    });
    if local.is_some() {
        app.metrics
            .async_queries
            .with_label_values(&["linked"])
            .inc();
    }
    // The GET may reach another replica; the job may be another replica's.
    super::async_shared::done(app, d, local.is_some());
}

/// Whether a pass-through request is an async-event poll worth reading:
/// while jobs are remembered here, or, with a shared tier, a browser's poll
/// (another replica's jobs may be done: reading costs a bounded copy and a
/// JSON scan of the poll answer, and never touches a chart-data request).
pub(super) fn is_event_poll(
    app: &App,
    method: &http::Method,
    path: &str,
    headers: &HeaderMap,
) -> bool {
    method == http::Method::GET
        && matches!(path, "/api/v1/async_event/" | "/api/v1/async_event")
        && (!app.jobs.is_empty() || super::async_shared::may_follow(app, headers))
}

/// Read the `done` events of a poll answer as it streams to the client,
/// unaltered and undelayed. Identity and gzip bodies up to
/// [`jobs::MAX_EVENTS_BYTES`] are read; anything else is left alone.
pub(super) fn tap_events(app: Arc<App>, resp: Response<Body>) -> Response<Body> {
    let gzip = match resp.headers().get(header::CONTENT_ENCODING) {
        None => false,
        Some(v) if v == "identity" => false,
        Some(v) if v == "gzip" => true,
        Some(_) => return resp,
    };
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let (parts, inner) = resp.into_parts();
    let tap = Tap {
        inner,
        buf: BytesMut::new(),
        on_end: Some(Box::new(move |bytes: Bytes| {
            let body = if gzip { gunzip(&bytes) } else { Some(bytes) };
            if let Some(body) = body {
                for d in jobs::parse_done_events(&body) {
                    done(&app, &d);
                }
            }
        })),
    };
    Response::from_parts(parts, tap.boxed_unsync())
}

fn gunzip(b: &[u8]) -> Option<Bytes> {
    let mut out = Vec::new();
    let limit = jobs::MAX_EVENTS_BYTES as u64 + 1;
    flate2::read::GzDecoder::new(b)
        .take(limit)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() <= jobs::MAX_EVENTS_BYTES).then(|| out.into())
}

type OnEnd = Box<dyn FnOnce(Bytes) + Send>;

/// A body that copies what passes (up to [`jobs::MAX_EVENTS_BYTES`]) and
/// hands the copy over once the last byte went by — before the client can
/// act on it, so a `result_url` GET that follows finds the link.
struct Tap {
    inner: Body,
    buf: BytesMut,
    /// `None` once called, or once the body outgrew the bound.
    on_end: Option<OnEnd>,
}

impl Tap {
    fn finish(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(std::mem::take(&mut self.buf).freeze());
        }
    }
}

impl HttpBody for Tap {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref()
                    && this.on_end.is_some()
                {
                    if this.buf.len() + d.len() > jobs::MAX_EVENTS_BYTES {
                        this.on_end = None;
                        this.buf = BytesMut::new();
                    } else {
                        this.buf.extend_from_slice(d);
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            // An error ends the body; what was read may be incomplete.
            Poll::Ready(Some(Err(_))) => this.on_end = None,
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn the_tap_passes_every_byte_and_sees_the_whole_body() {
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        let tap = Tap {
            inner: crate::body::full(Bytes::from_static(b"{\"result\":[]}")),
            buf: BytesMut::new(),
            on_end: Some(Box::new(move |b| *s.lock().unwrap() = Some(b))),
        };
        let out = tap.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"{\"result\":[]}");
        assert_eq!(
            seen.lock().unwrap().as_deref(),
            Some(&b"{\"result\":[]}"[..])
        );
    }

    #[test]
    fn gzip_bodies_are_read_within_the_bound() {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b"{\"result\":[]}").unwrap();
        let z = e.finish().unwrap();
        assert_eq!(gunzip(&z).as_deref(), Some(&b"{\"result\":[]}"[..]));
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&vec![b' '; jobs::MAX_EVENTS_BYTES + 1])
            .unwrap();
        assert_eq!(gunzip(&e.finish().unwrap()), None);
    }

    #[test]
    fn the_coalescing_key_separates_clients_with_an_async_token() {
        let k = CacheKey([7; 32]);
        let mut h = HeaderMap::new();
        assert_eq!(coalesce_key(k, &h), k);
        h.insert(header::COOKIE, "async-token=a.b.c".parse().unwrap());
        assert_ne!(coalesce_key(k, &h), k);
    }
}
