//! `chartcache-load failover`: what clients see when the Redis master changes
//! under a steady load of Redis-only hits, for two or more chartcache
//! binaries run alternately (A/B/A/B) on fresh, identical Sentinel sets.
//!
//! ```text
//! chartcache-load failover --bins base=PATH,other=PATH [--fault switch|kill]
//!     [--rounds 2] [--conns 12] [--keys 24] [--before-secs 3] [--after-secs 8]
//! ```
//! Each run: 1 master, 1 replica, 3 sentinels (`tests/chaos/support`), the
//! fake Superset upstream, one chartcache with `redis.tiered = false` (every
//! hit a Redis GET) and the chaos suite's breaker settings. `--keys` charts are
//! warmed until each is a hit; then `--conns` keep-alive clients ask for them
//! in a loop (2 ms pause) and one more client asks for a new chart every time
//! (a miss: lock and put are Redis writes, which a demoted master refuses with
//! `READONLY`). After `--before-secs` the master changes:
//! `switch` is `SENTINEL FAILOVER` (the old master stays up and becomes a
//! replica: connections still open to it are stale), `kill` is SIGKILL of
//! the master (the sentinels promote the replica after down-after, 1 s).
//!
//! Per run it prints: the promotion time; answers of the hot clients after the
//! fault that were not hits (by `Cache-Status`), non-200 answers, and when the
//! last non-hit was sent (hits resumed for good after that); the old master's
//! data commands after the promotion was seen (stale connections used:
//! INFO commandstats) and its `READONLY` replies (INFO errorstats); the proxy's
//! Redis operation errors and breaker skips (/metrics) and why it dropped
//! its connections (its log). Everything is on 127.0.0.1 and bounded in time.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::args::Args;
use crate::chaos::chaos_support::load::{self, Answer};
use crate::chaos::chaos_support::proxy::Chartcache;
use crate::chaos::chaos_support::redis::{Reply, SentinelSet, cmd_async};
use crate::chaos::chaos_support::upstream::Upstream;

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Switch,
    Kill,
}

struct Params {
    fault: Fault,
    conns: usize,
    keys: u64,
    before: Duration,
    after: Duration,
}

/// One answer, with when it was sent relative to the fault (ms, negative before).
struct Timed {
    sent_ms: f64,
    hot: bool,
    a: Answer,
}

