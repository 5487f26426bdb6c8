//! The dashboard workload: simulated users open dashboards; each view fires the
//! dashboard's 8–30 chart-data POSTs concurrently (at most `conns-per-user` at a
//! time, like a browser), then the user thinks. Dashboard popularity is Zipf;
//! a view repeats one of the user's earlier views (same dashboard and filter
//! state) with probability `repeat`, else it applies a new filter state. A
//! fraction of chart requests carry `"force": true` (Superset's Force refresh).
//!
//! Bounded by `duration-secs` and `max-views`; loopback targets only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::args::Args;
use crate::client::{self, HttpClient, Outcome, Sample};
use crate::payload::Templates;
use crate::rng::{Rng, Zipf, mix};

struct Params {
    target: String,
    upstream: Option<String>,
    label: String,
    users: u64,
    principals: u64,
    tokens_per_principal: u64,
    dashboards: u64,
    zipf_s: f64,
    charts_min: u64,
    charts_max: u64,
    repeat: f64,
    force: f64,
    think_ms: f64,
    duration: Duration,
    max_views: u64,
    conns_per_user: usize,
    accept_encoding: String,
    timeout: Duration,
    seed: u64,
}

/// Shared view generator.
struct Gen {
    rng: Rng,
    zipf: Zipf,
    /// Per principal: earlier (dashboard, filter) views.
    history: Vec<Vec<(u64, u64)>>,
    next_filter: u64,
    repeats: u64,
    fresh: u64,
}

impl Gen {
    /// The next view of a principal: (dashboard, filter state, is a repeat).
    fn next_view(&mut self, principal: usize, repeat: f64) -> (u64, u64, bool) {
        let h = &self.history[principal];
        if !h.is_empty() && self.rng.f64() < repeat {
            self.repeats += 1;
            let (d, f) = h[(self.rng.next_u64() % h.len() as u64) as usize];
            return (d, f, true);
        }
        self.fresh += 1;
        let d = self.zipf.sample(&mut self.rng) as u64 + 1;
        self.next_filter += 1;
        let f = self.next_filter;
        self.history[principal].push((d, f));
        (d, f, false)
    }
}

fn charts_of(p: &Params, dashboard: u64) -> u64 {
    p.charts_min + mix(dashboard ^ p.seed) % (p.charts_max - p.charts_min + 1)
}

#[derive(Default)]
struct Totals {
    samples: Mutex<Vec<(Outcome, u64, usize)>>,
    views: Mutex<Vec<u64>>,
    charts_requested: AtomicU64,
    /// Chart requests of first-time views: misses no cache can avoid.
    compulsory: AtomicU64,
    forced: AtomicU64,
}

/// What every simulated user of a run shares: parameters, the view
/// generator, the request templates, the client, the totals and the stop
/// conditions.
#[derive(Clone)]
struct Shared {
    p: Arc<Params>,
    views_gen: Arc<Mutex<Gen>>,
    templates: Arc<Templates>,
    client: HttpClient,
    totals: Arc<Totals>,
    started_views: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
}

async fn user_loop(id: u64, shared: Shared) {
    let Shared {
        p,
        views_gen,
        templates,
        client,
        totals,
        started_views,
        stop,
        deadline,
    } = shared;
    let principal = id % p.principals;
    let token_ix = (id / p.principals) % p.tokens_per_principal;
    let auth = format!("Bearer user-{principal}-tok-{token_ix}");
    let url = format!("{}/api/v1/chart/data", p.target);
    let mut rng = Rng::new(p.seed ^ mix(id + 1));
    // Stagger the start so users do not open dashboards in lockstep.
    let stagger = rng.f64() * p.think_ms.min(2000.0);
    tokio::time::sleep(Duration::from_millis(stagger as u64)).await;
    loop {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        if started_views.fetch_add(1, Ordering::Relaxed) >= p.max_views {
            break;
        }
        let (dash, filter, repeat) = views_gen
            .lock()
            .unwrap()
            .next_view(principal as usize, p.repeat);
        let n = charts_of(&p, dash);
        if !repeat {
            totals.compulsory.fetch_add(n, Ordering::Relaxed);
        }
        let sem = Arc::new(Semaphore::new(p.conns_per_user));
        let view_started = Instant::now();
        let mut tasks = Vec::with_capacity(n as usize);
        for chart in 0..n {
            let force = rng.f64() < p.force;
            if force {
                totals.forced.fetch_add(1, Ordering::Relaxed);
            }
            let body = Bytes::from(templates.chart_body(dash, chart, filter, force));
            let sem = sem.clone();
            let client = client.clone();
            let url = url.clone();
            let auth = auth.clone();
            let ae = p.accept_encoding.clone();
            let timeout = p.timeout;
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await;
                let mut h: Vec<(&str, &str)> = vec![("authorization", auth.as_str())];
                if !ae.is_empty() {
                    h.push(("accept-encoding", ae.as_str()));
                }
                client::post(&client, &url, &h, body, timeout).await
            }));
        }
        let mut local: Vec<(Outcome, u64, usize)> = Vec::with_capacity(n as usize);
        for t in tasks {
            if let Ok(Sample {
                outcome,
                latency,
                bytes,
                ..
            }) = t.await
            {
                local.push((outcome, latency.as_micros() as u64, bytes));
            }
        }
        totals.charts_requested.fetch_add(n, Ordering::Relaxed);
        totals.samples.lock().unwrap().extend(local);
        totals
            .views
            .lock()
            .unwrap()
            .push(view_started.elapsed().as_micros() as u64);
        let think = rng.exp(p.think_ms).min(10.0 * p.think_ms);
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(Duration::from_millis(think as u64).min(left)).await;
    }
}

