//! Shared helpers for the benches: fixture bodies and Superset-shaped payloads.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// Directory of the Superset 6.1 fixtures.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/superset-6.1")
}

/// The request body of a fixture, serialized compactly as Superset's frontend sends it.
pub fn fixture_request_body(name: &str) -> Vec<u8> {
    let raw = std::fs::read(fixtures_dir().join(name)).expect("fixture");
    let v: serde_json::Value = serde_json::from_slice(&raw).expect("fixture json");
    serde_json::to_vec(&v["request"]["body"]).expect("body")
}

/// The four chart-data request bodies of dashboard 1 (big number, timeseries, table, pie).
pub fn chart_bodies() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "bignumber",
            fixture_request_body("16-chart-data-bignumber-admin-miss.json"),
        ),
        (
            "timeseries",
            fixture_request_body("20-chart-data-timeseries-admin-miss.json"),
        ),
        (
            "table",
            fixture_request_body("24-chart-data-table-admin-miss.json"),
        ),
        (
            "pie",
            fixture_request_body("28-chart-data-pie-admin-miss.json"),
        ),
    ]
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

/// A deterministic Superset chart-data response of about `target` bytes: the
/// `result[0].data` rows of the synthetic sales dataset in Superset's envelope.
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

/// Payload sizes used across benches.
pub const SIZES: [(&str, usize); 3] = [("1KB", 1024), ("50KB", 50 * 1024), ("500KB", 500 * 1024)];

/// Superset-shaped upstream: `/api/v1/me/` names user 1; chart data answers a
/// payload whose size is the first query's `row_limit` (bytes).
pub async fn upstream(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let json = |b: Vec<u8>| {
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header(header::VARY, "Accept-Encoding, Cookie")
            .header("x-frame-options", "SAMEORIGIN")
            .body(Full::new(Bytes::from(b)))
            .unwrap()
    };
    if path == "/api/v1/me/" {
        return Ok(json(br#"{"result":{"id":1,"username":"admin"}}"#.to_vec()));
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let size = v["queries"][0]["row_limit"].as_u64().unwrap_or(1024) as usize;
    Ok(json(superset_response(size)))
}

pub async fn start_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(upstream))
                    .await;
            });
        }
    });
    addr
}
