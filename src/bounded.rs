//! Byte-bounded concurrent maps for the hit path (canonical memo, uncompressed
//! copies). quick_cache's `get` is a hash, a shard read lock and a probe, with
//! no per-read bookkeeping queue: a hit makes several lookups, and on a busy
//! proxy every cache line a lookup touches is likely cold, so the lean read
//! matters more than moka's extras (TTLs, listeners), which these maps do not use.
//!
//! Not for the response store: under a bound well below the working set,
//! S3-FIFO kept a third fewer hits than moka's TinyLFU (loadtests/RUNS.md, run 13).
//! Here a lost item costs only CPU (a re-parse, a decompression), never an
//! upstream query.

use std::hash::Hash;

/// A weigher given as a plain function (quick_cache wants a `Clone` type).
pub struct FnWeight<K, V>(fn(&K, &V) -> u64);

impl<K, V> Clone for FnWeight<K, V> {
    fn clone(&self) -> Self {
        FnWeight(self.0)
    }
}

impl<K, V> quick_cache::Weighter<K, V> for FnWeight<K, V> {
    fn weight(&self, k: &K, v: &V) -> u64 {
        (self.0)(k, v)
    }
}

/// A map holding at most about `max_bytes` by `weigh` (S3-FIFO eviction).
pub type ByteBounded<K, V> = quick_cache::sync::Cache<K, V, FnWeight<K, V>>;

/// `None` when `max_bytes` is 0 (the map is disabled). `typical` is a typical
/// item's weight, to size the table up front; `weigh` must not return 0 (such
/// items are never evicted).
pub fn byte_bounded<K: Eq + Hash, V: Clone>(
    max_bytes: u64,
    typical: u64,
    weigh: fn(&K, &V) -> u64,
) -> Option<ByteBounded<K, V>> {
    (max_bytes > 0).then(|| {
        let items = (max_bytes / typical.max(1)).clamp(16, 1 << 20) as usize;
        quick_cache::sync::Cache::with_weighter(items, max_bytes, FnWeight(weigh))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_about_max_bytes_and_zero_disables() {
        assert!(byte_bounded::<u32, Vec<u8>>(0, 10, |_, v| v.len() as u64).is_none());
        let m = byte_bounded::<u32, Vec<u8>>(10_000, 100, |_, v| v.len() as u64).unwrap();
        for i in 0..1_000 {
            m.insert(i, vec![0; 100]);
        }
        assert!(m.weight() <= 10_000, "{}", m.weight());
        assert!(m.len() >= 50, "{}", m.len());
        // An item larger than the whole bound is not kept.
        m.insert(5_000, vec![0; 20_000]);
        assert!(m.get(&5_000).is_none());
    }
}
