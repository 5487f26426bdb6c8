//! `rate`: latency at a fixed offered load (open loop), for comparing two
//! proxies at the *same* request rate rather than each at its own maximum.
//!
//! wrk (closed loop) sends the next request on a connection as soon as the
//! previous answer arrives, so a faster server is also offered more load and
//! its p99 is measured at a higher rate, with wrk itself short of CPU on a
//! shared machine. Here every connection sends on a fixed schedule
//! (`--rps` in all, spread evenly over `--conns` connections), and each
//! request's latency counts from when it was due if the connection was still
//! busy with the previous one then (no coordinated omission: a stall is
//! charged to every request it delayed), or from when it was actually sent
//! otherwise (so the timer's 1 ms granularity is not charged to the server).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::args::Args;
use crate::client;

struct Params {
    addr: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    rps: f64,
    conns: usize,
    duration: Duration,
    timeout: Duration,
}

#[derive(Default)]
struct Tally {
    /// Latency of each answered request, in µs.
    us: Vec<u64>,
    errors: u64,
    /// Requests due while the connection was still waiting for the previous answer.
    late: u64,
    /// Requests never sent: the schedule was still behind `--timeout-secs`
    /// after the run's end (a server far too slow for the rate).
    unsent: u64,
}

/// One connection's schedule: requests due at `first + k * interval` until `end`.
async fn connection(p: Arc<Params>, first: Instant, end: Instant) -> Tally {
    let mut t = Tally::default();
    let Ok(stream) = tokio::net::TcpStream::connect(&p.addr).await else {
        t.errors += 1;
        return t;
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await
    else {
        t.errors += 1;
        return t;
    };
    tokio::spawn(conn);
    let interval = Duration::from_secs_f64(p.conns as f64 / p.rps);
    let mut due = first;
    let mut prev_done = first;
    while due < end {
        if Instant::now() > end + p.timeout {
            // Bounded in time too: give up on what is still queued.
            t.unsent = (end - due).as_nanos().div_ceil(interval.as_nanos()) as u64;
            break;
        }
        if prev_done <= due {
            tokio::time::sleep_until(due.into()).await;
        } else {
            t.late += 1;
        }
        let sent = Instant::now();
        let from = if prev_done > due { due } else { sent };
        let mut b = Request::post(p.url.as_str()).header(header::HOST, p.addr.as_str());
        for (k, v) in &p.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b.body(Full::new(p.body.clone())).expect("request");
        let answered = tokio::time::timeout(p.timeout, async {
            let resp = sender.send_request(req).await.ok()?;
            let ok = resp.status().is_success();
            resp.into_body().collect().await.ok()?;
            Some(ok)
        })
        .await;
        let done = Instant::now();
        match answered {
            Ok(Some(true)) => t.us.push((done - from).as_micros() as u64),
            Ok(Some(false)) => t.errors += 1,
            // A timed-out or broken connection cannot be reused: stop here.
            _ => {
                t.errors += 1;
                return t;
            }
        }
        prev_done = done;
        due += interval;
    }
    t
}

async fn run_load(p: Arc<Params>) -> serde_json::Value {
    // Connections are opened during the first 100 ms; the schedule starts after.
    let t0 = Instant::now() + Duration::from_millis(100);
    let end = t0 + p.duration;
    let stagger = Duration::from_secs_f64(1.0 / p.rps);
    let tasks: Vec<_> = (0..p.conns)
        .map(|i| tokio::spawn(connection(p.clone(), t0 + stagger * i as u32, end)))
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.unwrap_or_else(|_| Tally {
            errors: 1,
            ..Tally::default()
        });
        all.us.extend(t.us);
        all.errors += t.errors;
        all.late += t.late;
        all.unsent += t.unsent;
    }
    let answered = all.us.len() as f64;
    let mut s = client::summary(all.us);
    s["rps_offered"] = json!(p.rps);
    s["rps_answered"] = json!((answered / p.duration.as_secs_f64()).round());
    s["errors"] = json!(all.errors);
    s["late_share"] = json!(client::round3(all.late as f64 / answered.max(1.0)));
    s["unsent"] = json!(all.unsent);
    s
}

/// `chartcache-load rate --target URL --body FILE --rps N [--conns 64]
/// [--duration-secs 10] [--bytes N] [--accept-encoding ""] [--threads 2]`
pub fn run(args: &Args) -> Result<(), String> {
    let base = client::loopback_base(&args.string("target", "http://127.0.0.1:8080"))?;
    let body_file = args
        .opt("body")
        .ok_or("--body FILE (the chart-data request) is required")?;
    let rps: f64 = args.get("rps", 10_000.0)?;
    let conns: usize = args.get("conns", 64)?;
    let secs: u64 = args.get("duration-secs", 10)?;
    let bytes: u64 = args.get("bytes", 1024)?;
    let ae = args.string("accept-encoding", "");
    let threads: usize = args.get("threads", 2)?;
    let timeout: u64 = args.get("timeout-secs", 5)?;
    let label = args.string("label", "rate");
    args.finish()?;
    if !(1.0..=500_000.0).contains(&rps) || conns == 0 || conns > 4096 {
        return Err("--rps must be 1..=500000 and --conns 1..=4096".into());
    }
    if secs == 0 || secs > 600 {
        return Err("--duration-secs must be 1..=600".into());
    }
    let body = std::fs::read(&body_file).map_err(|e| format!("{body_file}: {e}"))?;
    let uri: http::Uri = base.parse().map_err(|e| format!("{base}: {e}"))?;
    let addr = uri.authority().map(|a| a.to_string()).ok_or("no host")?;
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        (
            "authorization".to_string(),
            "Bearer user-1-tok-0".to_string(),
        ),
        ("x-bench-bytes".to_string(), bytes.to_string()),
        ("x-bench-latency-ms".to_string(), "50".to_string()),
    ];
    if !ae.is_empty() {
        headers.push(("accept-encoding".to_string(), ae));
    }
    let p = Arc::new(Params {
        url: format!("{}/api/v1/chart/data", uri.path().trim_end_matches('/')),
        addr,
        headers,
        body: Bytes::from(body),
        rps,
        conns,
        duration: Duration::from_secs(secs),
        timeout: Duration::from_secs(timeout),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut s = rt.block_on(run_load(p));
    s["label"] = json!(label);
    println!(
        "{label}: offered {rps} req/s, answered {} req/s, errors {}, unsent {}, late {}; latency p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        s["rps_answered"],
        s["errors"],
        s["unsent"],
        s["late_share"],
        s["p50_ms"],
        s["p90_ms"],
        s["p99_ms"],
        s["max_ms"]
    );
    println!("RESULT_JSON {s}");
    Ok(())
}
