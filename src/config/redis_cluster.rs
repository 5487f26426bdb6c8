//! Redis Cluster in the `[redis]` section: the seed nodes, from
//! `cluster_nodes` or a `redis+cluster://user:password@host:port,host:port`
//! url.

use super::redis::{RedisConfig, RedisConfigError, is_cluster_url, redact, split_host_port};

impl RedisConfig {
    /// Cluster mode: the seed nodes (`host:port`), from `cluster_nodes` or a
    /// `redis+cluster://` url, and the user and password the url carries.
    pub fn cluster_seeds(&self) -> Result<ClusterSeeds, RedisConfigError> {
        let mut seeds = ClusterSeeds::default();
        if let Some(u) = self.url.as_deref().filter(|u| is_cluster_url(u)) {
            let rest = u.split_once("://").map(|(_, r)| r).unwrap_or("");
            let rest = rest.trim_end_matches('/');
            let hosts = match rest.rsplit_once('@') {
                Some((creds, hosts)) => {
                    let (user, pw) = creds.split_once(':').unwrap_or((creds, ""));
                    seeds.username = Some(user).filter(|u| !u.is_empty()).map(pct_decode);
                    seeds.password = Some(pw).filter(|p| !p.is_empty()).map(pct_decode);
                    hosts
                }
                None => rest,
            };
            for h in hosts.split(',') {
                seeds.nodes.push(split_host_port(h).ok_or_else(|| {
                    RedisConfigError::Invalid(format!(
                        "cluster url {}: {h:?} is not host:port",
                        redact(u)
                    ))
                })?);
            }
        }
        for n in &self.cluster_nodes {
            seeds.nodes.push(split_host_port(n).ok_or_else(|| {
                RedisConfigError::Invalid(format!("cluster node address {n:?} is not host:port"))
            })?);
        }
        Ok(seeds)
    }
}

/// Cluster seed nodes and the credentials a `redis+cluster://` url carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSeeds {
    /// `(host, port)` of each seed.
    pub nodes: Vec<(String, u16)>,
    /// ACL user from the url, if any.
    pub username: Option<String>,
    /// Password from the url, if any.
    pub password: Option<String>,
}

/// `%XX` escapes of a URL's user info (a password may hold `@` or `:`).
fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::redis::Topology;

    #[test]
    fn one_topology_and_cluster_seeds() {
        let c = RedisConfig {
            cluster_nodes: vec!["10.0.0.1:7000".into(), "[::1]:7001".into()],
            ..Default::default()
        };
        c.validate().unwrap();
        assert_eq!(c.topology(), Some(Topology::Cluster));
        assert_eq!(
            c.cluster_seeds().unwrap().nodes,
            vec![("10.0.0.1".into(), 7000), ("::1".into(), 7001)]
        );
        let both = RedisConfig {
            sentinels: vec!["a:1".into()],
            ..c.clone()
        };
        assert!(matches!(both.validate(), Err(RedisConfigError::Both)));
        let url = RedisConfig {
            url: Some("rediss+cluster://app:p%40ss@h1:7000,h2:7001/".into()),
            ..Default::default()
        };
        url.validate().unwrap();
        assert!(url.uses_tls());
        let s = url.cluster_seeds().unwrap();
        assert_eq!(s.nodes, vec![("h1".into(), 7000), ("h2".into(), 7001)]);
        assert_eq!(s.username.as_deref(), Some("app"));
        assert_eq!(s.password.as_deref(), Some("p@ss"));
        for bad in [
            RedisConfig {
                cluster_nodes: vec!["nohost".into()],
                ..Default::default()
            },
            RedisConfig {
                cluster_nodes: vec!["h:1".into()],
                db: 2,
                ..Default::default()
            },
            RedisConfig {
                cluster_nodes: vec!["h:1".into()],
                prefix: "{x}".into(),
                ..Default::default()
            },
            RedisConfig {
                url: Some("redis+cluster://h".into()),
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
