//! A stored response: a versioned header (status, headers, times, tags) plus the
//! body compressed once with zstd. The encoded form is what Redis holds; the
//! memory store keeps the decoded `Entry` (and an optional gzip copy) in an `Arc`.
//!
//! Layout (all integers little-endian):
//! `magic "CCE" | version u8 | status u16 | stored_at u64 | fresh_until u64 |
//!  stale_until u64 | upstream_ms u32 | raw_len u32 | n_headers u16 |
//!  (name_len u16, name, value_len u32, value)* | n_tags u16 | (len u16, tag)* |
//!  zstd body (rest)`

use std::sync::atomic::{AtomicU32, Ordering};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue};

use crate::config::TierConfig;

const MAGIC: &[u8; 3] = b"CCE";
/// Entry format version; entries of other versions are treated as misses.
pub const ENTRY_VERSION: u8 = 1;

/// Times and facts about an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub status: u16,
    /// End-to-end response headers to replay (never `Set-Cookie`, hop-by-hop,
    /// `Content-Length`, `Content-Encoding` or `Date`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Unix ms when stored.
    pub stored_at: u64,
    /// Unix ms until which the entry is fresh.
    pub fresh_until: u64,
    /// Unix ms until which the entry may be served stale (>= fresh_until).
    pub stale_until: u64,
    /// How long Superset took to produce it (ms).
    pub upstream_ms: u32,
    /// Uncompressed body length.
    pub raw_len: u32,
    /// Invalidation tags.
    pub tags: Vec<String>,
}

/// A cached response.
#[derive(Debug, Clone)]
pub struct Entry {
    pub meta: Meta,
    /// Body compressed with zstd.
    pub zstd: Bytes,
    /// Optional gzip copy, made once, for clients that do not accept zstd.
    pub gzip: Option<Bytes>,
    /// Fresh hits served from this copy in this process (refresh-ahead). Never
    /// encoded: it describes this process's traffic, not the response.
    pub hits: HitCounter,
}

/// A per-entry hit counter: one relaxed atomic add per fresh hit, so counting
/// needs no lock and no map. A clone starts from zero (it is a new copy).
#[derive(Debug, Default)]
pub struct HitCounter(AtomicU32);

impl HitCounter {
    /// Count one hit; returns the count including it (saturating).
    #[inline]
    pub fn hit(&self) -> u32 {
        self.0.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }

    /// Hits counted so far.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Clone for HitCounter {
    fn clone(&self) -> Self {
        HitCounter::default()
    }
}

/// Why stored bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not a chartcache entry")]
    BadMagic,
    #[error("entry version {0} is not supported")]
    Version(u8),
    #[error("entry is truncated or corrupt")]
    Corrupt,
    /// The header claims a body larger than this process stores: decompressing
    /// it would allocate that much (a few KB of zstd can claim gigabytes).
    #[error("entry body of {0} bytes exceeds the object limit")]
    TooLarge(u32),
}

impl DecodeError {
    /// Label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            DecodeError::BadMagic => "bad-magic",
            DecodeError::Version(_) => "version",
            DecodeError::Corrupt => "corrupt",
            DecodeError::TooLarge(_) => "too-large",
        }
    }
}

impl Entry {
    /// Compress a response body once and build the entry.
    pub fn build(
        meta: Meta,
        raw_body: &[u8],
        zstd_level: i32,
        with_gzip: bool,
    ) -> std::io::Result<Entry> {
        // `compress` allocates its worst-case bound (about the raw size); shrink
        // to the compressed length so an entry holds what `weight` counts.
        let zstd = Bytes::from(zstd::bulk::compress(raw_body, zstd_level)?.into_boxed_slice());
        let gzip = if with_gzip {
            Some(gzip(raw_body)?)
        } else {
            None
        };
        Ok(Entry {
            meta,
            zstd,
            gzip,
            hits: HitCounter::default(),
        })
    }

    /// The same bodies under other metadata (shared, not copied); the hit
    /// count starts over.
    pub fn with_meta(&self, meta: Meta) -> Entry {
        Entry {
            meta,
            zstd: self.zstd.clone(),
            gzip: self.gzip.clone(),
            hits: HitCounter::default(),
        }
    }

    /// Add the gzip copy if missing (entries read from Redis carry only zstd).
    pub fn with_gzip(mut self) -> std::io::Result<Entry> {
        if self.gzip.is_none() {
            let raw = self.decompress()?;
            self.gzip = Some(gzip(&raw)?);
        }
        Ok(self)
    }

