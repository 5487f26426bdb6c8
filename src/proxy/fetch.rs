//! The miss path: fetch a keyed request from Superset, store what may be
//! stored, fall back to a stale entry when Superset fails, and coordinate
//! fetches across replicas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderMap, HeaderValue};

use super::{build_upstream_request, send};
use crate::app::App;
use crate::body::{self, Body, Limited};
use crate::config::TierConfig;
use crate::context::{Outcome, RequestContext};
use crate::error::Error;
use crate::key::CacheKey;
use crate::offload;
use crate::policy::{self, Cacheability, NotStorable};
use crate::respond::{self, Fetched};
use crate::spec::FetchSpec;
use crate::store::{Entry, Meta, Peek};

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
        Remote::Entry(entry) => Err(Fetched::from_entry(entry)),
    }
}

/// Whole seconds an entry is past `fresh`, rounded up so a stale entry never
/// shows `ttl=0`.
pub(super) fn stale_secs(entry: &Entry, now: u64) -> i64 {
    (now.saturating_sub(entry.meta.fresh_until).div_ceil(1000)) as i64
}

/// Store lookup that fails open: errors are misses.
pub(crate) async fn lookup(app: &App, key: &CacheKey) -> Option<Arc<Entry>> {
    // Memory (and a tiered store's L1) answers synchronously: no boxed
    // future on the hit path.
    match app.store.peek(key) {
        Peek::Found(e) => return Some(e),
        Peek::Absent => return None,
        Peek::Unknown => {}
    }
    match app.store.get(key).await {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(error = %e, "store get failed; treating as miss");
            None
        }
    }
}

pub(super) enum FetchResult {
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
pub(super) async fn fetch(
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
            let fetched = Fetched::from_entry(entry.clone());
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

/// Seconds an answer `body` stored under `tier` is fresh, or `None` when
/// Superset's own timeout says not to store it.
pub(super) fn fresh_secs(
    tier: &TierConfig,
    respect_superset_timeout: bool,
    custom_cache_timeout: Option<u64>,
    body: &[u8],
) -> Option<u64> {
    if !respect_superset_timeout {
        return Some(tier.fresh_secs);
    }
    // Superset's own timeout (per chart/dataset/database, or the request's
    // custom_cache_timeout) caps freshness; 0 means "no caching" there.
    match policy::superset_cache_timeout(body).or(custom_cache_timeout) {
        Some(0) => None,
        Some(cap) => Some(tier.fresh_secs.min(cap)),
        None => Some(tier.fresh_secs),
    }
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
    let fresh = fresh_secs(
        tier,
        spec.respect_superset_timeout,
        spec.custom_cache_timeout,
        body,
    );
    let Some(fresh_secs) = fresh else {
        not_stored(app, ctx, NotStorable::NoStore);
        return None;
    };
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
