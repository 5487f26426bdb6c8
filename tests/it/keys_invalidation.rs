//! Keys never merge two different queries, and invalidation cannot be
//! sidestepped: end to end over real TCP against the Superset-shaped upstream.
//!
//! - integers beyond 64 bits and query strings that are not UTF-8 once gave two
//!   different requests one key (the second got the first one's rows);
//! - `PUT /api/v1/dataset/%31` reaches dataset 1 in Superset (gunicorn decodes
//!   the path) but purged nothing;
//! - entries of `GET /api/v1/chart/{id}/data/` and of `explore_json` GETs
//!   carried no datasource tag, so no dataset edit ever purged them.

use crate::support::*;
use http::Method;
use serde_json::json;

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";
const ALICE: (&str, &str) = ("authorization", "Bearer alice-token");

async fn get(c: &TestClient, proxy: &Proxy, path: &str) -> Resp {
    c.send(Method::GET, &proxy.url(path), &[ALICE], "").await
}

async fn write(c: &TestClient, proxy: &Proxy, m: Method, path: &str) {
    let r = c.send(m.clone(), &proxy.url(path), &[ALICE], "{}").await;
    assert!(r.status.is_success(), "{m} {path}: {}", r.status);
}

#[tokio::test]
async fn integers_beyond_64_bits_are_never_answered_from_another_querys_entry() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let with_limit = |n: &str| {
        let mut b = serde_json::to_string(&chart_body(BIGNUMBER)).unwrap();
        b = b.replacen(
            "\"queries\":[{",
            &format!("\"queries\":[{{\"row_limit\":{n},"),
            1,
        );
        b
    };
    let a = with_limit("18446744073709551616");
    let b = with_limit("18446744073709551617");
    let first = c.chart_bytes(&proxy, "alice-token", a.clone()).await;
    let second = c.chart_bytes(&proxy, "alice-token", b).await;
    assert_eq!(second.status, 200);
    assert!(
        !second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    assert_ne!(
        first.json()["result"][0]["query_no"],
        second.json()["result"][0]["query_no"]
    );
    assert!(
        second.cache_status().contains("detail=inexact-number"),
        "{}",
        second.cache_status()
    );
    // Exact integers are still cached.
    let exact = with_limit("18446744073709551615");
    c.chart_bytes(&proxy, "alice-token", exact.clone()).await;
    let again = c.chart_bytes(&proxy, "alice-token", exact).await;
    assert!(
        again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
}

#[tokio::test]
async fn query_strings_that_decode_to_invalid_utf8_never_share_a_key() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let path = |byte: &str| {
        format!(
            "/superset/explore_json/?form_data=%7B%22slice_id%22%3A1%2C%22x%22%3A%22%{byte}%22%7D"
        )
    };
    let first = get(&c, &proxy, &path("FF")).await;
    let second = get(&c, &proxy, &path("FE")).await;
    assert_eq!(second.status, 200);
    assert!(
        !second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    assert!(
        second.cache_status().contains("detail=query-not-utf8"),
        "{}",
        second.cache_status()
    );
    assert_ne!(
        first.json()["result"][0]["query_no"],
        second.json()["result"][0]["query_no"]
    );
}

/// Each spelling reaches dataset 1 (or its refresh) in Superset as gunicorn
/// decodes and Werkzeug routes it; each successful write purges the entry.
#[tokio::test]
async fn percent_encoded_and_odd_write_paths_still_invalidate() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER); // dataset 1__table
    for path in [
        "/api/v1/dataset/%31",
        "/api/v1/dataset/%30%31",
        "/api/v1/dataset/1/",
        "/api/v1/dataset//1",
        "/api/v1/%64ataset/1",
        "/api/v1/dataset/1%2Frefresh",
        "/api/v1/dataset/%201",
        "/api/v1/dataset/1/column/5",
    ] {
        c.chart(&proxy, "alice-token", &body).await;
        let hit = c.chart(&proxy, "alice-token", &body).await.cache_status();
        assert!(hit.contains("hit"), "{path}: {hit}");
        let m = if path.ends_with("/5") {
            Method::DELETE
        } else {
            Method::PUT
        };
        write(&c, &proxy, m, path).await;
        let next = c.chart(&proxy, "alice-token", &body).await.cache_status();
        assert!(next.contains("fwd=miss"), "{path}: {next}");
    }
}

#[tokio::test]
async fn a_dataset_edit_purges_saved_chart_gets() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let path = "/api/v1/chart/2/data/?format=json";
    get(&c, &proxy, path).await;
    let hit = get(&c, &proxy, path).await.cache_status();
    assert!(hit.contains("hit"), "{hit}");
    write(&c, &proxy, Method::PUT, "/api/v1/dataset/1").await;
    let next = get(&c, &proxy, path).await.cache_status();
    assert!(next.contains("fwd=miss"), "{next}");
    // A chart edit purges it too, as before.
    get(&c, &proxy, path).await;
    write(&c, &proxy, Method::PUT, "/api/v1/chart/2").await;
    assert!(
        get(&c, &proxy, path)
            .await
            .cache_status()
            .contains("fwd=miss")
    );
}

#[tokio::test]
async fn a_dataset_edit_purges_explore_json_gets() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let form = |fd: serde_json::Value| {
        let q: String = form_urlencoded::byte_serialize(fd.to_string().as_bytes()).collect();
        format!("/superset/explore_json/?form_data={q}")
    };
    // Naming its datasource: purged by that dataset, not by another one.
    let named = form(json!({"slice_id": 3, "datasource": "5__table", "viz_type": "table"}));
    get(&c, &proxy, &named).await;
    assert!(get(&c, &proxy, &named).await.cache_status().contains("hit"));
    write(&c, &proxy, Method::PUT, "/api/v1/dataset/6").await;
    assert!(get(&c, &proxy, &named).await.cache_status().contains("hit"));
    write(&c, &proxy, Method::PUT, "/api/v1/dataset/5").await;
    let next = get(&c, &proxy, &named).await.cache_status();
    assert!(next.contains("fwd=miss"), "{next}");
    // Only a slice id: Superset reads the saved chart's datasource, which
    // the request does not name; any dataset edit purges it.
    let slice_only = form(json!({"slice_id": 3}));
    get(&c, &proxy, &slice_only).await;
    assert!(
        get(&c, &proxy, &slice_only)
            .await
            .cache_status()
            .contains("hit")
    );
    write(&c, &proxy, Method::PUT, "/api/v1/dataset/9").await;
    let next = get(&c, &proxy, &slice_only).await.cache_status();
    assert!(next.contains("fwd=miss"), "{next}");
}
