//! A Superset-shaped upstream with switchable faults, served in-process on a
//! loopback port. Users `alice` and `bob` (Bearer `alice-token`, `bob-token`)
//! get different answers: every chart-data body names its user, so a client
//! can tell whether an answer belongs to it. `/api/v1/me/` and `/health`
//! answer as Superset does. Like gunicorn in front of Superset, it closes a
//! keep-alive connection after 2 s without a request. Faults: 500 answers,
//! slow answers, and "killed" (listener closed, every open connection
//! dropped), then revived on the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// What chart-data requests get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// 500 with Superset's JSON error body.
    Status500,
}

pub struct State {
    pub fault: Mutex<Fault>,
    /// Added to every chart-data answer.
    pub delay_ms: AtomicU64,
    /// Filler bytes per chart-data answer (makes answers `size` bytes or so).
    pub size: AtomicUsize,
    pub chart_queries: AtomicU64,
    pub me_queries: AtomicU64,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    accept: Option<tokio::task::JoinHandle<()>>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// User of a Bearer token: (id, name).
pub fn user_of(token: &str) -> Option<(u64, &'static str)> {
    match token {
        "alice-token" => Some((2, "alice")),
        "bob-token" => Some((3, "bob")),
        _ => None,
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = Arc::new(State {
            fault: Mutex::new(Fault::None),
            delay_ms: AtomicU64::new(0),
            size: AtomicUsize::new(200),
            chart_queries: AtomicU64::new(0),
            me_queries: AtomicU64::new(0),
        });
        let mut u = Upstream {
            addr: listener.local_addr().unwrap(),
            state,
            accept: None,
            conns: Arc::default(),
        };
        u.serve(listener);
        u
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (st, conns) = (self.state.clone(), self.conns.clone());
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let st = st.clone();
                let task = tokio::spawn(serve_conn(st, stream));
                let mut c = conns.lock().unwrap();
                c.retain(|h| !h.is_finished());
                c.push(task.abort_handle());
            }
        }));
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_fault(&self, f: Fault) {
        *self.state.fault.lock().unwrap() = f;
    }

    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_size(&self, bytes: usize) {
        self.state.size.store(bytes, Ordering::SeqCst);
    }

    pub fn chart_queries(&self) -> u64 {
        self.state.chart_queries.load(Ordering::SeqCst)
    }

    /// As if the process died: the port refuses connections and every open
    /// connection is dropped.
    pub fn kill(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Serve again on the same port (bounded retries while it lingers).
    pub async fn revive(&mut self) {
        for _ in 0..100 {
            if let Ok(l) = tokio::net::TcpListener::bind(self.addr).await {
                self.serve(l);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("could not rebind the upstream on {}", self.addr);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `len` pseudo-random characters of a 64-letter alphabet (seeded by `seed`):
/// real result rows do not compress to nothing, and neither does this.
fn filler(seed: u64, len: usize) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ABC[(x & 63) as usize] as char
        })
        .collect()
}

/// gunicorn's default `--keep-alive`: idle connections are closed after 2 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);

/// Serve one connection, closing it once idle for [`KEEPALIVE_IDLE`].
async fn serve_conn(st: Arc<State>, stream: tokio::net::TcpStream) {
    let busy = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(Mutex::new(Instant::now()));
    let (b, l) = (busy.clone(), last.clone());
    let svc = hyper::service::service_fn(move |req| {
        let (st, b, l) = (st.clone(), b.clone(), l.clone());
        b.fetch_add(1, Ordering::SeqCst);
        async move {
            let r = handle(st, req).await;
            *l.lock().unwrap() = Instant::now();
            b.fetch_sub(1, Ordering::SeqCst);
            r
        }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)), if !closing => {
                let idle = last.lock().unwrap().elapsed();
                if busy.load(Ordering::SeqCst) == 0 && idle >= KEEPALIVE_IDLE {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::SERVER, "gunicorn")
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header(header::VARY, "Accept-Encoding, Cookie")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn handle(
    st: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let user = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(user_of);
    let unauthorized = || {
        json(
            StatusCode::UNAUTHORIZED,
            r#"{"msg":"Missing Authorization Header"}"#.into(),
        )
    };
    if path == "/health" {
        return Ok(json(StatusCode::OK, "OK".into()));
    }
    if path == "/api/v1/me/" {
        st.me_queries.fetch_add(1, Ordering::SeqCst);
        return Ok(match user {
            Some((id, name)) => json(
                StatusCode::OK,
                format!(
                    r#"{{"result":{{"id":{id},"username":"{name}","is_active":true,"is_anonymous":false}}}}"#
                ),
            ),
            None => unauthorized(),
        });
    }
    if path.trim_end_matches('/') != "/api/v1/chart/data" {
        return Ok(json(
            StatusCode::NOT_FOUND,
            r#"{"message":"Not found"}"#.into(),
        ));
    }
    let Some((_, name)) = user else {
        return Ok(unauthorized());
    };
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let q: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return Ok(json(
                StatusCode::BAD_REQUEST,
                r#"{"message":"400 Bad Request"}"#.into(),
            ));
        }
    };
    let n = st.chart_queries.fetch_add(1, Ordering::SeqCst) + 1;
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if *st.fault.lock().unwrap() == Fault::Status500 {
        return Ok(json(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"errors":[{"message":"Internal server error","error_type":"GENERIC_BACKEND_ERROR"}]}"#.into(),
        ));
    }
    let row_limit = q["queries"][0]["row_limit"].as_u64().unwrap_or(0);
    let filler = filler(n, st.size.load(Ordering::SeqCst));
    Ok(json(
        StatusCode::OK,
        format!(
            r#"{{"result":[{{"cache_timeout":86400,"user":"{name}","query_no":{n},"row_limit":{row_limit},"status":"success","data":[{{"region":"{name}-region","revenue":{n}}}],"filler":"{filler}"}}]}}"#
        ),
    ))
}
