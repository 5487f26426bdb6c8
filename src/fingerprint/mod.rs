//! The cache key: one type, built in one function, hashed with blake3 and
//! pinned by test vectors.
//!
//! Input, in order, each length-prefixed: key-schema version, route kind, path,
//! sorted decoded query parameters (control parameters removed), identity scope,
//! canonical body. The canonical body is the JSON request with object keys
//! sorted recursively, no whitespace, and control fields (`force`) removed; it
//! enters the key as its own blake3 digest ([`body_digest`], schema 2), computed
//! once per distinct body, so a hit hashes about a hundred bytes instead of the
//! whole body again for every identity scope.
//!
//! Changing anything here that changes a key must bump [`KEY_SCHEMA_VERSION`].

use serde_json::Value;

use crate::key::{CacheKey, Gather};

mod facts;
pub mod memo;
#[cfg(test)]
mod vectors;

use crate::route::{CachedRoute, percent_decode};
pub use facts::QueryFacts;
use facts::{extract_facts, form_data_facts};

/// Version of the key schema; part of every key.
///
/// 2: the canonical body enters as its blake3 digest (1: the body itself).
pub const KEY_SCHEMA_VERSION: u32 = 2;

/// Top-level body fields that control caching but do not change the result.
/// `force` is Superset's "Force refresh": we honour it as a refresh flag.
const CONTROL_BODY_FIELDS: &[&str] = &["force"];
/// Query parameters that control caching but do not change the result.
const CONTROL_QUERY_PARAMS: &[&str] = &["force"];

/// blake3 of a canonical body: how the body enters the key. [`canonicalize`]
/// computes it once and [`CanonicalRequest::body_digest`] carries it.
pub fn body_digest(canonical_body: &[u8]) -> [u8; 32] {
    *blake3::hash(canonical_body).as_bytes()
}

/// Builds the cache key. The only place a key is made. `body_digest` is
/// [`body_digest`] of the canonical body.
pub fn build_key(
    route: CachedRoute,
    path: &str,
    query: &[(String, String)],
    scope: &str,
    body_digest: &[u8; 32],
) -> CacheKey {
    let mut g = Gather::<512>::default();
    g.field(b"chartcache");
    g.field(&KEY_SCHEMA_VERSION.to_le_bytes());
    g.field(route.as_str().as_bytes());
    g.field(path.as_bytes());
    g.push(&(query.len() as u64).to_le_bytes());
    for (k, v) in query {
        g.field(k.as_bytes());
        g.field(v.as_bytes());
    }
    g.field(scope.as_bytes());
    g.field(body_digest);
    CacheKey(*blake3::hash(g.as_slice()).as_bytes())
}

/// Why a request cannot be fingerprinted (it is then forwarded uncached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unkeyable {
    /// Body is not valid JSON (or nests deeper than serde_json's limit).
    InvalidJson,
    /// Body is JSON but not an object.
    NotAnObject,
    /// Content type is not JSON (e.g. a form-encoded CSV export).
    NotJson,
    /// An integer beyond 64 bits: parsed as a float it would share its key
    /// with its neighbours (`18446744073709551616` and `...617`), while
    /// Superset (Python) reads each exactly.
    InexactNumber,
    /// The query string percent-decodes to bytes that are not UTF-8: decoded
    /// lossily, `%FF` and `%FE` would share a key.
    QueryNotUtf8,
}

impl Unkeyable {
    /// Label for metrics and `Cache-Status`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Unkeyable::InvalidJson => "invalid-json",
            Unkeyable::NotAnObject => "not-an-object",
            Unkeyable::NotJson => "not-json",
            Unkeyable::InexactNumber => "inexact-number",
            Unkeyable::QueryNotUtf8 => "query-not-utf8",
        }
    }
}

/// A request body reduced to what identifies its result.
#[derive(Debug, Clone)]
pub struct CanonicalRequest {
    /// Sorted-key, whitespace-free JSON with control fields removed (empty for GET).
    pub body: Vec<u8>,
    /// [`body_digest`] of `body`: what the key hashes.
    pub body_digest: [u8; 32],
    /// Sorted query parameters without control parameters.
    pub query: Vec<(String, String)>,
    /// Superset's "Force refresh" was asked for.
    pub force: bool,
    pub facts: QueryFacts,
}

