//! The cached route: identity → fingerprint → policy → store → coalesce →
//! upstream → store → respond. The hit path is the product: it reads the body,
//! canonicalizes, looks up the credential mapping and the entry, and answers
//! with stored bytes; everything else happens only on a miss.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};

use super::respond::{self, Accept};
use super::{ConnInfo, build_upstream_request, send};
use crate::app::App;
use crate::body::{self, Body, Limited};
use crate::coalesce::Role;
use crate::context::{Outcome, RequestContext};
use crate::error::Error;
use crate::fingerprint::{self, CacheKey, QueryFacts};
use crate::identity::{Credentials, Extracted, Scope, ScopeOutcome};
use crate::offload;
use crate::policy::{
    self, Bypass, Cacheability, Decision, IdentityKind, NotStorable, ScopeKind, TierConfig,
};
use crate::refresh::{self, Hotness, Window};
use crate::route::CachedRoute;
use crate::store::{Entry, Meta};

/// A complete upstream response shared between a leader and its followers.
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    /// Response headers without `Set-Cookie` and framing headers.
    pub headers: HeaderMap,
    /// Uncompressed body.
    pub body: Bytes,
    /// The stored entry, when the response was storable.
    pub entry: Option<Arc<Entry>>,
}

/// Everything needed to (re)fetch a keyed request from Superset. Background
/// refreshes (`crate::refresh`) keep one per refreshed key.
#[derive(Clone)]
pub(crate) struct FetchSpec {
    pub(crate) parts: http::request::Parts,
    pub(crate) body: Bytes,
    pub(crate) key: CacheKey,
    pub(crate) tags: Vec<String>,
    pub(crate) tier: Option<Arc<TierConfig>>,
    pub(crate) respect_superset_timeout: bool,
    pub(crate) custom_cache_timeout: Option<u64>,
    pub(crate) conn: ConnInfo,
    /// The credential set the key's scope was resolved from: the only
    /// credentials any fetch of this spec sends (rebuilt by
    /// [`crate::credentials::apply`] over `parts`).
    pub(crate) creds: Option<Credentials>,
}

