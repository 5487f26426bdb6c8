//! The captured Superset 6.1 fixtures (`tests/fixtures/superset-6.1/` of the
//! chartcache repository): whole fixtures read at run time, and the four
//! chart-data request bodies of the fixture dashboard compiled in, so a tool
//! built from another directory (loadtests/) needs no path at run time.

use std::path::PathBuf;

use serde_json::Value;

/// Directory of the Superset 6.1 fixtures.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/superset-6.1")
}

/// A fixture, parsed (`{"description", "request", "response"}`).
pub fn fixture(name: &str) -> Value {
    let p = dir().join(name);
    let raw = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The request body of a fixture.
pub fn chart_body(name: &str) -> Value {
    fixture(name)["request"]["body"].clone()
}

/// The request body of a fixture, serialized compactly as Superset's frontend sends it.
pub fn request_body_bytes(name: &str) -> Vec<u8> {
    serde_json::to_vec(&chart_body(name)).expect("body")
}

/// The four charts of the fixture dashboard: (label, fixture file, file text).
pub const DASHBOARD: [(&str, &str, &str); 4] = [
    (
        "bignumber",
        "16-chart-data-bignumber-admin-miss.json",
        include_str!("../../tests/fixtures/superset-6.1/16-chart-data-bignumber-admin-miss.json"),
    ),
    (
        "timeseries",
        "20-chart-data-timeseries-admin-miss.json",
        include_str!("../../tests/fixtures/superset-6.1/20-chart-data-timeseries-admin-miss.json"),
    ),
    (
        "table",
        "24-chart-data-table-admin-miss.json",
        include_str!("../../tests/fixtures/superset-6.1/24-chart-data-table-admin-miss.json"),
    ),
    (
        "pie",
        "28-chart-data-pie-admin-miss.json",
        include_str!("../../tests/fixtures/superset-6.1/28-chart-data-pie-admin-miss.json"),
    ),
];

/// The saved query contexts (request bodies) of the fixture dashboard's four
/// charts, in [`DASHBOARD`] order.
pub fn dashboard_bodies() -> Vec<(&'static str, Value)> {
    DASHBOARD
        .iter()
        .map(|(label, _, text)| {
            let v: Value = serde_json::from_str(text).expect("fixture json");
            (*label, v["request"]["body"].clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_in_bodies_match_the_files() {
        for ((_, file, _), (_, body)) in DASHBOARD.iter().zip(dashboard_bodies()) {
            assert_eq!(chart_body(file), body);
            assert!(body["queries"].is_array(), "{file}");
        }
    }
}
