//! Configuration: serde structs with documented defaults, loaded from one TOML
//! file, overridden by `CHARTCACHE_*` environment variables (nested keys joined
//! with `__`, e.g. `CHARTCACHE_MEMORY__MAX_BYTES=1073741824`) and then by CLI
//! flags. `validate()` rejects configurations that would misbehave at runtime.
//!
//! `config/chartcache.toml` documents every key; keep the two in sync.

use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

mod env;
pub mod redis;
pub mod redis_cluster;
mod rules;
mod server;

pub use redis::{RedisConfig, RedisConfigError};
pub use rules::{IdentityKind, RuleConfig, ScopeKind, TierConfig, TimeRangeClass};
pub use server::{AdminConfig, LogConfig, RuntimeFlavor, ServerConfig, TlsConfig};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`, `/purge`, `/explain`).
    /// Loopback by default: the admin surface is not for the public.
    pub admin_listen: SocketAddr,
    /// Superset base URL (`http://` or `https://`), e.g. `http://superset:8088`.
    pub upstream: String,
    pub routes: RoutesConfig,
    pub identity: IdentityConfig,
    pub cache: CacheConfig,
    pub memory: MemoryConfig,
    pub upstream_client: UpstreamConfig,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// Shared Redis cache (off unless `redis.url` or `redis.sentinels` is set).
    pub redis: RedisConfig,
    /// Refreshing hot entries before they expire.
    pub refresh_ahead: RefreshAheadConfig,
    /// Named TTL tiers. The `default_tier` must be one of them.
    pub tiers: Vec<TierConfig>,
    /// Tier used when no rule matches.
    pub default_tier: String,
    /// Ordered rules; the first match picks a tier or `bypass`.
    pub rules: Vec<RuleConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().unwrap(),
            admin_listen: "127.0.0.1:9090".parse().unwrap(),
            upstream: String::new(),
            routes: RoutesConfig::default(),
            identity: IdentityConfig::default(),
            cache: CacheConfig::default(),
            memory: MemoryConfig::default(),
            upstream_client: UpstreamConfig::default(),
            server: ServerConfig::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            redis: Default::default(),
            refresh_ahead: RefreshAheadConfig::default(),
            tiers: TierConfig::defaults(),
            default_tier: "standard".into(),
            rules: default_rules(),
        }
    }
}

/// The rules that apply without a config file, the same as the two in
/// `config/chartcache.toml`: closed time ranges are kept long, and Superset's
/// debugging views (samples, query, drill detail) are never cached. A config
/// file's `rules` replace them (`rules = []` for none). A built-in rule whose
/// tier a config's own `tiers` leave out is skipped (`Policy::from_config`).
pub(crate) fn default_rules() -> Vec<RuleConfig> {
    vec![
        RuleConfig {
            name: "closed-time-ranges".into(),
            time_range: vec![TimeRangeClass::AbsolutePast],
            tier: Some("historical".into()),
            ..RuleConfig::default()
        },
        RuleConfig {
            name: "samples-uncached".into(),
            result_type: vec!["samples".into(), "query".into(), "drill_detail".into()],
            bypass: true,
            ..RuleConfig::default()
        },
    ]
}

/// Which Superset routes are cache candidates. Everything else is forwarded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutesConfig {
    /// `POST /api/v1/chart/data` (JSON query context).
    pub chart_data: bool,
    /// `GET /api/v1/chart/{id}/data/` (saved query context).
    pub chart_data_get: bool,
    /// `GET|POST /superset/explore_json/` (legacy charts).
    pub explore_json: bool,
    /// Also store CSV/XLSX exports (`result_format: csv|xlsx`). Off by default:
    /// exports are rare, large and usually wanted fresh.
    pub store_exports: bool,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        Self {
            chart_data: true,
            chart_data_get: true,
            explore_json: true,
            store_exports: false,
        }
    }
}