    /// The uncompressed body.
    pub fn decompress(&self) -> std::io::Result<Bytes> {
        let raw = zstd::bulk::decompress(&self.zstd, self.meta.raw_len as usize)?;
        if raw.len() != self.meta.raw_len as usize {
            return Err(std::io::Error::other("decompressed length mismatch"));
        }
        Ok(Bytes::from(raw))
    }

    /// Bytes this entry holds in memory, for the memory store's byte bound.
    pub fn weight(&self) -> u64 {
        let headers: usize = self
            .meta
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 16)
            .sum();
        let tags: usize = self.meta.tags.iter().map(|t| t.len() + 24).sum();
        (self.zstd.len() + self.gzip.as_ref().map_or(0, |g| g.len()) + headers + tags + 160) as u64
    }

    /// Encode for a remote store (zstd body only).
    pub fn encode(&self) -> Bytes {
        let m = &self.meta;
        let mut b = BytesMut::with_capacity(64 + self.zstd.len() + m.headers.len() * 48);
        b.put_slice(MAGIC);
        b.put_u8(ENTRY_VERSION);
        b.put_u16_le(m.status);
        b.put_u64_le(m.stored_at);
        b.put_u64_le(m.fresh_until);
        b.put_u64_le(m.stale_until);
        b.put_u32_le(m.upstream_ms);
        b.put_u32_le(m.raw_len);
        b.put_u16_le(m.headers.len().min(u16::MAX as usize) as u16);
        for (n, v) in m.headers.iter().take(u16::MAX as usize) {
            b.put_u16_le(n.as_str().len() as u16);
            b.put_slice(n.as_str().as_bytes());
            b.put_u32_le(v.len() as u32);
            b.put_slice(v.as_bytes());
        }
        b.put_u16_le(m.tags.len().min(u16::MAX as usize) as u16);
        for t in m.tags.iter().take(u16::MAX as usize) {
            let t = &t.as_bytes()[..t.len().min(u16::MAX as usize)];
            b.put_u16_le(t.len() as u16);
            b.put_slice(t);
        }
        b.put_slice(&self.zstd);
        b.freeze()
    }

    /// Decode what `encode` wrote, with no bound on the body size it claims
    /// beyond the format's own (tests, tools). Stores use [`Entry::decode_within`].
    pub fn decode(buf: Bytes) -> Result<Entry, DecodeError> {
        Entry::decode_within(buf, u64::from(u32::MAX))
    }

    /// Decode what `encode` wrote, as untrusted input: never panics, and
    /// rejects (before anything is decompressed) a claimed body larger than
    /// `max_raw_len`, a status that is not one, and a body that is not exactly
    /// one zstd frame declaring `raw_len` bytes. Checking the frame reads only
    /// its block headers; a corrupt block is found when it is decompressed.
    pub fn decode_within(mut buf: Bytes, max_raw_len: u64) -> Result<Entry, DecodeError> {
        fn need(b: &Bytes, n: usize) -> Result<(), DecodeError> {
            if b.remaining() < n {
                Err(DecodeError::Corrupt)
            } else {
                Ok(())
            }
        }
        need(&buf, 4)?;
        if &buf[..3] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if buf[3] != ENTRY_VERSION {
            return Err(DecodeError::Version(buf[3]));
        }
        buf.advance(4);
        need(&buf, 2 + 8 * 3 + 4 + 4 + 2)?;
        let status = buf.get_u16_le();
        let stored_at = buf.get_u64_le();
        let fresh_until = buf.get_u64_le();
        let stale_until = buf.get_u64_le();
        let upstream_ms = buf.get_u32_le();
        let raw_len = buf.get_u32_le();
        if u64::from(raw_len) > max_raw_len {
            return Err(DecodeError::TooLarge(raw_len));
        }
        if !(100..=599).contains(&status) || stale_until < fresh_until {
            return Err(DecodeError::Corrupt);
        }
        let nh = buf.get_u16_le() as usize;
        let mut headers = Vec::with_capacity(nh.min(64));
        for _ in 0..nh {
            need(&buf, 2)?;
            let nl = buf.get_u16_le() as usize;
            need(&buf, nl)?;
            let name =
                HeaderName::from_bytes(&buf.split_to(nl)).map_err(|_| DecodeError::Corrupt)?;
            need(&buf, 4)?;
            let vl = buf.get_u32_le() as usize;
            need(&buf, vl)?;
            let value = HeaderValue::from_maybe_shared(buf.split_to(vl))
                .map_err(|_| DecodeError::Corrupt)?;
            headers.push((name, value));
        }
        need(&buf, 2)?;
        let nt = buf.get_u16_le() as usize;
        let mut tags = Vec::with_capacity(nt.min(16));
        for _ in 0..nt {
            need(&buf, 2)?;
            let l = buf.get_u16_le() as usize;
            need(&buf, l)?;
            tags.push(
                String::from_utf8(buf.split_to(l).to_vec()).map_err(|_| DecodeError::Corrupt)?,
            );
        }
        check_frame(&buf, raw_len)?;
        Ok(Entry {
            meta: Meta {
                status,
                headers,
                stored_at,
                fresh_until,
                stale_until,
                upstream_ms,
                raw_len,
                tags,
            },
            zstd: buf,
            gzip: None,
            hits: HitCounter::default(),
        })
    }
}

