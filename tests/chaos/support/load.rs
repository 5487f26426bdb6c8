//! The load next to every fault: keep-alive clients sending Superset
//! chart-data POSTs as two users (alice and bob, whose answers differ), each
//! answer checked to belong to the user who asked. Every request is recorded
//! with the phase it was sent in (before, during or after the fault).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub const BEFORE: u8 = 0;
pub const DURING: u8 = 1;
pub const AFTER: u8 = 2;
pub const PHASES: [&str; 3] = ["before", "during", "after"];

/// The two users of every load: (Bearer token, name in the answer).
pub const USERS: [(&str, &str); 2] = [("alice-token", "alice"), ("bob-token", "bob")];

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client with at most one idle connection: one keep-alive client.
pub fn client() -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(3)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(c)
}

/// The chart-data body of key `key` (a captured Superset request, its row
/// limit made distinct per key).
pub fn body(key: u64) -> Bytes {
    static BASE: OnceLock<serde_json::Value> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        // The big-number chart of the fixture dashboard.
        fake_superset::fixtures::dashboard_bodies().swap_remove(0).1
    });
    let mut b = base.clone();
    b["queries"][0]["row_limit"] = serde_json::json!(1000 + key);
    Bytes::from(serde_json::to_vec(&b).unwrap())
}

/// One checked answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status; 0 when the request failed without a response.
    pub status: u16,
    pub cache_status: String,
    /// The answer is a 200 naming another user (or no user at all).
    pub wrong_user: bool,
    pub query_no: Option<u64>,
    pub micros: u64,
    pub error: Option<String>,
}

/// POST chart data for `key` as user `user` (index into [`USERS`]) to `target`.
pub async fn chart(
    c: &HttpClient,
    target: &str,
    user: usize,
    key: u64,
    timeout: Duration,
) -> Answer {
    let (token, name) = USERS[user % USERS.len()];
    let req = Request::post(format!("{target}/api/v1/chart/data"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(body(key)))
        .unwrap();
    let t0 = Instant::now();
    let fut = async {
        let r = c.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = r.status().as_u16();
        let cs = r
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let b = r
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e:?}"))?
            .to_bytes();
        Ok::<_, String>((status, cs, b))
    };
    let res = tokio::time::timeout(timeout, fut).await;
    let micros = t0.elapsed().as_micros() as u64;
    match res {
        Ok(Ok((status, cache_status, b))) => {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            let r0 = &v["result"][0];
            Answer {
                status,
                cache_status,
                wrong_user: status == 200 && r0["user"].as_str() != Some(name),
                query_no: r0["query_no"].as_u64(),
                micros,
                error: None,
            }
        }
        Ok(Err(e)) => Answer::failed(e, micros),
        Err(_) => Answer::failed("timed out".into(), micros),
    }
}

impl Answer {
    fn failed(e: String, micros: u64) -> Answer {
        Answer {
            status: 0,
            cache_status: String::new(),
            wrong_user: false,
            query_no: None,
            micros,
            error: Some(e),
        }
    }
}

/// A recorded request.
#[derive(Debug, Clone)]
pub struct Sample {
    pub phase: u8,
    pub answer: Answer,
}

/// What the load does.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Base URLs; client `i` uses `targets[i % n]`.
    pub targets: Vec<String>,
    /// Concurrent keep-alive clients (half alice, half bob).
    pub conns: usize,
    /// Distinct chart requests, `key_base..key_base + keys`.
    pub keys: u64,
    pub key_base: u64,
    /// Pause after each answer, per client.
    pub pause: Duration,
    /// Bounds: total requests and seconds.
    pub max_requests: u64,
    pub max_secs: u64,
    pub timeout: Duration,
}

impl LoadSpec {
    pub fn new(target: &str) -> LoadSpec {
        LoadSpec {
            targets: vec![target.to_string()],
            conns: 8,
            keys: 20,
            key_base: 0,
            pause: Duration::from_millis(5),
            max_requests: 200_000,
            max_secs: 120,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    sent: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    pub fn start(spec: LoadSpec) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU8::new(BEFORE));
        let sent = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(spec.max_secs);
        let tasks = (0..spec.conns)
            .map(|i| {
                let (stop, phase, sent, spec) =
                    (stop.clone(), phase.clone(), sent.clone(), spec.clone());
                tokio::spawn(async move {
                    let c = client();
                    let target = &spec.targets[i % spec.targets.len()];
                    let mut out = Vec::new();
                    let mut k = (i as u64).wrapping_mul(7);
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        if sent.fetch_add(1, Ordering::SeqCst) >= spec.max_requests {
                            break;
                        }
                        k = k
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let key = spec.key_base + (k >> 33) % spec.keys.max(1);
                        let p = phase.load(Ordering::SeqCst);
                        let answer = chart(&c, target, i, key, spec.timeout).await;
                        out.push(Sample { phase: p, answer });
                        tokio::time::sleep(spec.pause).await;
                    }
                    out
                })
            })
            .collect();
        Load {
            stop,
            phase,
            sent,
            tasks,
        }
    }

    pub fn set_phase(&self, p: u8) {
        self.phase.store(p, Ordering::SeqCst);
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Wait (bounded) until `n` more requests have been sent.
    pub async fn wait_more(&self, n: u64, secs: u64) {
        let target = self.sent() + n;
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.sent() < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop and collect every sample.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    }
}