/// Canonicalize a chart-data request. `content_type` is the request's
/// `Content-Type`; `body` is empty for GET.
pub fn canonicalize(
    route: CachedRoute,
    path: &str,
    raw_query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<CanonicalRequest, Unkeyable> {
    let (query, mut force) = canonical_query(raw_query)?;
    let mut facts = QueryFacts::default();
    if let CachedRoute::ChartDataGet { chart_id } = route {
        facts.chart_id = Some(chart_id);
    }
    for (k, v) in &query {
        match k.as_str() {
            "format" => facts.result_format = Some(v.to_ascii_lowercase()),
            "type" => facts.result_type = Some(v.to_ascii_lowercase()),
            "filters_dashboard_id" => facts.dashboard_id = v.parse().ok(),
            "slice_id" => facts.chart_id = facts.chart_id.or(v.parse().ok()),
            _ => {}
        }
    }
    let canonical_body = if body.is_empty() {
        // An `explore_json` GET carries its form data in the query string;
        // Superset reads it there only when the body has none.
        if route == CachedRoute::ExploreJson
            && let Some((_, v)) = query.iter().find(|(k, _)| k == "form_data")
            && let Ok(Value::Object(fd)) = serde_json::from_str::<Value>(v)
        {
            form_data_facts(&fd, &mut facts);
        }
        Vec::new()
    } else {
        if !is_json_content_type(content_type) {
            return Err(Unkeyable::NotJson);
        }
        if has_wide_integer(body) {
            return Err(Unkeyable::InexactNumber);
        }
        let mut value: Value = serde_json::from_slice(body).map_err(|_| Unkeyable::InvalidJson)?;
        let obj = value.as_object_mut().ok_or(Unkeyable::NotAnObject)?;
        for f in CONTROL_BODY_FIELDS {
            if let Some(v) = obj.remove(*f) {
                force |= truthy(&v);
            }
        }
        extract_facts(obj, &mut facts);
        // serde_json's Map is a BTreeMap (no `preserve_order`), so serialising sorts
        // keys recursively and writes no whitespace: the canonical form.
        serde_json::to_vec(&value).map_err(|_| Unkeyable::InvalidJson)?
    };
    let _ = path;
    Ok(CanonicalRequest {
        body_digest: body_digest(&canonical_body),
        body: canonical_body,
        query,
        force,
        facts,
    })
}

fn is_json_content_type(ct: Option<&str>) -> bool {
    match ct {
        // Superset's frontend always sends a type; a missing one is treated like
        // JSON because Superset parses the body as JSON regardless.
        None => true,
        Some(ct) => {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        }
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "yes"),
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        _ => false,
    }
}

/// Decode and sort the query string, dropping control params. A pair that
/// does not decode to UTF-8 makes the request unkeyable: lossy decoding would
/// give different queries one key.
fn canonical_query(raw: Option<&str>) -> Result<(Vec<(String, String)>, bool), Unkeyable> {
    let mut force = false;
    let mut out: Vec<(String, String)> = Vec::new();
    let decode =
        |b: &[u8]| String::from_utf8(percent_decode(b, true)).map_err(|_| Unkeyable::QueryNotUtf8);
    // As `form_urlencoded::parse` splits: on `&`, empty pairs skipped, the
    // first `=` separating name from value.
    for pair in raw.unwrap_or("").as_bytes().split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let (k, v) = (decode(k)?, decode(v)?);
        if CONTROL_QUERY_PARAMS.contains(&k.as_str()) {
            force |= matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes");
            continue;
        }
        out.push((k, v));
    }
    out.sort();
    Ok((out, force))
}