impl FetchSpec {
    fn new(
        parts: http::request::Parts,
        body: Bytes,
        key: CacheKey,
        facts: &QueryFacts,
        decision: &Decision,
        conn: ConnInfo,
        creds: Option<Credentials>,
    ) -> FetchSpec {
        FetchSpec {
            parts,
            body,
            key,
            creds,
            tags: facts.tags(),
            tier: decision.tier.clone(),
            respect_superset_timeout: decision.respect_superset_timeout,
            custom_cache_timeout: facts.custom_cache_timeout,
            conn,
        }
    }
}

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

    // 2. Canonical form and facts. Unkeyable bodies go to Superset byte-for-byte.
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let canon = match app.canon_memo.canonicalize(
        route,
        parts.uri.path(),
        parts.uri.query(),
        content_type,
        &body,
    ) {
        Ok(c) => c,
        Err(u) => {
            return bypass(
                app,
                parts,
                body::full(body),
                conn,
                ctx,
                Bypass::Unkeyable(u),
            )
            .await;
        }
    };

    // 3. Credentials, read once hop-by-hop headers are gone (what keys the
    // entry is what Superset will see), then policy: tier or bypass.
    crate::upstream::check_host(&parts.headers)?;
    let creds = match app.identity.credentials(&mut parts.headers, parts.version) {
        Extracted::None => None,
        Extracted::Set(c) => Some(c),
        Extracted::Ambiguous(why) => {
            tracing::debug!(
                why = why.as_str(),
                "ambiguous credentials; forwarding uncached"
            );
            let why = Bypass::AmbiguousCredential;
            return bypass(app, parts, body::full(body), conn, ctx, why).await;
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
    let Some(tier) = decision.tier.clone() else {
        return bypass(app, parts, body::full(body), conn, ctx, Bypass::Rule).await;
    };
    ctx.tier = Some(tier.clone());

    // 4. Identity: never serve one principal's data to another.
    let scope = match decision.scope {
        ScopeKind::Public => Scope::Public,
        kind @ (ScopeKind::User | ScopeKind::Roles) => {
            let Some(creds) = &creds else {
                return bypass(
                    app,
                    parts,
                    body::full(body),
                    conn,
                    ctx,
                    Bypass::NoCredential,
                )
                .await;
            };
            match app.identity.scope(creds, kind, &app.upstream).await {
                Ok(ScopeOutcome::Scope(s)) => s,
                Ok(ScopeOutcome::Denied(why)) => {
                    let why = if why == "identity-denied" {
                        Bypass::IdentityDenied
                    } else {
                        Bypass::CredentialInvalid(why)
                    };
                    return bypass(app, parts, body::full(body), conn, ctx, why).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "identity lookup failed; forwarding uncached");
                    return bypass(
                        app,
                        parts,
                        body::full(body),
                        conn,
                        ctx,
                        Bypass::IdentityError,
                    )
                    .await;
                }
            }
        }
    };
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
    if canon.force {
        ctx.forced = true;
    } else if let Some(entry) = lookup(app, &key).await {
        let now = app.clock.now_ms();
        match refresh::window(&entry.meta, &tier, now) {
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
                        app.refresher.track(app, spec, creds, expect, &entry);
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
    let spec = FetchSpec::new(parts, body, key, &canon.facts, &decision, conn, creds);
    let wait = Duration::from_millis(cfg.cache.coalesce_wait_ms);
    Box::pin(miss(app, spec, canon.force, wait, stale, accept, ctx)).await
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
    match app.coalescer.acquire(coalesce_key, wait).await {
        Role::Follower(f) => {
            app.metrics.coalesced.with_label_values(&["local"]).inc();
            ctx.outcome = Outcome::Coalesced;
            serve_fetched(app, &key, &f, accept, app.clock.now_ms()).await
        }
        Role::Leader(guard) => {
            // Across replicas: another replica may be fetching this key already.
            let remote_lock = match remote_leader(app, &key, force).await {
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
            let res = fetch(app, &spec, ctx, stale.as_ref()).await;
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
        Role::TimedOut => {
            let res = fetch(app, &spec, ctx, stale.as_ref()).await?;
            match res {
                FetchResult::Complete {
                    fetched,
                    set_cookie,
                } => {
                    let mut resp =
                        serve_fetched(app, &key, &fetched, accept, app.clock.now_ms()).await?;
                    for c in set_cookie {
                        resp.headers_mut().append(header::SET_COOKIE, c);
                    }
                    Ok(resp)
                }
                FetchResult::Streaming(resp) => Ok(resp),
            }
        }
    }
}

/// The coalescing key of a forced refresh: distinct from normal misses so a
/// forced request never receives a response Superset served from its own cache.
fn force_key(key: &CacheKey) -> CacheKey {
    let mut h = blake3::Hasher::new();
    h.update(b"force");
    h.update(&key.0);
    CacheKey(*h.finalize().as_bytes())
}

/// Cross-replica coalescing (see `store::lock`): `Ok(lock)` → fetch, holding
/// the lock (if any) until stored; `Err(fetched)` → another replica's entry.
pub(crate) async fn remote_leader(
    app: &App,
    key: &CacheKey,
    force: bool,
) -> Result<Option<crate::store::lock::RemoteLock>, Arc<Fetched>> {
    use crate::store::lock::{Remote, coordinate};
    if force {
        return Ok(None);
    }
    match coordinate(app.store.as_ref(), key, &app.clock).await {
        Remote::Fetch(lock) => Ok(lock),
        Remote::Entry(entry) => Err(Arc::new(Fetched {
            status: StatusCode::from_u16(entry.meta.status).unwrap_or(StatusCode::OK),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            entry: Some(entry),
        })),
    }
}

/// Whole seconds an entry is past `fresh`, rounded up so a stale entry never
/// shows `ttl=0`.
fn stale_secs(entry: &Entry, now: u64) -> i64 {
    (now.saturating_sub(entry.meta.fresh_until).div_ceil(1000)) as i64
}

/// Store lookup that fails open: errors are misses.
pub(crate) async fn lookup(app: &App, key: &CacheKey) -> Option<Arc<Entry>> {
    // The memory store answers synchronously: no boxed future on the hit path.
    if let (Some(mem), true) = (&app.memory, app.store.name() == "memory") {
        return mem.get_sync(key);
    }
    match app.store.get(key).await {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(error = %e, "store get failed; treating as miss");
            None
        }
    }
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
    let mut resp =
        match respond::from_entry(entry, accept, |a| app.copies.body(key, entry, gzip_copy(a))) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, key = %key.short(), "unreadable entry; deleting it");
                let purge = crate::store::Purge::Keys(vec![*key]);
                let _ = crate::invalidate::apply(app, &purge, "unreadable-entry").await;
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

enum FetchResult {
    /// Read completely (and stored when storable).
    Complete {
        fetched: Arc<Fetched>,
        set_cookie: Vec<HeaderValue>,
    },
    /// Larger than `max_object_bytes`: streamed to this client only.
    Streaming(Response<Body>),
}

/// Fetch from Superset, store if storable, and fall back to a stale entry when
/// Superset fails within the tier's `stale_if_error` window.
async fn fetch(
    app: &App,
    spec: &FetchSpec,
    ctx: &mut RequestContext,
    stale: Option<&Arc<Entry>>,
) -> Result<FetchResult, Error> {
    ctx.outcome = Outcome::Miss;
    let res = fetch_inner(app, spec, ctx).await;
    let failed = match &res {
        Ok(FetchResult::Complete { fetched, .. }) => fetched.status.is_server_error(),
        Ok(FetchResult::Streaming(r)) => r.status().is_server_error(),
        Err(e) => matches!(
            e,
            Error::UpstreamConnect(_) | Error::UpstreamTimeout | Error::Upstream(_)
        ),
    };
    if failed && let (Some(entry), Some(tier)) = (stale, &spec.tier) {
        let now = app.clock.now_ms();
        let limit = entry.meta.fresh_until + tier.stale_if_error_secs * 1000;
        if now < limit && now < entry.meta.stale_until {
            ctx.outcome = Outcome::Stale;
            ctx.stored = false;
            ctx.detail = Some("upstream-error");
            ctx.ttl = Some(-(stale_secs(entry, now)));
            let fetched = Arc::new(Fetched {
                status: StatusCode::from_u16(entry.meta.status).unwrap_or(StatusCode::OK),
                headers: HeaderMap::new(),
                body: Bytes::new(),
                entry: Some(entry.clone()),
            });
            return Ok(FetchResult::Complete {
                fetched,
                set_cookie: Vec::new(),
            });
        }
    }
    res
}

/// Fetch `spec` for a background refresh (no client waits) and store it when
/// storable. A response too large to store counts as an error here.
pub(crate) async fn background_fetch(app: &App, spec: &FetchSpec) -> Result<Arc<Fetched>, Error> {
    let request_id = spec
        .parts
        .headers
        .get(crate::context::X_REQUEST_ID)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("-"));
    let mut ctx = RequestContext::new(
        request_id,
        spec.parts.method.clone(),
        spec.parts.uri.clone(),
    );
    match fetch_inner(app, spec, &mut ctx).await? {
        FetchResult::Complete { fetched, .. } => Ok(fetched),
        FetchResult::Streaming(_) => Err(Error::Upstream("too large to store".into())),
    }
}

async fn fetch_inner(
    app: &App,
    spec: &FetchSpec,
    ctx: &mut RequestContext,
) -> Result<FetchResult, Error> {
    let cfg = app.config.load();
    let mut parts = spec.parts.clone();
    // Ask Superset for an uncompressed body: we compress once, at store time.
    parts.headers.remove(header::ACCEPT_ENCODING);
    // Conditional headers would only confuse a cache fill; Superset ignores them anyway.
    parts.headers.remove(header::IF_NONE_MATCH);
    parts.headers.remove(header::IF_MODIFIED_SINCE);
    // Exactly the credential set the key was resolved from, nothing else.
    crate::credentials::apply(
        spec.creds.as_ref(),
        &mut parts.headers,
        &cfg.identity.session_cookie,
        &app.guest_header,
    );
    let req = build_upstream_request(
        app,
        parts,
        body::full(spec.body.clone()),
        spec.conn,
        &ctx.request_id,
        false,
    )?;
    let started = Instant::now();
    let resp = send(app, req, ctx, "chart").await?;
    let (mut head, incoming) = resp.into_parts();
    crate::upstream::strip_hop_by_hop(&mut head.headers, false);

    let max = cfg.cache.max_object_bytes as usize;
    let declared = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|l| l > max as u64) {
        not_stored(app, ctx, NotStorable::TooLarge);
        return Ok(FetchResult::Streaming(Response::from_parts(
            head,
            body::stream(incoming),
        )));
    }
    let timeout = Duration::from_millis(cfg.upstream_client.response_timeout_ms);
    let body = match tokio::time::timeout(timeout, body::read_limited(body::stream(incoming), max))
        .await
    {
        Err(_) => return Err(Error::UpstreamTimeout),
        Ok(Err(e)) => return Err(Error::Upstream(format!("reading response body: {e}"))),
        Ok(Ok(Limited::TooLarge(stream))) => {
            not_stored(app, ctx, NotStorable::TooLarge);
            return Ok(FetchResult::Streaming(Response::from_parts(head, stream)));
        }
        Ok(Ok(Limited::Complete(b))) => b,
    };
    let upstream_ms = started.elapsed().as_millis() as u64;

    let set_cookie: Vec<HeaderValue> = head
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    let shared_headers = respond::without_cookies(&head.headers);
    let mut entry = None;
    match policy::response_cacheability(
        head.status.as_u16(),
        &head.headers,
        cfg.routes.store_exports,
    ) {
        Cacheability::NotStorable(r) => not_stored(app, ctx, r),
        Cacheability::Storable => {
            if let Some(tier) = &spec.tier {
                entry = store(app, spec, tier, &head.headers, &body, upstream_ms, ctx).await;
            }
        }
    }
    let fetched = Arc::new(Fetched {
        status: head.status,
        headers: shared_headers,
        body,
        entry,
    });
    Ok(FetchResult::Complete {
        fetched,
        set_cookie,
    })
}

fn not_stored(app: &App, ctx: &mut RequestContext, why: NotStorable) {
    app.metrics
        .not_stored
        .with_label_values(&[why.as_str()])
        .inc();
    ctx.detail = Some(why.as_str());
}

/// Build the entry (compressing once) and write it; fails open.
async fn store(
    app: &App,
    spec: &FetchSpec,
    tier: &TierConfig,
    headers: &HeaderMap,
    body: &Bytes,
    upstream_ms: u64,
    ctx: &mut RequestContext,
) -> Option<Arc<Entry>> {
    let cfg = app.config.load();
    let now = app.clock.now_ms();
    let mut fresh_secs = tier.fresh_secs;
    if spec.respect_superset_timeout {
        // Superset's own timeout (per chart/dataset/database, or the request's
        // custom_cache_timeout) caps freshness; 0 means "no caching" there.
        let cap = policy::superset_cache_timeout(body).or(spec.custom_cache_timeout);
        if let Some(cap) = cap {
            if cap == 0 {
                not_stored(app, ctx, NotStorable::NoStore);
                return None;
            }
            fresh_secs = fresh_secs.min(cap);
        }
    }
    let fresh_until = now + fresh_secs * 1000;
    let mut meta = Meta {
        status: 200,
        headers: respond::storable_headers(headers),
        stored_at: now,
        fresh_until,
        stale_until: fresh_until + tier.stale_ms(),
        upstream_ms: upstream_ms.min(u32::MAX as u64) as u32,
        raw_len: body.len() as u32,
        tags: spec.tags.clone(),
    };
    // Tags Superset's answer resolves (a saved chart's datasource).
    crate::tags::resolve_from_answer(&mut meta.tags, body);
    let (level, gzip) = (cfg.cache.zstd_level, cfg.cache.store_gzip);
    let built = if body.len() < offload::MIN_BYTES {
        Entry::build(meta, body, level, gzip)
    } else {
        let body = body.clone();
        app.offload
            .run(move || Entry::build(meta, &body, level, gzip))
            .await
            .unwrap_or_else(|| Err(std::io::Error::other("compression failed")))
    };
    let entry = match built {
        Ok(e) => Arc::new(e),
        Err(e) => {
            tracing::warn!(error = %e, "compressing entry failed");
            return None;
        }
    };
    let started = Instant::now();
    let res = app.store.put(&spec.key, entry.clone()).await;
    let store_name = app.store.name();
    app.metrics
        .store_duration
        .with_label_values(&[store_name, "put"])
        .observe(started.elapsed().as_secs_f64());
    match res {
        Ok(()) => {
            app.metrics
                .store_ops
                .with_label_values(&[store_name, "put", "ok"])
                .inc();
            app.metrics.stored_bytes.inc_by(entry.zstd.len() as u64);
            ctx.stored = true;
        }
        Err(e) => {
            app.metrics
                .store_errors
                .with_label_values(&[store_name, "put"])
                .inc();
            tracing::warn!(error = %e, key = %spec.key.short(), "store put failed");
        }
    }
    // Serve from the entry even if the put failed: the bytes are right.
    Some(entry)
}