async fn upstream_stats(client: &HttpClient, p: &Params) -> Option<serde_json::Value> {
    let u = p.upstream.as_ref()?;
    client::get_json(client, &format!("{u}/__stats")).await
}

async fn run_async(p: Params) -> serde_json::Value {
    let p = Arc::new(p);
    let client = client::client((p.users as usize) * p.conns_per_user);
    let before = upstream_stats(&client, &p).await;
    let views_gen = Arc::new(Mutex::new(Gen {
        rng: Rng::new(p.seed),
        zipf: Zipf::new(p.dashboards as usize, p.zipf_s),
        history: vec![Vec::new(); p.principals as usize],
        // Distinct seeds never share filter states, so runs do not warm each other.
        next_filter: (p.seed % 1_000) * 1_000_000,
        repeats: 0,
        fresh: 0,
    }));
    let templates = Arc::new(Templates::load());
    let totals = Arc::new(Totals::default());
    let started_views = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + p.duration;
    let shared = Shared {
        p: p.clone(),
        views_gen: views_gen.clone(),
        templates,
        client: client.clone(),
        totals: totals.clone(),
        started_views,
        stop: stop.clone(),
        deadline,
    };
    let mut users = Vec::new();
    for id in 0..p.users {
        users.push(tokio::spawn(user_loop(id, shared.clone())));
    }
    // Hard stop: views in flight at the deadline get their request timeout, no more.
    let hard = deadline + p.timeout + Duration::from_secs(1);
    for u in users {
        let left = hard.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, u).await.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = upstream_stats(&client, &p).await;

    let samples = std::mem::take(&mut *totals.samples.lock().unwrap());
    let views = std::mem::take(&mut *totals.views.lock().unwrap());
    let n_views = views.len() as u64;
    let mut by: BTreeMap<Outcome, Vec<u64>> = BTreeMap::new();
    let mut bytes = 0usize;
    for (o, us, b) in &samples {
        by.entry(*o).or_default().push(*us);
        bytes += b;
    }
    let count = |o: Outcome| by.get(&o).map_or(0, |v| v.len()) as f64;
    let total = samples.len() as f64;
    let hits = count(Outcome::Hit) + count(Outcome::Stale) + count(Outcome::Coalesced);
    let outcomes: serde_json::Map<String, serde_json::Value> = by
        .iter()
        .map(|(o, v)| (o.as_str().to_string(), client::summary(v.clone())))
        .collect();
    let all: Vec<u64> = samples.iter().map(|s| s.1).collect();
    let g = views_gen.lock().unwrap();
    let charts_requested = totals.charts_requested.load(Ordering::Relaxed);
    let upstream = match (&before, &after) {
        (Some(b), Some(a)) => {
            let d = |k: &str| {
                a[k].as_u64()
                    .unwrap_or(0)
                    .saturating_sub(b[k].as_u64().unwrap_or(0))
            };
            let q = d("chart_queries");
            json!({
                "chart_queries": q,
                "me_queries": d("me_queries"),
                "peak_inflight": a["peak_inflight"],
                "chart_queries_per_view": client::round3(q as f64 / n_views.max(1) as f64),
                "direct_queries_per_view": client::round3(charts_requested as f64 / n_views.max(1) as f64),
                "ratio_to_direct": client::round3(q as f64 / charts_requested.max(1) as f64),
                "compulsory_queries": totals.compulsory.load(Ordering::Relaxed),
                "forced_requests": totals.forced.load(Ordering::Relaxed),
            })
        }
        _ => serde_json::Value::Null,
    };
    json!({
        "label": p.label,
        "target": p.target,
        "elapsed_s": client::round3(elapsed),
        "users": p.users,
        "principals": p.principals,
        "tokens_per_principal": p.tokens_per_principal,
        "dashboards": p.dashboards,
        "zipf_s": p.zipf_s,
        "repeat_param": p.repeat,
        "repeat_actual": client::round3(g.repeats as f64 / (g.repeats + g.fresh).max(1) as f64),
        "force_param": p.force,
        "forced_requests": totals.forced.load(Ordering::Relaxed),
        "accept_encoding": p.accept_encoding,
        "views": n_views,
        "chart_requests": samples.len(),
        "throughput_rps": client::round3(total / elapsed),
        "views_per_s": client::round3(n_views as f64 / elapsed),
        "mbytes_per_s": client::round3(bytes as f64 / elapsed / 1e6),
        "hit_ratio": client::round3(hits / total.max(1.0)),
        "errors": count(Outcome::Error),
        "latency_all": client::summary(all),
        "latency_by_outcome": outcomes,
        "view_latency": client::summary(views),
        "upstream": upstream,
    })
}

