//! A Superset-shaped upstream served over real TCP for integration tests.
//!
//! It authenticates like Superset (a valid session cookie wins over any Bearer
//! token), answers `/api/v1/me/`, serves chart data whose body names the user
//! and counts queries, and can be told to delay, fail, answer 202/500, set
//! cookies or hang. Pass-through helpers: `/echo`, `/upload` (streams and
//! hashes the body), `/download?bytes=N`, `/ws` (upgrade + echo).

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type UBody = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> UBody {
    Full::new(b.into()).boxed()
}

/// What chart-data requests get back (settable while running).
#[derive(Debug, Clone)]
pub enum ChartMode {
    /// 200 JSON naming the user and the query number.
    Ok,
    /// This status with a JSON error body.
    Status(u16),
    /// 200 JSON with `Set-Cookie`.
    SetCookie,
    /// 200 JSON with `Cache-Control: no-store`.
    NoStore,
    /// Accept and never answer.
    Hang,
    /// Close the connection without answering.
    Drop,
    /// 200 with a body of this many bytes.
    Large(usize),
}

/// Shared, observable state of the upstream.
pub struct UpstreamState {
    /// Bearer token → (user id, username).
    pub bearers: Mutex<HashMap<String, (u64, String)>>,
    /// Session cookie value → (user id, username).
    pub sessions: Mutex<HashMap<String, (u64, String)>>,
    pub chart_queries: AtomicUsize,
    pub me_queries: AtomicUsize,
    pub delay_ms: AtomicU64,
    pub mode: Mutex<ChartMode>,
    /// `cache_timeout` put into chart results.
    pub cache_timeout: AtomicU64,
    /// Requests seen: (method, path, headers, body) — bodies of `/upload` are not kept.
    pub seen: Mutex<Vec<(String, String, HeaderMap, Bytes)>>,
    /// Chart queries per username.
    pub per_user: Mutex<HashMap<String, usize>>,
    /// User id → role names, for `/api/v1/me/roles/`.
    pub roles: Mutex<HashMap<u64, Vec<String>>>,
    pub roles_queries: AtomicUsize,
    /// Guest token (`X-GuestToken`) → name the chart data is answered for.
    pub guests: Mutex<HashMap<String, String>>,
    /// Superset is down: every request, `/api/v1/me/` included, gets a 503.
    pub down: std::sync::atomic::AtomicBool,
    /// GLOBAL_ASYNC_QUERIES mode (off unless enabled): `super::gaq`.
    pub gaq: Arc<super::gaq::Gaq>,
}

