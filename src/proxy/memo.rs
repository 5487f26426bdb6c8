//! Memo of canonical request forms. Dashboards send byte-identical bodies again
//! and again; parsing, sorting and re-serialising them was most of a hit's CPU
//! time, and a blake3 digest of the raw inputs costs a fraction of that.
//! `fingerprint::canonicalize` is a pure function of exactly those inputs, so a
//! memo keyed by their digest returns the same result it would compute.

use std::sync::Arc;

use crate::fingerprint::{self, CanonicalRequest, Unkeyable};
use crate::route::CachedRoute;

/// Bounded (by bytes) memo of `fingerprint::canonicalize`.
pub struct CanonMemo {
    cache: moka::sync::Cache<[u8; 32], Arc<CanonicalRequest>>,
}

impl CanonMemo {
    /// A memo holding at most about `max_bytes` of canonical forms; 0 disables it.
    pub fn new(max_bytes: u64) -> CanonMemo {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k, c: &Arc<CanonicalRequest>| {
                let query: usize = c.query.iter().map(|(k, v)| k.len() + v.len()).sum();
                (c.body.len() + query + 256).min(u32::MAX as usize) as u32
            })
            .build();
        CanonMemo { cache }
    }

    /// `fingerprint::canonicalize`, answered from the memo when the same inputs were seen.
    pub fn canonicalize(
        &self,
        route: CachedRoute,
        path: &str,
        query: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Arc<CanonicalRequest>, Unkeyable> {
        let digest = digest(route, path, query, content_type, body);
        if let Some(c) = self.cache.get(&digest) {
            return Ok(c);
        }
        let c = Arc::new(fingerprint::canonicalize(
            route,
            path,
            query,
            content_type,
            body,
        )?);
        self.cache.insert(digest, c.clone());
        Ok(c)
    }
}

/// Digest of every input `canonicalize` reads, each tagged and length-prefixed.
fn digest(
    route: CachedRoute,
    path: &str,
    query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    let mut part = |b: Option<&[u8]>| fingerprint::hash_optional_part(&mut h, b);
    part(Some(route.as_str().as_bytes()));
    if let CachedRoute::ChartDataGet { chart_id } = route {
        part(Some(&chart_id.to_le_bytes()));
    }
    part(Some(path.as_bytes()));
    part(query.map(str::as_bytes));
    part(content_type.map(str::as_bytes));
    part(Some(body));
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_returns_what_canonicalize_computes() {
        let m = CanonMemo::new(1 << 20);
        let b = br#"{"b":1,"a":{"d":2,"c":3},"force":true}"#;
        for _ in 0..2 {
            let got = m
                .canonicalize(
                    CachedRoute::ChartData,
                    "/p",
                    None,
                    Some("application/json"),
                    b,
                )
                .unwrap();
            let want = fingerprint::canonicalize(
                CachedRoute::ChartData,
                "/p",
                None,
                Some("application/json"),
                b,
            )
            .unwrap();
            assert_eq!(got.body, want.body);
            assert_eq!(got.force, want.force);
        }
        // Any input difference is a different memo entry.
        let other = m
            .canonicalize(
                CachedRoute::ChartData,
                "/p",
                Some("x=1"),
                Some("application/json"),
                b,
            )
            .unwrap();
        assert_eq!(other.query, vec![("x".to_string(), "1".to_string())]);
        assert!(
            m.canonicalize(CachedRoute::ChartData, "/p", None, Some("text/plain"), b)
                .is_err()
        );
    }
}
