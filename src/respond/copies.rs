//! Copies of recently served entries in an encoding the entry lacks, made once
//! per entry instead of once per request:
//!
//! * **uncompressed**, for clients that take neither zstd nor gzip (API
//!   clients and scripts that send no `Accept-Encoding`). Without a copy each
//!   such hit decompressed the entry again: 9 µs at 1 KB, 40 µs at 50 KB,
//!   300 µs at 500 KB.
//! * **gzip**, for gzip-only clients of entries that carry no gzip copy: those
//!   read from a Redis-only store (`redis.tiered = false`; Redis holds zstd
//!   only). Without it such clients got the uncompressed body, about 6× the
//!   bytes through the socket for a JSON result (50 KB against 8 KB), which is
//!   what a burst of coalesced followers on another replica pays most for. Made
//!   only when `cache.store_gzip` is on, the operator's choice to serve gzip.
//!
//! Copies of entries of 64 KiB and more are made on the offload threads
//! ([`Copies::prepare`]), one per entry however many requests ask at once, so
//! a 2 MB body's decompression or gzip never holds up a runtime thread.
//!
//! A copy is found by the entry's key, its `stored_at`, its length and the
//! encoding, and then used only if the entry's compressed bytes are the ones
//! it was made from: a refresh (a forced one, say) can store new content under
//! the same key within the same millisecond and at the same length, and must
//! never be answered with the old copy. The check is a pointer comparison for
//! the memory store (the same buffer) and a compare of the compressed bytes, a
//! few per cent of the raw size, for Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::bounded::{ByteBounded, byte_bounded};
use crate::key::CacheKey;
use crate::offload::{self, Offload};
use crate::store::Entry;

/// Bounded (by bytes) cache of uncompressed and gzip copies of entry bodies.
pub struct Copies {
    /// Shared with the offload threads, where [`Copies::prepare`] makes large copies.
    cache: Option<Arc<Cache>>,
    /// Copies made so far.
    made: AtomicU64,
}

type Cache = ByteBounded<CopyId, Kept>;

/// Key, `stored_at`, uncompressed length, gzip.
type CopyId = (CacheKey, u64, u32, bool);

/// A body in one encoding and the compressed (zstd) bytes it came from.
#[derive(Clone)]
struct Kept {
    zstd: Bytes,
    body: Bytes,
}

impl Kept {
    /// Made from exactly these compressed bytes?
    fn of(&self, zstd: &Bytes) -> bool {
        // The memory store hands out the very buffer the copy was made from.
        (self.zstd.as_ptr() == zstd.as_ptr() && self.zstd.len() == zstd.len()) || self.zstd == *zstd
    }
}

fn id(key: &CacheKey, entry: &Entry, gzip: bool) -> CopyId {
    (*key, entry.meta.stored_at, entry.meta.raw_len, gzip)
}

/// The kept copy for `id`, if it was made from `entry`'s bytes.
fn kept(cache: &Cache, id: &CopyId, entry: &Entry) -> Option<Bytes> {
    cache.get(id).filter(|c| c.of(&entry.zstd)).map(|c| c.body)
}

/// The copy of `entry`'s body: gzip or uncompressed.
fn copy(entry: &Entry, gzip: bool) -> std::io::Result<Kept> {
    let raw = super::decompress(entry)?;
    let body = if gzip {
        crate::store::entry::gzip(&raw)?
    } else {
        raw
    };
    Ok(Kept {
        zstd: entry.zstd.clone(),
        body,
    })
}

impl Copies {
    /// At most about `max_bytes` of copies; 0 disables them (every such hit
    /// decompresses, and gzip-only clients of zstd-only entries get the
    /// uncompressed body: never per-request compression).
    pub fn new(max_bytes: u64) -> Copies {
        let cache = byte_bounded(max_bytes, 16 * 1024, |_k, c: &Kept| {
            (c.body.len() + c.zstd.len()) as u64 + 96
        });
        Copies {
            cache: cache.map(Arc::new),
            made: AtomicU64::new(0),
        }
    }

