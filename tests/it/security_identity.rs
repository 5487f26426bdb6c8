//! Who may read what: identity scopes end to end. Two principals never share
//! an entry except in the scopes configured to share (`roles`, `public`, equal
//! guest grants), and forged, unsigned or expired tokens are never served from
//! cache.

use std::time::Duration;

use crate::support::*;
use http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};

use chartcache::config::Config;
use chartcache::config::{RuleConfig, ScopeKind};

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";
const JWT_SECRET: &[u8] = b"test-superset-secret-key";
const GUEST_SECRET: &[u8] = b"test-guest-token-secret";
const AUDIENCE: &str = "http://superset.test:8088/";

fn with_scope(cfg: &mut Config, scope: ScopeKind) {
    cfg.rules = vec![RuleConfig {
        name: "everything".into(),
        tier: Some("standard".into()),
        scope,
        ..RuleConfig::default()
    }];
}

fn sign(secret: &[u8], claims: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn access_token(secret: &[u8], sub: &str, exp: u64, kind: &str) -> String {
    let now = get_current_timestamp();
    sign(
        secret,
        &serde_json::json!({"fresh": true, "iat": now, "nbf": now, "jti": format!("{sub}-{exp}-{kind}"),
            "type": kind, "sub": sub, "csrf": "c", "exp": exp}),
    )
}

fn guest_token(secret: &[u8], rls: &str, exp: u64, nonce: u64) -> String {
    sign(
        secret,
        &serde_json::json!({"user": {"username": "embed", "first_name": "E", "last_name": "D"},
            "resources": [{"type": "dashboard", "id": "7b3c"}],
            "rls_rules": [{"clause": rls}],
            "iat": get_current_timestamp() - nonce, "exp": exp, "aud": AUDIENCE, "type": "guest"}),
    )
}

fn unsigned(claims: &serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims.to_string())
    )
}

fn secret_file(dir: &tempfile::TempDir, name: &str, secret: &[u8]) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, secret).unwrap();
    p.to_str().unwrap().to_string()
}

async fn chart_with(c: &TestClient, proxy: &Proxy, headers: &[(&str, &str)]) -> Resp {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    c.send(
        Method::POST,
        &proxy.url("/api/v1/chart/data"),
        &h,
        serde_json::to_vec(&chart_body(BIGNUMBER)).unwrap(),
    )
    .await
}

fn user_of(r: &Resp) -> String {
    r.json()["result"][0]["user"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn user_scope_never_shares_even_between_users_with_equal_roles() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    for round in 0..2 {
        for user in ["alice", "carol", "bob", "admin"] {
            let r = c.chart(&proxy, &format!("{user}-token"), &body).await;
            assert_eq!(user_of(&r), user, "round {round}: {}", r.cache_status());
        }
    }
    assert_eq!(up.chart_queries(), 4);
    assert_eq!(up.roles_queries(), 0, "user scope never asks for roles");
}

#[tokio::test]
async fn roles_scope_shares_exactly_between_equal_role_sets() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    with_scope(&mut cfg, ScopeKind::Roles);
    let proxy = Proxy::start(cfg).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    let alice = c.chart(&proxy, "alice-token", &body).await;
    assert!(alice.cache_status().contains("fwd=miss"));
    // carol has alice's roles (in another order at Superset): she gets alice's
    // entry. This is what `roles` means, and why it is opt-in.
    let carol = c.chart(&proxy, "carol-token", &body).await;
    assert!(
        carol.cache_status().contains("hit"),
        "{}",
        carol.cache_status()
    );
    assert_eq!(user_of(&carol), "alice");
    // bob (other RLS role) and admin never see it.
    let bob = c.chart(&proxy, "bob-token", &body).await;
    assert_eq!(user_of(&bob), "bob");
    assert!(bob.cache_status().contains("fwd=miss"));
    let admin = c.chart(&proxy, "admin-token", &body).await;
    assert_eq!(user_of(&admin), "admin");
    // Role lookups are cached per credential, like user lookups.
    let again = c.chart(&proxy, "bob-token", &body).await;
    assert!(again.cache_status().contains("hit"));
    assert_eq!(up.roles_queries(), 4);
    assert_eq!(up.chart_queries(), 3);
    // A refused credential is never served from the roles scope.
    let bad = c.chart(&proxy, "no-such-token", &body).await;
    assert_eq!(bad.status, 401);
    assert!(bad.cache_status().contains("fwd=bypass"));
}

