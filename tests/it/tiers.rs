//! Tiers, stale serving, refresh-ahead and invalidation, end to end over real
//! TCP against the Superset-shaped upstream. Entry time is moved with a manual
//! clock; waiting is bounded polling for a condition, never a fixed sleep.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;
use chartcache::clock::{Clock, ManualClock};
use chartcache::config::Config;
use chartcache::config::{IdentityKind, RuleConfig, TierConfig, TimeRangeClass};
use http::Method;
use serde_json::{Value, json};

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";
/// 2025-11-24T16:00:00Z: a realistic wall clock for time-range classes.
const T0: u64 = 1_764_000_000_000;

fn tier(name: &str, fresh: u64, swr: u64, sie: u64) -> TierConfig {
    TierConfig {
        name: name.into(),
        fresh_secs: fresh,
        stale_while_revalidate_secs: swr,
        stale_if_error_secs: sie,
    }
}

/// A config whose only tier is `t`.
fn one_tier(up: &Upstream, t: TierConfig) -> Config {
    let mut cfg = test_config(&up.url());
    cfg.default_tier = t.name.clone();
    cfg.tiers = vec![t];
    cfg
}

async fn start(cfg: Config) -> (Proxy, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    let proxy = Proxy::start_with_clock(cfg, clock.clone()).await;
    (proxy, clock)
}

