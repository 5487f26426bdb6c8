//! Uncompressed bodies of recently served entries, for clients that take
//! neither zstd nor the stored gzip copy: API clients and scripts that send no
//! `Accept-Encoding`, and gzip clients of a store that keeps no gzip copy
//! (`redis.tiered = false`). Without this each such hit decompressed the entry
//! again: 9 µs at 1 KB, 40 µs at 50 KB, 300 µs at 500 KB.
//!
//! A copy is found by the entry's key, its `stored_at` and its length: the
//! same stored response, whether it came from the memory store or from Redis.
//! A refreshed entry has a new `stored_at`, so it never meets an old copy.

use bytes::Bytes;

use crate::bounded::{ByteBounded, byte_bounded};
use crate::fingerprint::CacheKey;
use crate::store::Entry;

/// Bounded (by bytes) cache of decompressed entry bodies.
pub struct RawCopies {
    cache: Option<ByteBounded<(CacheKey, u64, u32), Bytes>>,
}

impl RawCopies {
    /// At most about `max_bytes` of copies; 0 disables them (every such hit
    /// decompresses).
    pub fn new(max_bytes: u64) -> RawCopies {
        let cache = byte_bounded(max_bytes, 16 * 1024, |_k, b: &Bytes| b.len() as u64 + 64);
        RawCopies { cache }
    }

    /// The uncompressed body of `entry` (stored under `key`): the copy when
    /// there is one, else decompressed once and kept.
    pub fn body(&self, key: &CacheKey, entry: &Entry) -> std::io::Result<Bytes> {
        let Some(cache) = &self.cache else {
            return super::respond::decompress(entry);
        };
        let id = (*key, entry.meta.stored_at, entry.meta.raw_len);
        if let Some(b) = cache.get(&id) {
            return Ok(b);
        }
        let raw = super::respond::decompress(entry)?;
        cache.insert(id, raw.clone());
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Meta;

    fn entry(raw: &[u8], stored_at: u64) -> Entry {
        let meta = Meta {
            status: 200,
            headers: vec![],
            stored_at,
            fresh_until: stored_at + 1,
            stale_until: stored_at + 2,
            upstream_ms: 0,
            raw_len: raw.len() as u32,
            tags: vec![],
        };
        Entry::build(meta, raw, 3, false).unwrap()
    }

    #[test]
    fn copy_is_reused_and_a_refreshed_entry_gets_its_own() {
        let copies = RawCopies::new(1 << 20);
        let key = CacheKey([7; 32]);
        let old = entry(br#"{"result":[{"data":[1]}]}"#, 1000);
        let a = copies.body(&key, &old).unwrap();
        let b = copies.body(&key, &old).unwrap();
        assert_eq!(a, &br#"{"result":[{"data":[1]}]}"#[..]);
        // The second answer is the kept copy, not a new decompression.
        assert_eq!(a.as_ptr(), b.as_ptr());
        // Same key, refreshed content: never the old copy.
        let new = entry(br#"{"result":[{"data":[2]}]}"#, 2000);
        assert_eq!(
            copies.body(&key, &new).unwrap(),
            &br#"{"result":[{"data":[2]}]}"#[..]
        );
        // Another key with the same stored_at: its own body.
        let other = CacheKey([8; 32]);
        let e = entry(br#"{"result":[{"data":[3]}]}"#, 1000);
        assert_eq!(
            copies.body(&other, &e).unwrap(),
            &br#"{"result":[{"data":[3]}]}"#[..]
        );
    }

    #[test]
    fn disabled_always_decompresses() {
        let copies = RawCopies::new(0);
        let key = CacheKey([7; 32]);
        let e = entry(b"{}", 1);
        let a = copies.body(&key, &e).unwrap();
        let b = copies.body(&key, &e).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.as_ptr(), b.as_ptr());
    }
}
