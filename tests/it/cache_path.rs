//! End-to-end behaviour of the cached chart-data path, over real TCP, against
//! a Superset-shaped upstream. Assertions are on `Cache-Status`, bodies and
//! upstream query counts.

use std::time::Duration;

use crate::support::*;
use chartcache::config::RuntimeFlavor;
use http::Method;

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";

#[tokio::test]
async fn miss_then_hit_with_identical_body() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    let first = c.chart(&proxy, "admin-token", &body).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache_status(), "chartcache; fwd=miss; stored");
    let second = c.chart(&proxy, "admin-token", &body).await;
    assert_eq!(second.status, 200);
    assert!(
        second.cache_status().starts_with("chartcache; hit; ttl="),
        "{}",
        second.cache_status()
    );
    assert!(second.header("age").is_some());
    assert_eq!(first.json(), second.json());
    assert_eq!(up.chart_queries(), 1);
    // Key order and whitespace do not matter.
    let reordered = serde_json::to_string_pretty(&body).unwrap();
    let r = c.chart_bytes(&proxy, "admin-token", reordered).await;
    assert!(r.cache_status().contains("hit"));
    assert_eq!(up.chart_queries(), 1);
}

#[tokio::test]
async fn different_users_never_share_an_entry() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    for round in 0..3 {
        for user in ["alice", "bob", "admin"] {
            let r = c.chart(&proxy, &format!("{user}-token"), &body).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["result"][0]["user"], user, "round {round}");
            if round == 0 {
                assert!(r.cache_status().contains("fwd=miss"));
            } else {
                assert!(r.cache_status().contains("hit"));
            }
        }
    }
    assert_eq!(up.chart_queries(), 3);
    // Identity lookups are cached: one per credential.
    assert_eq!(up.me_queries(), 3);
}

#[tokio::test]
async fn session_cookie_wins_over_bearer_and_is_keyed_as_such() {
    // Fixture 32: alice's Bearer + admin's session cookie is answered as admin.
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let body = serde_json::to_vec(&chart_body(BIGNUMBER)).unwrap();
    let alice = c.chart(&proxy, "alice-token", &chart_body(BIGNUMBER)).await;
    assert_eq!(alice.json()["result"][0]["user"], "alice");
    let mixed = c
        .send(
            Method::POST,
            &proxy.url("/api/v1/chart/data"),
            &[
                ("authorization", "Bearer alice-token"),
                ("cookie", "session=admin-session"),
                ("content-type", "application/json"),
            ],
            body.clone(),
        )
        .await;
    // Never alice's cached entry: the principal is admin.
    assert_eq!(mixed.json()["result"][0]["user"], "admin");
    assert!(mixed.cache_status().contains("fwd=miss"));
    // And admin via cookie alone now hits the same principal's entry.
    let admin = c
        .send(
            Method::POST,
            &proxy.url("/api/v1/chart/data"),
            &[
                ("cookie", "theme=dark; session=admin-session"),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await;
    assert_eq!(admin.json()["result"][0]["user"], "admin");
    assert!(
        admin.cache_status().contains("hit"),
        "{}",
        admin.cache_status()
    );
}

/// 200 clients on their own connections: with the default runtime the
/// connections land on both threads, whose requests must still share one query.
#[tokio::test]
async fn concurrent_identical_misses_make_one_upstream_query() {
    concurrent_identical_misses(RuntimeFlavor::PerCore).await;
}

#[tokio::test]
async fn concurrent_identical_misses_make_one_upstream_query_work_stealing() {
    concurrent_identical_misses(RuntimeFlavor::WorkStealing).await;
}

async fn concurrent_identical_misses(runtime: RuntimeFlavor) {
    let up = Upstream::start().await;
    up.set_delay(Duration::from_millis(300));
    let mut cfg = test_config(&up.url());
    cfg.server.runtime = runtime;
    let proxy = Proxy::start(cfg).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let c = c.clone();
        let body = body.clone();
        let url = proxy.url("/api/v1/chart/data");
        tasks.push(tokio::spawn(async move {
            c.send(
                Method::POST,
                &url,
                &[
                    ("authorization", "Bearer alice-token"),
                    ("content-type", "application/json"),
                ],
                serde_json::to_vec(&body).unwrap(),
            )
            .await
        }));
    }
    let mut coalesced = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["result"][0]["user"], "alice");
        if r.cache_status().contains("detail=coalesced") {
            coalesced += 1;
        }
    }
    assert_eq!(up.chart_queries(), 1);
    assert!(coalesced > 0);
}