/// A running upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Start on a free loopback port with users admin (1), alice (2), bob (3):
    /// Bearer tokens `admin-token`, `alice-token`, `bob-token`, sessions
    /// `admin-session`, `alice-session`, `bob-session`.
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener).await
    }

    /// Start on an existing listener (restart tests).
    pub async fn start_on(listener: TcpListener) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let mut bearers = HashMap::new();
        let mut sessions = HashMap::new();
        let mut roles = HashMap::new();
        // carol has exactly alice's roles (so a `roles` scope shares their entries).
        for (id, name, r) in [
            (1u64, "admin", &["Admin"][..]),
            (2, "alice", &["sales_north", "Gamma"][..]),
            (3, "bob", &["Gamma", "sales_south"][..]),
            (4, "carol", &["Gamma", "sales_north"][..]),
        ] {
            bearers.insert(format!("{name}-token"), (id, name.to_string()));
            sessions.insert(format!("{name}-session"), (id, name.to_string()));
            roles.insert(id, r.iter().map(|s| s.to_string()).collect());
        }
        let state = Arc::new(UpstreamState {
            bearers: Mutex::new(bearers),
            sessions: Mutex::new(sessions),
            chart_queries: AtomicUsize::new(0),
            me_queries: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
            mode: Mutex::new(ChartMode::Ok),
            cache_timeout: AtomicU64::new(86_400),
            seen: Mutex::new(Vec::new()),
            per_user: Mutex::new(HashMap::new()),
            roles: Mutex::new(roles),
            roles_queries: AtomicUsize::new(0),
            guests: Mutex::new(HashMap::new()),
            down: Default::default(),
            gaq: Default::default(),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(serve(st, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn chart_queries(&self) -> usize {
        self.state.chart_queries.load(Ordering::SeqCst)
    }

    pub fn me_queries(&self) -> usize {
        self.state.me_queries.load(Ordering::SeqCst)
    }

    pub fn set_mode(&self, m: ChartMode) {
        *self.state.mode.lock().unwrap() = m;
    }

    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Revoke a bearer token (Superset would now answer 401).
    pub fn revoke_bearer(&self, token: &str) {
        self.state.bearers.lock().unwrap().remove(token);
    }

    pub fn roles_queries(&self) -> usize {
        self.state.roles_queries.load(Ordering::SeqCst)
    }

    /// Accept `token` in `X-GuestToken`, answering chart data as `name`.
    pub fn allow_guest(&self, token: &str, name: &str) {
        self.state
            .guests
            .lock()
            .unwrap()
            .insert(token.to_string(), name.to_string());
    }

    /// The last request seen on `path`.
    pub fn last_seen(&self, path: &str) -> Option<(String, String, HeaderMap, Bytes)> {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s.1 == path)
            .cloned()
    }
}

/// Superset's rule: a valid session cookie wins; otherwise a valid Bearer.
/// Headers are read as gunicorn/Werkzeug read them (`super::gunicorn`).
fn authenticate(st: &UpstreamState, h: &HeaderMap) -> Option<(u64, String)> {
    let h = &super::gunicorn::joined(h);
    if let Some(val) = super::gunicorn::session_cookie(h)
        && let Some(u) = st.sessions.lock().unwrap().get(&val)
    {
        return Some(u.clone());
    }
    if let Some(b) = super::gunicorn::bearer(h)
        && let Some(u) = st.bearers.lock().unwrap().get(&b)
    {
        return Some(u.clone());
    }
    // Embedded dashboards: a guest token (no user id; 0 stands for "guest").
    let guest = h.get("x-guesttoken")?.to_str().ok()?;
    st.guests
        .lock()
        .unwrap()
        .get(guest)
        .map(|name| (0, name.clone()))
}

fn json(status: u16, v: serde_json::Value) -> Response<UBody> {
    let mut r = Response::new(full(serde_json::to_vec(&v).unwrap()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json; charset=utf-8".parse().unwrap(),
    );
    r.headers_mut()
        .insert(header::VARY, "Accept-Encoding, Cookie".parse().unwrap());
    r.headers_mut()
        .insert("x-frame-options", "SAMEORIGIN".parse().unwrap());
    r
}

async fn serve(st: Arc<UpstreamState>, mut req: Request<Incoming>) -> Response<UBody> {
    if st.down.load(Ordering::SeqCst) {
        return json(503, serde_json::json!({"message": "Service Unavailable"}));
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let headers = req.headers().clone();

    if path == "/upload" {
        // Stream the body, counting and hashing, never holding it.
        let mut hasher = blake3::Hasher::new();
        let mut n = 0u64;
        let mut body = req.into_body();
        while let Some(f) = body.frame().await {
            let Ok(f) = f else { break };
            if let Ok(d) = f.into_data() {
                n += d.len() as u64;
                hasher.update(&d);
            }
        }
        st.seen
            .lock()
            .unwrap()
            .push((method, path, headers, Bytes::new()));
        return json(
            200,
            serde_json::json!({"bytes": n, "blake3": hasher.finalize().to_hex().to_string()}),
        );
    }
    if path == "/download" {
        let n: usize = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("bytes="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        st.seen
            .lock()
            .unwrap()
            .push((method, path, headers, Bytes::new()));
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = n / chunk.len();
        let rest = n % chunk.len();
        let s = futures_util::stream::iter(
            (0..chunks)
                .map(move |_| chunk.clone())
                .chain(std::iter::once(Bytes::from(vec![b'x'; rest]))),
        )
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(s)));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, "text/csv".parse().unwrap());
        return r;
    }
    if path == "/ws" && headers.contains_key(header::UPGRADE) {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert(header::CONNECTION, "upgrade".parse().unwrap());
        r.headers_mut()
            .insert(header::UPGRADE, "websocket".parse().unwrap());
        return r;
    }

    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    st.seen
        .lock()
        .unwrap()
        .push((method.clone(), path.clone(), headers.clone(), body.clone()));

    if path == "/echo" {
        let hdrs: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        return json(
            200,
            serde_json::json!({"headers": hdrs, "body_blake3": blake3::hash(&body).to_hex().to_string(), "len": body.len()}),
        );
    }
    if path == "/health" {
        return json(200, serde_json::json!({"ok": true}));
    }
    if path == "/api/v1/me/" {
        st.me_queries.fetch_add(1, Ordering::SeqCst);
        return match authenticate(&st, &headers) {
            // Guests (id 0) are not users: /me refuses them.
            Some((id, name)) if id > 0 => json(
                200,
                serde_json::json!({"result": {"id": id, "username": name, "is_anonymous": false}}),
            ),
            _ => json(
                401,
                serde_json::json!({"msg": "Missing Authorization Header"}),
            ),
        };
    }
    if path == "/api/v1/me/roles/" {
        st.roles_queries.fetch_add(1, Ordering::SeqCst);
        return match authenticate(&st, &headers) {
            Some((id, name)) if id > 0 => {
                let roles: serde_json::Map<String, serde_json::Value> = st
                    .roles
                    .lock()
                    .unwrap()
                    .get(&id)
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| (r, serde_json::json!([["can_read", "Chart"]])))
                    .collect();
                json(
                    200,
                    serde_json::json!({"result": {"username": name, "roles": roles,
                        "permissions": {"datasource_access": ["[sales_db].[sales](id:1)"]}}}),
                )
            }
            _ => json(
                401,
                serde_json::json!({"msg": "Missing Authorization Header"}),
            ),
        };
    }
    if st.gaq.enabled.load(Ordering::SeqCst)
        && let Some(r) = serve_gaq(&st, &method, &path, query.as_deref(), &headers, &body)
    {
        return r;
    }
    let is_chart = (method == "POST" && path.trim_end_matches('/') == "/api/v1/chart/data")
        || (method == "GET" && path.starts_with("/api/v1/chart/") && path.ends_with("/data/"))
        || path.starts_with("/superset/explore_json");
    if is_chart {
        let Some((_, user)) = authenticate(&st, &headers) else {
            return json(
                401,
                serde_json::json!({"msg": "Missing Authorization Header"}),
            );
        };
        if method == "POST" && serde_json::from_slice::<serde_json::Value>(&body).is_err() {
            return json(
                400,
                serde_json::json!({"errors": [{"message": "400 Bad Request: malformed", "error_type": "GENERIC_BACKEND_ERROR"}]}),
            );
        }
        let n = st.chart_queries.fetch_add(1, Ordering::SeqCst) + 1;
        *st.per_user.lock().unwrap().entry(user.clone()).or_default() += 1;
        let delay = st.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mode = st.mode.lock().unwrap().clone();
        let ct = st.cache_timeout.load(Ordering::SeqCst);
        let ok = || {
            json(
                200,
                serde_json::json!({"result": [{"cache_timeout": ct, "user": user, "query_no": n,
                "data": [{"region": format!("{user}-region"), "revenue": 1000 + n}],
                "query": format!("SELECT sum(revenue) FROM sales WHERE owner = '{user}'")}]}),
            )
        };
        return match mode {
            ChartMode::Ok => ok(),
            ChartMode::Status(s) => json(s, serde_json::json!({"message": format!("status {s}")})),
            ChartMode::SetCookie => {
                let mut r = ok();
                r.headers_mut().insert(
                    header::SET_COOKIE,
                    "session=fresh-locale-cookie; HttpOnly; Path=/"
                        .parse()
                        .unwrap(),
                );
                r
            }
            ChartMode::NoStore => {
                let mut r = ok();
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, "no-store".parse().unwrap());
                r
            }
            ChartMode::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                ok()
            }
            ChartMode::Drop => panic!("drop the connection"),
            ChartMode::Large(size) => {
                let filler = "x".repeat(size);
                json(
                    200,
                    serde_json::json!({"result": [{"user": user, "query_no": n, "filler": filler}]}),
                )
            }
        };
    }
    if method == "PUT" || method == "DELETE" {
        return json(200, serde_json::json!({"id": 1, "result": {}}));
    }
    json(404, serde_json::json!({"message": "Not found"}))
}

