//! Cold stampede: `n` clients, each on its own connection (opened beforehand),
//! send the same never-seen chart-data request at the same instant. Reports the
//! upstream queries it caused and how long after the first response (the
//! leader's) the others were answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::Barrier;

use crate::args::Args;
use crate::client::{self, Outcome};
use crate::payload::Templates;

struct Params {
    /// One or more proxies (replicas); client `i` uses `targets[i % len]`.
    targets: Vec<String>,
    upstream: Option<String>,
    label: String,
    n: usize,
    bytes: u64,
    latency_ms: u64,
    accept_encoding: String,
    rounds: u64,
    timeout: Duration,
}

struct Done {
    /// Index of the target (replica) the client used.
    target: usize,
    outcome: Outcome,
    sent: Instant,
    done: Instant,
}

async fn one(
    target: usize,
    addr: String,
    path_and_query: String,
    headers: Arc<Vec<(String, String)>>,
    body: Bytes,
    barrier: Arc<Barrier>,
    timeout: Duration,
) -> Option<Done> {
    let stream = tokio::net::TcpStream::connect(&addr).await.ok();
    let mut sender = match stream {
        Some(s) => {
            let _ = s.set_nodelay(true);
            match hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(s)).await {
                Ok((sender, conn)) => {
                    tokio::spawn(conn);
                    Some(sender)
                }
                Err(_) => None,
            }
        }
        None => None,
    };
    barrier.wait().await;
    let sender = sender.as_mut()?;
    let mut b = Request::post(path_and_query)
        .header(header::HOST, addr.as_str())
        .header(header::CONTENT_TYPE, "application/json");
    for (k, v) in headers.iter() {
        b = b.header(k.as_str(), v.as_str());
    }
    let req = b.body(Full::new(body)).ok()?;
    let sent = Instant::now();
    let fut = async {
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let cs = resp
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        resp.into_body().collect().await.ok()?;
        Some((status, cs))
    };
    let (status, cs) = tokio::time::timeout(timeout, fut).await.ok()??;
    Some(Done {
        target,
        outcome: if status >= 400 {
            Outcome::Error
        } else {
            Outcome::from_cache_status(cs.as_deref())
        },
        sent,
        done: Instant::now(),
    })
}

async fn round(p: &Params, nonce: u64, templates: &Templates) -> serde_json::Value {
    let http = client::client(4);
    // The round's own queries carry this tag: a proxy's background refresh of
    // an earlier workload's key may reach the upstream during the round, and
    // is not a query of this stampede.
    let label: String = p
        .label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let tag = format!("stampede-{label}-{nonce}");
    let stats = |http: client::HttpClient| {
        let u = p.upstream.clone();
        let tag = tag.clone();
        async move {
            match u {
                Some(u) => client::get_json(&http, &format!("{u}/__stats?tag={tag}")).await,
                None => None,
            }
        }
    };
    let before = stats(http.clone()).await;
    // A chart nobody asked for yet: fresh key for every proxy and round.
    let body = Bytes::from(templates.chart_body(900_000 + nonce, 1, 1_000_000 + nonce, false));
    let mut headers = vec![
        (
            "authorization".to_string(),
            "Bearer user-1-tok-0".to_string(),
        ),
        ("x-bench-bytes".to_string(), p.bytes.to_string()),
        ("x-bench-latency-ms".to_string(), p.latency_ms.to_string()),
        ("x-bench-tag".to_string(), tag.clone()),
    ];
    if !p.accept_encoding.is_empty() {
        headers.push(("accept-encoding".to_string(), p.accept_encoding.clone()));
    }
    let headers = Arc::new(headers);
    let addrs: Vec<String> = p
        .targets
        .iter()
        .map(|t| {
            let uri: http::Uri = t.parse().unwrap();
            uri.authority().unwrap().to_string()
        })
        .collect();
    let barrier = Arc::new(Barrier::new(p.n));
    let mut tasks = Vec::with_capacity(p.n);
    for i in 0..p.n {
        tasks.push(tokio::spawn(one(
            i % addrs.len(),
            addrs[i % addrs.len()].clone(),
            "/api/v1/chart/data".to_string(),
            headers.clone(),
            body.clone(),
            barrier.clone(),
            p.timeout,
        )));
    }
    let mut done = Vec::with_capacity(p.n);
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok(Some(d)) => done.push(d),
            _ => failed += 1,
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = stats(http).await;
    let queries = after
        .as_ref()
        .map_or(serde_json::Value::Null, |a| a["tag_queries"].clone());
    // Every chart query the upstream saw meanwhile, background refreshes included.
    let all_queries = match (&before, &after) {
        (Some(b), Some(a)) => json!(
            a["chart_queries"].as_u64().unwrap_or(0) - b["chart_queries"].as_u64().unwrap_or(0)
        ),
        _ => serde_json::Value::Null,
    };
    let Some(first) = done.iter().map(|d| d.done).min() else {
        return json!({"failed": failed});
    };
    let t0 = done.iter().map(|d| d.sent).min().unwrap();
    let lag: Vec<u64> = done
        .iter()
        .map(|d| d.done.duration_since(first).as_micros() as u64)
        .collect();
    // Per replica: the leader's replica answers its followers itself; the
    // others wait for its lock release and read the entry from Redis.
    let leader = done.iter().min_by_key(|d| d.done).map_or(0, |d| d.target);
    let by_target: Vec<serde_json::Value> = (0..addrs.len())
        .map(|t| {
            let l: Vec<u64> = done
                .iter()
                .filter(|d| d.target == t)
                .map(|d| d.done.duration_since(first).as_micros() as u64)
                .collect();
            json!({"target": addrs[t], "leader": t == leader, "lag": client::summary(l)})
        })
        .collect();
    let total: Vec<u64> = done
        .iter()
        .map(|d| d.done.duration_since(d.sent).as_micros() as u64)
        .collect();
    let mut outcomes = std::collections::BTreeMap::new();
    for d in &done {
        *outcomes.entry(d.outcome.as_str()).or_insert(0u64) += 1;
    }
    json!({
        "upstream_queries": queries,
        "all_upstream_queries": all_queries,
        "answered": done.len(),
        "failed": failed,
        "first_response_ms": client::round3(first.duration_since(t0).as_secs_f64() * 1000.0),
        "lag_after_first": client::summary(lag),
        "lag_by_target": by_target,
        "latency": client::summary(total),
        "outcomes": outcomes,
    })
}

