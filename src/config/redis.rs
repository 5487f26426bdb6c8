//! The `[redis]` configuration section. Redis is off unless `url`,
//! `sentinels` or `cluster_nodes` is set (one topology per process);
//! `config/chartcache.toml` documents every key.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How to reach Redis and how the shared cache behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Standalone Redis: `redis://[user[:password]@]host:port[/db]` or `rediss://…`
    /// (TLS with rustls). Also `--redis-url` / `CHARTCACHE_REDIS_URL`.
    /// `redis+cluster://[user[:password]@]host:port[,host:port…]` (or
    /// `rediss+cluster://`) selects Redis Cluster with those seed nodes.
    #[serde(serialize_with = "ser_redacted_url")]
    pub url: Option<String>,
    /// Sentinel mode: sentinel addresses (`host:port`). Set instead of `url`.
    pub sentinels: Vec<String>,
    /// Redis Cluster: seed nodes (`host:port`), any few of the cluster's
    /// nodes; the rest is discovered. Set instead of `url` and `sentinels`.
    pub cluster_nodes: Vec<String>,
    /// Sentinel mode: the monitored master's name.
    pub master_name: String,
    /// Sentinel and cluster mode: connect with TLS (the sentinels and the
    /// master; every cluster node).
    pub tls: bool,
    /// PEM bundle of CA certificates to verify the Redis server against
    /// (`rediss://` or `tls = true`), e.g. a private CA. When set, only these
    /// CAs are trusted for Redis, not the system roots.
    pub tls_ca_file: Option<String>,
    /// PEM client certificate (chain) for mutual TLS; needs `tls_client_key_file`.
    pub tls_client_cert_file: Option<String>,
    /// PEM private key of `tls_client_cert_file`.
    pub tls_client_key_file: Option<String>,
    /// ACL user for data connections (overrides the URL's user).
    pub username: Option<String>,
    /// Password for data connections (overrides the URL's). Prefer
    /// `CHARTCACHE_REDIS__PASSWORD` or `password_file`.
    #[serde(serialize_with = "ser_secret")]
    pub password: Option<String>,
    /// File holding the data password (e.g. a mounted Kubernetes Secret).
    pub password_file: Option<String>,
    /// Sentinel mode: database index on the master.
    pub db: i64,
    /// ACL user for sentinel connections.
    pub sentinel_username: Option<String>,
    /// Password for sentinel connections (`requirepass` of the sentinels).
    #[serde(serialize_with = "ser_secret")]
    pub sentinel_password: Option<String>,
    /// File holding the sentinel password.
    pub sentinel_password_file: Option<String>,
    /// Key prefix, so several Superset installations can share one Redis.
    pub prefix: String,
    /// Per-operation timeout (ms). A slow Redis costs a request at most this.
    pub timeout_ms: u64,
    /// Timeout for purges (ms): they scan and delete many keys, off the hit path.
    pub purge_timeout_ms: u64,
    /// Connection attempts at startup and in background tasks give up after this (ms).
    pub connect_timeout_ms: u64,
    /// Multiplexed connections to the master (each carries many concurrent
    /// commands). With the work-stealing runtime, all are opened when the
    /// master is resolved. With per-core threads, resolution opens one shared
    /// connection, and each thread opens its own share, `connections /
    /// threads` rounded up, in the background on first use (using the shared
    /// one meanwhile).
    pub connections: usize,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe is let through (ms).
    pub breaker_cooldown_ms: u64,
    /// Keep an in-process L1 (the memory store) in front of Redis.
    pub tiered: bool,
    /// Longest time an entry lives in L1 (s). Bounds staleness on a replica
    /// that missed an invalidation message.
    pub l1_max_ttl_secs: u64,
    /// Cross-replica coalescing: how long a fetch lock is held at most (ms).
    /// Keep it above the slowest chart query you expect.
    pub lock_ttl_ms: u64,
    /// How long a replica waits for another replica's fetch before fetching itself (ms).
    /// Keep it below `cache.coalesce_wait_ms`, so this replica's own waiting
    /// requests still get the result instead of timing out and fetching each.
    pub lock_wait_ms: u64,
    /// How often a waiting replica checks for the entry (ms) when no release
    /// message arrives. A holder announces its release on `{prefix}:rel` and
    /// waiters check at once, so polling only covers a lost message.
    pub lock_poll_ms: u64,
    /// How often the subscription connection (`{prefix}:inv`, `{prefix}:rel`)
    /// is checked with `PING` (ms). A hung master leaves the socket open and
    /// sends no error: only an unanswered check reveals it.
    pub pubsub_ping_interval_ms: u64,
    /// A check unanswered after this long (ms) drops the subscription (and the
    /// L1 with it) and makes it again on the current master.
    pub pubsub_ping_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            sentinels: Vec::new(),
            cluster_nodes: Vec::new(),
            master_name: "mymaster".into(),
            tls: false,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            username: None,
            password: None,
            password_file: None,
            db: 0,
            sentinel_username: None,
            sentinel_password: None,
            sentinel_password_file: None,
            prefix: "chartcache".into(),
            timeout_ms: 50,
            purge_timeout_ms: 5_000,
            connect_timeout_ms: 1_000,
            connections: 4,
            breaker_failures: 5,
            breaker_cooldown_ms: 1_000,
            tiered: true,
            l1_max_ttl_secs: 30,
            lock_ttl_ms: 60_000,
            lock_wait_ms: 50_000,
            lock_poll_ms: 250,
            pubsub_ping_interval_ms: 1_000,
            pubsub_ping_timeout_ms: 1_000,
        }
    }
}