#[tokio::test]
async fn force_refresh_skips_the_read_and_stores_the_result() {
    let up = Upstream::start().await;
    // A stopped clock: the refresh is stored in the same millisecond as the
    // first response, at the same length, and must still be what is served.
    let clock = chartcache::clock::ManualClock::new(1_700_000_000_000);
    let proxy = Proxy::start_with_clock(test_config(&up.url()), clock).await;
    let c = TestClient::new();
    let mut body = chart_body(BIGNUMBER);
    let first = c.chart(&proxy, "admin-token", &body).await;
    assert_eq!(first.json()["result"][0]["query_no"], 1);
    body["force"] = serde_json::json!(true);
    let forced = c.chart(&proxy, "admin-token", &body).await;
    assert_eq!(forced.json()["result"][0]["query_no"], 2);
    assert_eq!(forced.cache_status(), "chartcache; fwd=request; stored");
    // Superset saw `force: true`: the flag is kept on the way up.
    let (_, _, _, sent) = up.last_seen("/api/v1/chart/data").unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&sent).unwrap()["force"],
        true
    );
    // A normal request now hits the refreshed result.
    body["force"] = serde_json::json!(false);
    let after = c.chart(&proxy, "admin-token", &body).await;
    assert!(after.cache_status().contains("hit"));
    assert_eq!(after.json()["result"][0]["query_no"], 2);
    // GET with ?force=true too.
    let get = |q: &'static str| {
        let c = c.clone();
        let url = proxy.url(&format!("/api/v1/chart/2/data/{q}"));
        async move {
            c.send(
                Method::GET,
                &url,
                &[("authorization", "Bearer admin-token")],
                "",
            )
            .await
        }
    };
    assert!(get("").await.cache_status().contains("fwd=miss"));
    assert!(get("").await.cache_status().contains("hit"));
    let f = get("?force=true").await;
    assert_eq!(f.cache_status(), "chartcache; fwd=request; stored");
    assert!(up.last_seen("/api/v1/chart/2/data/").is_some());
    assert_eq!(up.chart_queries(), 4);
}

#[tokio::test]
async fn set_cookie_is_never_stored_or_replayed() {
    let up = Upstream::start().await;
    up.set_mode(ChartMode::SetCookie);
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    let first = c.chart(&proxy, "admin-token", &body).await;
    // The leader's own cookie reaches the leader.
    assert!(first.header("set-cookie").is_some());
    assert!(first.cache_status().contains("stored"));
    let hit = c.chart(&proxy, "admin-token", &body).await;
    assert!(hit.cache_status().contains("hit"));
    assert!(hit.header("set-cookie").is_none());
}

#[tokio::test]
async fn non_200_and_no_store_responses_are_not_stored() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    for (mode, status, detail) in [
        (ChartMode::Status(202), 202, "async-202"),
        (ChartMode::Status(500), 500, "status"),
        (ChartMode::NoStore, 200, "no-store"),
    ] {
        up.set_mode(mode);
        let before = up.chart_queries();
        for _ in 0..2 {
            let r = c.chart(&proxy, "admin-token", &body).await;
            assert_eq!(r.status, status);
            assert_eq!(
                r.cache_status(),
                format!("chartcache; fwd=miss; detail={detail}")
            );
        }
        assert_eq!(up.chart_queries(), before + 2);
    }
}

#[tokio::test]
async fn malformed_json_is_forwarded_byte_for_byte() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let raw: &[u8] = b"{\"datasource\": {\"id\": 1, \"type\": \"table\"}, \"queries\": [";
    let r = c.chart_bytes(&proxy, "admin-token", raw).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.cache_status(),
        "chartcache; fwd=bypass; detail=invalid-json"
    );
    let (_, _, _, seen) = up.last_seen("/api/v1/chart/data").unwrap();
    assert_eq!(&seen[..], raw);
    // Form-encoded bodies (CSV export) are forwarded uncached too.
    let form = b"form_data=%7B%22slice_id%22%3A1%7D";
    let r = c
        .send(
            Method::POST,
            &proxy.url("/api/v1/chart/data"),
            &[
                ("authorization", "Bearer admin-token"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            &form[..],
        )
        .await;
    assert_eq!(r.cache_status(), "chartcache; fwd=bypass; detail=not-json");
    assert_eq!(&up.last_seen("/api/v1/chart/data").unwrap().3[..], form);
}

#[tokio::test]
async fn encodings_negotiate_to_the_same_json() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let body = serde_json::to_vec(&chart_body(BIGNUMBER)).unwrap();
    let send = |ae: &'static str| {
        let c = c.clone();
        let body = body.clone();
        let url = proxy.url("/api/v1/chart/data");
        async move {
            let mut h = vec![
                ("authorization", "Bearer admin-token"),
                ("content-type", "application/json"),
            ];
            if !ae.is_empty() {
                h.push(("accept-encoding", ae));
            }
            c.send(Method::POST, &url, &h, body).await
        }
    };
    // The miss asked Superset for an identity body.
    let miss = send("gzip, deflate, br, zstd").await;
    let (_, _, h, _) = up.last_seen("/api/v1/chart/data").unwrap();
    assert!(h.get("accept-encoding").is_none());
    let zstd = send("gzip, deflate, br, zstd").await;
    let gzip = send("gzip").await;
    let plain = send("").await;
    assert_eq!(zstd.header("content-encoding").as_deref(), Some("zstd"));
    assert_eq!(gzip.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(plain.header("content-encoding"), None);
    let (dz, dg) = (zstd.decoded(), gzip.decoded());
    let want: serde_json::Value = serde_json::from_slice(&plain.body).unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&dz).unwrap(),
        want
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&dg).unwrap(),
        want
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&miss.decoded()).unwrap(),
        want
    );
    assert_eq!(up.chart_queries(), 1);
}

