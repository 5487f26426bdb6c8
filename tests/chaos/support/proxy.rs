//! The real `chartcache` binary as a child process: its config file is written
//! to a temp dir (rewritable for SIGHUP reloads), its listeners on free
//! loopback ports, its log kept for failure messages.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};

use super::procs::{Proc, TempDir, free_port};

pub const ADMIN_TOKEN: &str = "chaos-admin-token";

/// How a chartcache process is started (kept for restarts).
struct Launch {
    port: u16,
    admin_port: u16,
    bin: PathBuf,
    upstream: String,
    env: Vec<(String, String)>,
    dir: TempDir,
}

/// A running chartcache process.
pub struct Chartcache {
    pub proc: Proc,
    pub port: u16,
    pub admin_port: u16,
    launch: Launch,
}

impl Chartcache {
    /// Start `bin` in front of `upstream` with `toml` as its config file
    /// (listen addresses, upstream, admin token and logging are set by env),
    /// and wait until it answers.
    pub async fn start(bin: &std::path::Path, upstream: &str, toml: &str) -> Chartcache {
        Self::start_env(bin, upstream, toml, &[]).await
    }

    /// [`Chartcache::start`] with more `CHARTCACHE_*` variables.
    pub async fn start_env(
        bin: &std::path::Path,
        upstream: &str,
        toml: &str,
        env: &[(&str, &str)],
    ) -> Chartcache {
        let dir = TempDir::new("chartcache");
        std::fs::write(dir.path().join("chartcache.toml"), toml).unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let launch = Launch {
            port,
            admin_port,
            bin: bin.to_path_buf(),
            upstream: upstream.to_string(),
            env,
            dir,
        };
        let mut c = Chartcache {
            proc: launch.spawn(),
            port,
            admin_port,
            launch,
        };
        c.wait_ready().await;
        c
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(code) = self.proc.exited() {
                panic!("chartcache exited ({code}): {}", self.log());
            }
            if let Ok((200, _)) = admin(self.admin_port, Method::GET, "/healthz", "").await
                && tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("chartcache did not start: {}", self.log());
    }

    /// Stop (SIGKILL) and start again with the same ports and config.
    pub async fn restart(&mut self) {
        self.proc.kill();
        self.proc = self.launch.spawn();
        self.wait_ready().await;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replace the config file (picked up at the next SIGHUP).
    pub fn write_config(&self, toml: &str) {
        std::fs::write(self.launch.dir.path().join("chartcache.toml"), toml).unwrap();
    }

    /// The process log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.launch.dir.path().join("chartcache.log")).unwrap_or_default()
    }

    /// Log lines at WARN or ERROR, at most `n` of them (for reports).
    pub fn warnings(&self, n: usize) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(n)
            .map(|l| l.chars().take(300).collect())
            .collect()
    }

    /// `POST /purge {"all": true}`: (status, body).
    pub async fn purge_all(&self) -> Result<(u16, String), String> {
        admin(self.admin_port, Method::POST, "/purge", r#"{"all":true}"#).await
    }

    /// The value of a metric line starting with `prefix` (name and labels), summed.
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, text) = admin(self.admin_port, Method::GET, "/metrics", "")
            .await
            .ok()?;
        let mut found = None;
        for l in text.lines().filter(|l| l.starts_with(prefix)) {
            if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }
}

impl Launch {
    fn spawn(&self) -> Proc {
        let mut cmd = Command::new(&self.bin);
        cmd.env("CHARTCACHE_CONFIG", self.dir.path().join("chartcache.toml"))
            .env("CHARTCACHE_LISTEN", format!("127.0.0.1:{}", self.port))
            .env(
                "CHARTCACHE_ADMIN_LISTEN",
                format!("127.0.0.1:{}", self.admin_port),
            )
            .env("CHARTCACHE_UPSTREAM", &self.upstream)
            .env("CHARTCACHE_ADMIN__TOKEN", ADMIN_TOKEN)
            .env("CHARTCACHE_LOG__ACCESS_LOG", "false")
            .env("CHARTCACHE_LOG", "info")
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        Proc::spawn("chartcache", cmd, &self.dir.path().join("chartcache.log"))
    }
}

/// One request to the admin listener, 5 s deadline: (status, body).
pub async fn admin(
    port: u16,
    method: Method,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let fut = async {
        let r = client.request(req).await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let b = r
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&b).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| "admin request timed out".to_string())?
}
