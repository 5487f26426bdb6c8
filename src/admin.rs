//! The admin listener: `/metrics`, `/healthz`, `/readyz` (open) and `/purge`,
//! `/explain` (bearer token). Bound to loopback by default.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;

use crate::app::App;
use crate::body::{Body, full};
use crate::key::CacheKey;
use crate::store::Purge;

/// Admin request handler.
pub async fn handle(
    app: Arc<App>,
    token: Option<Arc<str>>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/metrics") => {
            app.refresh_gauges();
            let mut r = Response::new(full(app.metrics.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4".parse().unwrap(),
            );
            r
        }
        (Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (Method::GET, "/readyz") => readyz(&app).await,
        (Method::POST, "/purge") => {
            if !authorized(&req, token.as_deref()) {
                return unauthorized();
            }
            purge(&app, req).await
        }
        (Method::POST, "/explain") => {
            if !authorized(&req, token.as_deref()) {
                return unauthorized();
            }
            explain(&app, req).await
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": "Not found"}),
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(&v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    r
}

fn unauthorized() -> Response<Body> {
    let mut r = json(
        StatusCode::UNAUTHORIZED,
        serde_json::json!({"message": "admin token required"}),
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
    r
}

/// Constant-time bearer check; no token configured means nobody is authorized.
fn authorized<B>(req: &Request<B>, token: Option<&str>) -> bool {
    let Some(token) = token else { return false };
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Compare digests so timing reveals neither content nor length.
    blake3::hash(a) == blake3::hash(b)
}

/// Ready while this process can serve: the listener is up (it is bound
/// before this admin listener starts), the configuration loaded, and no drain
/// has begun. Superset being down does not make it unready: the proxy then
/// still serves stale entries (`stale_if_error`), and taking every replica out
/// of the Service would hide them from everyone; upstream health is in
/// `/metrics` (`chartcache_upstream_errors_total`) and its alerts. With
/// `upstream_client.ready_requires_upstream` (a sidecar, whose pod is not
/// worth traffic while its own Superset is down) readiness also needs Superset
/// to have answered recently or to answer a probe now. Redis is never checked:
/// the proxy fails open without it.
async fn readyz(app: &App) -> Response<Body> {
    if !app.accepting.load(Ordering::SeqCst) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    if !app.config.load().upstream_client.ready_requires_upstream {
        return text(StatusCode::OK, "ready\n");
    }
    let last = app.last_upstream_ok_ms.load(Ordering::Relaxed);
    if app.clock.now_ms().saturating_sub(last) < 10_000 {
        return text(StatusCode::OK, "ready\n");
    }
    // Any HTTP answer from Superset's /health proves it is reachable.
    let req = Request::get(app.upstream.uri_for("/health"))
        .body(crate::body::empty())
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(2), app.upstream.send(req)).await {
        Ok(Ok(_)) => {
            app.upstream_ok();
            text(StatusCode::OK, "ready\n")
        }
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "superset unreachable\n"),
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct PurgeRequest {
    tags: Vec<String>,
    keys: Vec<String>,
    all: bool,
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Response<Body>> {
    let limited = http_body_util::Limited::new(req.into_body(), limit);
    limited.collect().await.map(|c| c.to_bytes()).map_err(|_| {
        json(
            StatusCode::PAYLOAD_TOO_LARGE,
            serde_json::json!({"message": "body too large"}),
        )
    })
}

async fn purge(app: &App, req: Request<Incoming>) -> Response<Body> {
    let body = match read_body(req, 1 << 20).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let bad = |m: String| json(StatusCode::BAD_REQUEST, serde_json::json!({ "message": m }));
    let pr: PurgeRequest = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return bad(format!(
                "expected {{\"tags\": [...]}}, {{\"keys\": [...]}} or {{\"all\": true}}: {e}"
            ));
        }
    };
    let purge = match (pr.all, pr.tags.is_empty(), pr.keys.is_empty()) {
        (true, true, true) => Purge::All,
        (false, false, true) => Purge::Tags(pr.tags),
        (false, true, false) => {
            let mut keys = Vec::new();
            for k in &pr.keys {
                match CacheKey::from_hex(k) {
                    Some(k) => keys.push(k),
                    None => return bad(format!("not a cache key: {k:?}")),
                }
            }
            Purge::Keys(keys)
        }
        _ => return bad("give exactly one of tags, keys or all".into()),
    };
    match crate::invalidate::apply(&*app.store, &app.metrics, &purge, "admin").await {
        Ok(n) => json(StatusCode::OK, serde_json::json!({ "removed": n })),
        Err(e) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "message": e.to_string() }),
        ),
    }
}

async fn explain(app: &App, req: Request<Incoming>) -> Response<Body> {
    let mut path = "/api/v1/chart/data".to_string();
    let mut method = Method::POST;
    let mut scope = "user:?".to_string();
    let mut identity = crate::config::IdentityKind::User;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "path" => path = v.into_owned(),
            "method" => method = v.parse().unwrap_or(Method::POST),
            "scope" => scope = v.into_owned(),
            "identity" => {
                identity = match v.as_ref() {
                    "guest" => crate::config::IdentityKind::Guest,
                    "anonymous" => crate::config::IdentityKind::Anonymous,
                    _ => crate::config::IdentityKind::User,
                }
            }
            _ => {}
        }
    }
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match read_body(req, 8 << 20).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let cfg = app.config.load();
    let v = crate::explain::explain(
        &cfg,
        &app.policy.load(),
        &method,
        &path,
        ct.as_deref(),
        &body,
        &scope,
        identity,
        app.clock.now_ms(),
    );
    json(StatusCode::OK, v)
}