/// The GAQ routes (`super::gaq`), when that mode is on.
fn serve_gaq(
    st: &UpstreamState,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response<UBody>> {
    let unauthorized = || {
        json(
            401,
            serde_json::json!({"msg": "Missing Authorization Header"}),
        )
    };
    let (status, v, cookies) = if method == "GET" && path == "/api/v1/async_event/" {
        st.gaq.poll(headers, query)
    } else if method == "GET"
        && let Some(qc) = path.strip_prefix("/api/v1/chart/data/")
    {
        let Some((_, user)) = authenticate(st, headers) else {
            return Some(unauthorized());
        };
        st.gaq.result(&user, qc.trim_end_matches('/'))
    } else if method == "POST" && path.trim_end_matches('/') == "/api/v1/chart/data" {
        let Some((id, user)) = authenticate(st, headers) else {
            return Some(unauthorized());
        };
        st.gaq.post(headers, (id, &user), body)
    } else {
        return None;
    };
    let gzip = path == "/api/v1/async_event/"
        && headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("gzip"));
    let mut r = if gzip {
        // flask-compress, as Superset registers it, for a client that asks.
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&serde_json::to_vec(&v).unwrap()).unwrap();
        let mut r = json(status, serde_json::Value::Null);
        *r.body_mut() = full(e.finish().unwrap());
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        r
    } else {
        json(status, v)
    };
    for c in cookies {
        r.headers_mut()
            .append(header::SET_COOKIE, c.parse().unwrap());
    }
    Some(r)
}

use futures_util::StreamExt;
