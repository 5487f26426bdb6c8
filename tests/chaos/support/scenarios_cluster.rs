//! Redis Cluster faults: a master killed (SIGKILL) and slots resharded with
//! `redis-cli --cluster reshard`, under load, through two Redis-only
//! chartcache replicas (`tiered = false`: every answer reads the cluster).
//! The cluster is 3 masters + 3 replicas on loopback.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::load::{AFTER, DURING, Load};
use super::proxy::Chartcache;
use super::redis::{RedisProc, Reply, cmd, cmd_async};
use super::upstream::Upstream;
use super::{Report, Scale, procs::free_port, sleep};

/// Six `cluster-enabled` servers joined as 3 masters + 3 replicas.
struct Cluster {
    nodes: Vec<RedisProc>,
}

/// `<id> <ip:port@bus> <flags> … <slots>` rows of `CLUSTER NODES`.
struct Row {
    id: String,
    port: u16,
    master: bool,
    failed: bool,
    slots: u32,
}

impl Cluster {
    fn start() -> Cluster {
        let nodes: Vec<RedisProc> = (0..6)
            .map(|_| {
                RedisProc::server(&[
                    "cluster-enabled yes".into(),
                    "cluster-config-file nodes.conf".into(),
                    "cluster-node-timeout 1000".into(),
                    format!("cluster-port {}", free_port()),
                    "repl-diskless-sync-delay 0".into(),
                ])
            })
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| n.addr()))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli");
        assert!(out.status.success(), "cluster create failed");
        let c = Cluster { nodes };
        assert!(c.wait_ok(20), "cluster not ok");
        c
    }

    /// Every node that answers reports `cluster_state:ok`, all slots, and
    /// (replicas) a synced link to its master.
    fn wait_ok(&self, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            let ok = self.nodes.iter().all(|n| {
                let Ok(info) = cmd(n.port, &["CLUSTER", "INFO"]) else {
                    return true; // down: not asked
                };
                let info = info.as_str().unwrap_or("").to_string();
                let repl = cmd(n.port, &["INFO", "replication"])
                    .ok()
                    .and_then(|r| r.as_str().map(str::to_string))
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            });
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn rows(&self) -> Vec<Row> {
        for n in &self.nodes {
            if let Ok(Reply::Bulk(Some(text))) = cmd(n.port, &["CLUSTER", "NODES"]) {
                return text.lines().filter_map(row).collect();
            }
        }
        Vec::new()
    }

    fn toml(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.addr()))
            .collect();
        format!(
            "[redis]\ncluster_nodes = [{}]\ntiered = false\nbreaker_failures = 3\n\
             breaker_cooldown_ms = 200\n",
            seeds.join(", ")
        )
    }
}

fn row(line: &str) -> Option<Row> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    let port = f[1].split('@').next()?.rsplit_once(':')?.1.parse().ok()?;
    let slots = f[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            Some(b.parse::<u32>().ok()? + 1 - a.parse::<u32>().ok()?)
        })
        .sum();
    Some(Row {
        id: f[0].to_string(),
        port,
        master: f[2].contains("master"),
        failed: f[2].split(',').any(|x| x == "fail" || x == "fail?"),
        slots,
    })
}

async fn start_cluster() -> Cluster {
    tokio::task::spawn_blocking(Cluster::start).await.unwrap()
}

/// Keys on the node on `port` (-1: no answer).
async fn dbsize(port: u16) -> i64 {
    match cmd_async(port, &["DBSIZE"]).await {
        Ok(Reply::Int(n)) => n,
        _ => -1,
    }
}