/// How credentials are resolved to principals.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// How long a credential → principal mapping is trusted (seconds). This bounds
    /// how long a revoked credential can still get cache hits.
    pub ttl_secs: u64,
    /// How long a credential Superset refused (401/403/422) stays refused (seconds).
    pub negative_ttl_secs: u64,
    /// Name of Superset's session cookie (`SESSION_COOKIE_NAME`).
    pub session_cookie: String,
    /// Header carrying embedded-dashboard guest tokens.
    pub guest_token_header: String,
    /// Superset endpoint that names the principal of a credential.
    pub me_path: String,
    /// Maximum number of cached credential mappings.
    pub max_entries: u64,
    /// Superset endpoint that lists the roles of a credential (for `scope = "roles"`).
    pub roles_path: String,
    /// Name of the environment variable holding Superset's JWT signing key
    /// (`JWT_SECRET_KEY`, which defaults to `SECRET_KEY`). When set (or
    /// `jwt_secret_file`), Bearer access tokens are verified locally (HS256,
    /// signature, `exp`, `nbf`, `type == "access"`) and `sub` is the user,
    /// skipping `/api/v1/me/`. Only used when no session cookie is present.
    pub jwt_secret_env: Option<String>,
    /// File holding Superset's JWT signing key (alternative to `jwt_secret_env`).
    pub jwt_secret_file: Option<String>,
    /// Name of the environment variable holding Superset's
    /// `GUEST_TOKEN_JWT_SECRET`. When set (or `guest_token_secret_file`), guest
    /// tokens are verified and their grant (`user`, `resources`, `rls_rules`)
    /// is the scope; without it the scope is the token itself.
    pub guest_token_secret_env: Option<String>,
    /// File holding the guest-token secret.
    pub guest_token_secret_file: Option<String>,
    /// Expected `aud` of guest tokens: Superset's `GUEST_TOKEN_JWT_AUDIENCE`
    /// (when unset there, the base URL Superset generated the token under).
    /// Required with a guest-token secret.
    pub guest_token_audience: Option<String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 60,
            negative_ttl_secs: 5,
            session_cookie: "session".into(),
            guest_token_header: "X-GuestToken".into(),
            me_path: "/api/v1/me/".into(),
            max_entries: 100_000,
            roles_path: "/api/v1/me/roles/".into(),
            jwt_secret_env: None,
            jwt_secret_file: None,
            guest_token_secret_env: None,
            guest_token_secret_file: None,
            guest_token_audience: None,
        }
    }
}

/// Cache behaviour independent of the backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Largest response body (uncompressed bytes) that is stored.
    pub max_object_bytes: u64,
    /// Largest request body read for fingerprinting. Larger bodies are streamed
    /// to Superset uncached.
    pub max_request_body_bytes: u64,
    /// Memory for remembering canonical forms of recently seen request bodies,
    /// so repeated dashboard requests skip JSON parsing. Size it to the hot set:
    /// the request body plus about 256 bytes per distinct chart request (1.2–2
    /// KB for typical chart-data bodies, so 32 MiB holds roughly 16 000–25 000).
    pub canonical_memo_bytes: u64,
    /// Memory for copies of recently served entries in an encoding the entry
    /// lacks, each made once per entry: uncompressed, for clients that accept
    /// neither zstd nor gzip; gzip (with `store_gzip`), for gzip-only clients
    /// of entries read from Redis without an L1 (`redis.tiered = false`).
    /// 0 disables the copies: such hits then decompress every time, and
    /// gzip-only clients of those entries get the uncompressed body.
    pub raw_copy_bytes: u64,
    /// zstd level used once per stored entry.
    pub zstd_level: i32,
    /// Also keep a gzip copy of each entry so gzip-only clients are served
    /// without per-request compression (in memory; Redis holds zstd only, and
    /// replicas make the gzip copy when they first serve the entry).
    pub store_gzip: bool,
    /// How long followers wait for a coalesced leader before fetching themselves (ms).
    pub coalesce_wait_ms: u64,
    /// Async queries (GLOBAL_ASYNC_QUERIES): how long identical chart-data
    /// POSTs of one scope wait for the data of the job a `202` started
    /// (locally and on other replicas, through the fetch lock) before they
    /// are forwarded to Superset themselves (ms). 0 turns the wait off.
    pub async_wait_ms: u64,
    /// Async queries: jobs remembered at most (job → originating POST), so
    /// that their data can fill the POST's entry. Beyond it, new jobs are
    /// passed through unremembered.
    pub async_max_jobs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_object_bytes: 32 * 1024 * 1024,
            max_request_body_bytes: 1024 * 1024,
            canonical_memo_bytes: 32 * 1024 * 1024,
            raw_copy_bytes: 32 * 1024 * 1024,
            zstd_level: 3,
            store_gzip: true,
            coalesce_wait_ms: 60_000,
            async_wait_ms: 30_000,
            async_max_jobs: 10_000,
        }
    }
}

