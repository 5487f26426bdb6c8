//! Building client responses from stored entries and shared fetches, with
//! content negotiation: stored zstd bytes as-is, the stored gzip copy, or a
//! decompressed body — never per-request compression on a hit.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::body::{Body, full};
use crate::error::Error;

pub mod copies;
use crate::store::Entry;

/// Which stored encoding a client can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    Zstd,
    Gzip,
    Identity,
}

/// Parse `Accept-Encoding`, preferring zstd, then gzip. `q=0` means refused.
pub fn negotiate(headers: &HeaderMap) -> Accept {
    let mut zstd = false;
    let mut gzip = false;
    for v in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
            });
            if refused {
                continue;
            }
            if coding.eq_ignore_ascii_case("zstd") {
                zstd = true;
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = true;
            } else if coding == "*" {
                zstd = true;
            }
        }
    }
    if zstd {
        Accept::Zstd
    } else if gzip {
        Accept::Gzip
    } else {
        Accept::Identity
    }
}

/// Does answering `accept` from `entry` take a copy ([`from_entry`]'s `copy`)?
pub fn needs_copy(entry: &Entry, accept: Accept) -> bool {
    match accept {
        Accept::Zstd => false,
        Accept::Gzip => entry.gzip.is_none(),
        Accept::Identity => true,
    }
}

/// A response from a stored entry, in the best encoding the client accepts.
/// Headers are the stored end-to-end headers plus `Content-Encoding`/`Vary`.
/// `copy` gives the body and its encoding, asked only when the client takes
/// neither zstd nor a gzip copy the entry carries (see `copies`).
pub fn from_entry(
    entry: &Entry,
    accept: Accept,
    copy: impl FnOnce(Accept) -> std::io::Result<(Bytes, Option<&'static str>)>,
) -> std::io::Result<Response<Body>> {
    let (body, encoding): (Bytes, Option<&'static str>) = match (accept, &entry.gzip) {
        (Accept::Zstd, _) => (entry.zstd.clone(), Some("zstd")),
        (Accept::Gzip, Some(g)) => (g.clone(), Some("gzip")),
        // Identity clients, and gzip clients of an entry without a gzip copy.
        (accept, _) => copy(accept)?,
    };
    let mut resp = Response::new(full(body.clone()));
    *resp.status_mut() = StatusCode::from_u16(entry.meta.status).unwrap_or(StatusCode::OK);
    let h = resp.headers_mut();
    h.reserve(entry.meta.headers.len() + 5);
    for (n, v) in &entry.meta.headers {
        h.append(n.clone(), v.clone());
    }
    if let Some(enc) = encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
    }
    ensure_vary_accept_encoding(h);
    h.insert(header::CONTENT_LENGTH, number(body.len() as u64));
    Ok(resp)
}

/// A decimal header value in one allocation (`HeaderValue::from(usize)`
/// takes two: a buffer, then the shared handle it is frozen into).
pub(crate) fn number(n: u64) -> HeaderValue {
    let mut buf = itoa::Buffer::new();
    let digits = Bytes::from(buf.format(n).as_bytes().to_vec());
    HeaderValue::from_maybe_shared(digits).expect("digits are a valid header value")
}

/// The uncompressed body of an entry, decompressed with a zstd context reused
/// per thread: creating a context per call (as `zstd::bulk::decompress` does)
/// costs more than decompressing a small body.
pub(crate) fn decompress(entry: &Entry) -> std::io::Result<Bytes> {
    use std::cell::RefCell;
    thread_local! {
        static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    }
    let raw_len = entry.meta.raw_len as usize;
    let raw = DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        slot.as_mut()
            .expect("initialised above")
            .decompress(&entry.zstd, raw_len)
    })?;
    if raw.len() != raw_len {
        return Err(std::io::Error::other("decompressed length mismatch"));
    }
    Ok(Bytes::from(raw))
}

/// A response from a shared, uncompressed body (non-stored fetches).
pub fn from_parts(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Response<Body> {
    let len = body.len();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers.clone();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, number(len as u64));
    resp
}

