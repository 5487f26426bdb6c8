//! Guest tokens expire at their `exp`, which Superset writes as a float
//! (`time.time() + N`). Without a guest-token secret the token itself is the
//! scope and its (authentic, since Superset answered it) `exp` ends its hits;
//! a guest token without a readable `exp` is never served from cache.

use std::time::Duration;

use crate::support::*;
use http::Method;

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";

fn token(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"superset-side"),
    )
    .unwrap()
}

async fn chart(c: &TestClient, proxy: &Proxy, guest: &str) -> Resp {
    let body = serde_json::to_vec(&chart_body(BIGNUMBER)).unwrap();
    c.send(
        Method::POST,
        &proxy.url("/api/v1/chart/data"),
        &[
            ("x-guesttoken", guest),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

#[tokio::test]
async fn a_float_exp_ends_hits() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let exp = now() + 1.5;
    let t = token(
        serde_json::json!({"user": {"username": "embed"}, "resources": [],
        "rls_rules": [], "exp": exp, "aud": "superset", "type": "guest"}),
    );
    up.allow_guest(&t, "guest-a");
    assert!(
        chart(&c, &proxy, &t)
            .await
            .cache_status()
            .contains("fwd=miss; stored")
    );
    assert!(chart(&c, &proxy, &t).await.cache_status().contains("hit"));
    // 1.5 s past the float exp (Superset answers 401 by then).
    tokio::time::sleep(Duration::from_secs_f64(exp + 1.5 - now())).await;
    let late = chart(&c, &proxy, &t).await;
    assert!(
        late.cache_status()
            .contains("fwd=bypass; detail=guest-expired"),
        "{}",
        late.cache_status()
    );
}

#[tokio::test]
async fn a_guest_token_without_exp_is_never_served_from_cache() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let no_exp = token(serde_json::json!({"user": {"username": "embed"}, "type": "guest"}));
    let bad_exp = token(serde_json::json!({"exp": "tomorrow", "type": "guest"}));
    for t in [no_exp.as_str(), bad_exp.as_str(), "opaque-token"] {
        up.allow_guest(t, "guest-a");
        for _ in 0..2 {
            let r = chart(&c, &proxy, t).await;
            assert_eq!(r.status, 200);
            assert!(
                r.cache_status()
                    .contains("fwd=bypass; detail=guest-expired"),
                "{t}: {}",
                r.cache_status()
            );
        }
    }
}