/// Does the JSON text hold an integer literal beyond what serde_json keeps
/// exactly (u64 for positive, i64 for negative)? A lexical scan outside
/// strings; the text is parsed afterwards, so malformed input only needs not
/// to panic here. Floats (`.`, `e`) are floats in Python too, rounded alike.
fn has_wide_integer(body: &[u8]) -> bool {
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                i += 1;
                while i < body.len() && body[i] != b'"' {
                    i += if body[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < body.len()
                    && matches!(body[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let tok = &body[start..i];
                if !tok.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) && integer_is_wide(tok) {
                    return true;
                }
            }
            _ => i += 1,
        }
    }
    false
}

/// An integer token that neither u64 (positive) nor i64 (negative) holds.
fn integer_is_wide(tok: &[u8]) -> bool {
    let (neg, digits) = match tok.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, tok),
    };
    // Parse errors for anything else (e.g. a stray `-`) are for serde_json.
    let Ok(text) = std::str::from_utf8(digits) else {
        return false;
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    match text.parse::<u64>() {
        Err(_) => true,
        Ok(n) => neg && n > i64::MAX as u64 + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags;
    use crate::testutil::fixture;

    #[test]
    fn facts_and_tags_from_fixture() {
        let body = serde_json::to_vec(
            &fixture("16-chart-data-bignumber-admin-miss.json")["request"]["body"],
        )
        .unwrap();
        let c = canonicalize(CachedRoute::ChartData, "/p", None, None, &body).unwrap();
        assert_eq!(c.facts.chart_id, Some(1));
        assert_eq!(c.facts.datasource.as_deref(), Some("1__table"));
        assert_eq!(c.facts.viz_type.as_deref(), Some("big_number_total"));
        assert_eq!(
            c.facts.time_ranges,
            vec!["No filter".to_string(), "No filter".to_string()]
        );
        assert_eq!(
            c.facts.tags(),
            vec!["chart:1", "dataset:1__table", "viz:big_number_total"]
        );
    }

    #[test]
    fn bad_bodies_are_unkeyable() {
        let r = |b: &[u8], ct| canonicalize(CachedRoute::ChartData, "/p", None, ct, b).unwrap_err();
        assert_eq!(r(b"{\"datasource\": ", None), Unkeyable::InvalidJson);
        assert_eq!(r(b"[1,2]", None), Unkeyable::NotAnObject);
        assert_eq!(
            r(
                b"form_data=%7B%7D",
                Some("application/x-www-form-urlencoded")
            ),
            Unkeyable::NotJson
        );
        assert_eq!(r(&[0xff, 0xfe, 0x00], None), Unkeyable::InvalidJson);
        let deep = "[".repeat(100_000);
        assert_eq!(r(deep.as_bytes(), None), Unkeyable::InvalidJson);
    }

    #[test]
    fn query_params_sorted_and_decoded() {
        let c = canonicalize(
            CachedRoute::ChartDataGet { chart_id: 2 },
            "/api/v1/chart/2/data/",
            Some("type=full&format=json&filters_dashboard_id=3&x=%41"),
            None,
            b"",
        )
        .unwrap();
        assert_eq!(
            c.query,
            vec![
                ("filters_dashboard_id".to_string(), "3".to_string()),
                ("format".into(), "json".into()),
                ("type".into(), "full".into()),
                ("x".into(), "A".into())
            ]
        );
        assert_eq!(c.facts.dashboard_id, Some(3));
        assert_eq!(c.facts.chart_id, Some(2));
    }

    fn post_key(body: &[u8]) -> Result<CacheKey, Unkeyable> {
        let c = canonicalize(CachedRoute::ChartData, "/p", None, None, body)?;
        Ok(build_key(
            CachedRoute::ChartData,
            "/p",
            &c.query,
            "user:1",
            &c.body_digest,
        ))
    }

    /// Two integers beyond f64 precision used to parse to one float and so to
    /// one key: the second request was answered with the first one's rows.
    #[test]
    fn integers_beyond_64_bits_never_share_a_key() {
        let a = br#"{"queries":[{"row_limit":18446744073709551616}]}"#;
        let b = br#"{"queries":[{"row_limit":18446744073709551617}]}"#;
        assert_eq!(post_key(a), Err(Unkeyable::InexactNumber));
        assert_eq!(post_key(b), Err(Unkeyable::InexactNumber));
        for wide in [
            &b"{\"a\":-9223372036854775809}"[..],
            b"{\"a\":[1,99999999999999999999999999]}",
            b"{\"a\":{\"b\":100000000000000000000}}",
        ] {
            assert_eq!(post_key(wide), Err(Unkeyable::InexactNumber));
        }
        // Exact ones stay keyable, and distinct.
        let max = post_key(b"{\"a\":18446744073709551615}").unwrap();
        let max1 = post_key(b"{\"a\":18446744073709551614}").unwrap();
        assert_ne!(max, max1);
        post_key(b"{\"a\":-9223372036854775808}").unwrap();
        // Floats are floats in Python too: rounded alike, keyable.
        post_key(b"{\"a\":1.8446744073709552e19,\"b\":-1E5,\"c\":0.5}").unwrap();
        // Digits inside strings (escaped quotes too) are text.
        post_key(br#"{"a":"18446744073709551616\"99999999999999999999999","b":1}"#).unwrap();
    }

    #[test]
    fn wide_integer_scan_survives_malformed_text() {
        for t in [
            &b"-"[..],
            b"\"",
            b"\"\\",
            b"--1",
            b"1-2",
            b"-e",
            b"\"abc",
            b"[-",
        ] {
            let _ = has_wide_integer(t);
        }
        assert!(!has_wide_integer(b"-"));
        assert!(has_wide_integer(b"[99999999999999999999]"));
    }

    /// `%FF` and `%FE` both decoded lossily to U+FFFD: one key for two queries.
    #[test]
    fn query_strings_that_are_not_utf8_are_unkeyable() {
        let k = |q: &str| {
            canonicalize(
                CachedRoute::ExploreJson,
                "/superset/explore_json/",
                Some(q),
                None,
                b"",
            )
            .map(|c| c.query)
        };
        assert_eq!(
            k("form_data=%7B%22a%22%3A%22%FF%22%7D"),
            Err(Unkeyable::QueryNotUtf8)
        );
        assert_eq!(
            k("form_data=%7B%22a%22%3A%22%FE%22%7D"),
            Err(Unkeyable::QueryNotUtf8)
        );
        assert_eq!(k("%FF=1"), Err(Unkeyable::QueryNotUtf8));
        assert_eq!(
            k("b=%C3%A9+x&a=1&&c").unwrap(),
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".into(), "é x".into()),
                ("c".into(), String::new())
            ]
        );
        // Same pairs as form_urlencoded reads them, for well-formed input.
        let q = "x=%41%zz&y==2&z";
        let want: Vec<(String, String)> = {
            let mut v: Vec<_> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
            v.sort();
            v
        };
        assert_eq!(k(q).unwrap(), want);
    }

    #[test]
    fn explore_json_gets_take_facts_from_their_query_form_data() {
        let facts = |route, q: &str| {
            canonicalize(route, "/superset/explore_json/", Some(q), None, b"")
                .unwrap()
                .facts
        };
        let f = facts(
            CachedRoute::ExploreJson,
            "form_data=%7B%22slice_id%22%3A3%2C%22datasource%22%3A%221__table%22%2C%22viz_type%22%3A%22table%22%7D",
        );
        assert_eq!(f.tags(), vec!["chart:3", "dataset:1__table", "viz:table"]);
        // Only a slice id: Superset reads the datasource from the saved chart.
        let f = facts(
            CachedRoute::ExploreJson,
            "form_data=%7B%22slice_id%22%3A3%7D",
        );
        assert_eq!(f.tags(), vec!["chart:3", tags::UNRESOLVED_DATASOURCE]);
        // A saved chart's GET never takes a datasource from the client.
        let f = facts(
            CachedRoute::ChartDataGet { chart_id: 2 },
            "form_data=%7B%22datasource%22%3A%2299__table%22%7D",
        );
        assert_eq!(f.tags(), vec!["chart:2", tags::UNRESOLVED_DATASOURCE]);
    }
}