    /// How many copies were made (each kept one is made once per entry).
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// Bytes the kept copies weigh now (at most about `cache.raw_copy_bytes`).
    pub fn bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.weight())
    }

    /// The body of `entry` (stored under `key`), gzip or uncompressed, and its
    /// `Content-Encoding`: the kept copy when there is one, else made once and
    /// kept.
    pub fn body(
        &self,
        key: &CacheKey,
        entry: &Entry,
        gzip: bool,
    ) -> std::io::Result<(Bytes, Option<&'static str>)> {
        let Some(cache) = &self.cache else {
            return Ok((super::decompress(entry)?, None));
        };
        let id = id(key, entry, gzip);
        let encoding = gzip.then_some("gzip");
        if let Some(body) = kept(cache, &id, entry) {
            return Ok((body, encoding));
        }
        let kept = copy(entry, gzip)?;
        let body = kept.body.clone();
        cache.insert(id, kept);
        self.made.fetch_add(1, Ordering::Relaxed);
        Ok((body, encoding))
    }

    /// For an entry of [`offload::MIN_BYTES`] or more, make the copy
    /// [`Copies::body`] will be asked for on the offload threads, unless it is
    /// kept already. Smaller entries are left to `body`: the hand-over would
    /// cost more than the copy.
    pub async fn prepare(&self, pool: &Offload, key: &CacheKey, entry: &Arc<Entry>, gzip: bool) {
        let Some(cache) = &self.cache else { return };
        if (entry.meta.raw_len as usize) < offload::MIN_BYTES {
            return;
        }
        let id = id(key, entry, gzip);
        // Concurrent asks for the same copy (a burst of coalesced followers)
        // wait for one maker instead of each making it.
        let guard = match cache.get_value_or_guard_async(&id).await {
            Ok(c) if c.of(&entry.zstd) => return,
            // A copy of older content under the same id: replaced below.
            Ok(_) => None,
            Err(guard) => Some(guard),
        };
        let e = entry.clone();
        // On failure the guard is dropped, its waiters try again, and `body`
        // meets and reports the error.
        let Some(Ok(kept)) = pool.run(move || copy(&e, gzip)).await else {
            return;
        };
        self.made.fetch_add(1, Ordering::Relaxed);
        match guard {
            Some(g) => {
                let _ = g.insert(kept);
            }
            None => cache.insert(id, kept),
        }
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

    fn raw(copies: &Copies, key: &CacheKey, e: &Entry) -> Bytes {
        let (b, enc) = copies.body(key, e, false).unwrap();
        assert_eq!(enc, None);
        b
    }

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(b), &mut out).unwrap();
        out
    }

    #[test]
    fn copy_is_reused_and_a_refreshed_entry_gets_its_own() {
        let copies = Copies::new(1 << 20);
        let key = CacheKey([7; 32]);
        let old = entry(br#"{"result":[{"data":[1]}]}"#, 1000);
        let a = raw(&copies, &key, &old);
        let b = raw(&copies, &key, &old);
        assert_eq!(a, &br#"{"result":[{"data":[1]}]}"#[..]);
        // The second answer is the kept copy, not a new decompression.
        assert_eq!(a.as_ptr(), b.as_ptr());
        // Same key, refreshed content: never the old copy.
        let new = entry(br#"{"result":[{"data":[2]}]}"#, 2000);
        assert_eq!(
            raw(&copies, &key, &new),
            &br#"{"result":[{"data":[2]}]}"#[..]
        );
        // Same key, same millisecond, same length, new content (a forced
        // refresh right after the first store): never the old copy.
        let same_ms = entry(br#"{"result":[{"data":[4]}]}"#, 2000);
        assert_eq!(
            raw(&copies, &key, &same_ms),
            &br#"{"result":[{"data":[4]}]}"#[..]
        );
        // The same content read again (from Redis: a new buffer) reuses the copy.
        let reread = Entry {
            zstd: Bytes::copy_from_slice(&same_ms.zstd),
            ..same_ms.clone()
        };
        let c = raw(&copies, &key, &reread);
        assert_eq!(c, raw(&copies, &key, &same_ms));
        assert_eq!(c.as_ptr(), raw(&copies, &key, &reread).as_ptr());
        // Another key with the same stored_at: its own body.
        let other = CacheKey([8; 32]);
        let e = entry(br#"{"result":[{"data":[3]}]}"#, 1000);
        assert_eq!(
            raw(&copies, &other, &e),
            &br#"{"result":[{"data":[3]}]}"#[..]
        );
    }

    #[test]
    fn gzip_clients_get_a_gzip_copy_made_once() {
        let copies = Copies::new(1 << 20);
        let key = CacheKey([9; 32]);
        let body = br#"{"result":[{"data":"abcabcabcabcabcabcabcabcabcabc"}]}"#.repeat(50);
        let e = entry(&body, 1000);
        let (g1, enc) = copies.body(&key, &e, true).unwrap();
        assert_eq!(enc, Some("gzip"));
        assert!(g1.len() < body.len() / 4, "{} bytes", g1.len());
        assert_eq!(gunzip(&g1), body);
        let (g2, _) = copies.body(&key, &e, true).unwrap();
        assert_eq!(g1.as_ptr(), g2.as_ptr(), "made once, then kept");
        // The uncompressed copy of the same entry is its own.
        assert_eq!(raw(&copies, &key, &e), &body[..]);
        // New content under the same key and millisecond: a new gzip copy.
        let mut changed = body.clone();
        changed[20] = b'x';
        let e2 = entry(&changed, 1000);
        let (g3, _) = copies.body(&key, &e2, true).unwrap();
        assert_eq!(gunzip(&g3), changed);
    }

    #[test]
    fn disabled_always_decompresses_and_never_compresses() {
        let key = CacheKey([7; 32]);
        let e = entry(b"{}", 1);
        // Disabled: decompressed every time, and never compressed per request.
        let disabled = Copies::new(0);
        let (a, enc) = disabled.body(&key, &e, true).unwrap();
        assert_eq!((a.clone(), enc), (Bytes::from_static(b"{}"), None));
        let b = raw(&disabled, &key, &e);
        assert_eq!(a, b);
        assert_ne!(a.as_ptr(), b.as_ptr());
    }

    #[tokio::test]
    async fn large_copies_are_made_on_the_offload_threads_and_then_served() {
        let copies = Copies::new(16 << 20);
        let pool = Offload::new(1).unwrap();
        let key = CacheKey([5; 32]);
        let body = br#"{"result":[{"data":"abcabcabcabcabcabcabcabcabcabc"}]}"#.repeat(2_000);
        assert!(body.len() >= offload::MIN_BYTES);
        let e = Arc::new(entry(&body, 1000));
        let cache = copies.cache.as_ref().unwrap();
        for gzip in [false, true] {
            assert!(kept(cache, &id(&key, &e, gzip), &e).is_none());
            copies.prepare(&pool, &key, &e, gzip).await;
            let made = kept(cache, &id(&key, &e, gzip), &e).expect("copy made");
            // `body` answers with that very copy.
            let (b, _) = copies.body(&key, &e, gzip).unwrap();
            assert_eq!(b.as_ptr(), made.as_ptr());
        }
        // A small entry is left to `body`.
        let small = Arc::new(entry(b"{}", 1000));
        copies.prepare(&pool, &key, &small, false).await;
        assert!(kept(cache, &id(&key, &small, false), &small).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_asks_for_one_large_copy_make_it_once() {
        let copies = Arc::new(Copies::new(16 << 20));
        let pool = Arc::new(Offload::new(2).unwrap());
        let key = CacheKey([6; 32]);
        let body = br#"{"result":[{"data":"abcabcabcabcabcabcabcabcabcabc"}]}"#.repeat(4_000);
        let e = Arc::new(entry(&body, 1000));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (copies, pool, e) = (copies.clone(), pool.clone(), e.clone());
                tokio::spawn(async move { copies.prepare(&pool, &key, &e, true).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(copies.made(), 1);
        let (g, _) = copies.body(&key, &e, true).unwrap();
        assert_eq!(gunzip(&g), body);
        assert_eq!(copies.made(), 1, "body answered with the prepared copy");
    }
}