/// `zstd` is exactly one complete frame that declares `raw_len` bytes (what
/// `Entry::build` writes): no truncation, no trailing bytes, no other size.
fn check_frame(zstd: &[u8], raw_len: u32) -> Result<(), DecodeError> {
    use zstd::zstd_safe;
    match zstd_safe::get_frame_content_size(zstd) {
        Ok(Some(n)) if n == u64::from(raw_len) => {}
        _ => return Err(DecodeError::Corrupt),
    }
    match zstd_safe::find_frame_compressed_size(zstd) {
        Ok(n) if n == zstd.len() => Ok(()),
        _ => Err(DecodeError::Corrupt),
    }
}

/// Gzip `raw` once (fast level: a copy made per entry, not per request).
pub(crate) fn gzip(raw: &[u8]) -> std::io::Result<Bytes> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    enc.write_all(raw)?;
    Ok(Bytes::from(enc.finish()?.into_boxed_slice()))
}

/// Where an entry stands in its tier's windows at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Before `fresh_until`: serve.
    Fresh,
    /// Inside the stale-while-revalidate window: serve and refresh.
    Revalidate,
    /// Past SWR but still stored: fetch, and serve it only if Superset fails
    /// within the stale-if-error window.
    IfError,
    /// Past every window.
    Expired,
}

