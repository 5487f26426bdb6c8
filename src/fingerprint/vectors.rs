//! Pinned keys: the cache key of each Superset fixture, and the properties a
//! key must keep (what changes it, what does not). A change here is a key
//! schema change ([`super::KEY_SCHEMA_VERSION`]).

use super::*;
use crate::key::CacheKey;
use crate::testutil::fixture;

fn key_for(fixture_name: &str, scope: &str) -> CacheKey {
    let f = fixture(fixture_name);
    let body = serde_json::to_vec(&f["request"]["body"]).unwrap();
    let c = canonicalize(
        CachedRoute::ChartData,
        "/api/v1/chart/data",
        None,
        Some("application/json"),
        &body,
    )
    .unwrap();
    build_key(
        CachedRoute::ChartData,
        "/api/v1/chart/data",
        &c.query,
        scope,
        &c.body_digest,
    )
}

/// Pinned keys: these must not change within one KEY_SCHEMA_VERSION, on any
/// machine or release. A failure here means every deployed cache would miss
/// (or worse, collide) after an upgrade: bump the version instead.
#[test]
fn test_vectors_are_stable() {
    let vectors = [
        (
            "16-chart-data-bignumber-admin-miss.json",
            "user:1",
            VECTOR_BIGNUMBER_ADMIN,
        ),
        (
            "20-chart-data-timeseries-admin-miss.json",
            "user:1",
            VECTOR_TIMESERIES_ADMIN,
        ),
        (
            "24-chart-data-table-admin-miss.json",
            "user:1",
            VECTOR_TABLE_ADMIN,
        ),
        (
            "28-chart-data-pie-admin-miss.json",
            "user:1",
            VECTOR_PIE_ADMIN,
        ),
        (
            "18-chart-data-bignumber-alice.json",
            "user:2",
            VECTOR_BIGNUMBER_ALICE,
        ),
    ];
    for (f, scope, want) in vectors {
        assert_eq!(key_for(f, scope).to_hex(), want, "fixture {f}");
    }
    let c = canonicalize(
        CachedRoute::ChartDataGet { chart_id: 2 },
        "/api/v1/chart/2/data/",
        Some("format=json&force=true"),
        None,
        b"",
    )
    .unwrap();
    assert!(c.force);
    let k = build_key(
        CachedRoute::ChartDataGet { chart_id: 2 },
        "/api/v1/chart/2/data/",
        &c.query,
        "user:1",
        &c.body_digest,
    );
    assert_eq!(k.to_hex(), VECTOR_GET_CHART_2);
}

const VECTOR_BIGNUMBER_ADMIN: &str =
    "8c917155a69d1398bb4ad302fca0755fa84565e7f055370eed65dea3df6255bc";
const VECTOR_TIMESERIES_ADMIN: &str =
    "516beea4e1c4614271b22a6a1e42cc3fa37584dcaaa21f9d269f2eb2d21c682b";
const VECTOR_TABLE_ADMIN: &str = "823a12fb4d2b01fd3dc661b9a9d515a7b709611e6f92de73367a0595f4163f72";
const VECTOR_PIE_ADMIN: &str = "b3070e4ecc3ad5d5011e83a22bde0fc7baace88d97d970bc32dfa5f34882540d";
const VECTOR_BIGNUMBER_ALICE: &str =
    "e16ea5ac1179149ab6ed05390b8e42c367ca06414342ad028b92875862408b0f";
const VECTOR_GET_CHART_2: &str = "2449702a36da878d011894146519b1075671a5e7e5aba4da78b5769cea3cc34e";

#[test]
fn same_request_same_key_across_users_differs() {
    assert_eq!(
        key_for("16-chart-data-bignumber-admin-miss.json", "user:1"),
        key_for("17-chart-data-bignumber-admin-hit.json", "user:1")
    );
    assert_ne!(
        key_for("16-chart-data-bignumber-admin-miss.json", "user:1"),
        key_for("18-chart-data-bignumber-alice.json", "user:2")
    );
}

