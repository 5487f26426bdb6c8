//! The request path: classify, then pass through, forward-and-invalidate, or
//! answer from the cache (`cached.rs`).

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::App;
use crate::body::{self, Body};
use crate::context::{CACHE_STATUS, Outcome, RequestContext, RequestId, X_REQUEST_ID};
use crate::error::Error;
use crate::route::{self, Route};
use crate::upstream::{prepare_request_headers, strip_hop_by_hop};

pub mod async_query;
mod async_shared;
pub(crate) mod cached;
mod fetch;
mod refresh;

pub use crate::context::ConnInfo;

/// Handle one client request. Never fails: errors become responses here, and
/// the context travels out in the response extensions for metrics and logs.
pub async fn handle(app: Arc<App>, req: Request<Body>, conn: ConnInfo) -> Response<Body> {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(|| HeaderValue::from_static("-"), |id| id.0.clone());
    let mut ctx = RequestContext::new(request_id, req.method().clone(), req.uri().clone());
    let cfg = app.config.load();
    let route = route::classify(
        req.method(),
        req.uri().path(),
        req.uri().query(),
        &cfg.routes,
    );
    ctx.route = route.label();
    let result = match route {
        Route::Pass => {
            ctx.outcome = Outcome::Pass;
            let poll =
                async_query::is_event_poll(&app, req.method(), req.uri().path(), req.headers());
            // Boxed (as every path but the hit): its state stays out of the
            // hit's future.
            let resp = Box::pin(forward_streaming(&app, req, conn, &mut ctx, "pass")).await;
            // An async-event poll is read as it passes, for `done` events.
            match resp {
                Ok(r) if poll => Ok(async_query::tap_events(app.clone(), r)),
                other => other,
            }
        }
        Route::Write(target) => {
            ctx.outcome = Outcome::Pass;
            let resp = Box::pin(forward_streaming(&app, req, conn, &mut ctx, "write")).await;
            if let Ok(r) = &resp
                && r.status().is_success()
            {
                let purge = crate::invalidate::purge_for(&target);
                let _ = Box::pin(crate::invalidate::apply(
                    &*app.store,
                    &app.metrics,
                    &purge,
                    "write",
                ))
                .await;
            }
            resp
        }
        Route::Cached(r) => cached::handle(&app, r, req, conn, &mut ctx).await,
    };
    let mut resp = result.unwrap_or_else(|e| {
        tracing::debug!(error = %e, source = e.source_label(), "request failed");
        ctx.outcome = Outcome::Error;
        crate::respond::error(e)
    });
    ctx.status = resp.status().as_u16();
    if let Some(cs) = ctx.cache_status() {
        resp.headers_mut().insert(CACHE_STATUS, cs);
    }
    resp.headers_mut()
        .insert(X_REQUEST_ID, ctx.request_id.clone());
    resp.extensions_mut().insert(ctx);
    resp
}

/// Forward a request to Superset, streaming the body both ways, including
/// protocol upgrades (websockets).
pub(crate) async fn forward_streaming(
    app: &App,
    mut req: Request<Body>,
    conn: ConnInfo,
    ctx: &mut RequestContext,
    kind: &'static str,
) -> Result<Response<Body>, Error> {
    let is_upgrade = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, incoming) = req.into_parts();
    let out = build_upstream_request(app, parts, incoming, conn, &ctx.request_id, is_upgrade)?;
    let mut resp = send(app, out, ctx, kind).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((c, u)) => {
                        let mut c = hyper_util::rt::TokioIo::new(c);
                        let mut u = hyper_util::rt::TokioIo::new(u);
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        return Ok(Response::from_parts(parts, body::empty()));
    }
    let (mut parts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, body::stream(incoming)))
}

/// Turn client request parts into an upstream request. A request with two
/// `Host` headers is refused: which one Superset would use is its business,
/// and chartcache would not know which one it forwarded for.
pub(crate) fn build_upstream_request(
    app: &App,
    mut parts: http::request::Parts,
    body: Body,
    conn: ConnInfo,
    request_id: &HeaderValue,
    is_upgrade: bool,
) -> Result<Request<Body>, Error> {
    crate::upstream::check_host(&parts.headers)?;
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri = app.upstream.uri_for(pq);
    prepare_request_headers(
        &mut parts.headers,
        &parts.uri,
        conn.remote,
        conn.proto,
        request_id,
        is_upgrade,
    );
    parts.uri = uri;
    // We speak HTTP/1.1 or h2 to Superset as negotiated by the pool, whatever the client used.
    parts.version = http::Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// Send to Superset with metrics and the upstream time recorded in the context.
pub(crate) async fn send(
    app: &App,
    req: Request<Body>,
    ctx: &mut RequestContext,
    kind: &'static str,
) -> Result<Response<Incoming>, Error> {
    let started = Instant::now();
    let res = app.upstream.send(req).await;
    let elapsed = started.elapsed();
    ctx.upstream_ms = Some(elapsed.as_millis() as u64);
    app.metrics
        .upstream_duration
        .with_label_values(&[kind])
        .observe(elapsed.as_secs_f64());
    match &res {
        Ok(r) => {
            app.upstream_ok();
            app.metrics
                .upstream_requests
                .with_label_values(&[kind, r.status().as_str()])
                .inc();
        }
        Err(e) => {
            let failure = crate::error::UpstreamFailure::of(e);
            app.metrics
                .upstream_errors
                .with_label_values(&[kind, failure.as_str()])
                .inc();
        }
    }
    res
}
