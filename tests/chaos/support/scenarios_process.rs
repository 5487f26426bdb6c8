//! Process signals: SIGTERM with requests in flight on every proxy thread
//! (a rollout), SIGHUP reloads under load.

use std::path::Path;
use std::time::Duration;

use super::load::{self, AFTER, BEFORE, DURING, Load};
use super::proxy::Chartcache;
use super::upstream::Upstream;
use super::{Report, Scale, sleep};

const DRAIN_TOML: &str = "[server]\ndrain_timeout_secs = 10\n";

/// SIGTERM while slow requests are in flight; every one must be answered 200
/// and the process must exit 0 once drained. Two shapes:
/// 1. a pooled upstream connection opened by three requests (a miss and two
///    hits), then one slow miss (upstream 1.5 s) on a new client connection,
///    SIGTERM 0.4 s later (repeated `sigterm_rounds` times);
/// 2. the upstream pool warmed from many connections (so both proxy threads
///    hold pooled connections), then 8 slow misses on 8 new connections,
///    SIGTERM 0.4 s later.
pub async fn sigterm_in_flight(bin: &Path, scale: &Scale) -> Report {
    let up = Upstream::start().await;
    let mut r = Report::new("sigterm_in_flight");
    let t = Duration::from_secs(15);
    let mut exits = Vec::new();
    let mut key = 0u64;
    for round in 0..scale.sigterm_rounds + 1 {
        up.set_delay(Duration::ZERO);
        let mut cc = Chartcache::start(bin, &up.url(), DRAIN_TOML).await;
        let slow_count = if round < scale.sigterm_rounds {
            // Shape 1: one pooled upstream connection, one slow request.
            let c = load::client();
            key += 1;
            for _ in 0..3 {
                let a = load::chart(&c, &cc.url(), 0, key, t).await;
                r.add_answer(BEFORE, &a);
            }
            1
        } else {
            // Shape 2: warm the pool from 16 connections at once.
            let mut warm = Vec::new();
            for i in 0..16 {
                let url = cc.url();
                key += 1;
                let k = key;
                warm.push(tokio::spawn(async move {
                    let c = load::client();
                    let mut v = Vec::new();
                    for _ in 0..3 {
                        v.push(load::chart(&c, &url, i, k, t).await);
                    }
                    v
                }));
            }
            for w in warm {
                for a in w.await.unwrap() {
                    r.add_answer(BEFORE, &a);
                }
            }
            8
        };
        up.set_delay(Duration::from_millis(1500));
        let mut slow = Vec::new();
        for i in 0..slow_count {
            let url = cc.url();
            key += 1;
            let k = key;
            slow.push(tokio::spawn(async move {
                load::chart(&load::client(), &url, i, k, t).await
            }));
        }
        sleep(Duration::from_millis(400)).await;
        cc.proc.signal(libc::SIGTERM);
        for s in slow {
            r.add_answer(DURING, &s.await.unwrap());
        }
        let code = tokio::task::spawn_blocking(move || {
            let code = cc.proc.wait_exit(15.0);
            (code, cc)
        })
        .await
        .unwrap();
        exits.push(code.0);
    }
    up.set_delay(Duration::ZERO);
    r.fact(
        "rounds",
        format!("{} single + 1 with 8 in flight", scale.sigterm_rounds),
    );
    r.fact("exit_codes", format!("{exits:?}"));
    r.standard_goals(true);
    r.goal(
        "the process exits 0 after draining",
        exits.iter().all(|c| *c == Some(0)),
        format!("{exits:?}"),
    );
    r
}

/// Config variants a SIGHUP switches between: both valid, differing in keys
/// that reload without a restart. The third is invalid and must be refused
/// while the previous config keeps serving.
fn hup_variant(i: usize) -> &'static str {
    match i % 5 {
        4 => "[identity\nttl_secs = \"not a number\"\n",
        n if n % 2 == 0 => "[identity]\nttl_secs = 60\n[refresh_ahead]\nhot_hits = 10\n",
        _ => "[identity]\nttl_secs = 61\n[refresh_ahead]\nhot_hits = 12\n",
    }
}

/// SIGHUPs (every 100 ms, the config file rewritten each time, one in five
/// invalid) under load. Goals: 0 non-200, 0 wrong-user, still serving after.
pub async fn sighup_under_load(bin: &Path, scale: &Scale) -> Report {
    let up = Upstream::start().await;
    let cc = Chartcache::start(bin, &up.url(), hup_variant(0)).await;
    let load = Load::start(scale.load(&[cc.url()]));
    sleep(scale.before).await;
    load.set_phase(DURING);
    for i in 1..=scale.sighups {
        cc.write_config(hup_variant(i));
        cc.proc.signal(libc::SIGHUP);
        sleep(Duration::from_millis(100)).await;
    }
    cc.write_config(hup_variant(0));
    cc.proc.signal(libc::SIGHUP);
    load.set_phase(AFTER);
    sleep(scale.after).await;
    let samples = load.finish().await;
    let log = cc.log();
    let mut r = Report::new("sighup_under_load");
    r.add(&samples);
    r.fact("sighups", scale.sighups + 1);
    r.fact(
        "reloaded (log)",
        log.matches("configuration reloaded").count(),
    );
    r.fact(
        "refused (log)",
        log.matches("configuration reload failed").count(),
    );
    r.standard_goals(true);
    let mut cc = cc;
    r.goal("still running", cc.proc.exited().is_none(), "");
    r
}
