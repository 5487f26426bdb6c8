//! Redis Cluster: the data connection that routes each command to the master
//! of its key's slot, key slots, and the nodes the cluster reports.
//!
//! redis-rs's [`ClusterConnection`] keeps one multiplexed connection per node,
//! follows `MOVED` (refreshing its slot map) and `ASK`, and reconnects to
//! nodes that went away. Its own retries are kept few and short: a slot whose
//! master is gone (a failover in progress) must turn into a miss within the
//! operation timeout, not into a queue of retries.
//!
//! A script or `MULTI` may only touch keys of one slot, so keys that go
//! together carry the same hash tag (see `docs/redis.md`, "Key layout"), and
//! operations over many keys (purges) are split into per-slot batches here.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value,
};

use crate::config::redis::{RedisConfig, RedisConfigError};

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// A data connection: to one server (standalone, sentinel's master) or to a
/// cluster. Cheap to clone; both carry many concurrent commands.
#[derive(Clone)]
pub enum Conn {
    /// A multiplexed connection to one server.
    Single(MultiplexedConnection),
    /// A cluster connection (routes by slot, follows redirections).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag — the part between
/// the first `{` and the next `}`, when not empty — or of the whole key.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Keys grouped by slot, in first-seen order of the slots.
pub fn by_slot(keys: Vec<String>) -> Vec<Vec<String>> {
    let mut groups: Vec<(u16, Vec<String>)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for k in keys {
        let s = slot(k.as_bytes());
        let i = *index.entry(s).or_insert_with(|| {
            groups.push((s, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(k);
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// What a cluster connection needs: seeds (with credentials and TLS) and
/// the client built from them.
pub struct Cluster {
    pub client: ClusterClient,
    /// Seed nodes, as given: where node discovery starts and falls back to.
    pub seeds: Vec<ConnectionInfo>,
    /// Connect to nodes with TLS.
    pub tls: bool,
    /// Credentials for every node.
    pub data: redis::RedisConnectionInfo,
}

impl Cluster {
    /// Build from config (`password` already resolved from file or value).
    pub fn new(
        cfg: &RedisConfig,
        password: Option<String>,
        certs: Option<redis::TlsCertificates>,
    ) -> Result<Cluster, RedisConfigError> {
        let seeds = cfg.cluster_seeds()?;
        let tls = cfg.uses_tls();
        let mut data = redis::RedisConnectionInfo::default();
        if let Some(u) = cfg.username.as_ref().or(seeds.username.as_ref()) {
            data = data.set_username(u);
        }
        if let Some(p) = password.as_ref().or(seeds.password.as_ref()) {
            data = data.set_password(p);
        }
        let bad = |e: redis::RedisError| RedisConfigError::Invalid(format!("cluster: {e}"));
        let mut infos = Vec::new();
        for (host, port) in seeds.nodes {
            infos.push(info(host, port, tls, &data).map_err(bad)?);
        }
        let mut b = ClusterClientBuilder::new(infos.clone())
            .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            // Bounds what the client does for a request the caller gave up
            // on (its own timeout is `timeout_ms`): retries, reconnects, and
            // a slot-map read from a node that hangs.
            .response_timeout(Duration::from_millis(
                cfg.connect_timeout_ms.max(cfg.timeout_ms),
            ))
            // A slot without a master fails within the operation timeout
            // (a miss) instead of waiting out a failover in retries.
            .retries(2)
            .min_retry_wait(5)
            .max_retry_wait(100)
            .retry_wait_formula(10, 2);
        if let Some(u) = data.username() {
            b = b.username(u);
        }
        if let Some(p) = data.password() {
            b = b.password(p);
        }
        if let Some(c) = certs {
            b = b.certs(c);
        }
        Ok(Cluster {
            client: b.build().map_err(bad)?,
            seeds: infos,
            tls,
            data,
        })
    }

    /// Connection info for a node the cluster reported.
    pub fn node_info(&self, host: &str, port: u16) -> redis::RedisResult<ConnectionInfo> {
        info(host.to_string(), port, self.tls, &self.data)
    }
}

fn info(
    host: String,
    port: u16,
    tls: bool,
    data: &redis::RedisConnectionInfo,
) -> redis::RedisResult<ConnectionInfo> {
    Ok(addr(host, port, tls)
        .into_connection_info()?
        .set_redis_settings(data.clone()))
}

/// A node's address, over TLS or not (every topology's connections).
pub(crate) fn addr(host: String, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, port)
    }
}

/// A node as `CLUSTER SLOTS` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub host: String,
    pub port: u16,
    /// Serves its slots (else a replica).
    pub master: bool,
}

impl Node {
    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The nodes serving slots, masters first, each once: from `CLUSTER SLOTS`
/// (`[[start, end, [host, port, id…], [replica…]…]…]`). Entries that do not
/// have that shape are skipped: the reply is not trusted to be well formed.
pub async fn nodes(c: &mut impl ConnectionLike) -> redis::RedisResult<Vec<Node>> {
    let v: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await?;
    Ok(parse_slots(v))
}

/// The nodes ([`nodes`]) and, for every slot, the `host:port` of its master
/// (`None`: no master serves it).
pub async fn topology(
    c: &mut impl ConnectionLike,
) -> redis::RedisResult<(Vec<Node>, Vec<Option<String>>)> {
    let v: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await?;
    let owners = parse_owners(&v);
    Ok((parse_slots(v), owners))
}

/// Each slot's master from a `CLUSTER SLOTS` reply; ranges out of bounds are skipped.
fn parse_owners(v: &Value) -> Vec<Option<String>> {
    let mut owners = vec![None; usize::from(SLOTS)];
    let Value::Array(ranges) = v else {
        return owners;
    };
    for r in ranges.iter().take(usize::from(SLOTS)) {
        let Value::Array(items) = r else { continue };
        let (Some(Value::Int(a)), Some(Value::Int(b)), Some(Value::Array(m))) =
            (items.first(), items.get(1), items.get(2))
        else {
            continue;
        };
        let (Some(host), Some(Value::Int(port))) = (m.first(), m.get(1)) else {
            continue;
        };
        let host = match host {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            _ => continue,
        };
        let addr = format!("{host}:{port}");
        let (a, b) = (*a, *b);
        if a < 0 || b < a || b >= i64::from(SLOTS) {
            continue;
        }
        for o in &mut owners[a as usize..=b as usize] {
            *o = Some(addr.clone());
        }
    }
    owners
}

fn parse_slots(v: Value) -> Vec<Node> {
    let mut masters: Vec<Node> = Vec::new();
    let mut replicas: Vec<Node> = Vec::new();
    let Value::Array(ranges) = v else {
        return masters;
    };
    for r in ranges.into_iter().take(usize::from(SLOTS)) {
        let Value::Array(items) = r else { continue };
        for (i, n) in items.into_iter().skip(2).take(16).enumerate() {
            let Value::Array(parts) = n else { continue };
            let mut parts = parts.into_iter();
            let host = match parts.next() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
                Some(Value::SimpleString(s)) => s,
                _ => continue,
            };
            let Some(Value::Int(port)) = parts.next() else {
                continue;
            };
            let Ok(port) = u16::try_from(port) else {
                continue;
            };
            if host.is_empty() || host == "?" {
                continue;
            }
            let node = Node {
                host,
                port,
                master: i == 0,
            };
            let known = masters
                .iter()
                .chain(replicas.iter())
                .any(|n| n.host == node.host && n.port == node.port);
            if !known {
                if node.master {
                    masters.push(node);
                } else {
                    replicas.push(node);
                }
            }
        }
    }
    masters.extend(replicas);
    masters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
    }

    #[test]
    fn groups_keys_by_slot() {
        let keys = vec![
            "p:e:{a}".to_string(),
            "p:e:{b}".to_string(),
            "p:l:{a}".to_string(),
        ];
        let g = by_slot(keys);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0], vec!["p:e:{a}".to_string(), "p:l:{a}".to_string()]);
    }

    #[test]
    fn parses_cluster_slots_and_skips_junk() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("127.0.0.1", 7001),
                node("127.0.0.1", 7003),
            ]),
            Value::Int(3),
            Value::Array(vec![Value::Int(1), Value::Int(2), node("h", 99_999)]),
        ]);
        let owners = parse_owners(&v);
        assert_eq!(owners[0].as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(owners[5461].as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(owners[16383], None);
        let n = parse_slots(v);
        let addrs: Vec<_> = n.iter().map(|n| (n.addr(), n.master)).collect();
        assert_eq!(
            addrs,
            vec![
                ("127.0.0.1:7000".into(), true),
                ("127.0.0.1:7001".into(), true),
                ("127.0.0.1:7003".into(), false),
            ]
        );
        assert!(parse_slots(Value::Nil).is_empty());
    }
}