/// The embedded in-memory store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Upper bound of stored bytes (compressed bodies + headers).
    pub max_bytes: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The pooled client that talks to Superset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// TCP (+TLS) connect timeout (ms).
    pub connect_timeout_ms: u64,
    /// Time until Superset's response headers arrive (ms). Chart queries can be slow;
    /// keep it at or above Superset's own `SUPERSET_WEBSERVER_TIMEOUT`.
    pub response_timeout_ms: u64,
    /// Idle pooled connections are closed after this many milliseconds. Keep
    /// it below Superset's keep-alive (gunicorn closes idle connections after
    /// `keepalive` = 2 s by default), so a connection is not picked from the
    /// pool just as Superset closes it.
    pub pool_idle_timeout_ms: u64,
    /// Former spelling of `pool_idle_timeout_ms`, in seconds; when set it wins.
    pub pool_idle_timeout_secs: Option<u64>,
    /// `/readyz` also requires Superset to have answered in the last 10 s (or
    /// to answer a probe of `/health` now). Off by default: in front of a
    /// shared Superset (ingress backend, edge) an unready proxy cannot serve
    /// the stale entries that `stale_if_error` keeps for exactly that outage.
    /// The sidecar overlay turns it on: that pod is useless without its own
    /// Superset. Read on every probe (a reload changes it).
    pub ready_requires_upstream: bool,
    /// Idle pooled connections kept per upstream host.
    pub pool_max_idle_per_host: usize,
    /// Extra PEM CA bundle trusted for `https://` upstreams (besides the webpki roots).
    pub ca_file: Option<String>,
    /// `Host` sent to Superset, and the TLS server name (SNI, certificate
    /// check) of an `https://` upstream, instead of the client's `Host` and
    /// the upstream URL's host: a remote Superset served under its own name
    /// (edge mode). The client's host goes on in `X-Forwarded-Host`.
    pub host_header: Option<String>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 3_000,
            response_timeout_ms: 120_000,
            pool_idle_timeout_ms: 1_500,
            pool_idle_timeout_secs: None,
            ready_requires_upstream: false,
            pool_max_idle_per_host: 256,
            ca_file: None,
            host_header: None,
        }
    }
}

impl UpstreamConfig {
    /// How long a pooled connection may stay idle.
    pub fn pool_idle_timeout(&self) -> std::time::Duration {
        match self.pool_idle_timeout_secs {
            Some(s) => std::time::Duration::from_secs(s),
            None => std::time::Duration::from_millis(self.pool_idle_timeout_ms),
        }
    }
}

/// `[refresh_ahead]`: refreshing popular entries before they expire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RefreshAheadConfig {
    /// Fresh hits (in this process) that make an entry hot; 0 turns
    /// refresh-ahead off.
    pub hot_hits: u32,
    /// Refresh a hot entry this many seconds before its `fresh` ends (at most
    /// half of the entry's fresh lifetime).
    pub lead_secs: u64,
    /// Refresh-ahead queries sent to Superset at once (read at start; the other
    /// keys follow configuration reloads).
    pub max_concurrent: usize,
    /// Hot entries tracked at once; each holds its request and a credential in
    /// memory. Entries that become hot beyond this are not refreshed ahead.
    pub max_tracked: usize,
}

impl Default for RefreshAheadConfig {
    fn default() -> Self {
        Self {
            hot_hits: 10,
            lead_secs: 10,
            max_concurrent: 4,
            max_tracked: 10_000,
        }
    }
}

