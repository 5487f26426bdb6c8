//! Shared helpers for the benches (and `examples/hit_profile.rs`): fixture
//! bodies and Superset-shaped payloads and upstream, from the shared fake
//! (`fake_superset`) the integration tests and load tests use too.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use fake_superset::{Answer, Options, Superset};

// Not every bench that includes this module uses it.
#[allow(unused_imports)]
pub use fake_superset::payload::superset_response;

/// Directory of the Superset 6.1 fixtures.
pub fn fixtures_dir() -> PathBuf {
    fake_superset::fixtures::dir()
}

/// The request body of a fixture, serialized compactly as Superset's frontend sends it.
pub fn fixture_request_body(name: &str) -> Vec<u8> {
    fake_superset::fixtures::request_body_bytes(name)
}

/// The four chart-data request bodies of dashboard 1 (big number, timeseries, table, pie).
pub fn chart_bodies() -> Vec<(&'static str, Vec<u8>)> {
    fake_superset::fixtures::dashboard_bodies()
        .into_iter()
        .map(|(label, v)| (label, serde_json::to_vec(&v).expect("body")))
        .collect()
}

/// A large query context (~30 KB): the table chart with a long `IN` filter and
/// many adhoc filters, as a dashboard with native filters produces.
pub fn large_chart_body() -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&fixture_request_body("24-chart-data-table-admin-miss.json"))
            .unwrap();
    let products: Vec<String> = (0..1200).map(|i| format!("product-{i:05}")).collect();
    let filter = serde_json::json!({"col": "product", "op": "IN", "val": products});
    v["queries"][0]["filters"]
        .as_array_mut()
        .unwrap()
        .push(filter);
    let adhoc: Vec<serde_json::Value> = (0..40)
        .map(|i| {
            serde_json::json!({"clause": "WHERE", "subject": "channel", "operator": "==",
                "comparator": format!("channel-{i}"), "expressionType": "SIMPLE",
                "filterOptionName": format!("filter_{i:04}_abcdefgh")})
        })
        .collect();
    v["form_data"]["adhoc_filters"] = serde_json::Value::Array(adhoc);
    serde_json::to_vec(&v).unwrap()
}

/// Payload sizes used across benches.
pub const SIZES: [(&str, usize); 3] = [("1KB", 1024), ("50KB", 50 * 1024), ("500KB", 500 * 1024)];

/// Superset-shaped upstream for the rest of the process: `bench-admin-token`
/// is user 1 (admin); chart data answers a payload whose size is the first
/// query's `row_limit` (bytes).
pub async fn start_upstream() -> SocketAddr {
    let up = Superset::start_with(Options {
        answer: Answer::Sized,
        ..Options::default()
    })
    .await;
    up.state
        .bearers
        .lock()
        .unwrap()
        .insert("bench-admin-token".into(), (1, "admin".into()));
    up.detach()
}