pub fn print_report(v: &serde_json::Value) {
    println!("== dashboards: {} ({})", v["label"], v["target"]);
    println!(
        "views {}  chart requests {}  elapsed {} s  throughput {} req/s  {} views/s  {} MB/s",
        v["views"],
        v["chart_requests"],
        v["elapsed_s"],
        v["throughput_rps"],
        v["views_per_s"],
        v["mbytes_per_s"]
    );
    println!(
        "repeat (actual) {}  forced {}  hit ratio {}  errors {}",
        v["repeat_actual"], v["forced_requests"], v["hit_ratio"], v["errors"]
    );
    println!(
        "{:<10} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "outcome", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    if let Some(m) = v["latency_by_outcome"].as_object() {
        for (k, s) in m {
            println!(
                "{:<10} {:>8} {:>9} {:>9} {:>9} {:>9}",
                k, s["count"], s["p50_ms"], s["p95_ms"], s["p99_ms"], s["max_ms"]
            );
        }
    }
    let vl = &v["view_latency"];
    println!(
        "view       {:>8} {:>9} {:>9} {:>9} {:>9}",
        vl["count"], vl["p50_ms"], vl["p95_ms"], vl["p99_ms"], vl["max_ms"]
    );
    if !v["upstream"].is_null() {
        let u = &v["upstream"];
        println!(
            "upstream chart queries {}  per view {}  (direct: {} per view, ratio {})  compulsory {}  forced {}  /me lookups {}",
            u["chart_queries"],
            u["chart_queries_per_view"],
            u["direct_queries_per_view"],
            u["ratio_to_direct"],
            u["compulsory_queries"],
            u["forced_requests"],
            u["me_queries"]
        );
    }
    println!("RESULT_JSON {}", v);
}

pub fn run(args: &Args) -> Result<(), String> {
    let p = Params {
        target: client::loopback_base(&args.string("target", "http://127.0.0.1:8080"))?,
        upstream: args
            .opt("upstream")
            .map(|u| client::loopback_base(&u))
            .transpose()?,
        label: args.string("label", "dashboards"),
        users: args.get("users", 20u64)?.max(1),
        principals: args.get("principals", 10u64)?.max(1),
        tokens_per_principal: args.get("tokens-per-principal", 1u64)?.max(1),
        dashboards: args.get("dashboards", 50u64)?.max(1),
        zipf_s: args.get("zipf", 1.0)?,
        charts_min: args.get("charts-min", 8u64)?.max(1),
        charts_max: args.get("charts-max", 30u64)?,
        repeat: args.get("repeat", 0.9)?,
        force: args.get("force", 0.01)?,
        think_ms: args.get("think-ms", 1000.0)?,
        duration: Duration::from_secs(args.get("duration-secs", 60u64)?.clamp(1, 3600)),
        max_views: args.get("max-views", 5000u64)?.min(1_000_000),
        conns_per_user: args.get("conns-per-user", 6usize)?.max(1),
        accept_encoding: args.string("accept-encoding", "gzip, deflate, br, zstd"),
        timeout: Duration::from_secs(args.get("timeout-secs", 30u64)?),
        seed: args.get("seed", 42u64)?,
    };
    args.finish()?;
    if p.charts_max < p.charts_min {
        return Err("--charts-max must be >= --charts-min".into());
    }
    let threads: usize = 2;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let v = rt.block_on(run_async(p));
    print_report(&v);
    Ok(())
}