#[test]
fn key_order_and_whitespace_do_not_matter() {
    let a =
        br#"{"queries":[{"row_limit":10,"metrics":["a"]}],"datasource":{"type":"table","id":1}}"#;
    let b = b"{ \"datasource\" : {\"id\":1,\"type\":\"table\"},\n  \"queries\": [ {\"metrics\": [\"a\"], \"row_limit\": 10} ] }";
    let ca = canonicalize(CachedRoute::ChartData, "/p", None, None, a).unwrap();
    let cb = canonicalize(CachedRoute::ChartData, "/p", None, None, b).unwrap();
    assert_eq!(ca.body, cb.body);
    assert_eq!(
        String::from_utf8(ca.body).unwrap(),
        r#"{"datasource":{"id":1,"type":"table"},"queries":[{"metrics":["a"],"row_limit":10}]}"#
    );
}

#[test]
fn force_is_removed_and_reported() {
    let a = canonicalize(
        CachedRoute::ChartData,
        "/p",
        None,
        None,
        br#"{"force":true,"queries":[]}"#,
    )
    .unwrap();
    let b = canonicalize(
        CachedRoute::ChartData,
        "/p",
        None,
        None,
        br#"{"force":false,"queries":[]}"#,
    )
    .unwrap();
    assert!(a.force);
    assert!(!b.force);
    assert_eq!(a.body, b.body);
}

#[test]
fn any_query_field_change_changes_the_key() {
    let base = fixture("20-chart-data-timeseries-admin-miss.json")["request"]["body"].clone();
    let k = |v: &Value| {
        let c = canonicalize(
            CachedRoute::ChartData,
            "/p",
            None,
            None,
            &serde_json::to_vec(v).unwrap(),
        )
        .unwrap();
        build_key(
            CachedRoute::ChartData,
            "/p",
            &c.query,
            "user:1",
            &c.body_digest,
        )
    };
    let k0 = k(&base);
    let mut changes = Vec::new();
    let mut v = base.clone();
    v["queries"][0]["row_limit"] = serde_json::json!(7);
    changes.push(v);
    let mut v = base.clone();
    v["queries"][0]["extras"]["where"] = serde_json::json!("region = 'x'");
    changes.push(v);
    let mut v = base.clone();
    v["result_type"] = serde_json::json!("samples");
    changes.push(v);
    let mut v = base.clone();
    v["result_format"] = serde_json::json!("csv");
    changes.push(v);
    let mut v = base.clone();
    v["form_data"]["slice_id"] = serde_json::json!(99);
    changes.push(v);
    for c in &changes {
        assert_ne!(k(c), k0);
    }
    // Route, path, query and scope each matter too.
    let c = canonicalize(
        CachedRoute::ChartData,
        "/p",
        None,
        None,
        &serde_json::to_vec(&base).unwrap(),
    )
    .unwrap();
    assert_ne!(
        build_key(
            CachedRoute::ExploreJson,
            "/p",
            &c.query,
            "user:1",
            &c.body_digest
        ),
        k0
    );
    assert_ne!(
        build_key(
            CachedRoute::ChartData,
            "/q",
            &c.query,
            "user:1",
            &c.body_digest
        ),
        k0
    );
    assert_ne!(
        build_key(
            CachedRoute::ChartData,
            "/p",
            &[("a".into(), "b".into())],
            "user:1",
            &c.body_digest
        ),
        k0
    );
    assert_ne!(
        build_key(
            CachedRoute::ChartData,
            "/p",
            &c.query,
            "user:2",
            &c.body_digest
        ),
        k0
    );
}

#[test]
fn length_prefixing_prevents_ambiguity() {
    let a = build_key(CachedRoute::ChartData, "/ab", &[], "c", &body_digest(b""));
    let b = build_key(CachedRoute::ChartData, "/a", &[], "bc", &body_digest(b""));
    assert_ne!(a, b);
}
