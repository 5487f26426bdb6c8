//! Uncompressed bodies of recently served entries, for clients that take
//! neither zstd nor the stored gzip copy: API clients and scripts that send no
//! `Accept-Encoding`, and gzip clients of a store that keeps no gzip copy
//! (`redis.tiered = false`). Without this each such hit decompressed the entry
//! again: 9 µs at 1 KB, 40 µs at 50 KB, 300 µs at 500 KB.
//!
//! A copy is found by the entry's key, its `stored_at` and its length, and
//! then used only if the entry's compressed bytes are the ones it was made
//! from: a refresh (a forced one, say) can store new content under the same
//! key within the same millisecond and at the same length, and must never be
//! answered with the old copy. The check is a pointer comparison for the
//! memory store (the same buffer) and a compare of the compressed bytes, a
//! few per cent of the raw size, for Redis.

use bytes::Bytes;

use crate::bounded::{ByteBounded, byte_bounded};
use crate::fingerprint::CacheKey;
use crate::store::Entry;

/// Bounded (by bytes) cache of decompressed entry bodies.
pub struct RawCopies {
    cache: Option<ByteBounded<(CacheKey, u64, u32), RawCopy>>,
}

/// A decompressed body and the compressed bytes it came from.
#[derive(Clone)]
struct RawCopy {
    zstd: Bytes,
    raw: Bytes,
}

impl RawCopy {
    /// Made from exactly these compressed bytes?
    fn of(&self, zstd: &Bytes) -> bool {
        // The memory store hands out the very buffer the copy was made from.
        (self.zstd.as_ptr() == zstd.as_ptr() && self.zstd.len() == zstd.len()) || self.zstd == *zstd
    }
}

impl RawCopies {
    /// At most about `max_bytes` of copies; 0 disables them (every such hit
    /// decompresses).
    pub fn new(max_bytes: u64) -> RawCopies {
        let cache = byte_bounded(max_bytes, 16 * 1024, |_k, c: &RawCopy| {
            (c.raw.len() + c.zstd.len()) as u64 + 96
        });
        RawCopies { cache }
    }

    /// The uncompressed body of `entry` (stored under `key`): the copy when
    /// there is one, else decompressed once and kept.
    pub fn body(&self, key: &CacheKey, entry: &Entry) -> std::io::Result<Bytes> {
        let Some(cache) = &self.cache else {
            return super::respond::decompress(entry);
        };
        let id = (*key, entry.meta.stored_at, entry.meta.raw_len);
        if let Some(c) = cache.get(&id)
            && c.of(&entry.zstd)
        {
            return Ok(c.raw);
        }
        let raw = super::respond::decompress(entry)?;
        let zstd = entry.zstd.clone();
        cache.insert(
            id,
            RawCopy {
                zstd,
                raw: raw.clone(),
            },
        );
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
        // Same key, same millisecond, same length, new content (a forced
        // refresh right after the first store): never the old copy.
        let same_ms = entry(br#"{"result":[{"data":[4]}]}"#, 2000);
        assert_eq!(
            copies.body(&key, &same_ms).unwrap(),
            &br#"{"result":[{"data":[4]}]}"#[..]
        );
        // The same content read again (from Redis: a new buffer) reuses the copy.
        let reread = Entry {
            zstd: Bytes::copy_from_slice(&same_ms.zstd),
            ..same_ms.clone()
        };
        let c = copies.body(&key, &reread).unwrap();
        assert_eq!(c, copies.body(&key, &same_ms).unwrap());
        assert_eq!(c.as_ptr(), copies.body(&key, &reread).unwrap().as_ptr());
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
