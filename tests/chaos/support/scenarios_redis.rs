//! Redis faults: the Sentinel master killed, the master frozen (SIGSTOP: a
//! hung host, which sends no RST), a standalone Redis killed and restarted.

use std::path::Path;
use std::time::{Duration, Instant};

use super::load::{self, AFTER, DURING, Load};
use super::proxy::Chartcache;
use super::redis::{RedisProc, Reply, SentinelSet, cmd_async};
use super::upstream::Upstream;
use super::{Report, Scale, sleep};

fn sentinel_toml(set: &SentinelSet, tiered: bool) -> String {
    let list: Vec<String> = set
        .sentinel_addrs()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    format!(
        "[redis]\nsentinels = [{}]\nmaster_name = \"mymaster\"\ntiered = {tiered}\n\
         breaker_failures = 3\nbreaker_cooldown_ms = 200\n",
        list.join(", ")
    )
}

async fn start_set() -> SentinelSet {
    tokio::task::spawn_blocking(SentinelSet::start)
        .await
        .unwrap()
}

/// Keys in db 0 of the server at `addr` (`host:port`).
async fn dbsize(addr: &str) -> i64 {
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    match cmd_async(port, &["DBSIZE"]).await {
        Ok(Reply::Int(n)) => n,
        _ => -1,
    }
}

/// Master killed (SIGKILL) under load; Redis is the only store (`tiered =
/// false`), so every answer depends on the failover. Goals: 0 non-200,
/// 0 wrong-user, and new entries land on the promoted master.
pub async fn sentinel_master_killed(bin: &Path, scale: &Scale) -> Report {
    let mut set = start_set().await;
    let up = Upstream::start().await;
    let cc = Chartcache::start(bin, &up.url(), &sentinel_toml(&set, false)).await;
    let load = Load::start(scale.load(&[cc.url()]));
    sleep(scale.before).await;

    load.set_phase(DURING);
    let old = set.master.addr();
    set.master.kill();
    let t0 = Instant::now();
    let new = set.wait_new_master(&old, 30).await;
    let failover = t0.elapsed();
    sleep(scale.during).await;
    load.set_phase(AFTER);
    let keys_before = match &new {
        Some(m) => dbsize(m).await,
        None => -1,
    };
    // Keys never asked before: stored now, on the new master.
    let c = load::client();
    let mut fresh = Vec::new();
    for i in 0..3 {
        fresh.push(
            load::chart(
                &c,
                &cc.url(),
                i,
                2_000_000 + i as u64,
                Duration::from_secs(10),
            )
            .await,
        );
    }
    sleep(scale.after).await;
    let samples = load.finish().await;

    let mut r = Report::new("sentinel_master_killed");
    r.add(&samples);
    for a in &fresh {
        r.add_answer(AFTER, a);
    }
    r.fact("failover_ms (sentinel promotion)", failover.as_millis());
    r.fact("new_master", new.clone().unwrap_or_default());
    let keys_after = match &new {
        Some(m) => dbsize(m).await,
        None => -1,
    };
    r.fact("keys_on_new_master", keys_after);
    r.standard_goals(true);
    r.goal(
        "sentinels promoted a replica",
        new.is_some(),
        format!("{failover:?}"),
    );
    r.goal(
        "new entries are written to the new master",
        keys_after > keys_before && keys_before >= 0,
        format!("{keys_before} → {keys_after}"),
    );
    r.fact("chartcache_warnings", cc.warnings(3).join(" | "));
    r
}