// Printed configs (`check-config`) never show secrets.
fn ser_secret<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("***"),
        None => s.serialize_none(),
    }
}

fn ser_redacted_url<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(u) => s.serialize_some(&redact(u)),
        None => s.serialize_none(),
    }
}

/// A `[redis]` section that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum RedisConfigError {
    #[error("redis: set one of `url`, `sentinels` or `cluster_nodes`, not several")]
    Both,
    #[error("redis: url {0:?} must start with redis:// or rediss://")]
    Scheme(String),
    #[error("redis: {0}")]
    Invalid(String),
    #[error("redis: reading {what} {path}: {err}")]
    SecretFile {
        what: &'static str,
        path: String,
        err: std::io::Error,
    },
}

impl RedisConfig {
    /// Redis is in use.
    pub fn enabled(&self) -> bool {
        self.topology().is_some()
    }

    /// The topology configured, if any (validate first: several set is an error).
    pub fn topology(&self) -> Option<Topology> {
        if !self.cluster_nodes.is_empty() || self.url.as_deref().is_some_and(is_cluster_url) {
            Some(Topology::Cluster)
        } else if self.url.is_some() {
            Some(Topology::Standalone)
        } else if !self.sentinels.is_empty() {
            Some(Topology::Sentinel)
        } else {
            None
        }
    }

    /// Per-operation timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Reject settings that cannot work (only checked when enabled).
    pub fn validate(&self) -> Result<(), RedisConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let set = [
            self.url.is_some(),
            !self.sentinels.is_empty(),
            !self.cluster_nodes.is_empty(),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err(RedisConfigError::Both);
        }
        if let Some(u) = &self.url
            && !(u.starts_with("redis://") || u.starts_with("rediss://") || is_cluster_url(u))
        {
            return Err(RedisConfigError::Scheme(redact(u)));
        }
        if self.topology() == Some(Topology::Cluster) {
            let seeds = self.cluster_seeds()?;
            if seeds.nodes.is_empty() {
                return Err(RedisConfigError::Invalid("cluster: no seed node".into()));
            }
            if self.db != 0 {
                return Err(RedisConfigError::Invalid(
                    "db must be 0 with Redis Cluster (a cluster has one database)".into(),
                ));
            }
            // A brace in the prefix would become every key's hash tag: all
            // keys in one slot, on one master.
            if self.prefix.contains(['{', '}']) {
                return Err(RedisConfigError::Invalid(
                    "prefix must not contain { or } with Redis Cluster".into(),
                ));
            }
        }
        if self.tls_client_cert_file.is_some() != self.tls_client_key_file.is_some() {
            return Err(RedisConfigError::Invalid(
                "set both tls_client_cert_file and tls_client_key_file, or neither".into(),
            ));
        }
        let tls_files = self.tls_ca_file.is_some() || self.tls_client_cert_file.is_some();
        if tls_files && !self.uses_tls() {
            return Err(RedisConfigError::Invalid(
                "tls_ca_file / tls_client_cert_file need a rediss:// url (or tls = true with sentinels or cluster_nodes)"
                    .into(),
            ));
        }
        for s in &self.sentinels {
            split_host_port(s).ok_or_else(|| {
                RedisConfigError::Invalid(format!("sentinel address {s:?} is not host:port"))
            })?;
        }
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            return Err(RedisConfigError::Invalid(
                "prefix must be non-empty without spaces".into(),
            ));
        }
        let positive = [
            ("timeout_ms", self.timeout_ms),
            ("purge_timeout_ms", self.purge_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("connections", self.connections as u64),
            ("breaker_failures", self.breaker_failures as u64),
            ("lock_ttl_ms", self.lock_ttl_ms),
            ("lock_poll_ms", self.lock_poll_ms),
            ("l1_max_ttl_secs", self.l1_max_ttl_secs),
            ("pubsub_ping_interval_ms", self.pubsub_ping_interval_ms),
            ("pubsub_ping_timeout_ms", self.pubsub_ping_timeout_ms),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(RedisConfigError::Invalid(format!("{k} must be > 0")));
            }
        }
        Ok(())
    }

    /// Connections use TLS: a `rediss://` (or `rediss+cluster://`) url, or
    /// sentinel or cluster mode with `tls = true`.
    pub fn uses_tls(&self) -> bool {
        match &self.url {
            Some(u) => u.starts_with("rediss://") || u.starts_with("rediss+cluster://"),
            None => self.tls,
        }
    }

    /// The PEM files of `tls_ca_file` / `tls_client_*_file`, read now, or
    /// `None` when none is set (then the system roots are trusted).
    pub fn resolve_tls(&self) -> Result<Option<TlsFiles>, RedisConfigError> {
        let read = |what: &'static str, f: &String| {
            std::fs::read(f).map_err(|err| RedisConfigError::SecretFile {
                what,
                path: f.clone(),
                err,
            })
        };
        let ca = match &self.tls_ca_file {
            Some(f) => {
                let pem = read("tls_ca_file", f)?;
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err(RedisConfigError::Invalid(format!(
                        "tls_ca_file {f}: no PEM certificate in it"
                    )));
                }
                Some(pem)
            }
            None => None,
        };
        let client = match (&self.tls_client_cert_file, &self.tls_client_key_file) {
            (Some(c), Some(k)) => Some((
                read("tls_client_cert_file", c)?,
                read("tls_client_key_file", k)?,
            )),
            _ => None,
        };
        if ca.is_none() && client.is_none() {
            return Ok(None);
        }
        Ok(Some(TlsFiles { ca, client }))
    }

    /// The data password: `password`, else the contents of `password_file`.
    pub fn resolve_password(&self) -> Result<Option<String>, RedisConfigError> {
        secret(&self.password, &self.password_file, "password_file")
    }

    /// The sentinel password: `sentinel_password`, else `sentinel_password_file`.
    pub fn resolve_sentinel_password(&self) -> Result<Option<String>, RedisConfigError> {
        secret(
            &self.sentinel_password,
            &self.sentinel_password_file,
            "sentinel_password_file",
        )
    }
}