/// Responses vary by encoding; keep Superset's `Vary` and add it if missing.
fn ensure_vary_accept_encoding(h: &mut HeaderMap) {
    // Case-insensitive search without allocating: this runs on every hit.
    const AE: &[u8] = b"accept-encoding";
    let has = h.get_all(header::VARY).iter().any(|v| {
        v.as_bytes()
            .windows(AE.len())
            .any(|w| w.eq_ignore_ascii_case(AE))
    });
    if !has {
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// Headers of a Superset response worth storing and replaying: everything
/// end-to-end except cookies, framing and per-response values.
///
/// Values are copied: a parsed `HeaderValue` shares the connection's read
/// buffer, so keeping the original in a long-lived entry would pin that whole
/// buffer (kilobytes to hundreds of kilobytes) per entry, outside the store's
/// byte bound.
pub fn storable_headers(h: &HeaderMap) -> Vec<(header::HeaderName, HeaderValue)> {
    h.iter()
        .filter(|(n, _)| !is_unstorable_header(n))
        .map(|(n, v)| (n.clone(), crate::upstream::owned_header_value(v)))
        .collect()
}

fn is_unstorable_header(n: &header::HeaderName) -> bool {
    matches!(
        n.as_str(),
        "set-cookie"
            | "content-length"
            | "content-encoding"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "date"
            | "age"
            | "cache-status"
            | "x-request-id"
            | "proxy-authenticate"
            | "trailer"
            | "upgrade"
    )
}

/// Copy of `h` without `Set-Cookie`, for responses shared with other requests.
pub fn without_cookies(h: &HeaderMap) -> HeaderMap {
    let mut out = h.clone();
    out.remove(header::SET_COOKIE);
    out
}

/// A complete upstream response shared between a leader and its followers.
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    /// Response headers without `Set-Cookie` and framing headers.
    pub headers: HeaderMap,
    /// Uncompressed body.
    pub body: Bytes,
    /// The stored entry, when the response was storable.
    pub entry: Option<Arc<Entry>>,
}

impl Fetched {
    /// A stored entry handed on as a fetch result (another replica's entry, a
    /// stale fallback, an async job's data): served from the entry's bytes.
    pub fn from_entry(entry: Arc<Entry>) -> Arc<Fetched> {
        Arc::new(Fetched {
            status: StatusCode::from_u16(entry.meta.status).unwrap_or(StatusCode::OK),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            entry: Some(entry),
        })
    }
}

/// The response a client sees for an error: Superset's `{"message": ...}` shape.
pub fn error(e: Error) -> Response<Body> {
    let status = e.status();
    let msg = match &e {
        // Do not leak internal details (addresses, store names) to clients.
        Error::UpstreamConnect(_) => "Superset is unreachable".to_string(),
        Error::UpstreamTimeout => "Superset did not answer in time".to_string(),
        Error::Upstream(_) => "Superset returned an invalid response".to_string(),
        Error::Store(_) | Error::Internal(_) => "Internal error in chartcache".to_string(),
        other => other.to_string(),
    };
    let body = serde_json::to_vec(&serde_json::json!({ "message": msg })).unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The request may not have been read to its end: the connection
    // cannot carry another one.
    if matches!(e, Error::RequestTimeout | Error::Overloaded) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_answer_in_supersets_shape_without_internal_details() {
        let r = error(Error::UpstreamConnect("10.0.0.1:8088 refused".into()));
        assert_eq!(r.status(), 502);
        let b = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["message"], "Superset is unreachable");
    }

    #[test]
    fn number_values_are_the_decimal_digits() {
        for n in [0u64, 7, 1_234_567, u64::MAX] {
            assert_eq!(number(n), HeaderValue::from(n));
        }
    }
    use crate::store::Meta;
    use http_body_util::BodyExt;

    fn hm(ae: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(ae).unwrap());
        h
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(&hm("gzip, deflate, br, zstd")), Accept::Zstd);
        assert_eq!(negotiate(&hm("gzip, deflate, br")), Accept::Gzip);
        assert_eq!(negotiate(&hm("zstd;q=0, gzip;q=0.5")), Accept::Gzip);
        assert_eq!(negotiate(&hm("br")), Accept::Identity);
        assert_eq!(negotiate(&HeaderMap::new()), Accept::Identity);
    }

    #[tokio::test]
    async fn all_encodings_give_the_same_json() {
        let raw = br#"{"result":[{"data":[{"x":1}]}]}"#.repeat(20);
        let meta = Meta {
            status: 200,
            headers: vec![(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            stored_at: 0,
            fresh_until: 1,
            stale_until: 2,
            upstream_ms: 0,
            raw_len: raw.len() as u32,
            tags: vec![],
        };
        let e = Entry::build(meta, &raw, 3, true).unwrap();
        for a in [Accept::Zstd, Accept::Gzip, Accept::Identity] {
            let r = from_entry(&e, a, |_| Ok((decompress(&e)?, None))).unwrap();
            let enc = r
                .headers()
                .get(header::CONTENT_ENCODING)
                .map(|v| v.to_str().unwrap().to_string());
            let b = r.into_body().collect().await.unwrap().to_bytes();
            let plain = match enc.as_deref() {
                Some("zstd") => zstd::stream::decode_all(&b[..]).unwrap(),
                Some("gzip") => {
                    let mut out = Vec::new();
                    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&b[..]), &mut out)
                        .unwrap();
                    out
                }
                None => b.to_vec(),
                Some(o) => panic!("{o}"),
            };
            assert_eq!(plain, raw);
        }
    }

    #[test]
    fn vary_names_accept_encoding_once() {
        let mut h = HeaderMap::new();
        h.insert(
            header::VARY,
            HeaderValue::from_static("Cookie, ACCEPT-encoding"),
        );
        ensure_vary_accept_encoding(&mut h);
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
        let mut h = HeaderMap::new();
        h.insert(header::VARY, HeaderValue::from_static("Cookie"));
        ensure_vary_accept_encoding(&mut h);
        let v: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(v, ["Cookie", "Accept-Encoding"]);
    }

    #[test]
    fn storable_headers_drop_cookies_and_framing() {
        let mut h = HeaderMap::new();
        h.insert(header::SET_COOKIE, HeaderValue::from_static("session=x"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        h.insert(header::DATE, HeaderValue::from_static("now"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
        let s = storable_headers(&h);
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|(n, _)| n != header::SET_COOKIE));
    }
}
