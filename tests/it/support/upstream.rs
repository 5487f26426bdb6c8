//! The Superset-shaped upstream of the integration tests: the shared fake
//! (`fake_superset`: users, `/api/v1/me/`, chart data with [`ChartMode`],
//! delays, counts, guest tokens, "down") with the pass-through routes only
//! these tests need: `/echo`, `/upload` (streams and hashes the body),
//! `/download?bytes=N`, `/ws` (upgrade + echo).

use std::collections::HashMap;
use std::convert::Infallible;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;
use fake_superset::reply::{self, Body, full};
use fake_superset::server::BoxFuture;
use fake_superset::{Options, State, Superset};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub use fake_superset::ChartMode;

/// A running upstream: the shared fake, stopped on drop.
pub struct Upstream(Superset);

impl Deref for Upstream {
    type Target = Superset;
    fn deref(&self) -> &Superset {
        &self.0
    }
}

impl Upstream {
    /// Start on a free loopback port with users admin (1), alice (2), bob (3),
    /// carol (4): Bearer tokens `admin-token`, `alice-token`, …, sessions
    /// `admin-session`, `alice-session`, ….
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener).await
    }

    /// Start on an existing listener (restart tests).
    pub async fn start_on(listener: TcpListener) -> Upstream {
        let opts = Options {
            extra: Some(passthrough),
            ..Options::default()
        };
        Upstream(Superset::start_on(listener, opts))
    }
}

/// The pass-through routes; anything else goes on to the fake Superset.
fn passthrough(
    st: Arc<State>,
    req: Request<Incoming>,
) -> BoxFuture<Result<Response<Body>, Request<Incoming>>> {
    Box::pin(async move {
        match req.uri().path() {
            "/upload" => Ok(upload(&st, req).await),
            "/download" => Ok(download(&st, req)),
            "/ws" if req.headers().contains_key(header::UPGRADE) => Ok(websocket(req)),
            "/echo" => Ok(echo(&st, req).await),
            _ => Err(req),
        }
    })
}

/// Stream the body, counting and hashing, never holding it.
async fn upload(st: &State, req: Request<Incoming>) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let mut hasher = blake3::Hasher::new();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        let Ok(f) = f else { break };
        if let Ok(d) = f.into_data() {
            n += d.len() as u64;
            hasher.update(&d);
        }
    }
    st.seen.lock().unwrap().push((
        parts.method.to_string(),
        parts.uri.path().to_string(),
        parts.headers,
        Bytes::new(),
    ));
    reply::json(
        200,
        serde_json::json!({"bytes": n, "blake3": hasher.finalize().to_hex().to_string()}),
    )
}

/// `bytes=N` bytes of CSV, streamed in 64 KiB chunks.
fn download(st: &State, req: Request<Incoming>) -> Response<Body> {
    let n: usize = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("bytes="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    st.seen.lock().unwrap().push((
        req.method().to_string(),
        req.uri().path().to_string(),
        req.headers().clone(),
        Bytes::new(),
    ));
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
    r
}

/// Switch protocols and echo whatever arrives.
fn websocket(mut req: Request<Incoming>) -> Response<Body> {
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
    r
}

/// The request's headers, body hash and length, as JSON.
async fn echo(st: &State, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    st.seen.lock().unwrap().push((
        parts.method.to_string(),
        parts.uri.path().to_string(),
        parts.headers.clone(),
        body.clone(),
    ));
    let hdrs: HashMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    reply::json(
        200,
        serde_json::json!({"headers": hdrs, "body_blake3": blake3::hash(&body).to_hex().to_string(), "len": body.len()}),
    )
}

use futures_util::StreamExt;
