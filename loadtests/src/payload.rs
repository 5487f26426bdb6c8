//! Superset-shaped payloads: chart-data request bodies built from the captured
//! Superset 6.1 fixtures, and deterministic chart-data responses of a given size.

use serde_json::{Value, json};

/// The four saved query contexts of the fixture dashboard.
const FIXTURES: [&str; 4] = [
    include_str!("../../tests/fixtures/superset-6.1/16-chart-data-bignumber-admin-miss.json"),
    include_str!("../../tests/fixtures/superset-6.1/20-chart-data-timeseries-admin-miss.json"),
    include_str!("../../tests/fixtures/superset-6.1/24-chart-data-table-admin-miss.json"),
    include_str!("../../tests/fixtures/superset-6.1/28-chart-data-pie-admin-miss.json"),
];

/// Time ranges a dashboard's native filter cycles through.
const TIME_RANGES: [&str; 6] = [
    "No filter",
    "Last week",
    "Last month",
    "Last quarter",
    "2023-01-01 : 2024-01-01",
    "2024-01-01 : 2025-01-01",
];

pub struct Templates {
    bodies: Vec<Value>,
}

impl Templates {
    pub fn load() -> Templates {
        let bodies = FIXTURES
            .iter()
            .map(|f| {
                let v: Value = serde_json::from_str(f).expect("fixture");
                v["request"]["body"].clone()
            })
            .collect();
        Templates { bodies }
    }

    /// The chart-data body of chart `chart` on dashboard `dashboard` under filter
    /// state `filter`. Distinct (dashboard, chart, filter) give distinct bodies.
    pub fn chart_body(&self, dashboard: u64, chart: u64, filter: u64, force: bool) -> Vec<u8> {
        let mut v = self.bodies[((dashboard + chart) % 4) as usize].clone();
        let slice_id = dashboard * 1000 + chart;
        let tr = TIME_RANGES[(filter % TIME_RANGES.len() as u64) as usize];
        v["form_data"]["slice_id"] = json!(slice_id);
        v["form_data"]["dashboardId"] = json!(dashboard);
        v["form_data"]["time_range"] = json!(tr);
        if let Some(qs) = v["queries"].as_array_mut() {
            for q in qs {
                if let Some(fs) = q["filters"].as_array_mut() {
                    for f in fs.iter_mut() {
                        if f["op"] == "TEMPORAL_RANGE" {
                            f["val"] = json!(tr);
                        }
                    }
                    if filter >= TIME_RANGES.len() as u64 {
                        fs.push(json!({"col": "product", "op": "IN",
                            "val": [format!("product-{filter}")]}));
                    }
                }
            }
        }
        if force {
            v["force"] = json!(true);
        }
        serde_json::to_vec(&v).expect("serialize")
    }
}

/// A deterministic Superset chart-data response of about `target` bytes.
pub fn superset_response(target: usize) -> Vec<u8> {
    const REGIONS: [&str; 4] = ["north", "south", "east", "west"];
    const CHANNELS: [&str; 3] = ["online", "retail", "partner"];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ target as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let head = r#"{"result":[{"cache_key":"4f3c1d9a8b7e6f5a4b3c2d1e0f9a8b7c","cached_dttm":null,"cache_timeout":86400,"applied_template_filters":[],"annotation_data":{},"error":null,"is_cached":null,"query":"SELECT order_date, region, product, channel, revenue, units FROM sales LIMIT 10000","status":"success","stacktrace":null,"rowcount":0,"sql_rowcount":0,"from_dttm":null,"to_dttm":null,"label_map":{},"colnames":["order_date","region","product","channel","revenue","units"],"indexnames":[],"coltypes":[2,1,1,1,0,0],"data":["#;
    let tail = r#"],"result_format":"json","applied_filters":[],"rejected_filters":[]}]}"#;
    let mut out = String::with_capacity(target + 256);
    out.push_str(head);
    let mut first = true;
    let mut day: u64 = 1_672_531_200_000;
    while out.len() + tail.len() < target {
        let r = next();
        if !first {
            out.push(',');
        }
        first = false;
        day += 86_400_000 * (r % 2);
        out.push_str(&format!(
            r#"{{"order_date":{},"region":"{}","product":"product-{:03}","channel":"{}","revenue":{}.{:02},"units":{}}}"#,
            day,
            REGIONS[(r >> 8) as usize % 4],
            (r >> 12) % 250,
            CHANNELS[(r >> 20) as usize % 3],
            (r >> 24) % 100_000,
            (r >> 40) % 100,
            (r >> 48) % 50 + 1
        ));
    }
    out.push_str(tail);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_differ_by_filter_and_chart() {
        let t = Templates::load();
        let a = t.chart_body(1, 0, 0, false);
        assert_ne!(a, t.chart_body(1, 0, 7, false));
        assert_ne!(a, t.chart_body(1, 1, 0, false));
        assert_eq!(a, t.chart_body(1, 0, 0, false));
        let v: Value = serde_json::from_slice(&t.chart_body(2, 3, 9, true)).unwrap();
        assert_eq!(v["force"], true);
        assert_eq!(v["form_data"]["slice_id"], 2003);
    }

    #[test]
    fn response_size_is_close() {
        for n in [1024, 50 * 1024, 500 * 1024] {
            let r = superset_response(n);
            assert!(
                r.len() <= n + 200 && r.len() + 200 >= n,
                "{n} -> {}",
                r.len()
            );
            serde_json::from_slice::<Value>(&r).unwrap();
        }
    }
}
