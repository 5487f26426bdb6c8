//! A real Redis Cluster on loopback for integration tests: 3 masters and 3
//! replicas (`redis-server --cluster-enabled yes` on free ports, joined with
//! `redis-cli --cluster create … --cluster-replicas 1`). Each node is a
//! [`RedisProc`]: killed by pid when dropped, also when a test panics.

#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::{RedisProc, free_port};

/// Cluster node timeout: a killed master is replaced after about this long.
pub const NODE_TIMEOUT_MS: u64 = 1_000;

/// A node as `CLUSTER NODES` lists it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// Slot ranges it serves (`0-5460`), masters only.
    pub slots: Vec<String>,
}

/// Six nodes, three of them masters.
pub struct RedisCluster {
    pub nodes: Vec<RedisProc>,
    /// `requirepass` of every node, if any.
    pub password: Option<String>,
}

impl RedisCluster {
    /// Start 3 masters + 3 replicas and wait until every node reports
    /// `cluster_state:ok` with all slots served. `extra` config lines go to
    /// every node (e.g. `requirepass`, with `masterauth`).
    pub async fn start(extra: &[&str]) -> RedisCluster {
        let timeout = format!("cluster-node-timeout {NODE_TIMEOUT_MS}");
        let nodes: Vec<RedisProc> = (0..6)
            .map(|_| {
                let bus = format!("cluster-port {}", free_port());
                let mut lines = vec![
                    // A replica that has not completed its first sync never
                    // takes over: start it at once.
                    "repl-diskless-sync-delay 0",
                    "cluster-enabled yes",
                    "cluster-config-file nodes.conf",
                    timeout.as_str(),
                    bus.as_str(),
                ];
                lines.extend_from_slice(extra);
                RedisProc::server(&lines)
            })
            .collect();
        let auth = extra
            .iter()
            .find_map(|l| l.strip_prefix("requirepass "))
            .map(|p| p.to_string());
        let mut cmd = Command::new("redis-cli");
        if let Some(p) = &auth {
            cmd.args(["-a", p, "--no-auth-warning"]);
        }
        cmd.arg("--cluster").arg("create");
        for n in &nodes {
            cmd.arg(n.addr());
        }
        let out = cmd
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = RedisCluster {
            nodes,
            password: auth,
        };
        c.wait_ok(Duration::from_secs(20)).await;
        c
    }

    /// `host:port` of every node.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr()).collect()
    }

    /// Wait until every running node reports `cluster_state:ok` and sees
    /// all 16384 slots served.
    pub async fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let mut ok = true;
            for n in &self.nodes {
                if !super::redis_server::ping(n.port) {
                    continue;
                }
                let state = info(&self.url(n.port), "CLUSTER", Some("INFO")).await;
                ok &=
                    state.contains("cluster_state:ok") && state.contains("cluster_slots_ok:16384");
                // Replicas take over only once synced with their master.
                let repl = info(&self.url(n.port), "INFO", Some("replication")).await;
                ok &= repl.contains("role:master") || repl.contains("master_link_status:up");
            }
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ok within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `CLUSTER NODES` as seen by the first node that answers.
    pub async fn node_table(&self) -> Vec<NodeInfo> {
        for n in &self.nodes {
            if !super::redis_server::ping(n.port) {
                continue;
            }
            let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_secs(1),
                redis::Client::open(self.url(n.port))
                    .unwrap()
                    .get_multiplexed_async_connection(),
            )
            .await
            else {
                continue;
            };
            let Ok(text) = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut c)
                .await
            else {
                continue;
            };
            return text.lines().filter_map(parse_node).collect();
        }
        panic!("no cluster node answers");
    }

    /// Index in `nodes` of each master that is up, in `CLUSTER NODES` order.
    pub async fn masters(&self) -> Vec<usize> {
        let table = self.node_table().await;
        table
            .iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .filter_map(|n| self.nodes.iter().position(|p| p.port == n.port))
            .collect()
    }

    /// The node id of `nodes[i]`.
    pub async fn id(&self, i: usize) -> String {
        let port = self.nodes[i].port;
        self.node_table()
            .await
            .into_iter()
            .find(|n| n.port == port)
            .expect("node listed")
            .id
    }

    /// `redis://` url of the node on `port`, with the password.
    pub fn url(&self, port: u16) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{port}"),
            None => format!("redis://127.0.0.1:{port}"),
        }
    }

    /// SIGKILL `nodes[i]`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Move `slots` slots from `nodes[from]` to `nodes[to]` with
    /// `redis-cli --cluster reshard` (blocking: run it off the test's runtime).
    pub fn reshard_command(&self, from: &str, to: &str, slots: u32) -> Command {
        let mut cmd = Command::new("redis-cli");
        if let Some(p) = &self.password {
            cmd.args(["-a", p, "--no-auth-warning"]);
        }
        cmd.arg("--cluster")
            .arg("reshard")
            .arg(self.nodes[0].addr())
            .args(["--cluster-from", from, "--cluster-to", to])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

/// `cmd arg` on the node at `url` as text ("" when it does not answer).
async fn info(url: &str, cmd: &str, arg: Option<&str>) -> String {
    let Ok(client) = redis::Client::open(url) else {
        return String::new();
    };
    let Ok(Ok(mut c)) = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    else {
        return String::new();
    };
    let mut cmd = redis::cmd(cmd);
    if let Some(a) = arg {
        cmd.arg(a);
    }
    tokio::time::timeout(Duration::from_secs(1), cmd.query_async::<String>(&mut c))
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default()
}

/// `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <state> <slots>…`
fn parse_node(line: &str) -> Option<NodeInfo> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    let port = f[1].split('@').next()?.rsplit_once(':')?.1.parse().ok()?;
    let flags = f[2];
    Some(NodeInfo {
        id: f[0].to_string(),
        port,
        master: flags.contains("master"),
        failed: flags
            .split(',')
            .any(|x| x == "fail" || x == "fail?" || x == "noaddr"),
        slots: f[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .map(|s| s.to_string())
            .collect(),
    })
}