/// A master killed under load; its replica takes over after the node
/// timeout. Goals: 0 non-200, 0 wrong-user, a replica promoted, and the
/// promoted node holds entries afterwards.
pub async fn cluster_master_killed(bin: &Path, scale: &Scale) -> Report {
    let mut cluster = start_cluster().await;
    let up = Upstream::start().await;
    let toml = cluster.toml();
    let a = Chartcache::start(bin, &up.url(), &toml).await;
    let b = Chartcache::start(bin, &up.url(), &toml).await;
    let load = Load::start(scale.load(&[a.url(), b.url()]));
    sleep(scale.before).await;

    load.set_phase(DURING);
    let rows = cluster.rows();
    let victim = rows
        .iter()
        .find(|r| r.master && r.slots > 0)
        .map(|r| r.port);
    let victim_id = rows
        .iter()
        .find(|r| Some(r.port) == victim)
        .map(|r| r.id.clone());
    if let Some(i) = cluster.nodes.iter().position(|n| Some(n.port) == victim) {
        cluster.nodes[i].kill();
    }
    let t0 = Instant::now();
    let cluster = tokio::task::spawn_blocking(move || {
        let ok = cluster.wait_ok(30);
        (cluster, ok)
    })
    .await
    .unwrap();
    let (cluster, ok) = cluster;
    let failover = t0.elapsed();
    sleep(scale.during).await;
    load.set_phase(AFTER);
    sleep(scale.after).await;
    let samples = load.finish().await;

    // The replica that replaced the victim: a master with slots now.
    let was_master = |id: &str| rows.iter().any(|x| x.id == id && x.master && x.slots > 0);
    let promoted = cluster
        .rows()
        .into_iter()
        .find(|r| r.master && !r.failed && r.slots > 0 && !was_master(&r.id));
    let mut r = Report::new("cluster_master_killed");
    r.add(&samples);
    r.fact("failover_ms (cluster_state ok again)", failover.as_millis());
    r.fact("killed", format!("{victim:?} {victim_id:?}"));
    let masters = cluster
        .rows()
        .iter()
        .filter(|r| r.master && !r.failed && r.slots > 0)
        .count();
    r.standard_goals(true);
    r.goal(
        "a replica took over the killed master's slots",
        ok && masters == 3,
        format!("{failover:?}, {masters} masters serving"),
    );
    let keys = match &promoted {
        Some(p) => dbsize(p.port).await,
        None => -1,
    };
    r.goal(
        "new entries are written to the promoted master",
        keys > 0,
        format!("{keys} keys on it"),
    );
    r.fact("chartcache_warnings", a.warnings(3).join(" | "));
    r
}

/// 2 000 slots moved between two masters with `redis-cli --cluster
/// reshard` under load. Goals: 0 non-200, 0 wrong-user, the slots moved.
pub async fn cluster_reshard(bin: &Path, scale: &Scale) -> Report {
    let cluster = start_cluster().await;
    let up = Upstream::start().await;
    let toml = cluster.toml();
    let a = Chartcache::start(bin, &up.url(), &toml).await;
    let b = Chartcache::start(bin, &up.url(), &toml).await;
    let load = Load::start(scale.load(&[a.url(), b.url()]));
    sleep(scale.before).await;

    load.set_phase(DURING);
    let rows = cluster.rows();
    let masters: Vec<&Row> = rows.iter().filter(|r| r.master && r.slots > 0).collect();
    let (from, to) = (masters[0].id.clone(), masters[1].id.clone());
    let before_to = masters[1].slots;
    let seed = cluster.nodes[0].addr();
    let t0 = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("redis-cli")
            .args(["--cluster", "reshard", &seed])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", "2000", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
    .await
    .unwrap();
    let took = t0.elapsed();
    sleep(scale.during).await;
    load.set_phase(AFTER);
    sleep(scale.after).await;
    let samples = load.finish().await;

    let to_now = cluster
        .rows()
        .into_iter()
        .find(|r| r.id == masters[1].id)
        .map(|r| r.slots)
        .unwrap_or(0);
    let mut r = Report::new("cluster_reshard");
    r.add(&samples);
    r.fact("reshard_ms", took.as_millis());
    r.standard_goals(true);
    r.goal(
        "2000 slots moved",
        out && to_now == before_to + 2_000,
        format!("{before_to} → {to_now} slots"),
    );
    r.fact("chartcache_warnings", a.warnings(3).join(" | "));
    if std::env::var("CLUSTER_DEBUG").is_ok() {
        eprintln!("A:\n{}\nB:\n{}", a.log(), b.log());
    }
    drop(b);
    r
}
