//! Real `redis-server` processes for integration tests: standalone servers,
//! replicas and sentinels (`redis-server --sentinel`) on free loopback ports,
//! each with its own config file in a temp dir. Every process is killed by pid
//! when its handle is dropped, also when a test panics. Never uses port 6379.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One redis-server (or sentinel) process.
pub struct RedisProc {
    pub port: u16,
    conf: String,
    sentinel: bool,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A free loopback port (bound once by the OS, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind port 0");
    let p = l.local_addr().unwrap().port();
    assert_ne!(p, 6379);
    p
}

impl RedisProc {
    /// A standalone server; `extra` are additional config lines.
    pub fn server(extra: &[&str]) -> RedisProc {
        Self::spawn(extra, false)
    }

    /// A replica of `master_port`.
    pub fn replica(master_port: u16, extra: &[&str]) -> RedisProc {
        let line = format!("replicaof 127.0.0.1 {master_port}");
        let mut lines = vec![line.as_str()];
        lines.extend_from_slice(extra);
        Self::spawn(&lines, false)
    }

    /// A sentinel monitoring `master_port` as `mymaster` (quorum 2, fast failover).
    pub fn sentinel(master_port: u16) -> RedisProc {
        let monitor = format!("sentinel monitor mymaster 127.0.0.1 {master_port} 2");
        Self::spawn(
            &[
                &monitor,
                "sentinel down-after-milliseconds mymaster 1000",
                "sentinel failover-timeout mymaster 3000",
                "sentinel parallel-syncs mymaster 2",
            ],
            true,
        )
    }

    fn spawn(extra: &[&str], sentinel: bool) -> RedisProc {
        let mut dir = tempfile::tempdir().unwrap();
        let mut last = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let mut conf = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                 dir {}\nlogfile {}/redis.log\n",
                dir.path().display(),
                dir.path().display()
            );
            if !sentinel {
                conf.push_str("save \"\"\nappendonly no\n");
            }
            for l in extra {
                conf.push_str(l);
                conf.push('\n');
            }
            let mut p = RedisProc {
                port,
                conf,
                sentinel,
                dir,
                child: None,
            };
            match p.launch() {
                Ok(()) => return p,
                Err(e) => {
                    last = e;
                    dir = p.take_dir();
                }
            }
        }
        panic!("redis-server did not start: {last}");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        self.kill();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.path().join("redis.conf")
    }

    fn launch(&mut self) -> Result<(), String> {
        // Sentinels rewrite their config file, so each run gets a fresh one.
        std::fs::write(self.conf_path(), &self.conf).unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.arg(self.conf_path());
        if self.sentinel {
            cmd.arg("--sentinel");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning redis-server: {e}"))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Poll until the process answers PING (or NOAUTH: it is up), bounded.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..400 {
            if let Some(c) = &mut self.child
                && let Ok(Some(st)) = c.try_wait()
            {
                return Err(format!("exited with {st}: {}", self.log()));
            }
            if ping(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(format!("no answer on port {}: {}", self.port, self.log()))
    }

    /// The server log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// `redis://127.0.0.1:port` (add credentials yourself).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kill the process (SIGKILL by pid) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port with the same config.
    pub fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for _ in 0..20 {
            match self.launch() {
                Ok(()) => return,
                // The port may linger briefly after the kill.
                Err(e) => {
                    last = e;
                    self.kill();
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!("redis-server did not restart: {last}");
    }

    /// Send `signal` (e.g. "STOP", "CONT") to the process by pid: a master
    /// frozen with STOP keeps its sockets open and answers nothing.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(st.success(), "kill -{signal} {pid}");
    }

    /// Is the process running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Does something answer PING on `port`? `+PONG` or a NOAUTH error both mean up.
pub fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"),
        _ => false,
    }
}

/// An async connection for assertions (ROLE, KEYS, TTL).
pub async fn client(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Connections the server has open (`CLIENT LIST`), `c`'s own included:
/// keep `c` open across counts so that it is counted once.
pub async fn clients(c: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(c)
        .await
        .unwrap();
    list.lines().count()
}

/// `ROLE` of the server at `url`: "master", "slave" or "sentinel".
pub async fn role(url: &str) -> String {
    let v: redis::Value = redis::cmd("ROLE")
        .query_async(&mut client(url).await)
        .await
        .unwrap();
    match v {
        redis::Value::Array(items) => redis::from_redis_value(items[0].clone()).unwrap(),
        other => panic!("ROLE: {other:?}"),
    }
}

/// 1 master, 2 replicas, 3 sentinels.
pub struct SentinelSet {
    pub master: RedisProc,
    pub replicas: Vec<RedisProc>,
    pub sentinels: Vec<RedisProc>,
}

impl SentinelSet {
    pub async fn start() -> SentinelSet {
        let master = RedisProc::server(&[]);
        let replicas: Vec<RedisProc> = (0..2)
            .map(|_| RedisProc::replica(master.port, &[]))
            .collect();
        let sentinels: Vec<RedisProc> = (0..3).map(|_| RedisProc::sentinel(master.port)).collect();
        let set = SentinelSet {
            master,
            replicas,
            sentinels,
        };
        // Ready when every sentinel sees both replicas and the other sentinels.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut ok = true;
            for s in &set.sentinels {
                let mut c = client(&s.url()).await;
                let r: Vec<redis::Value> = redis::cmd("SENTINEL")
                    .arg("replicas")
                    .arg("mymaster")
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                let n: Vec<redis::Value> = redis::cmd("SENTINEL")
                    .arg("sentinels")
                    .arg("mymaster")
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                ok &= r.len() == 2 && n.len() == 2;
            }
            if ok {
                return set;
            }
            assert!(
                Instant::now() < deadline,
                "sentinels did not discover the set"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `host:port` of each sentinel.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| s.addr()).collect()
    }

    /// The master address the first reachable sentinel reports.
    pub async fn reported_master(&self) -> Option<(String, u16)> {
        for s in &self.sentinels {
            let mut c = client(&s.url()).await;
            if let Ok(Some(a)) = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg("mymaster")
                .query_async::<Option<(String, u16)>>(&mut c)
                .await
            {
                return Some(a);
            }
        }
        None
    }
}