#[tokio::test]
async fn public_scope_is_shared_by_everyone_including_anonymous() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    with_scope(&mut cfg, ScopeKind::Public);
    let proxy = Proxy::start(cfg).await;
    let c = TestClient::new();
    let first = chart_with(&c, &proxy, &[("authorization", "Bearer alice-token")]).await;
    assert!(first.cache_status().contains("fwd=miss"));
    let bob = chart_with(&c, &proxy, &[("authorization", "Bearer bob-token")]).await;
    assert_eq!(user_of(&bob), "alice");
    let anon = chart_with(&c, &proxy, &[]).await;
    assert!(anon.cache_status().contains("hit"));
    assert_eq!(up.me_queries(), 0);
}

#[tokio::test]
async fn opaque_guest_tokens_are_their_own_scope_and_stop_at_exp() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let exp = get_current_timestamp() + 2;
    // Without a guest-token secret chartcache cannot verify: the token is the scope.
    let a = guest_token(b"superset-side-secret", "region='north'", exp, 0);
    let b = guest_token(b"superset-side-secret", "region='north'", exp, 1);
    up.allow_guest(&a, "guest-a");
    up.allow_guest(&b, "guest-b");
    let r1 = chart_with(&c, &proxy, &[("x-guesttoken", &a)]).await;
    assert_eq!(user_of(&r1), "guest-a");
    assert!(r1.cache_status().contains("fwd=miss"));
    let r2 = chart_with(&c, &proxy, &[("x-guesttoken", &a)]).await;
    assert!(r2.cache_status().contains("hit"), "{}", r2.cache_status());
    let rb = chart_with(&c, &proxy, &[("x-guesttoken", &b)]).await;
    assert_eq!(
        user_of(&rb),
        "guest-b",
        "another token never gets a's entry"
    );
    // Guest-only credentials never cost a /me round trip.
    assert_eq!(up.me_queries(), 0);
    // An unknown token is never served from cache.
    let bad = chart_with(&c, &proxy, &[("x-guesttoken", "garbage.not.signed")]).await;
    assert_eq!(bad.status, 401);
    // Once `exp` has passed the token gets no more hits.
    tokio::time::sleep(Duration::from_millis(
        (exp + 1).saturating_sub(get_current_timestamp()) * 1000 + 100,
    ))
    .await;
    let late = chart_with(&c, &proxy, &[("x-guesttoken", &a)]).await;
    assert!(
        late.cache_status()
            .contains("fwd=bypass; detail=guest-expired"),
        "{}",
        late.cache_status()
    );
}

#[tokio::test]
async fn verified_guest_grants_share_and_forgeries_never_hit() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&up.url());
    cfg.identity.guest_token_secret_file = Some(secret_file(&dir, "guest", GUEST_SECRET));
    cfg.identity.guest_token_audience = Some(AUDIENCE.into());
    let proxy = Proxy::start(cfg).await;
    let c = TestClient::new();
    let exp = get_current_timestamp() + 300;
    let north1 = guest_token(GUEST_SECRET, "region='north'", exp, 0);
    let north2 = guest_token(GUEST_SECRET, "region='north'", exp + 10, 5);
    let south = guest_token(GUEST_SECRET, "region='south'", exp, 0);
    up.allow_guest(&north1, "north");
    up.allow_guest(&north2, "north");
    up.allow_guest(&south, "south");
    let a = chart_with(&c, &proxy, &[("x-guesttoken", &north1)]).await;
    assert!(a.cache_status().contains("fwd=miss"));
    // Another token with an equal grant shares the entry.
    let b = chart_with(&c, &proxy, &[("x-guesttoken", &north2)]).await;
    assert!(b.cache_status().contains("hit"), "{}", b.cache_status());
    let s = chart_with(&c, &proxy, &[("x-guesttoken", &south)]).await;
    assert_eq!(user_of(&s), "south");
    assert_eq!(up.chart_queries(), 2);

    // Same grant, wrong key / unsigned / expired / other audience: never a hit.
    let claims = serde_json::json!({"user": {"username": "embed", "first_name": "E", "last_name": "D"},
        "resources": [{"type": "dashboard", "id": "7b3c"}], "rls_rules": [{"clause": "region='north'"}],
        "iat": get_current_timestamp(), "exp": exp, "aud": AUDIENCE, "type": "guest"});
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = "http://elsewhere/".into();
    let forged = [
        ("forged", sign(b"attacker-key", &claims)),
        ("unsigned", unsigned(&claims)),
        (
            "expired",
            guest_token(
                GUEST_SECRET,
                "region='north'",
                get_current_timestamp() - 1,
                0,
            ),
        ),
        ("wrong-audience", sign(GUEST_SECRET, &wrong_aud)),
    ];
    for (what, token) in forged {
        let r = chart_with(&c, &proxy, &[("x-guesttoken", &token)]).await;
        assert!(
            r.cache_status()
                .contains("fwd=bypass; detail=guest-invalid"),
            "{what}: {}",
            r.cache_status()
        );
        assert_eq!(r.status, 401, "{what}: Superset answers for itself");
    }
}

