//! Properties checked on arbitrary input by the `cargo fuzz` targets in
//! `fuzz/` and by the bounded randomized unit tests in `proptests.rs`
//! (`cargo test --lib fuzz_harness`).
//! One place, so both exercise exactly the same assertions.
//!
//! A violated property panics: that is what a fuzzer reports as a crash.

use http::Method;

use crate::config::RoutesConfig;
use crate::fingerprint::{self, build_key};
use crate::invalidate;
use crate::route::{self, CachedRoute, ObjectKind, Route};
use crate::store::Purge;
use crate::tags;

/// Split fuzz input into a route choice, a content type, a query string and a body.
fn split(data: &[u8]) -> (CachedRoute, Option<&'static str>, Option<String>, &[u8]) {
    let (head, rest) = data.split_first().map_or((0, data), |(h, r)| (*h, r));
    let route = match head % 3 {
        0 => CachedRoute::ChartData,
        1 => CachedRoute::ChartDataGet {
            chart_id: u64::from(head),
        },
        _ => CachedRoute::ExploreJson,
    };
    let content_type = match (head >> 2) % 4 {
        0 => None,
        1 => Some("application/json"),
        2 => Some("application/json; charset=utf-8"),
        _ => Some("application/x-www-form-urlencoded"),
    };
    // Bytes up to the first NUL are the query string (when any NUL exists).
    match rest.iter().position(|b| *b == 0) {
        Some(i) => (
            route,
            content_type,
            Some(String::from_utf8_lossy(&rest[..i]).into_owned()),
            &rest[i + 1..],
        ),
        None => (route, content_type, None, rest),
    }
}

/// Canonicalization and key building: never panic, deterministic, idempotent
/// on their own output, and the scope always separates keys.
pub fn check_fingerprint(data: &[u8]) {
    let (route, ct, query, body) = split(data);
    let path = "/api/v1/chart/data";
    let first = fingerprint::canonicalize(route, path, query.as_deref(), ct, body);
    let again = fingerprint::canonicalize(route, path, query.as_deref(), ct, body);
    match (&first, &again) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.body, b.body);
            assert_eq!(a.query, b.query);
            assert_eq!(a.force, b.force);
            assert_eq!(a.facts, b.facts);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("canonicalize is not deterministic"),
    }
    let Ok(c) = first else { return };
    if !c.body.is_empty() {
        // The canonical form is a fixed point (control fields are already gone).
        let re = fingerprint::canonicalize(route, path, None, Some("application/json"), &c.body)
            .expect("canonical body must parse");
        assert_eq!(re.body, c.body, "canonical form is not idempotent");
        assert!(!re.force);
    }
    let _ = c.facts.tags();
    let k1 = build_key(route, path, &c.query, "user:1", &c.body_digest);
    let k2 = build_key(route, path, &c.query, "user:1", &c.body_digest);
    let k3 = build_key(route, path, &c.query, "user:2", &c.body_digest);
    let k4 = build_key(route, path, &c.query, "public", &c.body_digest);
    assert_eq!(k1, k2);
    assert_ne!(k1, k3);
    assert_ne!(k1, k4);
    assert_eq!(crate::key::CacheKey::from_hex(&k1.to_hex()), Some(k1));
}

/// Route classification: never panics, and only GET/POST are ever cached.
pub fn check_classify(data: &[u8]) {
    let (head, rest) = data.split_first().map_or((0, data), |(h, r)| (*h, r));
    let method = match head % 8 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::PUT,
        3 => Method::DELETE,
        4 => Method::PATCH,
        5 => Method::HEAD,
        6 => Method::OPTIONS,
        _ => Method::from_bytes(b"PURGE").unwrap(),
    };
    let text = String::from_utf8_lossy(rest);
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (text.to_string(), None),
    };
    let cfg = RoutesConfig::default();
    let r = route::classify(&method, &path, query.as_deref(), &cfg);
    if let Route::Cached(_) = r {
        assert!(method == Method::GET || method == Method::POST);
    }
    let _ = r.label();
    // What a real request would carry: the same input through `http::Uri`.
    if let Ok(uri) = format!("/{}", text.trim_start_matches('/')).parse::<http::Uri>() {
        let _ = route::classify(&method, uri.path(), uri.query(), &cfg);
    }
}

/// Header names the credential fuzzer picks from (byte 0 of a line, mod 8).
const CREDENTIAL_HEADERS: [&str; 8] = [
    "authorization",
    "cookie",
    "x-guesttoken",
    "connection",
    "te",
    "keep-alive",
    "x-other",
    "cookie",
];

