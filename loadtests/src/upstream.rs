//! A Superset-shaped upstream on loopback.
//!
//! - `GET /api/v1/me/` with `Authorization: Bearer user-{id}-...` answers that
//!   user (401 otherwise), like Superset's `/me`.
//! - `POST /api/v1/chart/data` answers a chart-data envelope after a per-chart
//!   latency, with a per-chart payload size. Both derive from the chart's
//!   `form_data.slice_id` (stable across requests) and can be pinned per request
//!   with `X-Bench-Latency-Ms` / `X-Bench-Bytes`. `Accept-Encoding: gzip` gets a
//!   gzip body, as flask-compress sends; otherwise identity.
//! - `GET /__stats` returns the counters as JSON (chart queries, `/me` lookups,
//!   peak concurrency, bytes sent). `GET /__stats?tag=T` adds `tag_queries`:
//!   the chart queries that carried `X-Bench-Tag: T`, so a workload can count
//!   its own queries apart from a proxy's background refreshes of other keys.
//!
//! Users, `/me`, answers, headers and the accept loop are the shared fake's
//! (`fake_superset`); the per-chart latency and size model, gzip and the
//! counters are this tool's own.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fake_superset::reply::{self, Body, json_bytes};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use crate::args::Args;
use crate::payload::superset_response;
use crate::rng::{hash_bytes, mix};

pub struct Config {
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    pub size_min: usize,
    pub size_max: usize,
}

#[derive(Default)]
struct Counters {
    chart_queries: AtomicU64,
    me_queries: AtomicU64,
    other: AtomicU64,
    inflight: AtomicU64,
    peak_inflight: AtomicU64,
    bytes_sent: AtomicU64,
}

struct State {
    cfg: Config,
    c: Counters,
    /// Chart queries per `X-Bench-Tag` value.
    tagged: Mutex<HashMap<String, u64>>,
    /// (size, gzip) → body. Sizes are bucketed so this stays small.
    payloads: Mutex<HashMap<(usize, bool), Bytes>>,
}

impl State {
    fn payload(&self, size: usize, gzip: bool) -> Bytes {
        if let Some(b) = self.payloads.lock().unwrap().get(&(size, gzip)) {
            return b.clone();
        }
        let raw = superset_response(size);
        let body = if gzip {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&raw).unwrap();
            Bytes::from(e.finish().unwrap())
        } else {
            Bytes::from(raw)
        };
        let mut m = self.payloads.lock().unwrap();
        if m.len() > 512 {
            m.clear();
        }
        m.insert((size, gzip), body.clone());
        body
    }

    /// Payload size of a chart: most charts are small, a few are big tables.
    fn chart_size(&self, slice: u64) -> usize {
        let u = (mix(slice ^ 0x5151) >> 11) as f64 / (1u64 << 53) as f64;
        let v = (mix(slice ^ 0xA7A7) >> 11) as f64 / (1u64 << 53) as f64;
        let (lo, hi): (f64, f64) = if u < 0.60 {
            (1_024.0, 8_192.0)
        } else if u < 0.90 {
            (8_192.0, 102_400.0)
        } else if u < 0.99 {
            (102_400.0, 512_000.0)
        } else {
            (512_000.0, 2_097_152.0)
        };
        let s = (lo * (hi / lo).powf(v)) as usize;
        // Bucket to 2^(1/4) steps so the upstream's payload table stays small.
        let b = (s as f64).log2() * 4.0;
        let s = 2f64.powf(b.round() / 4.0) as usize;
        s.clamp(self.cfg.size_min, self.cfg.size_max)
    }

    /// Query time of a chart: log-uniform in [min, max] per chart, ±10 % jitter.
    fn chart_latency(&self, slice: u64, jitter: u64) -> u64 {
        let (lo, hi) = (
            self.cfg.latency_min_ms.max(1) as f64,
            self.cfg.latency_max_ms.max(1) as f64,
        );
        if hi <= lo {
            return lo as u64;
        }
        let v = (mix(slice ^ 0x1234) >> 11) as f64 / (1u64 << 53) as f64;
        let base = lo * (hi / lo).powf(v);
        let j = 0.9 + 0.2 * ((jitter % 1000) as f64 / 1000.0);
        (base * j).clamp(lo, hi) as u64
    }
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    json_bytes(status.as_u16(), body)
}