/// Classify `meta` at `now` under `tier` (the tier of the current decision, so
/// a changed configuration applies to entries already stored).
pub fn window(meta: &Meta, tier: &TierConfig, now: u64) -> Window {
    if now < meta.fresh_until {
        return Window::Fresh;
    }
    if now >= meta.stale_until {
        return Window::Expired;
    }
    let past = now - meta.fresh_until;
    if past < tier.stale_while_revalidate_secs.saturating_mul(1000) {
        Window::Revalidate
    } else if past < tier.stale_if_error_secs.saturating_mul(1000) {
        Window::IfError
    } else {
        Window::Expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(body: &[u8]) -> Entry {
        let meta = Meta {
            status: 200,
            headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            )],
            stored_at: 1_000,
            fresh_until: 2_000,
            stale_until: 3_000,
            upstream_ms: 42,
            raw_len: body.len() as u32,
            tags: vec!["chart:1".into(), "dataset:1__table".into()],
        };
        Entry::build(meta, body, 3, true).unwrap()
    }

    #[test]
    fn roundtrip() {
        let body = br#"{"result":[{"data":[1,2,3]}]}"#.repeat(50);
        let e = sample(&body);
        let d = Entry::decode(e.encode()).unwrap();
        assert_eq!(d.meta, e.meta);
        assert_eq!(d.decompress().unwrap(), Bytes::from(body.clone()));
        let g = d.with_gzip().unwrap().gzip.unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&g[..]), &mut out).unwrap();
        assert_eq!(out, body);
    }

    #[test]
    fn rejects_foreign_and_truncated_bytes() {
        let e = sample(b"{}").encode();
        assert_eq!(
            Entry::decode(Bytes::from_static(b"xx")).unwrap_err(),
            DecodeError::Corrupt
        );
        assert_eq!(
            Entry::decode(Bytes::from_static(b"XYZ\x01")).unwrap_err(),
            DecodeError::BadMagic
        );
        let mut v = e.to_vec();
        v[3] = 99;
        assert_eq!(
            Entry::decode(Bytes::from(v)).unwrap_err(),
            DecodeError::Version(99)
        );
        for cut in 4..40 {
            assert!(Entry::decode(e.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn compressed_buffers_hold_no_spare_capacity() {
        // A shrunk buffer is a boxed slice: `Bytes::try_into_mut` then yields
        // a `BytesMut` whose capacity equals the length.
        let Entry { zstd, gzip, .. } = sample(&br#"{"data":[1,2,3]}"#.repeat(5_000));
        let gzip = gzip.unwrap();
        let (zl, gl) = (zstd.len(), gzip.len());
        assert_eq!(bytes::BytesMut::from(zstd).capacity(), zl);
        assert_eq!(bytes::BytesMut::from(gzip).capacity(), gl);
    }

    #[test]
    fn weight_counts_both_encodings() {
        let e = sample(&[b'x'; 10_000]);
        assert!(e.weight() >= (e.zstd.len() + e.gzip.as_ref().unwrap().len()) as u64);
    }

    #[test]
    fn a_claimed_size_beyond_the_limit_is_refused_before_decompressing() {
        let e = sample(&[b'x'; 5_000]);
        assert!(Entry::decode_within(e.encode(), 5_000).is_ok());
        assert_eq!(
            Entry::decode_within(e.encode(), 4_999).unwrap_err(),
            DecodeError::TooLarge(5_000)
        );
        // A few KB of zstd that honestly declare 256 MiB of zeros.
        let zeros = vec![0u8; 256 << 20];
        let mut big = sample(b"");
        big.meta.raw_len = zeros.len() as u32;
        big.zstd = Bytes::from(zstd::bulk::compress(&zeros, 3).unwrap());
        assert!(big.zstd.len() < 16 * 1024);
        assert_eq!(
            Entry::decode_within(big.encode(), 32 << 20).unwrap_err(),
            DecodeError::TooLarge(256 << 20)
        );
    }

    #[test]
    fn header_and_frame_must_agree() {
        let body = br#"{"result":[1,2,3]}"#.repeat(20);
        let good = sample(&body);
        let enc = good.encode();
        let zstart = enc.len() - good.zstd.len();
        // raw_len (offset 34) off by one either way.
        for delta in [1i64, -1] {
            let mut v = enc.to_vec();
            let raw = u32::from_le_bytes(v[34..38].try_into().unwrap()) as i64 + delta;
            v[34..38].copy_from_slice(&(raw as u32).to_le_bytes());
            assert_eq!(
                Entry::decode(Bytes::from(v)).unwrap_err(),
                DecodeError::Corrupt
            );
        }
        // Truncated frame, trailing bytes, garbage instead of a frame.
        assert_eq!(
            Entry::decode(enc.slice(..enc.len() - 1)).unwrap_err(),
            DecodeError::Corrupt
        );
        let mut v = enc.to_vec();
        v.push(0);
        assert_eq!(
            Entry::decode(Bytes::from(v)).unwrap_err(),
            DecodeError::Corrupt
        );
        let mut v = enc.to_vec();
        for b in &mut v[zstart..] {
            *b = 0xAB;
        }
        assert_eq!(
            Entry::decode(Bytes::from(v)).unwrap_err(),
            DecodeError::Corrupt
        );
        // Status that is not one; stale before fresh.
        let mut v = enc.to_vec();
        v[4..6].copy_from_slice(&7u16.to_le_bytes());
        assert_eq!(
            Entry::decode(Bytes::from(v)).unwrap_err(),
            DecodeError::Corrupt
        );
        let mut bad = sample(&body);
        bad.meta.stale_until = bad.meta.fresh_until - 1;
        assert_eq!(
            Entry::decode(bad.encode()).unwrap_err(),
            DecodeError::Corrupt
        );
        // An empty body round-trips.
        let empty = sample(b"");
        assert_eq!(Entry::decode(empty.encode()).unwrap().meta, empty.meta);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let enc = sample(&br#"{"a":1}"#.repeat(30)).encode();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2_000 {
            let mut v = enc.to_vec();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % v.len();
                v[i] = (x >> 32) as u8;
            }
            if let Ok(e) = Entry::decode_within(Bytes::from(v), 1 << 20) {
                assert!(e.meta.raw_len <= 1 << 20);
                let _ = e.decompress();
            }
        }
    }
}