pub fn run(args: &Args) -> Result<(), String> {
    let bins: Vec<(String, PathBuf)> = args
        .string("bins", "")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('=') {
            Some((n, p)) => (n.to_string(), PathBuf::from(p)),
            None => (s.to_string(), PathBuf::from(s)),
        })
        .collect();
    let fault = match args.string("fault", "switch").as_str() {
        "switch" => Fault::Switch,
        "kill" => Fault::Kill,
        other => return Err(format!("--fault: switch or kill, not {other:?}")),
    };
    let rounds: usize = args.get("rounds", 2)?;
    let p = Params {
        fault,
        conns: args.get("conns", 12)?,
        keys: args.get("keys", 24)?,
        before: Duration::from_secs(args.get("before-secs", 3)?),
        after: Duration::from_secs(args.get("after-secs", 8)?),
    };
    args.finish()?;
    if bins.is_empty() {
        return Err("--bins NAME=PATH[,NAME=PATH...] is required".into());
    }
    for (_, b) in &bins {
        if !b.exists() {
            return Err(format!("{}: no such binary", b.display()));
        }
    }
    if !(1..=5).contains(&rounds)
        || !(1..=64).contains(&p.conns)
        || !(1..=1000).contains(&p.keys)
        || p.before > Duration::from_secs(60)
        || p.after > Duration::from_secs(120)
    {
        return Err(
            "bounds: rounds 1..5, conns 1..64, keys 1..1000, before ≤ 60 s, after ≤ 120 s".into(),
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let p = Arc::new(p);
    for round in 1..=rounds {
        for (name, bin) in &bins {
            let (p, bin) = (p.clone(), bin.clone());
            let line = rt
                .block_on(async move { tokio::spawn(one(p, bin)).await })
                .map_err(|e| format!("{name} round {round}: {e}"))?;
            println!("{name:<10} round {round}  {line}");
        }
    }
    Ok(())
}

fn sentinel_toml(set: &SentinelSet) -> String {
    let list: Vec<String> = set
        .sentinel_addrs()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    format!(
        "[redis]\nsentinels = [{}]\nmaster_name = \"mymaster\"\ntiered = false\n\
         breaker_failures = 3\nbreaker_cooldown_ms = 200\n",
        list.join(", ")
    )
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// `INFO section` of the server on `port` as (field, value) lines.
async fn info(port: u16, section: &str) -> Vec<(String, String)> {
    match cmd_async(port, &["INFO", section]).await {
        Ok(Reply::Bulk(Some(s))) => s
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        _ => Vec::new(),
    }
}

/// The proxy's commands the server has run (INFO commandstats: GET, EVAL,
/// EVALSHA, and UNWATCH, which deadpool-redis sends with its recycle PING;
/// not PING, INFO or PUBLISH, which sentinels send too, nor SET, which a
/// replica also runs from its master's stream), or -1 if it is down.
async fn data_calls(port: u16) -> i64 {
    let lines = info(port, "commandstats").await;
    if lines.is_empty() {
        return -1;
    }
    const DATA: [&str; 4] = [
        "cmdstat_get",
        "cmdstat_eval",
        "cmdstat_evalsha",
        "cmdstat_unwatch",
    ];
    lines
        .iter()
        .filter(|(k, _)| DATA.contains(&k.as_str()))
        .filter_map(|(_, v)| {
            v.strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse::<i64>()
                .ok()
        })
        .sum()
}

/// `READONLY` error replies the server has sent (INFO errorstats), -1 if down.
async fn readonly_errors(port: u16) -> i64 {
    let lines = info(port, "errorstats").await;
    if lines.is_empty() {
        return -1;
    }
    lines
        .iter()
        .find(|(k, _)| k == "errorstat_READONLY")
        .and_then(|(_, v)| v.strip_prefix("count=")?.parse().ok())
        .unwrap_or(0)
}

async fn one(p: Arc<Params>, bin: PathBuf) -> String {
    let mut set = tokio::task::spawn_blocking(SentinelSet::start)
        .await
        .expect("sentinel set");
    let up = Upstream::start().await;
    let cc = Chartcache::start(&bin, &up.url(), &sentinel_toml(&set)).await;
    let url = cc.url();

    // Warm every hot key until it is a hit (bounded), for both users: each
    // user's answer is an entry of its own.
    let c = load::client();
    let t = Duration::from_secs(5);
    for k in 0..p.keys {
        for user in 0..load::USERS.len() {
            for _ in 0..50 {
                let a = load::chart(&c, &url, user, k, t).await;
                if a.cache_status.contains("hit") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = start + p.before + p.after + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for i in 0..=p.conns {
        let (stop, url, p) = (stop.clone(), url.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            let c = load::client();
            let hot = i < p.conns;
            let mut out = Vec::new();
            let mut n: u64 = 0;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && n < 1_000_000 {
                n += 1;
                let key = if hot {
                    (i as u64 * 7 + n) % p.keys
                } else {
                    // The writer: a new chart every time.
                    10_000_000 + n
                };
                let sent = Instant::now();
                let a = load::chart(&c, &url, i, key, Duration::from_secs(10)).await;
                out.push((sent, hot, a));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            out
        }));
    }
    tokio::time::sleep(p.before).await;

    let old = set.master.addr();
    let old_port = port_of(&old);
    // Every store's errors (with `tiered = false` Redis is the only one).
    let err0 = cc
        .metric("chartcache_store_errors_total")
        .await
        .unwrap_or(0.0);
    let fault_at = Instant::now();
    match p.fault {
        Fault::Switch => {
            let s = set.sentinels[0].port;
            let r = cmd_async(s, &["SENTINEL", "FAILOVER", "mymaster"]).await;
            if !matches!(r, Ok(Reply::Simple(_))) {
                stop.store(true, Ordering::SeqCst);
                return format!("SENTINEL FAILOVER refused: {r:?}");
            }
        }
        Fault::Kill => set.master.kill(),
    }
    // When the old master, if up, starts to call itself a replica: until then
    // it still accepts writes (lost when it resyncs from the new master).
    let demoted = tokio::spawn(async move {
        let end = fault_at + Duration::from_secs(60);
        while Instant::now() < end {
            match cmd_async(old_port, &["ROLE"]).await {
                Ok(r) => {
                    if r.items().first().and_then(Reply::as_str) == Some("slave") {
                        return Some(fault_at.elapsed());
                    }
                }
                Err(_) => return None,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    });
    let new = set.wait_new_master(&old, 30).await;
    let promoted = fault_at.elapsed();
    // Commands the old master runs from now on came over connections opened
    // to it before the switch.
    let calls_at_promotion = data_calls(old_port).await;
    tokio::time::sleep(p.after.saturating_sub(promoted)).await;
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for t in tasks {
        for (sent, hot, a) in t.await.unwrap_or_default() {
            let sent_ms = if sent >= fault_at {
                (sent - fault_at).as_secs_f64() * 1e3
            } else {
                -((fault_at - sent).as_secs_f64() * 1e3)
            };
            all.push(Timed { sent_ms, hot, a });
        }
    }
    let calls_end = data_calls(old_port).await;
    let stale_cmds = if calls_at_promotion >= 0 && calls_end >= 0 {
        (calls_end - calls_at_promotion).to_string()
    } else {
        "down".into()
    };
    let readonly = readonly_errors(old_port).await;
    demoted.abort();
    let demoted = match demoted.await {
        Ok(Some(d)) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
        Ok(None) => "down".into(),
        Err(_) => "not within the run".into(),
    };
    let err1 = cc
        .metric("chartcache_store_errors_total")
        .await
        .unwrap_or(0.0);
    let skipped = cc
        .metric("chartcache_store_operations_total{op=\"get\",result=\"skipped\",store=\"redis\"}")
        .await
        .unwrap_or(0.0);
    let log = cc.log();
    let mut reasons: Vec<(String, usize)> = Vec::new();
    for l in log
        .lines()
        .filter(|l| l.contains("dropping redis connections"))
    {
        let why = field(l, "why");
        match reasons.iter_mut().find(|(w, _)| *w == why) {
            Some((_, n)) => *n += 1,
            None => reasons.push((why, 1)),
        }
    }

    let before: Vec<&Timed> = all.iter().filter(|t| t.hot && t.sent_ms < 0.0).collect();
    let after: Vec<&Timed> = all.iter().filter(|t| t.hot && t.sent_ms >= 0.0).collect();
    let non_hit: Vec<&&Timed> = after
        .iter()
        .filter(|t| !t.a.cache_status.contains("hit"))
        .collect();
    let non200 = all
        .iter()
        .filter(|t| t.sent_ms >= 0.0 && t.a.status != 200)
        .count();
    let before_non_hit = before
        .iter()
        .filter(|t| !t.a.cache_status.contains("hit"))
        .count();
    let last_non_hit = non_hit
        .iter()
        .map(|t| t.sent_ms + t.a.micros as f64 / 1e3)
        .fold(None::<f64>, |m, v| Some(m.map_or(v, |m| m.max(v))));
    let mut outcomes: Vec<(String, usize)> = Vec::new();
    for t in &non_hit {
        let o = outcome(&t.a.cache_status);
        match outcomes.iter_mut().find(|(w, _)| *w == o) {
            Some((_, n)) => *n += 1,
            None => outcomes.push((o, 1)),
        }
    }
    let mut lat: Vec<u64> = after.iter().map(|t| t.a.micros).collect();
    lat.sort_unstable();
    let q = |f: f64| {
        lat.get(((lat.len() as f64 * f) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1e3
    };
    let writer_after = all.iter().filter(|t| !t.hot && t.sent_ms >= 0.0).count();
    let line = format!(
        "promoted {:.0} ms ({}); hot answers before {} ({} not hits), after {}: not hits {} {:?}, \
         non-200 (all clients) {}, hits for good from {} ms, p99 {:.1} ms, max {:.1} ms; \
         writer requests after {}; old master: a replica from {}, {} data commands after promotion, {} READONLY; \
         proxy: {} redis errors, {} gets skipped by the breaker, connections dropped {:?}",
        promoted.as_secs_f64() * 1e3,
        new.unwrap_or_else(|| "no new master".into()),
        before.len(),
        before_non_hit,
        after.len(),
        non_hit.len(),
        outcomes,
        non200,
        last_non_hit.map_or("0".into(), |v| format!("{v:.0}")),
        q(0.99),
        q(1.0),
        writer_after,
        demoted,
        stale_cmds,
        readonly,
        err1 - err0,
        skipped,
        reasons,
    );
    drop(cc);
    drop(set);
    line
}

/// A field of a log line, text (`why="READONLY"`) or JSON (`"why":"READONLY"`).
fn field(line: &str, name: &str) -> String {
    let rest = line
        .split_once(&format!("{name}="))
        .or_else(|| line.split_once(&format!("\"{name}\":")))
        .map(|(_, r)| r)
        .unwrap_or("");
    match rest.strip_prefix('"') {
        Some(q) => q.split('"').next().unwrap_or("").to_string(),
        None => rest.split_whitespace().next().unwrap_or("").to_string(),
    }
}

/// `chartcache; hit` → `hit`; `chartcache; fwd=miss; stored` → `fwd=miss`.
fn outcome(cs: &str) -> String {
    if cs.is_empty() {
        return "none".into();
    }
    cs.split(';').nth(1).unwrap_or(cs).trim().to_string()
}
