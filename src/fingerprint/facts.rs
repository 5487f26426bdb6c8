//! Superset facts of a request: what it says about itself (chart, dashboard,
//! datasource, viz type, result type and format, time ranges), read from the
//! chart-data body or an `explore_json` form data, for tags and tier rules.

use serde_json::{Map, Value};

use crate::tags;

/// What the request says about itself, for tags and tier rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueryFacts {
    pub chart_id: Option<u64>,
    pub dashboard_id: Option<u64>,
    /// `{id}__{type}`, e.g. `1__table`.
    pub datasource: Option<String>,
    pub viz_type: Option<String>,
    pub result_format: Option<String>,
    pub result_type: Option<String>,
    /// Every time range in the request (`form_data.time_range`, `TEMPORAL_RANGE` filters).
    pub time_ranges: Vec<String>,
    /// `custom_cache_timeout` from the body, seconds.
    pub custom_cache_timeout: Option<u64>,
}

impl QueryFacts {
    /// Invalidation tags (spelled by [`crate::tags`]): `chart:{id}`,
    /// `dashboard:{id}`, `dataset:{id}__{type}` — or, when the request does
    /// not say which datasource it reads, [`tags::UNRESOLVED_DATASOURCE`] —
    /// and `viz:{type}`.
    pub fn tags(&self) -> Vec<String> {
        let mut t = Vec::with_capacity(4);
        if let Some(c) = self.chart_id {
            t.push(tags::chart(c));
        }
        if let Some(d) = self.dashboard_id {
            t.push(tags::dashboard(d));
        }
        t.push(match &self.datasource {
            Some(ds) => tags::dataset(ds),
            None => tags::UNRESOLVED_DATASOURCE.to_string(),
        });
        if let Some(v) = &self.viz_type {
            t.push(tags::viz(v));
        }
        t
    }
}

fn as_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Facts of a form-data object (a chart-data body's `form_data`, an
/// `explore_json` body, or its `form_data` query parameter).
pub(super) fn form_data_facts(fd: &Map<String, Value>, facts: &mut QueryFacts) {
    facts.chart_id = facts.chart_id.or(as_u64(fd.get("slice_id")));
    facts.dashboard_id = facts.dashboard_id.or(as_u64(fd.get("dashboardId")));
    facts.viz_type = facts.viz_type.take().or(as_string(fd.get("viz_type")));
    if facts.datasource.is_none() {
        facts.datasource = as_string(fd.get("datasource"));
    }
    if let Some(tr) = as_string(fd.get("time_range")) {
        facts.time_ranges.push(tr);
    }
}

pub(super) fn extract_facts(obj: &Map<String, Value>, facts: &mut QueryFacts) {
    // Top-level datasource {"id": 1, "type": "table"} (chart data API).
    if let Some(Value::Object(ds)) = obj.get("datasource")
        && let (Some(id), Some(ty)) = (as_u64(ds.get("id")), as_string(ds.get("type")))
    {
        facts.datasource = Some(format!("{id}__{ty}"));
    }
    facts.result_format = facts
        .result_format
        .take()
        .or(as_string(obj.get("result_format")));
    facts.result_type = facts
        .result_type
        .take()
        .or(as_string(obj.get("result_type")));
    facts.custom_cache_timeout = as_u64(obj.get("custom_cache_timeout"));
    // explore_json sends the form data itself at the top level.
    let form_data = match obj.get("form_data") {
        Some(Value::Object(fd)) => Some(fd),
        _ if obj.contains_key("viz_type") => Some(obj),
        _ => None,
    };
    if let Some(fd) = form_data {
        form_data_facts(fd, facts);
    }
    if let Some(Value::Array(queries)) = obj.get("queries") {
        for q in queries {
            let Some(Value::Array(filters)) = q.get("filters") else {
                continue;
            };
            for f in filters {
                let op = f.get("op").and_then(Value::as_str).unwrap_or("");
                if op.eq_ignore_ascii_case("TEMPORAL_RANGE")
                    && let Some(v) = as_string(f.get("val"))
                {
                    facts.time_ranges.push(v);
                }
            }
            if let Some(tr) = q.get("time_range").and_then(Value::as_str) {
                facts.time_ranges.push(tr.to_string());
            }
        }
    }
}