/// Master frozen (SIGSTOP) under load, two tiered replicas A and B. After
/// the failover a purge on A must reach B: B must not keep answering an
/// entry it cached before the purge (its pub/sub subscriptions have to move
/// to the new master).
pub async fn sentinel_master_frozen(bin: &Path, scale: &Scale) -> Report {
    let set = start_set().await;
    let up = Upstream::start().await;
    let toml = sentinel_toml(&set, true);
    let a = Chartcache::start(bin, &up.url(), &toml).await;
    let b = Chartcache::start(bin, &up.url(), &toml).await;
    let load = Load::start(scale.load(&[a.url(), b.url()]));
    let mut r = Report::new("sentinel_master_frozen");

    // A key outside the load's range, cached in B's memory tier.
    let probe_key = 1_000_000;
    let c = load::client();
    let t = Duration::from_secs(10);
    let first = load::chart(&c, &b.url(), 0, probe_key, t).await;
    let second = load::chart(&c, &b.url(), 0, probe_key, t).await;
    r.add_answer(0, &first);
    r.add_answer(0, &second);
    sleep(scale.before).await;

    load.set_phase(DURING);
    let old = set.master.addr();
    set.master.proc.stop();
    let t0 = Instant::now();
    let new = set.wait_new_master(&old, 30).await;
    let failover = t0.elapsed();
    // Time for both replicas to follow the switch.
    sleep(scale.during.max(Duration::from_secs(3))).await;
    let purge = a.purge_all().await;
    sleep(Duration::from_millis(500)).await;
    load.set_phase(AFTER);
    let after_purge = load::chart(&c, &b.url(), 0, probe_key, t).await;
    r.add_answer(AFTER, &after_purge);
    let numsub = match &new {
        Some(m) => {
            let port: u16 = m
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            cmd_async(
                port,
                &["PUBSUB", "NUMSUB", "chartcache:inv", "chartcache:rel"],
            )
            .await
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|e| e)
        }
        None => "no new master".into(),
    };
    sleep(scale.after).await;
    let samples = load.finish().await;
    set.master.proc.cont();

    r.add(&samples);
    r.fact("failover_ms (sentinel promotion)", failover.as_millis());
    r.fact("purge_on_a", format!("{purge:?}"));
    r.fact("pubsub_numsub_on_new_master", numsub);
    r.fact(
        "probe on B after purge",
        format!(
            "{} query_no {:?} (before purge {:?})",
            after_purge.cache_status, after_purge.query_no, second.query_no
        ),
    );
    r.standard_goals(true);
    r.goal(
        "sentinels promoted a replica",
        new.is_some(),
        format!("{failover:?}"),
    );
    let purged = after_purge.status == 200 && after_purge.query_no != second.query_no;
    r.goal(
        "a purge on A after the failover reaches B",
        purged,
        format!(
            "B answered {:?} ({})",
            after_purge.query_no, after_purge.cache_status
        ),
    );
    r.fact("chartcache_warnings", b.warnings(3).join(" | "));
    r
}

/// A standalone Redis killed (SIGKILL) and restarted on the same port under
/// load. Goals: 0 non-200, and entries are written to Redis again soon after.
pub async fn redis_killed_restarted(bin: &Path, scale: &Scale) -> Report {
    let mut redis = tokio::task::spawn_blocking(|| RedisProc::server(&[]))
        .await
        .unwrap();
    let up = Upstream::start().await;
    let toml = format!(
        "[redis]\nurl = \"{}\"\ntiered = false\nbreaker_failures = 3\nbreaker_cooldown_ms = 200\n",
        redis.url()
    );
    let cc = Chartcache::start(bin, &up.url(), &toml).await;
    let load = Load::start(scale.load(&[cc.url()]));
    sleep(scale.before).await;

    load.set_phase(DURING);
    redis.kill();
    sleep(scale.during).await;
    let mut redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    let t0 = Instant::now();
    let addr = redis.addr();
    let mut resumed = None;
    while t0.elapsed() < Duration::from_secs(15) {
        if dbsize(&addr).await > 0 {
            resumed = Some(t0.elapsed());
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    load.set_phase(AFTER);
    sleep(scale.after).await;
    let samples = load.finish().await;

    let mut r = Report::new("redis_killed_restarted");
    r.add(&samples);
    r.fact("redis_down_ms", scale.during.as_millis());
    r.fact(
        "caching_resumed_ms (first entry in the restarted Redis)",
        resumed
            .map(|d| d.as_millis().to_string())
            .unwrap_or("never".into()),
    );
    r.standard_goals(true);
    r.goal(
        "entries are written after the restart",
        resumed.is_some(),
        format!("{resumed:?}"),
    );
    redis.kill();
    r
}