impl Config {
    /// Load: defaults ← TOML file (if given) ← `CHARTCACHE_*` env.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                anyhow::bail!("config file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        // Any other `CHARTCACHE_*` variable is refused by name, except `CHARTCACHE_LOG`
        // (the log filter), `CHARTCACHE_CONFIG` (the file) and the
        // `CHARTCACHE_SERVICE_HOST`-style variables Kubernetes injects for a Service
        // named chartcache; only those that name a config key are read.
        env::check_names(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))?;
        fig = fig.merge(
            Env::prefixed("CHARTCACHE_")
                .filter(|k| env::is_config_env(k.as_str()))
                .split("__")
                .lowercase(true),
        );
        let cfg: Config = fig
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(cfg)
    }

    /// Reject configurations that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.upstream.is_empty() {
            bail!(
                "upstream is required (--upstream, CHARTCACHE_UPSTREAM or `upstream` in the config file)"
            );
        }
        let uri: http::Uri = self
            .upstream
            .parse()
            .map_err(|e| anyhow::anyhow!("upstream {:?} is not a URL: {e}", self.upstream))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => bail!(
                "upstream {:?} must start with http:// or https://",
                self.upstream
            ),
        }
        if uri.host().is_none() {
            bail!("upstream {:?} has no host", self.upstream);
        }
        let s = &self.server;
        if s.header_read_timeout_ms == 0 || s.body_read_timeout_ms == 0 || s.idle_timeout_ms == 0 {
            bail!(
                "server.header_read_timeout_ms, body_read_timeout_ms and idle_timeout_ms must be above 0"
            );
        }
        if s.max_buffered_body_bytes < self.cache.max_request_body_bytes {
            bail!("server.max_buffered_body_bytes must be at least cache.max_request_body_bytes");
        }
        if self.memory.max_bytes < 1024 * 1024 {
            bail!("memory.max_bytes must be at least 1 MiB");
        }
        if self.cache.max_object_bytes == 0 || self.cache.max_object_bytes > u32::MAX as u64 {
            bail!("cache.max_object_bytes must be between 1 and 4 GiB");
        }
        if !(1..=22).contains(&self.cache.zstd_level) {
            bail!("cache.zstd_level must be 1..=22");
        }
        if self.identity.session_cookie.is_empty() {
            bail!("identity.session_cookie must not be empty");
        }
        http::HeaderName::from_bytes(self.identity.guest_token_header.as_bytes())
            .map_err(|_| anyhow::anyhow!("identity.guest_token_header is not a header name"))?;
        let guest_secret = self.identity.guest_token_secret_env.is_some()
            || self.identity.guest_token_secret_file.is_some();
        if guest_secret
            && self
                .identity
                .guest_token_audience
                .as_deref()
                .is_none_or(str::is_empty)
        {
            bail!(
                "identity.guest_token_audience is required with a guest-token secret \
                 (Superset's GUEST_TOKEN_JWT_AUDIENCE)"
            );
        }
        for (what, tls) in [
            ("server.tls", &self.server.tls),
            ("admin.tls", &self.admin.tls),
        ] {
            if let Some(t) = tls
                && (t.cert_file.is_empty() || t.key_file.is_empty())
            {
                bail!("{what}: cert_file and key_file are required");
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!("log.format must be `text` or `json`");
        }
        self.redis.validate()?;
        if self.refresh_ahead.max_concurrent == 0 {
            bail!("refresh_ahead.max_concurrent must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_only_upstream() {
        let mut c = Config::default();
        assert!(c.validate().is_err());
        c.upstream = "http://127.0.0.1:8088".into();
        c.validate().unwrap();
    }

    #[test]
    fn rejects_bad_upstream() {
        let c = Config {
            upstream: "ftp://x".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("http://"));
    }

    #[test]
    fn shipped_config_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/chartcache.toml");
        let mut c = Config::load(Some(&path)).unwrap();
        c.upstream = "http://127.0.0.1:8088".into();
        c.validate().unwrap();
        assert_eq!(c.rules.len(), 2);
        assert_eq!(c.tiers, TierConfig::defaults());
        // Without a file the same rules apply.
        assert_eq!(c.rules, Config::default().rules);
    }

    #[test]
    fn unknown_sections_are_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "upstream = 'http://x'\n[refresh_ahaed]\nhot_hits = 3\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("refresh_ahaed"), "{e}");
        std::fs::write(&p, "upstream = 'http://x'\n[memory]\nmax_byte = 3\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("max_byte"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "upstream = 'http://x'\nno_such_key = 1\n").unwrap();
        assert!(Config::load(Some(&p)).is_err());
    }
}