#[tokio::test]
async fn local_jwt_verification_skips_me_and_refuses_bad_tokens() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&up.url());
    cfg.identity.jwt_secret_file = Some(secret_file(&dir, "jwt", JWT_SECRET));
    let proxy = Proxy::start(cfg).await;
    let c = TestClient::new();
    let exp = get_current_timestamp() + 900;
    let alice = access_token(JWT_SECRET, "2", exp, "access");
    up.state
        .bearers
        .lock()
        .unwrap()
        .insert(alice.clone(), (2, "alice".into()));
    let auth = format!("Bearer {alice}");
    let r1 = chart_with(&c, &proxy, &[("authorization", &auth)]).await;
    assert!(r1.cache_status().contains("fwd=miss"));
    let r2 = chart_with(&c, &proxy, &[("authorization", &auth)]).await;
    assert!(r2.cache_status().contains("hit"));
    assert_eq!(up.me_queries(), 0, "verified locally");
    // Same user through her session cookie (resolved at /me): same scope, a hit.
    let s = chart_with(&c, &proxy, &[("cookie", "session=alice-session")]).await;
    assert!(s.cache_status().contains("hit"), "{}", s.cache_status());
    assert_eq!(up.me_queries(), 1);

    // The session cookie wins at Superset, so a valid token plus admin's cookie
    // is resolved at /me and keyed as admin, never as alice.
    let mixed = chart_with(
        &c,
        &proxy,
        &[
            ("authorization", &auth),
            ("cookie", "session=admin-session"),
        ],
    )
    .await;
    assert_eq!(user_of(&mixed), "admin");
    assert!(mixed.cache_status().contains("fwd=miss"));

    // Tokens claiming to be alice that do not verify: never a hit, forwarded.
    let claims = serde_json::json!({"type": "access", "sub": "2", "exp": exp,
        "iat": get_current_timestamp(), "nbf": get_current_timestamp()});
    let bad = [
        ("forged", sign(b"attacker-key", &claims)),
        ("unsigned", unsigned(&claims)),
        (
            "expired",
            access_token(JWT_SECRET, "2", get_current_timestamp() - 1, "access"),
        ),
        ("refresh", access_token(JWT_SECRET, "2", exp, "refresh")),
        ("malformed", "not-a-jwt".to_string()),
    ];
    for (what, token) in bad {
        let r = chart_with(&c, &proxy, &[("authorization", &format!("Bearer {token}"))]).await;
        assert!(
            r.cache_status().contains("fwd=bypass; detail=jwt-invalid"),
            "{what}: {}",
            r.cache_status()
        );
        assert_eq!(r.status, 401, "{what}");
    }
    assert_eq!(up.me_queries(), 2);
}

#[tokio::test]
async fn configured_secret_that_cannot_be_read_fails_startup() {
    let mut cfg = test_config("http://127.0.0.1:9");
    cfg.identity.jwt_secret_file = Some("/nonexistent/chartcache-secret".into());
    let err = chartcache::app::App::with_memory_store(
        cfg,
        std::sync::Arc::new(chartcache::clock::SystemClock),
    )
    .err()
    .expect("must fail");
    assert!(err.to_string().contains("jwt_secret"), "{err}");
    let mut cfg = test_config("http://127.0.0.1:9");
    cfg.identity.guest_token_secret_env = Some("GUEST_TOKEN_JWT_SECRET".into());
    assert!(
        cfg.validate()
            .unwrap_err()
            .to_string()
            .contains("guest_token_audience")
    );
}

#[tokio::test]
async fn revoked_credential_stops_getting_roles_scope_hits_within_identity_ttl() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    with_scope(&mut cfg, ScopeKind::Roles);
    cfg.identity.ttl_secs = 1;
    let proxy = Proxy::start(cfg).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    assert!(
        c.chart(&proxy, "alice-token", &body)
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    assert!(
        c.chart(&proxy, "alice-token", &body)
            .await
            .cache_status()
            .contains("hit")
    );
    up.revoke_bearer("alice-token");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let r = c.chart(&proxy, "alice-token", &body).await;
    assert_eq!(r.status, 401);
    assert!(
        r.cache_status()
            .contains("fwd=bypass; detail=identity-denied"),
        "{}",
        r.cache_status()
    );
    // carol (same roles, still valid) keeps her hits.
    assert!(
        c.chart(&proxy, "carol-token", &body)
            .await
            .cache_status()
            .contains("hit")
    );
}
