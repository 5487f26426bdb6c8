//! Bounded randomized testing of the canonicalizer, the cache key, the
//! route classifier and credential extraction, with the same properties as the `cargo fuzz` targets
//! (`crate::fuzz_harness`): random bytes, mutated fixture bodies, and
//! random JSON documents whose key order and whitespace must not matter.
//!
//! Case counts are fixed so `cargo test` stays quick; raise them with
//! `PROPTEST_CASES=100000 cargo test --lib fuzz_harness`.

use super::{check_classify, check_credentials, check_fingerprint, check_write_path};
use crate::fingerprint::{self, build_key};
use crate::route::CachedRoute;
use proptest::prelude::*;
use serde_json::Value;

const FIXTURES: &[&str] = &[
    "16-chart-data-bignumber-admin-miss.json",
    "20-chart-data-timeseries-admin-miss.json",
    "24-chart-data-table-admin-miss.json",
    "28-chart-data-pie-admin-miss.json",
    "36-chart-data-timeseries-csv.json",
];

fn fixture_bodies() -> Vec<Vec<u8>> {
    FIXTURES
        .iter()
        .map(|f| serde_json::to_vec(&crate::testutil::fixture(f)["request"]["body"]).unwrap())
        .collect()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Splice(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            prop::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    Just(b'{'),
                    Just(b'['),
                    Just(b'"'),
                    Just(b'\\'),
                    Just(b',')
                ],
                1..16
            )
        )
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(a, b, c)| Mutation::Splice(a, b, c)),
    ]
}

fn apply(mut body: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let n = body.len().max(1);
        match m {
            Mutation::Flip(i, b) => {
                if !body.is_empty() {
                    body[i % n] ^= b | 1;
                }
            }
            Mutation::Truncate(i) => body.truncate(i % n),
            Mutation::Insert(i, v) => {
                let at = (i % n).min(body.len());
                body.splice(at..at, v.iter().copied());
            }
            Mutation::Splice(a, b, c) => {
                // Copy a slice of the body elsewhere (duplicated keys, nesting).
                if body.len() > 2 {
                    let (s, e) = ((a % n).min(b % n), (a % n).max(b % n));
                    let chunk = body[s..e].to_vec();
                    let at = (c % n).min(body.len());
                    body.splice(at..at, chunk);
                }
            }
        }
    }
    body
}

/// Arbitrary JSON (bounded depth and size).
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Render a JSON value with object keys in reverse order and extra whitespace.
fn scrambled(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let parts: Vec<String> = m
                .iter()
                .rev()
                .map(|(k, v)| format!("\n  {} :\t{}", Value::String(k.clone()), scrambled(v)))
                .collect();
            format!("{{ {} }}", parts.join(" , "))
        }
        Value::Array(a) => format!(
            "[ {} ]",
            a.iter().map(scrambled).collect::<Vec<_>>().join(" ,\n")
        ),
        other => other.to_string(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn fingerprint_survives_random_bytes(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_fingerprint(&data);
    }

    #[test]
    fn fingerprint_survives_mutated_fixture_bodies(
        which in 0..FIXTURES.len(),
        head in any::<u8>(),
        muts in prop::collection::vec(mutation(), 1..8),
    ) {
        let body = apply(fixture_bodies()[which].clone(), &muts);
        let mut data = vec![head, 0];
        data.extend_from_slice(&body);
        check_fingerprint(&data);
    }

    #[test]
    fn key_order_and_whitespace_never_change_the_key(v in json(), extra in json()) {
        let mut obj = serde_json::Map::new();
        obj.insert("queries".into(), v);
        obj.insert("form_data".into(), extra);
        let doc = Value::Object(obj);
        let compact = serde_json::to_vec(&doc).unwrap();
        let messy = scrambled(&doc);
        let path = "/api/v1/chart/data";
        let a = fingerprint::canonicalize(CachedRoute::ChartData, path, None, Some("application/json"), &compact).unwrap();
        let b = fingerprint::canonicalize(CachedRoute::ChartData, path, None, Some("application/json"), messy.as_bytes()).unwrap();
        prop_assert_eq!(&a.body, &b.body);
        prop_assert_eq!(
            build_key(CachedRoute::ChartData, path, &a.query, "user:1", &a.body_digest),
            build_key(CachedRoute::ChartData, path, &b.query, "user:1", &b.body_digest)
        );
    }

    #[test]
    fn classifier_survives_random_paths(head in any::<u8>(), path in "(/[a-z0-9_%.]{0,12}){0,8}/?(\\?[a-z=&%0-9]{0,20})?") {
        let mut data = vec![head];
        data.extend_from_slice(path.as_bytes());
        check_classify(&data);
    }

    #[test]
    fn credentials_survive_random_headers(data in prop::collection::vec(any::<u8>(), 0..512)) {
        check_credentials(&data);
    }

    #[test]
    fn credentials_survive_cookie_and_authorization_soup(
        h2 in any::<bool>(),
        lines in prop::collection::vec(
            (0u8..8, "(session|theme|Bearer |bob|alice|cookie|authorization|x-guesttoken|=|;|,| ){0,8}"),
            0..8,
        ),
    ) {
        let mut data = vec![u8::from(h2)];
        for (n, v) in lines {
            data.push(n);
            data.extend_from_slice(v.as_bytes());
            data.push(b'\n');
        }
        check_credentials(&data);
    }

    #[test]
    fn classifier_survives_random_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        check_classify(&data);
    }

    #[test]
    fn writes_are_writes_however_spelled(head in any::<u8>(), seg in "[0-9a-z/%;+ .]{0,24}") {
        let mut data = vec![head];
        data.extend_from_slice(seg.as_bytes());
        check_write_path(&data);
    }

    #[test]
    fn write_paths_survive_random_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        check_write_path(&data);
    }
}

/// Inputs that once looked dangerous stay harmless (regressions go here).
#[test]
fn known_hostile_inputs() {
    let deep = format!("\x04\0{}", "[".repeat(200_000));
    check_fingerprint(deep.as_bytes());
    let deep_obj = format!("\x04\0{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    check_fingerprint(deep_obj.as_bytes());
    check_fingerprint(b"\x04\0{\"a\":1e400}");
    check_fingerprint(b"\x04\0{\"a\":\"\\ud800\"}");
    check_fingerprint(b"\x04\0{\"a\":1,\"a\":2}");
    // Found by `cargo fuzz run fingerprint`: a long float mantissa parsed with
    // serde_json's default (not correctly rounded) float parser gave a canonical
    // form that re-parsed to another double, so the canonical form was not a
    // fixed point and distinct numbers could share a key. Fixed by
    // serde_json's `float_roundtrip`.
    check_fingerprint(b"\x04\0{\"series_limit\": 9.77777777777777777777777777727775}");
    check_fingerprint(
        b"\x04\0{\"a\": [0.30000000000000004, 0.3, 1e-7, 123456789.12345678901234567890]}",
    );
    check_fingerprint(b"\x04%ff%fe=%zz&force=%c3\0{}");
    check_fingerprint(b"\x04\0{\"row_limit\": 18446744073709551617}");
    check_classify(b"\x00/api/v1/chart/99999999999999999999999/data/");
    check_classify(b"\x00/api/v1/chart//data/");
    check_classify(b"\x03/api/v1/dataset/1/refresh?q=%ff");
}
