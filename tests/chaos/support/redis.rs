//! Real `redis-server` processes (standalone, replicas, sentinels) on free
//! loopback ports, and a minimal blocking RESP client for the scenario's own
//! checks (ROLE, DBSIZE, SENTINEL queries). Never touches port 6379.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use super::procs::{Proc, TempDir, free_port};

/// A RESP reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Reply::Simple(s) | Reply::Bulk(Some(s)) => Some(s),
            _ => None,
        }
    }
    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(Some(v)) => v,
            _ => &[],
        }
    }
}

fn read_reply(r: &mut impl BufRead, depth: usize) -> Result<Reply, String> {
    if depth > 8 {
        return Err("reply nested too deep".into());
    }
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let num = || {
        rest.parse::<i64>()
            .map_err(|_| format!("bad RESP line {line:?}"))
    };
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(num()?),
        "$" => {
            let n = num()?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let n = (n as usize).min(64 << 20);
                let mut buf = vec![0u8; n + 2];
                r.read_exact(&mut buf).map_err(|e| e.to_string())?;
                buf.truncate(n);
                Reply::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        }
        "*" => {
            let n = num()?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let mut v = Vec::new();
                for _ in 0..n.min(100_000) {
                    v.push(read_reply(r, depth + 1)?);
                }
                Reply::Array(Some(v))
            }
        }
        _ => return Err(format!("bad RESP line {line:?}")),
    })
}

/// One command on a fresh connection to `127.0.0.1:port`, 1 s deadlines.
pub fn cmd(port: u16, args: &[&str]) -> Result<Reply, String> {
    let addr = (Ipv4Addr::LOCALHOST, port).into();
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_millis(300)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok();
    s.set_write_timeout(Some(Duration::from_secs(1))).ok();
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(out.as_bytes()).map_err(|e| e.to_string())?;
    read_reply(&mut BufReader::new(s), 0)
}

/// [`cmd`] off the async runtime's worker threads.
pub async fn cmd_async(port: u16, args: &[&str]) -> Result<Reply, String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        cmd(port, &a)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// One redis-server (or sentinel) process with its own config and directory.
pub struct RedisProc {
    pub port: u16,
    pub proc: Proc,
    conf: String,
    sentinel: bool,
    dir: TempDir,
}

impl RedisProc {
    pub fn server(extra: &[String]) -> RedisProc {
        Self::spawn(extra, false)
    }

    pub fn replica(master: u16) -> RedisProc {
        Self::spawn(&[format!("replicaof 127.0.0.1 {master}")], false)
    }

    /// A sentinel watching `master` as `mymaster`: quorum 2, down after 1 s.
    pub fn sentinel(master: u16) -> RedisProc {
        Self::spawn(
            &[
                format!("sentinel monitor mymaster 127.0.0.1 {master} 2"),
                "sentinel down-after-milliseconds mymaster 1000".into(),
                "sentinel failover-timeout mymaster 3000".into(),
                "sentinel parallel-syncs mymaster 2".into(),
            ],
            true,
        )
    }

    fn spawn(extra: &[String], sentinel: bool) -> RedisProc {
        let dir = TempDir::new(if sentinel { "sentinel" } else { "redis" });
        let port = free_port();
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {}\n",
            dir.path().display()
        );
        if !sentinel {
            conf.push_str("save \"\"\nappendonly no\n");
        }
        for l in extra {
            conf.push_str(l);
            conf.push('\n');
        }
        let proc = Self::launch(&dir, &conf, sentinel);
        let mut p = RedisProc {
            port,
            proc,
            conf,
            sentinel,
            dir,
        };
        p.wait_ready();
        p
    }

    fn launch(dir: &TempDir, conf: &str, sentinel: bool) -> Proc {
        // Sentinels rewrite their file: each launch writes it afresh.
        let path = dir.path().join("redis.conf");
        std::fs::write(&path, conf).unwrap();
        let mut c = Command::new("redis-server");
        c.arg(&path);
        if sentinel {
            c.arg("--sentinel");
        }
        Proc::spawn("redis-server", c, &dir.path().join("redis.log"))
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(code) = self.proc.exited() {
                panic!("redis-server exited ({code}): {}", self.log());
            }
            if matches!(cmd(self.port, &["PING"]), Ok(Reply::Simple(ref s)) if s == "PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "redis-server on {} did not answer: {}",
            self.port,
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL by pid.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Start again on the same port and config (retried while the port lingers).
    pub fn restart(&mut self) {
        self.proc.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.proc = Self::launch(&self.dir, &self.conf, self.sentinel);
            std::thread::sleep(Duration::from_millis(50));
            if self.proc.exited().is_none() {
                self.wait_ready();
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Keys in db 0.
    pub fn dbsize(&self) -> Option<i64> {
        match cmd(self.port, &["DBSIZE"]) {
            Ok(Reply::Int(n)) => Some(n),
            _ => None,
        }
    }
}

/// 1 master, 1 replica, 3 sentinels.
pub struct SentinelSet {
    pub master: RedisProc,
    pub replica: RedisProc,
    pub sentinels: Vec<RedisProc>,
}

impl SentinelSet {
    pub fn start() -> SentinelSet {
        let master = RedisProc::server(&[]);
        let replica = RedisProc::replica(master.port);
        let sentinels: Vec<RedisProc> = (0..3).map(|_| RedisProc::sentinel(master.port)).collect();
        let set = SentinelSet {
            master,
            replica,
            sentinels,
        };
        // Ready when every sentinel knows the replica and the two other sentinels.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = set.sentinels.iter().all(|s| {
                let n = |what| {
                    cmd(s.port, &["SENTINEL", what, "mymaster"])
                        .map(|r| r.items().len())
                        .unwrap_or(0)
                };
                n("replicas") == 1 && n("sentinels") == 2
            });
            if ready {
                return set;
            }
            assert!(
                Instant::now() < deadline,
                "sentinels did not discover the set"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| s.addr()).collect()
    }

    /// `host:port` of the master as the first answering sentinel reports it.
    pub fn reported_master(&self) -> Option<String> {
        for s in &self.sentinels {
            if let Ok(r) = cmd(s.port, &["SENTINEL", "get-master-addr-by-name", "mymaster"]) {
                let it = r.items();
                if let (Some(h), Some(p)) = (
                    it.first().and_then(Reply::as_str),
                    it.get(1).and_then(Reply::as_str),
                ) {
                    return Some(format!("{h}:{p}"));
                }
            }
        }
        None
    }

    /// Wait (bounded) until sentinels report a master other than `old`.
    pub async fn wait_new_master(&self, old: &str, secs: u64) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            let ports: Vec<u16> = self.sentinels.iter().map(|s| s.port).collect();
            let got = tokio::task::spawn_blocking(move || {
                for p in ports {
                    if let Ok(r) = cmd(p, &["SENTINEL", "get-master-addr-by-name", "mymaster"]) {
                        let it = r.items();
                        if let (Some(h), Some(p)) = (
                            it.first().and_then(Reply::as_str),
                            it.get(1).and_then(Reply::as_str),
                        ) {
                            return Some(format!("{h}:{p}"));
                        }
                    }
                }
                None
            })
            .await
            .ok()
            .flatten();
            if let Some(m) = got
                && m != old
            {
                return Some(m);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}