/// Poll `cond` every 10 ms for at most `secs` seconds.
async fn eventually(secs: u64, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..secs * 100 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The fixture body with another chart, dashboard and dataset.
fn chart(chart: u64, dashboard: u64, dataset: u64) -> Value {
    let mut b = chart_body(BIGNUMBER);
    b["datasource"]["id"] = json!(dataset);
    b["form_data"]["datasource"] = json!(format!("{dataset}__table"));
    b["form_data"]["slice_id"] = json!(chart);
    b["form_data"]["dashboardId"] = json!(dashboard);
    b
}

/// The fixture body with every time range set to `range`.
fn with_range(range: &str) -> Value {
    let mut b = chart_body(BIGNUMBER);
    b["form_data"]["time_range"] = json!(range);
    b["queries"][0]["filters"][0]["val"] = json!(range);
    b
}

/// The `ttl=` of a `Cache-Status` value.
fn ttl(cs: &str) -> i64 {
    cs.split("; ")
        .find_map(|p| p.strip_prefix("ttl="))
        .unwrap_or_else(|| panic!("no ttl in {cs:?}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once_under_100_concurrent() {
    let up = Upstream::start().await;
    let (proxy, clock) = start(one_tier(&up, tier("t", 60, 120, 600))).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    let first = c.chart(&proxy, "alice-token", &body).await;
    assert_eq!(first.cache_status(), "chartcache; fwd=miss; stored");
    assert_eq!(first.json()["result"][0]["query_no"], 1);

    clock.advance_ms(70_000);
    // Superset is slow now: nobody may wait for it.
    up.set_delay(Duration::from_millis(3_000));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (c, body, url) = (c.clone(), body.clone(), proxy.url("/api/v1/chart/data"));
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
    let mut stale = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        // Nobody waited for Superset: the stored body, or (on a machine slow
        // enough that the refresh landed first) the refreshed one, as a hit.
        match r.cache_status().as_str() {
            "chartcache; hit; ttl=-10; detail=stale" => {
                stale += 1;
                assert_eq!(r.json()["result"][0]["query_no"], 1, "the stored body");
            }
            "chartcache; hit; ttl=60" => assert_eq!(r.json()["result"][0]["query_no"], 2),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(stale > 0);
    // One background refresh replaces the entry.
    eventually(10, "the refreshed entry", async || {
        let r = c.chart(&proxy, "alice-token", &body).await;
        r.cache_status().starts_with("chartcache; hit; ttl=") && !r.cache_status().contains("stale")
    })
    .await;
    assert_eq!(up.chart_queries(), 2);
    let r = c.chart(&proxy, "alice-token", &body).await;
    assert_eq!(r.json()["result"][0]["query_no"], 2);
    assert_eq!(ttl(&r.cache_status()), 60);
    assert_eq!(up.chart_queries(), 2);
}

#[tokio::test]
async fn failed_background_refresh_keeps_serving_stale() {
    let up = Upstream::start().await;
    let (proxy, clock) = start(one_tier(&up, tier("t", 60, 120, 600))).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    c.chart(&proxy, "alice-token", &body).await;
    clock.advance_ms(61_000);
    up.set_mode(ChartMode::Status(500));
    for _ in 0..3 {
        let r = c.chart(&proxy, "alice-token", &body).await;
        assert_eq!(r.status, 200);
        assert!(
            r.cache_status().contains("detail=stale"),
            "{}",
            r.cache_status()
        );
    }
    let m = &proxy.app.metrics.background_refreshes;
    eventually(5, "a failed refresh", async || {
        m.with_label_values(&["swr", "not_stored"]).get() >= 1
    })
    .await;
    let r = c.chart(&proxy, "alice-token", &body).await;
    assert_eq!(r.json()["result"][0]["query_no"], 1);
}

#[tokio::test]
async fn stale_if_error_when_superset_answers_500_or_hangs() {
    let up = Upstream::start().await;
    let mut cfg = one_tier(&up, tier("t", 60, 0, 3_600));
    cfg.upstream_client.response_timeout_ms = 300;
    let (proxy, clock) = start(cfg).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    let stored = c.chart(&proxy, "alice-token", &body).await;

    clock.advance_ms(120_000);
    up.set_mode(ChartMode::Status(500));
    let r = c.chart(&proxy, "alice-token", &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.cache_status(),
        "chartcache; fwd=stale; ttl=-60; detail=upstream-error"
    );
    assert_eq!(r.json(), stored.json());

    up.set_mode(ChartMode::Hang);
    let r = c.chart(&proxy, "alice-token", &body).await;
    assert_eq!(r.status, 200);
    assert!(
        r.cache_status().starts_with("chartcache; fwd=stale"),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.json(), stored.json());

    // Past stale_if_error the error is Superset's (no entry is served).
    clock.advance_ms(3_600_000);
    up.set_mode(ChartMode::Status(500));
    let r = c.chart(&proxy, "alice-token", &body).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.cache_status(), "chartcache; fwd=miss; detail=status");
}

#[tokio::test]
async fn absolute_past_and_relative_ranges_pick_different_tiers() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    cfg.rules = vec![RuleConfig {
        name: "closed".into(),
        time_range: vec![TimeRangeClass::AbsolutePast],
        tier: Some("historical".into()),
        ..Default::default()
    }];
    let (proxy, clock) = start(cfg).await;
    let c = TestClient::new();
    let past = with_range("2023-01-01 : 2024-01-01");
    let open = with_range("Last week");
    let future = with_range("2025-01-01 : 2026-01-01");
    for b in [&past, &open, &future] {
        assert!(
            c.chart(&proxy, "bob-token", b)
                .await
                .cache_status()
                .contains("fwd=miss")
        );
    }
    assert_eq!(
        ttl(&c.chart(&proxy, "bob-token", &past).await.cache_status()),
        86_400
    );
    assert_eq!(
        ttl(&c.chart(&proxy, "bob-token", &open).await.cache_status()),
        300
    );
    // A range that has not ended yet still moves.
    assert_eq!(
        ttl(&c.chart(&proxy, "bob-token", &future).await.cache_status()),
        300
    );
    clock.advance_ms(301_000);
    let r = c.chart(&proxy, "bob-token", &past).await;
    assert!(
        r.cache_status().starts_with("chartcache; hit; ttl=86"),
        "{}",
        r.cache_status()
    );
    let r = c.chart(&proxy, "bob-token", &open).await;
    assert!(
        r.cache_status().contains("detail=stale"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn superset_cache_timeout_caps_fresh_unless_the_rule_opts_out() {
    let up = Upstream::start().await;
    up.state.cache_timeout.store(20, Ordering::SeqCst);
    let mut cfg = test_config(&up.url());
    cfg.rules = vec![RuleConfig {
        name: "own-ttl".into(),
        chart_id: vec![7],
        tier: Some("standard".into()),
        respect_superset_timeout: Some(false),
        ..Default::default()
    }];
    let (proxy, clock) = start(cfg).await;
    let c = TestClient::new();
    let capped = chart(1, 1, 1);
    let own = chart(7, 1, 1);
    c.chart(&proxy, "alice-token", &capped).await;
    c.chart(&proxy, "alice-token", &own).await;
    assert_eq!(
        ttl(&c.chart(&proxy, "alice-token", &capped).await.cache_status()),
        20
    );
    assert_eq!(
        ttl(&c.chart(&proxy, "alice-token", &own).await.cache_status()),
        300
    );
    clock.advance_ms(21_000);
    assert!(
        c.chart(&proxy, "alice-token", &capped)
            .await
            .cache_status()
            .contains("detail=stale")
    );
    assert_eq!(
        ttl(&c.chart(&proxy, "alice-token", &own).await.cache_status()),
        279
    );

    // cache_timeout 0 means "do not cache" in Superset: not stored.
    up.state.cache_timeout.store(0, Ordering::SeqCst);
    let zero = chart(2, 1, 1);
    let r = c.chart(&proxy, "alice-token", &zero).await;
    assert_eq!(r.cache_status(), "chartcache; fwd=miss; detail=no-store");
    let r = c.chart(&proxy, "alice-token", &zero).await;
    assert!(r.cache_status().contains("fwd=miss"));
}

#[tokio::test]
async fn rules_match_on_identity_kind() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    cfg.rules = vec![RuleConfig {
        name: "embedded".into(),
        identity: vec![IdentityKind::Guest],
        tier: Some("realtime".into()),
        ..Default::default()
    }];
    let (proxy, _clock) = start(cfg).await;
    let c = TestClient::new();
    // Different charts: the identity kind picks the tier, not the key.
    let send = async |guest: bool| {
        let mut h = vec![
            ("authorization", "Bearer alice-token"),
            ("content-type", "application/json"),
        ];
        let body = if guest {
            h.push(("x-guesttoken", "guest"));
            chart(1, 1, 1)
        } else {
            chart(2, 1, 1)
        };
        let body = serde_json::to_vec(&body).unwrap();
        c.send(Method::POST, &proxy.url("/api/v1/chart/data"), &h, body)
            .await
    };
    send(true).await;
    assert_eq!(ttl(&send(true).await.cache_status()), 30);
    send(false).await;
    assert_eq!(ttl(&send(false).await.cache_status()), 300);
}

async fn purge(c: &TestClient, proxy: &Proxy, body: &str) -> Value {
    let r = c
        .send(
            Method::POST,
            &proxy.admin_url("/purge"),
            &[("authorization", "Bearer test-admin-token")],
            body.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()
}

#[tokio::test]
async fn purge_by_chart_dashboard_and_dataset_tags() {
    let up = Upstream::start().await;
    let (proxy, _clock) = start(test_config(&up.url())).await;
    let c = TestClient::new();
    // chart 1 and 2 on dashboard 10 over dataset 5; chart 3 on dashboard 11 over dataset 6.
    let bodies = [chart(1, 10, 5), chart(2, 10, 5), chart(3, 11, 6)];
    let fill = async || {
        for b in &bodies {
            for user in ["alice-token", "bob-token"] {
                c.chart(&proxy, user, b).await;
            }
        }
    };
    let hits = async || {
        let mut out = Vec::new();
        for b in &bodies {
            out.push(
                c.chart(&proxy, "alice-token", b)
                    .await
                    .cache_status()
                    .contains("hit"),
            );
        }
        out
    };
    fill().await;
    assert_eq!(hits().await, [true, true, true]);
    assert_eq!(
        purge(&c, &proxy, r#"{"tags":["chart:2"]}"#).await["removed"],
        2
    );
    assert_eq!(hits().await, [true, false, true]);
    fill().await;
    assert_eq!(
        purge(&c, &proxy, r#"{"tags":["dashboard:10"]}"#).await["removed"],
        4
    );
    assert_eq!(hits().await, [false, false, true]);
    fill().await;
    assert_eq!(
        purge(&c, &proxy, r#"{"tags":["dataset:6__table"]}"#).await["removed"],
        2
    );
    assert_eq!(hits().await, [true, true, false]);
    fill().await;
    // Several tags at once count each entry once.
    assert_eq!(
        purge(&c, &proxy, r#"{"tags":["chart:1","dataset:5__table"]}"#).await["removed"],
        4
    );
    assert_eq!(purge(&c, &proxy, r#"{"all":true}"#).await["removed"], 2);
    assert_eq!(hits().await, [false, false, false]);
    // Keys as explain shows them.
    let key = c
        .send(
            Method::POST,
            &proxy.admin_url("/explain?scope=user:2"),
            &[
                ("authorization", "Bearer test-admin-token"),
                ("content-type", "application/json"),
            ],
            serde_json::to_vec(&bodies[0]).unwrap(),
        )
        .await
        .json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let r = purge(&c, &proxy, &format!(r#"{{"keys":["{key}"]}}"#)).await;
    assert_eq!(r["removed"], 1);
    assert_eq!(hits().await, [false, true, true]);
    // Without the token: 401.
    let r = c
        .send(
            Method::POST,
            &proxy.admin_url("/purge"),
            &[],
            r#"{"all":true}"#,
        )
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn successful_writes_through_the_proxy_invalidate() {
    let up = Upstream::start().await;
    let (proxy, _clock) = start(test_config(&up.url())).await;
    let c = TestClient::new();
    // chart 4 on dashboard 8 over dataset 3.
    let body = chart(4, 8, 3);
    let writes: &[(Method, &str, bool)] = &[
        (Method::PUT, "/api/v1/chart/4", true),
        (Method::DELETE, "/api/v1/chart/4", true),
        (Method::DELETE, "/api/v1/chart/?q=!(1,4)", true),
        (Method::PUT, "/api/v1/dataset/3", true),
        (Method::DELETE, "/api/v1/dataset/3", true),
        (Method::PUT, "/api/v1/dataset/3/refresh", true),
        (Method::DELETE, "/api/v1/dataset/?q=!(3)", true),
        (Method::PUT, "/api/v1/database/1", true),
        (Method::DELETE, "/api/v1/database/1", true),
        (Method::PUT, "/api/v1/dashboard/8", true),
        (Method::DELETE, "/api/v1/dashboard/8", true),
        (Method::DELETE, "/api/v1/dashboard/?q=%21%288%2C9%29", true),
        // Other objects leave the entry alone.
        (Method::PUT, "/api/v1/chart/5", false),
        (Method::PUT, "/api/v1/dataset/4", false),
        (Method::DELETE, "/api/v1/dashboard/?q=!(9)", false),
        (Method::GET, "/api/v1/dataset/3", false),
    ];
    for (m, path, invalidates) in writes {
        c.chart(&proxy, "alice-token", &body).await;
        assert!(
            c.chart(&proxy, "alice-token", &body)
                .await
                .cache_status()
                .contains("hit")
        );
        let r = c
            .send(
                m.clone(),
                &proxy.url(path),
                &[("authorization", "Bearer alice-token")],
                "{}",
            )
            .await;
        assert!(
            r.status.is_success() || r.status == 404,
            "{m} {path}: {}",
            r.status
        );
        let next = c.chart(&proxy, "alice-token", &body).await.cache_status();
        assert_eq!(
            next.contains("fwd=miss"),
            *invalidates,
            "{m} {path}: {next}"
        );
    }
}

#[tokio::test]
async fn hot_entry_is_refreshed_ahead_and_never_misses_while_traffic_continues() {
    let up = Upstream::start().await;
    let mut cfg = one_tier(&up, tier("t", 60, 0, 600));
    cfg.refresh_ahead.hot_hits = 3;
    cfg.refresh_ahead.lead_secs = 10;
    let (proxy, clock) = start(cfg).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    assert!(
        c.chart(&proxy, "alice-token", &body)
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    let refresher = proxy.app.refresher.clone();
    // Ten minutes of traffic, one request every 5 s (ten fresh windows).
    for step in 0..120 {
        clock.advance_ms(5_000);
        refresher.wake();
        // A refresh that is due must land before time moves on, as it would
        // with real time between requests.
        eventually(10, "the refresh-ahead", async || {
            refresher.idle(clock.now_ms())
        })
        .await;
        let r = c.chart(&proxy, "alice-token", &body).await;
        assert_eq!(r.status, 200);
        let cs = r.cache_status();
        assert!(cs.starts_with("chartcache; hit; ttl="), "step {step}: {cs}");
        assert!(!cs.contains("stale"), "step {step}: {cs}");
    }
    // One refresh per generation (hot after 3 hits, refreshed 10 s before its
    // 60 s end, so every 50 s: at 50, 100, ..., 600 s), nothing else.
    let q = up.chart_queries();
    assert_eq!(q, 13, "upstream queries");
    let m = &proxy.app.metrics.background_refreshes;
    assert_eq!(
        m.with_label_values(&["ahead", "stored"]).get() as usize,
        q - 1
    );
}

#[tokio::test]
async fn refresh_ahead_uses_the_most_recent_credential() {
    let up = Upstream::start().await;
    // A second token for alice: the refresh must use whichever came last.
    up.state
        .bearers
        .lock()
        .unwrap()
        .insert("alice-token-2".into(), (2, "alice".into()));
    let mut cfg = one_tier(&up, tier("t", 60, 0, 600));
    cfg.refresh_ahead.hot_hits = 2;
    let (proxy, clock) = start(cfg).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    c.chart(&proxy, "alice-token", &body).await;
    c.chart(&proxy, "alice-token", &body).await;
    c.chart(&proxy, "alice-token", &body).await;
    assert!(
        c.chart(&proxy, "alice-token-2", &body)
            .await
            .cache_status()
            .contains("hit")
    );
    up.revoke_bearer("alice-token");
    clock.advance_ms(55_000);
    proxy.app.refresher.wake();
    eventually(10, "the refresh-ahead", async || up.chart_queries() == 2).await;
    let (_, _, h, _) = up.last_seen("/api/v1/chart/data").unwrap();
    assert_eq!(h.get("authorization").unwrap(), "Bearer alice-token-2");
    eventually(10, "the refreshed entry", async || {
        proxy.app.refresher.idle(clock.now_ms())
    })
    .await;
    let r = c.chart(&proxy, "alice-token-2", &body).await;
    assert_eq!(r.json()["result"][0]["query_no"], 2);
    assert_eq!(ttl(&r.cache_status()), 60);
}

#[tokio::test]
async fn admin_explain_shows_rule_tier_and_ttls() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    cfg.rules = vec![RuleConfig {
        name: "closed".into(),
        time_range: vec![TimeRangeClass::AbsolutePast],
        tier: Some("historical".into()),
        ..Default::default()
    }];
    let (proxy, _clock) = start(cfg).await;
    let c = TestClient::new();
    let r = c
        .send(
            Method::POST,
            &proxy.admin_url("/explain?scope=user:2"),
            &[
                ("authorization", "Bearer test-admin-token"),
                ("content-type", "application/json"),
            ],
            serde_json::to_vec(&with_range("2020-01-01 : 2021-01-01")).unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["rule"], "closed");
    assert_eq!(v["tier"]["name"], "historical");
    assert_eq!(v["time_range_class"], "absolute_past");
    assert_eq!(v["ttl"]["fresh_secs"], 86_400);
    assert_eq!(v["ttl"]["stale_while_revalidate_until_secs"], 90_000);
    assert_eq!(v["ttl"]["stale_if_error_until_secs"], 86_400 + 7 * 86_400);
}
