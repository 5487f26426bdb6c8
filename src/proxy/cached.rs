//! The cached route: identity → fingerprint → policy → store → coalesce →
//! upstream → store → respond. The hit path is the product: it reads the body,
//! canonicalizes, looks up the credential mapping and the entry, and answers
//! with stored bytes; everything else happens only on a miss.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::{Request, Response};

use super::async_query::{self, ASYNC_WAIT};
use super::fetch::{self, FetchResult, lookup, remote_leader, stale_secs};
use super::refresh;
use super::{build_upstream_request, send};
use crate::app::App;
use crate::body::{self, Body, Limited};
use crate::coalesce::Role;
use crate::config::{IdentityKind, ScopeKind, TierConfig};
use crate::context::{ConnInfo, Outcome, RequestContext};
use crate::error::Error;
use crate::fingerprint::{self, memo::Canonical};
use crate::identity::{Credentials, Extracted, Scope, ScopeOutcome};
use crate::key::CacheKey;
use crate::offload;
use crate::policy::{Bypass, Decision};
use crate::refresh::Hotness;
use crate::respond::{self, Accept, Fetched};
use crate::route::CachedRoute;
use crate::spec::FetchSpec;
use crate::store::Entry;
use crate::store::entry::{Window, window};

pub(super) async fn handle(
    app: &Arc<App>,
    route: CachedRoute,
    req: Request<Body>,
    conn: ConnInfo,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, Error> {
    let cfg = app.config.load();
    let (mut parts, incoming) = req.into_parts();

    // 1. Body: read up to the limit, within the body deadline and the budget
    //    for bodies being received; a larger body is streamed through uncached.
    let (s, max) = (&cfg.server, cfg.cache.max_request_body_bytes as usize);
    let deadline = Duration::from_millis(s.body_read_timeout_ms);
    let cap = s.max_buffered_body_bytes as usize;
    let body = match body::read_buffered(incoming, max, cap, deadline, &app.metrics).await? {
        Limited::Complete(b) => b,
        Limited::TooLarge(stream) => {
            return bypass(app, parts, stream, conn, ctx, Bypass::BodyTooLarge).await;
        }
    };

    // 2–4. Canonical form, credentials, policy and identity scope; anything
    // that cannot be keyed safely goes to Superset byte-for-byte, uncached.
    crate::upstream::check_host(&parts.headers)?;
    let Keyed {
        canon,
        creds,
        decision,
        tier,
        scope,
    } = match keyed(app, route, &mut parts, &body).await {
        Ok(k) => k,
        Err(why) => return bypass(app, parts, body::full(body), conn, ctx, why).await,
    };
    ctx.tier = Some(tier.clone());
    ctx.scope_kind = Some(scope.kind());

    // 5. The key.
    let key = scope.with_key_part(|scope| {
        fingerprint::build_key(
            route,
            parts.uri.path(),
            &canon.query,
            scope,
            &canon.body_digest,
        )
    });
    ctx.key = Some(key);
    let accept = respond::negotiate(&parts.headers);

    // 6. Lookup (skipped by Superset's "Force refresh").
    let mut stale: Option<Arc<Entry>> = None;
    if route == CachedRoute::ResultUrl {
        // A job another replica linked to this key (boxed, and never on a
        // chart-data request).
        let path = parts.uri.path();
        Box::pin(super::async_shared::adopt(app, &key, &scope, path)).await;
    }
    if canon.force {
        ctx.forced = true;
    } else if route == CachedRoute::ResultUrl && async_query::result_pending(app, &key) {
        // An async job's data is at Superset; what is stored is older.
    } else if let Some(entry) = lookup(app, &key).await {
        let now = app.clock.now_ms();
        match window(&entry.meta, &tier, now) {
            Window::Fresh => {
                ctx.outcome = Outcome::Hit;
                ctx.ttl = Some(((entry.meta.fresh_until - now) / 1000) as i64);
                let Some(resp) = serve_entry(app, &key, &entry, accept, now).await else {
                    let spec =
                        FetchSpec::new(parts, body, key, &canon.facts, &decision, conn, creds);
                    return Box::pin(refill(app, spec, &cfg, accept, ctx)).await;
                };
                // Refresh-ahead: one atomic add per hit; more only for hot entries.
                match app.refresher.count_hit(&entry, cfg.refresh_ahead.hot_hits) {
                    Hotness::Cold => {}
                    Hotness::Became => {
                        let spec = FetchSpec::new(
                            parts,
                            body,
                            key,
                            &canon.facts,
                            &decision,
                            conn,
                            creds.clone(),
                        );
                        // The refresh must resolve to this same scope again.
                        let expect = match decision.scope {
                            ScopeKind::Public => None,
                            kind => Some((kind, scope)),
                        };
                        refresh::track(app, spec, creds, expect, &entry);
                    }
                    Hotness::Hot => app.refresher.touch(&key, creds),
                }
                return Ok(resp);
            }
            Window::Revalidate => {
                // Stale-while-revalidate: answer now, refresh in the background.
                ctx.outcome = Outcome::Stale;
                ctx.ttl = Some(-(stale_secs(&entry, now)));
                let spec = FetchSpec::new(parts, body, key, &canon.facts, &decision, conn, creds);
                let Some(resp) = serve_entry(app, &key, &entry, accept, now).await else {
                    return Box::pin(refill(app, spec, &cfg, accept, ctx)).await;
                };
                refresh::revalidate(app, spec);
                return Ok(resp);
            }
            Window::IfError => stale = Some(entry),
            Window::Expired => {}
        }
    }

    // 7. Miss: one fetch per key (forced refreshes coalesce among themselves).
    // Boxed: the miss path's state (coalescing, locks, the upstream exchange)
    // is most of this function's future, and a hit should neither carry nor
    // copy it.
    let mut spec = FetchSpec::new(parts, body, key, &canon.facts, &decision, conn, creds);
    async_query::prepare(app, &mut spec, route, &scope);
    let wait = Duration::from_millis(cfg.cache.coalesce_wait_ms);
    Box::pin(miss(app, spec, canon.force, wait, stale, accept, ctx)).await
}

/// What steps 2–4 of [`handle`] establish for a request that may be cached.
struct Keyed {
    canon: Arc<Canonical>,
    creds: Option<Credentials>,
    decision: Decision,
    tier: Arc<TierConfig>,
    scope: Scope,
}

/// Steps 2–4 of [`handle`]: the canonical form and facts, the credential set
/// (read once hop-by-hop headers are gone: what keys the entry is what
/// Superset will see), the policy decision, and the identity scope — or why
/// the request is forwarded uncached.
async fn keyed(
    app: &App,
    route: CachedRoute,
    parts: &mut http::request::Parts,
    body: &Bytes,
) -> Result<Keyed, Bypass> {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let canon = app
        .canon_memo
        .canonicalize(
            route,
            parts.uri.path(),
            parts.uri.query(),
            content_type,
            body,
        )
        .map_err(Bypass::Unkeyable)?;
    let creds = match app.identity.credentials(&mut parts.headers, parts.version) {
        Extracted::None => None,
        Extracted::Set(c) => Some(c),
        Extracted::Ambiguous(why) => {
            tracing::debug!(
                why = why.as_str(),
                "ambiguous credentials; forwarding uncached"
            );
            return Err(Bypass::AmbiguousCredential);
        }
    };
    let decision = app.policy.load().decide_with(
        route,
        parts.uri.path(),
        &canon.facts,
        canon.time_range_end,
        IdentityKind::of(creds.as_ref()),
        app.clock.now_ms(),
    );
    let tier = decision.tier.clone().ok_or(Bypass::Rule)?;
    let scope = resolve_scope(app, decision.scope, creds.as_ref()).await?;
    Ok(Keyed {
        canon,
        creds,
        decision,
        tier,
        scope,
    })
}

/// Step 4: never serve one principal's data to another. The scope the key is
/// built with, or why there is none.
async fn resolve_scope(
    app: &App,
    kind: ScopeKind,
    creds: Option<&Credentials>,
) -> Result<Scope, Bypass> {
    if kind == ScopeKind::Public {
        return Ok(Scope::Public);
    }
    let creds = creds.ok_or(Bypass::NoCredential)?;
    match app.identity.scope(creds, kind, &app.upstream).await {
        Ok(ScopeOutcome::Scope(s)) => Ok(s),
        Ok(ScopeOutcome::Denied(why)) => Err(Bypass::Denied(why)),
        Err(e) => {
            tracing::warn!(error = %e, "identity lookup failed; forwarding uncached");
            Err(Bypass::IdentityError)
        }
    }
}

/// Step 7 of [`handle`]: lead the fetch of `spec.key` or follow the leader's.
async fn miss(
    app: &App,
    spec: FetchSpec,
    force: bool,
    wait: Duration,
    stale: Option<Arc<Entry>>,
    accept: Accept,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, Error> {
    let key = spec.key;
    let coalesce_key = if force { force_key(&key) } else { key };
    let coalesce_key = async_query::coalesce_key(coalesce_key, &spec.parts.headers);
    match app.coalescer.acquire(coalesce_key, wait).await {
        // The leader's async job ticket is for its own channel only: wait
        // for the job's data instead, or fetch alone.
        Role::Follower(f) if f.status == http::StatusCode::ACCEPTED && f.entry.is_none() => {
            if let Some(entry) = async_query::wait_for_job(app, &key).await {
                ctx.outcome = Outcome::Coalesced;
                ctx.detail = Some(ASYNC_WAIT);
                let f = Fetched::from_entry(entry);
                return serve_fetched(app, &key, &f, accept, app.clock.now_ms()).await;
            }
            fetch_alone(app, &spec, force, stale, accept, ctx).await
        }
        Role::Follower(f) => {
            app.metrics.coalesced.with_label_values(&["local"]).inc();
            ctx.outcome = Outcome::Coalesced;
            serve_fetched(app, &key, &f, accept, app.clock.now_ms()).await
        }
        Role::Leader(guard) => {
            // An async job of this key is running: its data, not another job.
            if !force && let Some(entry) = async_query::wait_for_job(app, &key).await {
                ctx.outcome = Outcome::Coalesced;
                ctx.detail = Some(ASYNC_WAIT);
                let f = Fetched::from_entry(entry);
                guard.publish(f.clone());
                return serve_fetched(app, &key, &f, accept, app.clock.now_ms()).await;
            }
            // Across replicas: another replica may be fetching this key
            // already. Not a `result_url` whose job's data is pending: what
            // is stored under it is older, and its GET is one client's.
            let alone = force || async_query::result_pending(app, &key);
            let remote_lock = match remote_leader(app, &key, alone).await {
                Ok(lock) => lock,
                Err(fetched) => {
                    // Another replica's entry; one that cannot be read is
                    // deleted by `serve_entry` and fetched here instead.
                    let now = app.clock.now_ms();
                    if let Ok(resp) = serve_fetched(app, &key, &fetched, accept, now).await {
                        app.metrics
                            .coalesced
                            .with_label_values(&["distributed"])
                            .inc();
                        ctx.outcome = Outcome::Coalesced;
                        guard.publish(fetched);
                        return Ok(resp);
                    }
                    None
                }
            };
            let res = fetch::fetch(app, &spec, ctx, stale.as_ref()).await;
            // An async job keeps the lock while it runs (before followers
            // are woken: they look for the job).
            let remote_lock = async_query::after_fetch(
                app,
                &spec,
                force,
                async_query::completed(&res),
                remote_lock,
                ctx,
            )
            .await;
            // The entry is stored (or will not be): release the lock now, before
            // this replica's own followers are woken. Releasing announces it to
            // the other replicas' waiters, and the announcement would otherwise
            // queue behind this replica's burst of follower responses.
            drop(remote_lock);
            match res {
                Ok(FetchResult::Complete {
                    fetched,
                    set_cookie,
                }) => {
                    guard.publish(fetched.clone());
                    let mut resp =
                        serve_fetched(app, &key, &fetched, accept, app.clock.now_ms()).await?;
                    // The leader's own cookies go to the leader only.
                    for c in set_cookie {
                        resp.headers_mut().append(header::SET_COOKIE, c);
                    }
                    Ok(resp)
                }
                Ok(FetchResult::Streaming(resp)) => {
                    drop(guard);
                    Ok(resp)
                }
                Err(e) => {
                    drop(guard);
                    Err(e)
                }
            }
        }
        Role::TimedOut => fetch_alone(app, &spec, force, stale, accept, ctx).await,
    }
}

/// Fetch without coalescing (the wait for a leader ran out, or the leader's
/// answer was another client's async ticket).
async fn fetch_alone(
    app: &App,
    spec: &FetchSpec,
    force: bool,
    stale: Option<Arc<Entry>>,
    accept: Accept,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, Error> {
    let res = fetch::fetch(app, spec, ctx, stale.as_ref()).await;
    let done = async_query::completed(&res);
    let _ = async_query::after_fetch(app, spec, force, done, None, ctx).await;
    match res? {
        FetchResult::Complete {
            fetched,
            set_cookie,
        } => {
            let mut resp =
                serve_fetched(app, &spec.key, &fetched, accept, app.clock.now_ms()).await?;
            for c in set_cookie {
                resp.headers_mut().append(header::SET_COOKIE, c);
            }
            Ok(resp)
        }
        FetchResult::Streaming(resp) => Ok(resp),
    }
}

/// The coalescing key of a forced refresh: distinct from normal misses so a
/// forced request never receives a response Superset served from its own cache.
fn force_key(key: &CacheKey) -> CacheKey {
    key.derived(b"force")
}

/// Answer from a stored entry, or `None` when its body cannot be read (a
/// corrupt zstd block in an entry from a shared store): the entry is then
/// deleted everywhere and the caller fetches as on a miss.
async fn serve_entry(
    app: &App,
    key: &CacheKey,
    entry: &Arc<Entry>,
    accept: Accept,
    now: u64,
) -> Option<Response<Body>> {
    // gzip copies only where the operator keeps gzip (`cache.store_gzip`).
    let gzip_copy = |a: Accept| a == Accept::Gzip && app.config.load().cache.store_gzip;
    // A large entry's copy is made off this thread. The size is checked here
    // too, not only in `prepare`: calling it for every identity hit cost a
    // small hit ~50 instructions more (callgrind, `hit_profile count`).
    if entry.meta.raw_len as usize >= offload::MIN_BYTES && respond::needs_copy(entry, accept) {
        app.copies
            .prepare(&app.offload, key, entry, gzip_copy(accept))
            .await;
    }
    let mut resp = match respond::from_entry(entry, accept, |a| {
        app.copies.body(key, entry, gzip_copy(a))
    }) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, key = %key.short(), "unreadable entry; deleting it");
            let purge = crate::store::Purge::Keys(vec![*key]);
            let _ = crate::invalidate::apply(&*app.store, &app.metrics, &purge, "unreadable-entry")
                .await;
            return None;
        }
    };
    let age = now.saturating_sub(entry.meta.stored_at) / 1000;
    resp.headers_mut().insert(header::AGE, respond::number(age));
    Some(resp)
}