/// Credential extraction on arbitrary headers (byte 0: HTTP/2 when odd; then
/// lines, each a header-name byte and value bytes). Never panics, is
/// deterministic, and a credential set it reads is exactly what
/// `credentials::apply` sends: the rebuilt headers carry one value per
/// credential header (so gunicorn's joining of repeated headers changes
/// nothing), no `Connection`, and read back as the same set.
pub fn check_credentials(data: &[u8]) {
    use crate::credentials::{Extracted, apply, extract};
    use http::header::{self, HeaderMap, HeaderName, HeaderValue};
    let (head, rest) = data.split_first().map_or((0, data), |(h, r)| (*h, r));
    let version = if head % 2 == 1 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    let mut h = HeaderMap::new();
    for line in rest.split(|b| *b == b'\n') {
        let Some((n, v)) = line.split_first() else {
            continue;
        };
        let name = HeaderName::from_static(CREDENTIAL_HEADERS[(*n % 8) as usize]);
        if let Ok(v) = HeaderValue::from_bytes(v) {
            h.append(name, v);
        }
    }
    let guest = HeaderName::from_static("x-guesttoken");
    let mut a = h.clone();
    let mut b = h.clone();
    let first = extract(&mut a, version, "session", &guest);
    assert_eq!(first, extract(&mut b, version, "session", &guest));
    let Extracted::Set(creds) = first else {
        return;
    };
    assert!(!a.contains_key(header::CONNECTION), "hop-by-hop left in");
    apply(Some(&creds), &mut a, "session", &guest);
    for n in [header::AUTHORIZATION, header::COOKIE, guest.clone()] {
        assert!(a.get_all(&n).iter().count() <= 1, "{n} twice after apply");
    }
    let mut again = a.clone();
    match extract(&mut again, http::Version::HTTP_11, "session", &guest) {
        Extracted::Set(c) => assert_eq!(c, creds, "what is sent reads back differently"),
        other => panic!("the rebuilt set reads as {other:?}"),
    }
}

/// Write-path classification: a `PUT`/`DELETE` of `/api/v1/{kind}/{segment}`
/// is a write to that kind whenever Superset would route the segment as an
/// id (one non-empty path segment once percent-decoded), however the path is
/// spelled — every byte percent-encoded, or every slash doubled, classifies
/// the same — and its purge names each readable id's tags, or everything.
pub fn check_write_path(data: &[u8]) {
    let (head, rest) = data.split_first().map_or((0, data), |(h, r)| (*h, r));
    let method = if head & 1 == 0 {
        Method::PUT
    } else {
        Method::DELETE
    };
    let kinds = [
        ObjectKind::Chart,
        ObjectKind::Dataset,
        ObjectKind::Dashboard,
        ObjectKind::Database,
    ];
    let kind = kinds[usize::from(head >> 1) % kinds.len()];
    let seg = String::from_utf8_lossy(rest);
    let path = format!("/api/v1/{}/{seg}", kind.as_str());
    let cfg = RoutesConfig::default();
    let r = route::classify(&method, &path, None, &cfg);
    if !path.contains('%') {
        let encoded: String = path.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(
            route::classify(&method, &encoded, None, &cfg),
            r,
            "{encoded}"
        );
        let doubled = path.replace('/', "//");
        assert_eq!(
            route::classify(&method, &doubled, None, &cfg),
            r,
            "{doubled}"
        );
    }
    let decoded = route::percent_decode(seg.as_bytes(), false);
    if !decoded.is_empty() && !decoded.contains(&b'/') {
        match &r {
            Route::Write(t) => assert_eq!(t.kind, kind, "{path}"),
            other => panic!("{method} {path} is not a write: {other:?}"),
        }
    }
    if let Route::Write(t) = &r {
        match invalidate::purge_for(t) {
            Purge::All => assert!(t.ids.is_empty() || t.kind == ObjectKind::Database),
            Purge::Tags(purged) => {
                assert!(!t.ids.is_empty());
                for id in &t.ids {
                    for tag in tags::for_write(t.kind, *id) {
                        assert!(purged.contains(&tag), "{path}: {tag} not purged");
                    }
                }
            }
            Purge::Keys(_) => panic!("a write purges by tag"),
        }
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_shapes() {
        for d in [
            &b""[..],
            b"\0\0Bearer x\n\x01session=a\n\x03keep-alive, cookie",
            b"\0\x01theme=dark\n\x07session=a\n\0Bearer b",
            b"\x01\x01theme=dark\n\x07session=a\n\0Bearer b",
            b"\0\x02g\n\0\n\0Bearer b",
            b"\0\x01session=caf\xc3\xa9",
            b"\0\x01session",
            b"\0\x01 session = a ; b",
        ] {
            check_credentials(d);
        }
    }

    #[test]
    fn empty_and_tiny_inputs() {
        for d in [
            &b""[..],
            b"\0",
            b"\x01",
            b"{}",
            b"\x00{\"a\":1}",
            b"\x04\0{\"force\":true}",
        ] {
            check_fingerprint(d);
            check_classify(d);
            check_write_path(d);
        }
    }

    #[test]
    fn write_paths_that_once_sidestepped_invalidation() {
        for d in [
            &b"\x02%31"[..],
            b"\x02%30%31",
            b"\x021/",
            b"\x02/1",
            b"\x021%2Frefresh",
            b"\x02%201",
            b"\x031/column/5",
            b"\x00%FF",
            b"\x0099999999999999999999999",
        ] {
            check_write_path(d);
        }
    }
}