fn header_u64(req: &Request<Incoming>, name: &str) -> Option<u64> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/__stats" {
        let c = &st.c;
        let mut body = serde_json::json!({
            "chart_queries": c.chart_queries.load(Ordering::Relaxed),
            "me_queries": c.me_queries.load(Ordering::Relaxed),
            "other": c.other.load(Ordering::Relaxed),
            "inflight": c.inflight.load(Ordering::Relaxed),
            "peak_inflight": c.peak_inflight.load(Ordering::Relaxed),
            "bytes_sent": c.bytes_sent.load(Ordering::Relaxed),
        });
        if let Some(tag) = req.uri().query().and_then(|q| q.strip_prefix("tag=")) {
            let n = st.tagged.lock().unwrap().get(tag).copied().unwrap_or(0);
            body["tag_queries"] = n.into();
        }
        return json(StatusCode::OK, body.to_string());
    }
    if path == "/api/v1/me/" {
        st.c.me_queries.fetch_add(1, Ordering::Relaxed);
        // `Bearer user-{id}-…` is user `user{id}`.
        return match fake_superset::users::numbered(req.headers()) {
            Some((id, name)) => reply::me(id, &name),
            None => reply::unauthorized(),
        };
    }
    let is_chart = path == "/api/v1/chart/data"
        || (path.starts_with("/api/v1/chart/") && path.ends_with("/data/"));
    if !is_chart {
        st.c.other.fetch_add(1, Ordering::Relaxed);
        return reply::not_found();
    }
    if req.headers().get(header::AUTHORIZATION).is_none()
        && req.headers().get(header::COOKIE).is_none()
    {
        return reply::unauthorized();
    }
    st.c.chart_queries.fetch_add(1, Ordering::Relaxed);
    if let Some(tag) = req
        .headers()
        .get("x-bench-tag")
        .and_then(|v| v.to_str().ok())
    {
        *st.tagged
            .lock()
            .unwrap()
            .entry(tag.to_string())
            .or_insert(0) += 1;
    }
    let now = st.c.inflight.fetch_add(1, Ordering::Relaxed) + 1;
    st.c.peak_inflight.fetch_max(now, Ordering::Relaxed);
    let pinned_bytes = header_u64(&req, "x-bench-bytes");
    let pinned_latency = header_u64(&req, "x-bench-latency-ms");
    let gzip = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let slice = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["form_data"]["slice_id"].as_u64())
        .unwrap_or(0);
    let latency = pinned_latency.unwrap_or_else(|| st.chart_latency(slice, hash_bytes(&body)));
    let size = pinned_bytes
        .map(|b| b as usize)
        .unwrap_or_else(|| st.chart_size(slice));
    tokio::time::sleep(Duration::from_millis(latency)).await;
    let payload = st.payload(size, gzip);
    st.c.bytes_sent
        .fetch_add(payload.len() as u64, Ordering::Relaxed);
    st.c.inflight.fetch_sub(1, Ordering::Relaxed);
    let mut resp = json(StatusCode::OK, payload);
    if gzip {
        resp.headers_mut().insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
    }
    resp
}

pub async fn serve(listen: SocketAddr, cfg: Config) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("upstream listening on {}", listener.local_addr()?);
    let st = Arc::new(State {
        tagged: Mutex::new(HashMap::new()),
        cfg,
        c: Counters::default(),
        payloads: Mutex::default(),
    });
    // Connections stay open as long as the client keeps them: the load
    // generators measure the proxy, not gunicorn's keep-alive.
    let accept = fake_superset::server::spawn_accept(
        listener,
        move |req| handle(st.clone(), req),
        None,
        Arc::default(),
    );
    accept.await.map_err(std::io::Error::other)
}

pub fn run(args: &Args) -> Result<(), String> {
    let listen: SocketAddr = args.get("listen", "127.0.0.1:18088".parse().unwrap())?;
    if !listen.ip().is_loopback() {
        return Err("--listen must be a loopback address".into());
    }
    let cfg = Config {
        latency_min_ms: args.get("latency-min-ms", 50)?,
        latency_max_ms: args.get("latency-max-ms", 800)?,
        size_min: args.get("size-min", 1024)?,
        size_max: args.get("size-max", 2 * 1024 * 1024)?,
    };
    let threads: usize = args.get("threads", 1)?;
    args.finish()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(serve(listen, cfg)).map_err(|e| e.to_string())
}
