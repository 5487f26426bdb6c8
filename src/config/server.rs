//! The listener sections: `[server]` (the client-facing proxy listener and its
//! limits and threads), `[admin]`, their TLS, and `[log]`.

use serde::{Deserialize, Serialize};

/// The client-facing listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// After SIGTERM, how long in-flight requests may take to finish (seconds).
    pub drain_timeout_secs: u64,
    /// After SIGTERM, keep accepting (while `/readyz` already says 503) for this
    /// many seconds so load balancers stop sending first. 0 when a preStop hook
    /// already waits.
    pub shutdown_delay_secs: u64,
    /// A client must send a complete request head within this time (ms):
    /// from accept for the first request (TLS handshake and protocol
    /// detection included), and for HTTP/1.1 from the end of the previous
    /// response for the next one. Slowloris and silent-socket guard.
    pub header_read_timeout_ms: u64,
    /// A buffered chart-data request body must arrive in full within this
    /// time (ms) of its head; otherwise 408 and the connection is closed.
    pub body_read_timeout_ms: u64,
    /// A connection with no request in flight for this long (ms) is closed,
    /// HTTP/2 with GOAWAY. HTTP/1.1 connections waiting for their next head
    /// are closed sooner by `header_read_timeout_ms`.
    pub idle_timeout_ms: u64,
    /// HTTP/2: send a PING after this long (ms) without frames from the
    /// client, and close the connection when it is not answered within
    /// `http2_keep_alive_timeout_ms`. 0 disables the PINGs.
    pub http2_keep_alive_interval_ms: u64,
    /// HTTP/2: how long (ms) a keep-alive PING may go unanswered.
    pub http2_keep_alive_timeout_ms: u64,
    /// Bytes of chart-data request bodies that may be in the middle of being
    /// received at once, over all connections; requests beyond it get 503.
    pub max_buffered_body_bytes: u64,
    /// Maximum number of request headers.
    pub max_headers: usize,
    /// Maximum total size of the request head (bytes).
    pub max_header_bytes: usize,
    /// Maximum concurrent client connections; above it new connections are refused.
    pub max_connections: usize,
    /// Serve HTTPS with these certificate files (HTTP when absent).
    pub tls: Option<TlsConfig>,
    /// Runtime worker threads; 0 = one per CPU the process may use. A sidecar
    /// next to a Superset pod may want 1, leaving the other cores to Superset.
    /// Read at startup only (a reload does not change it).
    pub worker_threads: usize,
    /// How connections are spread over the worker threads. `per_core` (the
    /// default): each worker runs its own single-threaded runtime, each new
    /// connection goes to the worker with the fewest open ones, and the
    /// connection and the work it spawns stay there, as with nginx's worker
    /// processes. `work_stealing`: one runtime whose idle workers take
    /// tasks from busy ones. Read at startup only.
    pub runtime: RuntimeFlavor,
    /// Let the kernel back this process's heap with 2 MiB transparent huge
    /// pages where the allocator asks for them (Linux). Off by default: the
    /// first touch of each huge page zeroes all 2 MiB, which stalled the first
    /// burst after a start (a cold replica's coalesced followers waited 30 ms
    /// longer), and it rounds memory up. Read at startup only.
    pub transparent_huge_pages: bool,
}

/// `server.runtime`: how the proxy's connections are spread over threads.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeFlavor {
    /// One single-threaded runtime per worker, each serving the connections handed to it.
    PerCore,
    /// One multi-threaded, work-stealing runtime.
    WorkStealing,
}

/// TLS for a listener: PEM files, re-read when they change on disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// PEM CA bundle: when set, clients must present a certificate issued by it.
    pub client_ca_file: Option<String>,
    /// How often (at most) the files' modification times are checked (ms); a
    /// changed pair is loaded for new handshakes, open connections keep theirs.
    pub reload_check_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: None,
            reload_check_ms: 5_000,
        }
    }
}

impl ServerConfig {
    /// `worker_threads`, with 0 resolved to the CPUs this process may use
    /// (affinity and cgroup CPU limits count).
    pub fn workers(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            drain_timeout_secs: 25,
            shutdown_delay_secs: 0,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            http2_keep_alive_interval_ms: 20_000,
            http2_keep_alive_timeout_ms: 10_000,
            max_buffered_body_bytes: 64 * 1024 * 1024,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            tls: None,
            worker_threads: 0,
            runtime: RuntimeFlavor::PerCore,
            transparent_huge_pages: false,
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token for `/purge` and `/explain`. Prefer `CHARTCACHE_ADMIN__TOKEN`
    /// or `token_file`; never commit it. Without a token those endpoints answer 401.
    /// Never serialized, so `check-config` does not print it.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// File holding the admin token (e.g. a mounted Kubernetes Secret).
    pub token_file: Option<String>,
    /// Serve the admin listener over HTTPS; with `client_ca_file`, only
    /// clients holding a certificate from that CA can connect at all.
    pub tls: Option<TlsConfig>,
}

impl AdminConfig {
    /// The effective admin token, reading `token_file` when set.
    pub fn resolve_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()));
        }
        if let Some(f) = &self.token_file {
            let t = std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("admin.token_file {f}: {e}"))?;
            return Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()));
        }
        Ok(None)
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `chartcache=debug,info`.
    pub level: String,
    /// One line per request at `info` (target `access`).
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
            access_log: true,
        }
    }
}