#[tokio::test]
async fn no_credential_and_refused_credential_are_forwarded_uncached() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let body = serde_json::to_vec(&chart_body(BIGNUMBER)).unwrap();
    let r = c
        .send(
            Method::POST,
            &proxy.url("/api/v1/chart/data"),
            &[("content-type", "application/json")],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.cache_status(),
        "chartcache; fwd=bypass; detail=no-credential"
    );
    let r = c.chart_bytes(&proxy, "not-a-jwt", body).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.cache_status(),
        "chartcache; fwd=bypass; detail=identity-denied"
    );
}

#[tokio::test]
async fn revoked_credential_stops_hitting_after_identity_ttl() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    cfg.identity.ttl_secs = 1;
    let proxy = Proxy::start(cfg).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    c.chart(&proxy, "alice-token", &body).await;
    assert!(
        c.chart(&proxy, "alice-token", &body)
            .await
            .cache_status()
            .contains("hit")
    );
    up.revoke_bearer("alice-token");
    // Within identity_ttl the mapping still stands; after it, Superset's 401 wins.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = c.chart(&proxy, "alice-token", &body).await;
        if r.status == 401 {
            assert_eq!(
                r.cache_status(),
                "chartcache; fwd=bypass; detail=identity-denied"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revoked credential still served after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn superset_down_or_slow_gives_superset_shaped_errors() {
    // Nothing listens on this port.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(test_config(&format!("http://{free}"))).await;
    let c = TestClient::new();
    let r = c
        .send(Method::GET, &proxy.url("/api/v1/dashboard/1"), &[], "")
        .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["message"], "Superset is unreachable");

    let up = Upstream::start().await;
    up.set_mode(ChartMode::Hang);
    let mut cfg = test_config(&up.url());
    cfg.upstream_client.response_timeout_ms = 300;
    let proxy = Proxy::start(cfg).await;
    let r = c.chart(&proxy, "admin-token", &chart_body(BIGNUMBER)).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["message"], "Superset did not answer in time");
}

#[tokio::test]
async fn dataset_edit_through_the_proxy_invalidates() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    c.chart(&proxy, "admin-token", &body).await;
    assert!(
        c.chart(&proxy, "admin-token", &body)
            .await
            .cache_status()
            .contains("hit")
    );
    let put = c
        .send(
            Method::PUT,
            &proxy.url("/api/v1/dataset/1"),
            &[
                ("authorization", "Bearer admin-token"),
                ("content-type", "application/json"),
            ],
            "{\"description\":\"x\"}",
        )
        .await;
    assert_eq!(put.status, 200);
    assert!(put.header("cache-status").is_none());
    assert!(
        c.chart(&proxy, "admin-token", &body)
            .await
            .cache_status()
            .contains("fwd=miss")
    );
}

#[tokio::test]
async fn admin_purge_needs_the_token() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    c.chart(&proxy, "admin-token", &body).await;
    let r = c
        .send(
            Method::POST,
            &proxy.admin_url("/purge"),
            &[],
            r#"{"tags":["chart:1"]}"#,
        )
        .await;
    assert_eq!(r.status, 401);
    let r = c
        .send(
            Method::POST,
            &proxy.admin_url("/purge"),
            &[("authorization", "Bearer wrong")],
            r#"{"tags":["chart:1"]}"#,
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(
        c.chart(&proxy, "admin-token", &body)
            .await
            .cache_status()
            .contains("hit")
    );
    let r = c
        .send(
            Method::POST,
            &proxy.admin_url("/purge"),
            &[("authorization", "Bearer test-admin-token")],
            r#"{"tags":["chart:1"]}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["removed"], 1);
    assert!(
        c.chart(&proxy, "admin-token", &body)
            .await
            .cache_status()
            .contains("fwd=miss")
    );
}

/// A large response (hundreds of KB, as table charts return) is stored and
/// served like a small one.
#[tokio::test]
async fn large_responses_are_stored_and_served() {
    let up = Upstream::start().await;
    up.set_mode(ChartMode::Large(300 * 1024));
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    let first = c.chart(&proxy, "admin-token", &body).await;
    assert_eq!(first.cache_status(), "chartcache; fwd=miss; stored");
    let second = c.chart(&proxy, "admin-token", &body).await;
    assert!(
        second.cache_status().starts_with("chartcache; hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(first.json(), second.json());
    assert_eq!(
        first.json()["result"][0]["filler"].as_str().map(str::len),
        Some(300 * 1024)
    );
    assert_eq!(up.chart_queries(), 1);
}
