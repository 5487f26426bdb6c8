//! Memo of canonical request forms. Dashboards send byte-identical bodies again
//! and again; parsing, sorting and re-serialising them was most of a hit's CPU
//! time. `fingerprint::canonicalize` is a pure function of its inputs, so a memo
//! of those inputs returns the same result it would compute.
//!
//! The memo is found by a seeded xxh3 hash of the inputs (several GB/s, against
//! about 1 GB/s for blake3 on a 2 KB body) and then compared with the stored
//! inputs byte for byte: a hash collision, accidental or crafted, costs a
//! re-canonicalization and can never hand one request another's canonical form
//! (which would file a response under another query's key).

use std::sync::Arc;

use xxhash_rust::xxh3::{xxh3_64_with_seed, xxh3_128_with_seed};

use crate::bounded::{ByteBounded, byte_bounded};
use crate::fingerprint::{self, CanonicalRequest, QueryFacts, Unkeyable};
use crate::route::CachedRoute;
use crate::time_range::{TimeRangeEnd, time_range_end};

/// What the request path needs of a canonical form: everything but the
/// canonical body itself, which enters the key only as its digest. Keeping the
/// body out halves the memo's bytes per request.
#[derive(Debug)]
pub struct Canonical {
    /// `fingerprint::body_digest` of the canonical body.
    pub body_digest: [u8; 32],
    /// Sorted query parameters without control parameters.
    pub query: Vec<(String, String)>,
    /// Superset's "Force refresh" was asked for.
    pub force: bool,
    pub facts: QueryFacts,
    /// `facts.time_ranges` parsed once (`policy::time_range_end`).
    pub time_range_end: TimeRangeEnd,
}

impl From<CanonicalRequest> for Canonical {
    fn from(c: CanonicalRequest) -> Canonical {
        Canonical {
            body_digest: c.body_digest,
            query: c.query,
            force: c.force,
            time_range_end: time_range_end(&c.facts.time_ranges),
            facts: c.facts,
        }
    }
}

/// Bounded (by bytes) memo of `fingerprint::canonicalize`.
pub struct CanonMemo {
    cache: Option<ByteBounded<u128, Arc<Memoized>>>,
    /// Per-process seed, so which inputs share a hash cannot be planned.
    seed: u64,
}

/// One memoized canonicalization and the exact inputs it was computed from.
struct Memoized {
    route: CachedRoute,
    path: Box<str>,
    query: Option<Box<str>>,
    content_type: Option<Box<str>>,
    /// A copy: the request's own buffer may be a slice of a much larger read buffer.
    body: Box<[u8]>,
    canon: Arc<Canonical>,
}

impl Memoized {
    fn matches(
        &self,
        route: CachedRoute,
        path: &str,
        query: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> bool {
        self.route == route
            && *self.body == *body
            && *self.path == *path
            && self.query.as_deref() == query
            && self.content_type.as_deref() == content_type
    }

    /// Bytes held, for the memo's bound.
    fn weight(&self) -> u32 {
        let c = &self.canon;
        let query: usize = c.query.iter().map(|(k, v)| k.len() + v.len()).sum();
        let facts: usize = c.facts.time_ranges.iter().map(String::len).sum();
        let inputs = self.body.len()
            + self.path.len()
            + self.query.as_deref().map_or(0, str::len)
            + self.content_type.as_deref().map_or(0, str::len);
        (query + facts + inputs + 256).min(u32::MAX as usize) as u32
    }
}

impl CanonMemo {
    /// A memo holding at most about `max_bytes` (request bodies plus about 256
    /// bytes each); 0 disables it.
    pub fn new(max_bytes: u64) -> CanonMemo {
        // A typical chart request: a 1–2 KB body plus the fixed overhead.
        let cache = byte_bounded(max_bytes, 2048, |_k, m: &Arc<Memoized>| {
            u64::from(m.weight())
        });
        CanonMemo {
            cache,
            seed: rand::random(),
        }
    }

    /// Bytes the memo weighs now (at most about `cache.canonical_memo_bytes`).
    pub fn bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.weight())
    }

    /// `fingerprint::canonicalize`, answered from the memo when the same inputs were seen.
    pub fn canonicalize(
        &self,
        route: CachedRoute,
        path: &str,
        query: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Arc<Canonical>, Unkeyable> {
        let Some(cache) = &self.cache else {
            let c = fingerprint::canonicalize(route, path, query, content_type, body)?;
            return Ok(Arc::new(Canonical::from(c)));
        };
        let hash = self.hash(route, path, query, content_type, body);
        if let Some(m) = cache.get(&hash)
            && m.matches(route, path, query, content_type, body)
        {
            return Ok(m.canon.clone());
        }
        let canon = Arc::new(Canonical::from(fingerprint::canonicalize(
            route,
            path,
            query,
            content_type,
            body,
        )?));
        let m = Memoized {
            route,
            path: path.into(),
            query: query.map(Into::into),
            content_type: content_type.map(Into::into),
            body: body.into(),
            canon: canon.clone(),
        };
        cache.insert(hash, Arc::new(m));
        Ok(canon)
    }

    /// Seeded xxh3 of every input `canonicalize` reads, each tagged and
    /// length-prefixed (only a lookup hint: `Memoized::matches` decides).
    fn hash(
        &self,
        route: CachedRoute,
        path: &str,
        query: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> u128 {
        // The small parts seed the hash of the body: two one-shot hashes
        // cost less than one streaming hash over the same bytes.
        let mut g = crate::key::Gather::<256>::default();
        let mut part = |b: Option<&[u8]>| crate::key::hash_optional_part(&mut |x| g.push(x), b);
        part(Some(route.as_str().as_bytes()));
        if let CachedRoute::ChartDataGet { chart_id } = route {
            part(Some(&chart_id.to_le_bytes()));
        }
        part(Some(path.as_bytes()));
        part(query.map(str::as_bytes));
        part(content_type.map(str::as_bytes));
        part(Some(&(body.len() as u64).to_le_bytes()));
        let seed = xxh3_64_with_seed(g.as_slice(), self.seed);
        xxh3_128_with_seed(body, seed)
    }
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
            assert_eq!(got.body_digest, want.body_digest);
            assert_eq!(got.force, want.force);
            assert_eq!(got.facts, want.facts);
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

    /// A hash collision must not hand one request another's canonical form:
    /// plant B's memo under A's hash and ask for A.
    #[test]
    fn collision_is_detected_by_comparing_inputs() {
        let m = CanonMemo::new(1 << 20);
        let a = br#"{"queries":[{"row_limit":1}]}"#;
        let b = br#"{"queries":[{"row_limit":2}]}"#;
        let ct = Some("application/json");
        let canon_b = m
            .canonicalize(CachedRoute::ChartData, "/p", None, ct, b)
            .unwrap();
        let hb = m.hash(CachedRoute::ChartData, "/p", None, ct, b);
        let cache = m.cache.as_ref().unwrap();
        let planted = cache.get(&hb).unwrap();
        let ha = m.hash(CachedRoute::ChartData, "/p", None, ct, a);
        cache.insert(ha, planted);
        let got = m
            .canonicalize(CachedRoute::ChartData, "/p", None, ct, a)
            .unwrap();
        assert_ne!(got.body_digest, canon_b.body_digest);
        assert_eq!(
            got.body_digest,
            fingerprint::body_digest(br#"{"queries":[{"row_limit":1}]}"#)
        );
    }
}