/// Which kind of Redis deployment the section describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One server (`url`).
    Standalone,
    /// A master found through sentinels (`sentinels`).
    Sentinel,
    /// Redis Cluster (`cluster_nodes` or a `redis+cluster://` url).
    Cluster,
}

/// TLS material read from the files named in the config (PEM bytes).
#[derive(Clone)]
pub struct TlsFiles {
    /// CA bundle to trust instead of the system roots.
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and key for mutual TLS.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

fn secret(
    value: &Option<String>,
    file: &Option<String>,
    what: &'static str,
) -> Result<Option<String>, RedisConfigError> {
    if let Some(v) = value {
        return Ok(Some(v.clone()));
    }
    if let Some(f) = file {
        let s = std::fs::read_to_string(f).map_err(|err| RedisConfigError::SecretFile {
            what,
            path: f.clone(),
            err,
        })?;
        return Ok(Some(s.trim_end_matches(['\r', '\n']).to_string()));
    }
    Ok(None)
}

/// A `redis+cluster://` or `rediss+cluster://` url.
pub(super) fn is_cluster_url(u: &str) -> bool {
    u.starts_with("redis+cluster://") || u.starts_with("rediss+cluster://")
}

/// `host:port` → parts (IPv6 in brackets allowed).
pub(crate) fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// A URL with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_by_default_and_valid() {
        let c = RedisConfig::default();
        assert!(!c.enabled());
        c.validate().unwrap();
    }

    #[test]
    fn rejects_bad_settings() {
        let c = RedisConfig {
            url: Some("http://x".into()),
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(RedisConfigError::Scheme(_))));
        let c = RedisConfig {
            url: Some("redis://x".into()),
            sentinels: vec!["a:1".into()],
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(RedisConfigError::Both)));
        let c = RedisConfig {
            sentinels: vec!["nohost".into()],
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://app:s3cret@h:6379/2"),
            "redis://app:***@h:6379/2"
        );
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn shipped_config_documents_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/chartcache.toml");
        let c = crate::config::Config::load(Some(&path)).unwrap();
        assert_eq!(c.redis, RedisConfig::default());
    }

    #[test]
    fn printed_config_hides_secrets() {
        let c = RedisConfig {
            url: Some("redis://u:pw1@h:1".into()),
            password: Some("pw2".into()),
            sentinel_password: Some("pw3".into()),
            ..Default::default()
        };
        let out = serde_json::to_string(&c).unwrap();
        assert!(
            !out.contains("pw1") && !out.contains("pw2") && !out.contains("pw3"),
            "{out}"
        );
    }

    #[test]
    fn password_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "pw1\n").unwrap();
        let c = RedisConfig {
            password_file: Some(p.display().to_string()),
            ..Default::default()
        };
        assert_eq!(c.resolve_password().unwrap().as_deref(), Some("pw1"));
    }

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("127.0.0.1:26379"),
            Some(("127.0.0.1".into(), 26379))
        );
        assert_eq!(split_host_port("[::1]:1"), Some(("::1".into(), 1)));
        assert_eq!(split_host_port(":1"), None);
    }
}
