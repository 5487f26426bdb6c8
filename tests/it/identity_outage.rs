//! Superset down, identity mappings expired: who still gets stale entries.
//! Only a principal proven by a locally verified credential (a Bearer access
//! token checked with Superset's JWT secret, a guest token checked with the
//! guest-token secret) is served stale entries; a credential only Superset
//! can resolve (a session cookie) gets `502` with `detail=identity-error`,
//! because chartcache cannot tell whose it is (SECURITY.md, "Superset down").

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;
use chartcache::clock::ManualClock;
use chartcache::config::TierConfig;
use http::Method;

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";
const JWT_SECRET: &[u8] = b"test-superset-secret-key";
const GUEST_SECRET: &[u8] = b"test-guest-token-secret";
const AUDIENCE: &str = "http://superset.test:8088/";

fn sign(secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

async fn chart(c: &TestClient, proxy: &Proxy, h: (&str, &str)) -> Resp {
    let body = serde_json::to_vec(&chart_body(BIGNUMBER)).unwrap();
    c.send(
        Method::POST,
        &proxy.url("/api/v1/chart/data"),
        &[h, ("content-type", "application/json")],
        body,
    )
    .await
}

#[tokio::test]
async fn only_locally_proven_principals_get_stale_entries_while_superset_is_down() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, secret: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, secret).unwrap();
        p.to_str().unwrap().to_string()
    };
    let mut cfg = test_config(&up.url());
    cfg.identity.jwt_secret_file = Some(write("jwt", JWT_SECRET));
    cfg.identity.guest_token_secret_file = Some(write("guest", GUEST_SECRET));
    cfg.identity.guest_token_audience = Some(AUDIENCE.into());
    cfg.identity.ttl_secs = 1;
    let t = TierConfig {
        name: "t".into(),
        fresh_secs: 60,
        stale_while_revalidate_secs: 0,
        stale_if_error_secs: 3_600,
    };
    cfg.default_tier = t.name.clone();
    cfg.tiers = vec![t];
    let clock = ManualClock::new(1_764_000_000_000);
    let proxy = Proxy::start_with_clock(cfg, clock.clone()).await;
    let c = TestClient::new();

    let now = jsonwebtoken::get_current_timestamp() as f64;
    let access = sign(
        JWT_SECRET,
        &serde_json::json!({"type": "access", "sub": "2", "exp": now + 900.0, "nbf": now - 5.0}),
    );
    up.state
        .bearers
        .lock()
        .unwrap()
        .insert(access.clone(), (2, "alice".into()));
    let guest = sign(
        GUEST_SECRET,
        &serde_json::json!({"user": {"username": "embed"}, "resources": [],
            "rls_rules": [{"clause": "region='north'"}], "exp": now + 900.5,
            "aud": AUDIENCE, "type": "guest"}),
    );
    up.allow_guest(&guest, "north");
    let bearer = format!("Bearer {access}");
    let creds = [
        ("authorization", bearer.as_str()),
        ("x-guesttoken", guest.as_str()),
        ("cookie", "session=bob-session"),
    ];
    let mut stored = Vec::new();
    for h in creds {
        let r = chart(&c, &proxy, h).await;
        assert!(
            r.cache_status().contains("fwd=miss; stored"),
            "{h:?}: {}",
            r.cache_status()
        );
        stored.push(r.json());
    }

    // Past fresh, past every identity mapping, and Superset is down.
    clock.advance_ms(120_000);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    up.state.down.store(true, Ordering::SeqCst);

    for (i, who) in ["jwt", "guest"].into_iter().enumerate() {
        let r = chart(&c, &proxy, creds[i]).await;
        assert_eq!(r.status, 200, "{who}");
        assert!(
            r.cache_status().contains("fwd=stale"),
            "{who}: {}",
            r.cache_status()
        );
        assert!(r.cache_status().contains("detail=upstream-error"), "{who}");
        assert_eq!(r.json(), stored[i], "{who}");
    }
    // A session cookie proves nothing without Superset: never served stale.
    let r = chart(&c, &proxy, creds[2]).await;
    assert_eq!(r.status, 503, "Superset's own answer is forwarded");
    assert!(
        r.cache_status()
            .contains("fwd=bypass; detail=identity-error"),
        "{}",
        r.cache_status()
    );
}