async fn run_async(p: Params) -> serde_json::Value {
    let templates = Templates::load();
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64 % 1_000_000)
        .unwrap_or(0);
    let mut rounds = Vec::new();
    for r in 0..p.rounds {
        rounds.push(round(&p, salt * 16 + r, &templates).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    json!({
        "label": p.label,
        "target": p.targets.join(","),
        "n": p.n,
        "bytes": p.bytes,
        "upstream_latency_ms": p.latency_ms,
        "rounds": rounds,
    })
}

pub fn run(args: &Args) -> Result<(), String> {
    let p = Params {
        targets: args
            .string("target", "http://127.0.0.1:8080")
            .split(',')
            .map(client::loopback_base)
            .collect::<Result<_, _>>()?,
        upstream: args
            .opt("upstream")
            .map(|u| client::loopback_base(&u))
            .transpose()?,
        label: args.string("label", "stampede"),
        n: args.get("n", 500usize)?.clamp(1, 5000),
        bytes: args.get("bytes", 50 * 1024u64)?,
        latency_ms: args.get("latency-ms", 500u64)?,
        accept_encoding: args.string("accept-encoding", "gzip"),
        rounds: args.get("rounds", 3u64)?.clamp(1, 50),
        timeout: Duration::from_secs(args.get("timeout-secs", 30u64)?),
    };
    args.finish()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let v = rt.block_on(run_async(p));
    println!(
        "== stampede: {} ({}), n={} bytes={} upstream latency {} ms",
        v["label"], v["target"], v["n"], v["bytes"], v["upstream_latency_ms"]
    );
    println!(
        "{:>5} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}  outcomes",
        "round",
        "queries",
        "all",
        "answered",
        "first ms",
        "lag p50",
        "lag p90",
        "lag p99",
        "lag max"
    );
    for (i, r) in v["rounds"].as_array().unwrap().iter().enumerate() {
        let l = &r["lag_after_first"];
        println!(
            "{:>5} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}  {}",
            i,
            r["upstream_queries"],
            r["all_upstream_queries"],
            r["answered"],
            r["first_response_ms"],
            l["p50_ms"],
            l["p90_ms"],
            l["p99_ms"],
            l["max_ms"],
            r["outcomes"]
        );
        let targets = r["lag_by_target"]
            .as_array()
            .map_or(&[][..], |a| a.as_slice());
        if targets.len() > 1 {
            for t in targets {
                let l = &t["lag"];
                println!(
                    "{:>5} {:>28} lag p50 {} p90 {} max {}{}",
                    "",
                    t["target"].as_str().unwrap_or("?"),
                    l["p50_ms"],
                    l["p90_ms"],
                    l["max_ms"],
                    if t["leader"] == true {
                        "  (leader's replica)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    println!("RESULT_JSON {}", v);
    Ok(())
}
