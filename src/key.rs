//! The cache key type and the hashing helpers every digest in the crate uses.
//!
//! A leaf: it imports nothing of the crate, so stores, the coalescer and the
//! request path can all name a key without depending on how one is built
//! (that is [`crate::fingerprint::build_key`]).

use std::fmt;

/// A 32-byte blake3 digest identifying one cacheable response.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// Lower-case hex, as used in Redis keys, logs and the admin API.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse the hex form back (admin purge by key).
    pub fn from_hex(s: &str) -> Option<CacheKey> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(CacheKey(out))
    }

    /// A key derived from this one under `tag` (a forced refresh's or an
    /// async channel's coalescing key): never equal to a built key.
    pub fn derived(&self, tag: &[u8]) -> CacheKey {
        let mut h = blake3::Hasher::new();
        h.update(tag);
        h.update(&self.0);
        CacheKey(*h.finalize().as_bytes())
    }

    /// The first 12 hex characters: enough to correlate log lines.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.to_hex())
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The hasher for maps keyed by digests (cache keys, credential digests).
/// A digest's bytes are already uniformly distributed, and a client cannot
/// steer them (they are blake3 outputs), so mixing its first word costs a
/// few instructions where SipHash, the default of `HashMap` and moka, costs
/// hundreds; a hit makes several such lookups.
#[derive(Clone, Copy, Debug, Default)]
pub struct DigestHash;

impl std::hash::BuildHasher for DigestHash {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

/// See [`DigestHash`].
#[derive(Debug, Default)]
pub struct DigestHasher(u64);

impl DigestHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl std::hash::Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        // The first 8 bytes of a digest are as good a hash as any of it.
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.mix(u64::from_le_bytes(word));
    }
    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
    fn finish(&self) -> u64 {
        // Fold the well-mixed high bits into the low ones, which hash tables
        // index by (a product's low bits depend only on its inputs' low bits).
        let x = self.0;
        (x ^ (x >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ (x >> 29)
    }
}

/// Bytes to be hashed, gathered first so the hash runs once over one slice:
/// for inputs of a few hundred bytes, blake3's and xxh3's per-`update` work
/// costs more than the hashing. Inline up to `N` bytes, on the heap beyond.
/// Hashing the gathered bytes gives exactly what feeding them one by one to
/// a streaming hasher gives.
pub struct Gather<const N: usize> {
    inline: [u8; N],
    len: usize,
    heap: Vec<u8>,
}

impl<const N: usize> Default for Gather<N> {
    fn default() -> Self {
        Gather {
            inline: [0; N],
            len: 0,
            heap: Vec::new(),
        }
    }
}

impl<const N: usize> Gather<N> {
    /// Append `b`.
    pub fn push(&mut self, b: &[u8]) {
        if self.heap.is_empty() && self.len + b.len() <= N {
            self.inline[self.len..self.len + b.len()].copy_from_slice(b);
            self.len += b.len();
        } else {
            if self.heap.is_empty() {
                self.heap.reserve(self.len + b.len() + N);
                self.heap.extend_from_slice(&self.inline[..self.len]);
            }
            self.heap.extend_from_slice(b);
        }
    }

    /// Append `b` with its length before it (u64, little-endian).
    pub fn field(&mut self, b: &[u8]) {
        self.push(&(b.len() as u64).to_le_bytes());
        self.push(b);
    }

    /// Everything appended so far.
    pub fn as_slice(&self) -> &[u8] {
        if self.heap.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }
}

/// Feed an optional, length-prefixed part to a hash function (`update` is its
/// `update`): `0` for absent, `1 | len | bytes` for present, so no two
/// different part lists collide. Shared by every digest that identifies inputs
/// (credentials, the request memo).
pub fn hash_optional_part(update: &mut impl FnMut(&[u8]), v: Option<&[u8]>) {
    match v {
        Some(b) => {
            update(&[1]);
            update(&(b.len() as u64).to_le_bytes());
            update(b);
        }
        None => update(&[0]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hashes_spread_over_low_bits_even_when_first_bytes_agree() {
        use std::hash::BuildHasher;
        // As in a refresher shard: every key's first byte is the same mod 16.
        let mut seen = std::collections::HashSet::new();
        for i in 0..8_192u64 {
            let mut k = *blake3::hash(&i.to_le_bytes()).as_bytes();
            k[0] &= 0xF0;
            let h = DigestHash.hash_one(CacheKey(k));
            assert_eq!(h, DigestHash.hash_one(CacheKey(k)));
            seen.insert(h & 1023);
        }
        // 8 192 random draws from 1 024 buckets leave about none empty.
        assert!(
            seen.len() > 1_000,
            "{} of 1024 low-bit buckets used",
            seen.len()
        );
    }
}