/// The miss path for a request whose entry could not be read: fetch (and
/// store) as if nothing had been found.
async fn refill(
    app: &App,
    spec: FetchSpec,
    cfg: &crate::config::Config,
    accept: Accept,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, Error> {
    ctx.ttl = None;
    let wait = Duration::from_millis(cfg.cache.coalesce_wait_ms);
    miss(app, spec, false, wait, None, accept, ctx).await
}

async fn serve_fetched(
    app: &App,
    key: &CacheKey,
    f: &Fetched,
    accept: Accept,
    now: u64,
) -> Result<Response<Body>, Error> {
    match &f.entry {
        // A shared entry whose body cannot be read (deleted by `serve_entry`)
        // has no bytes to fall back on here.
        Some(e) => serve_entry(app, key, e, accept, now)
            .await
            .ok_or_else(|| Error::Store("unreadable entry".into())),
        None => Ok(respond::from_parts(f.status, &f.headers, f.body.clone())),
    }
}

/// Forward uncached, recording why. Boxed, like the miss path: the upstream
/// exchange's state stays out of the hit path's future.
fn bypass<'a>(
    app: &'a App,
    parts: http::request::Parts,
    body: Body,
    conn: ConnInfo,
    ctx: &'a mut RequestContext,
    why: Bypass,
) -> futures_util::future::BoxFuture<'a, Result<Response<Body>, Error>> {
    Box::pin(bypass_inner(app, parts, body, conn, ctx, why))
}

async fn bypass_inner(
    app: &App,
    parts: http::request::Parts,
    body: Body,
    conn: ConnInfo,
    ctx: &mut RequestContext,
    why: Bypass,
) -> Result<Response<Body>, Error> {
    ctx.outcome = Outcome::Bypass;
    ctx.detail = Some(why.as_str());
    let req = build_upstream_request(app, parts, body, conn, &ctx.request_id, false)?;
    let resp = send(app, req, ctx, "chart").await?;
    let (mut parts, incoming) = resp.into_parts();
    crate::upstream::strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, body::stream(incoming)))
}
