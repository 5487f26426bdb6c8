//! Superset-shaped payloads: chart-data request bodies built from the captured
//! Superset 6.1 fixtures, and deterministic chart-data responses of a given
//! size (both from the shared fake, `fake_superset`).

use serde_json::{Value, json};

pub use fake_superset::payload::superset_response;

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
        // The four saved query contexts of the fixture dashboard.
        let bodies = fake_superset::fixtures::dashboard_bodies()
            .into_iter()
            .map(|(_, body)| body)
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
