//! A TTL cache of credential digests → answers: a quick_cache front for the
//! hit path over a moka cache that coalesces lookups and shares their errors.
//! The principal and the role caches are two of these.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::key::DigestHash;

/// A mapping and the instant it stops being valid.
#[derive(Clone)]
struct Timed<V> {
    value: V,
    until: Instant,
}

/// The hit path's copy of the mappings. moka (below it) coalesces lookups
/// and shares their errors, but each of its reads also queues itself for the
/// eviction policy; a quick_cache read is a hash and a probe. Entries carry
/// moka's own expiry instant, so both forget a mapping at the same moment.
type Front<V> = quick_cache::sync::Cache<[u8; 32], Timed<V>, quick_cache::UnitWeighter, DigestHash>;

fn front<V: Clone>(max_entries: u64) -> Front<V> {
    let n = max_entries.clamp(16, 1 << 20);
    quick_cache::sync::Cache::with(
        n as usize,
        n,
        quick_cache::UnitWeighter,
        DigestHash,
        Default::default(),
    )
}

fn fresh<V: Clone>(front: &Front<V>, digest: &[u8; 32]) -> Option<V> {
    front
        .get(digest)
        .filter(|t| Instant::now() < t.until)
        .map(|t| t.value)
}

/// moka expires each mapping at the instant it carries.
struct ResolutionExpiry;

impl<V> moka::Expiry<[u8; 32], Timed<V>> for ResolutionExpiry {
    fn expire_after_create(&self, _k: &[u8; 32], v: &Timed<V>, now: Instant) -> Option<Duration> {
        Some(v.until.saturating_duration_since(now))
    }
}

/// A lookup error shared by every caller that waited for it.
fn shared_error(e: Arc<Error>) -> Error {
    match &*e {
        Error::UpstreamTimeout => Error::UpstreamTimeout,
        Error::UpstreamConnect(m) => Error::UpstreamConnect(m.clone()),
        other => Error::Upstream(other.to_string()),
    }
}

/// See the module doc.
pub(super) struct TtlCache<V> {
    front: Front<V>,
    back: moka::future::Cache<[u8; 32], Timed<V>, DigestHash>,
}

impl<V: Clone + Send + Sync + 'static> TtlCache<V> {
    /// At most `max_entries` mappings in each layer.
    pub(super) fn new(max_entries: u64) -> Self {
        TtlCache {
            front: front(max_entries),
            back: moka::future::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(ResolutionExpiry)
                .build_with_hasher(DigestHash),
        }
    }

    /// The front's unexpired answer, if any: the hit path's read.
    pub(super) fn fresh(&self, digest: &[u8; 32]) -> Option<V> {
        fresh(&self.front, digest)
    }

    /// A mapping from moka (filled by `lookup`, which concurrent callers
    /// share, errors included), copied to the hit path's front. Answers that
    /// `positive` accepts live `ttl`, refusals `negative_ttl`.
    pub(super) async fn through(
        &self,
        digest: [u8; 32],
        (ttl, negative_ttl): (Duration, Duration),
        positive: impl Fn(&V) -> bool,
        lookup: impl std::future::Future<Output = Result<V, Error>>,
    ) -> Result<V, Error> {
        let timed = match self.back.get(&digest).await {
            Some(t) => t,
            None => self
                .back
                .try_get_with(digest, async {
                    lookup.await.map(|value| {
                        let keep = if positive(&value) { ttl } else { negative_ttl };
                        Timed {
                            value,
                            until: Instant::now() + keep,
                        }
                    })
                })
                .await
                .map_err(shared_error)?,
        };
        self.front.insert(digest, timed.clone());
        Ok(timed.value)
    }

    /// Forget every mapping.
    pub(super) fn clear(&self) {
        self.front.clear();
        self.back.invalidate_all();
    }
}
