//! What keys an entry is exactly what Superset sees. Each credential shape
//! below once filed bob's rows under alice's (or a guest's) scope, because the
//! scope was resolved from the raw headers while Superset, behind gunicorn,
//! read a differently processed set. The upstream here reads headers as
//! gunicorn/Werkzeug do (`fake_superset::gunicorn`): repeated headers joined with
//! `,`, a session cookie winning over a Bearer token.
//!
//! Every shape runs on HTTP/1.1 and h2c, as a miss, as the leader of a
//! coalesced follower, and before a background refresh (stale-while-revalidate
//! and refresh-ahead). After each, alice, bob and the guest must each get
//! their own rows, whatever the cache holds.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use chartcache::clock::{Clock, ManualClock};
use chartcache::config::Config;
use chartcache::config::TierConfig;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";
const T0: u64 = 1_764_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2c,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// bob's Bearer + alice's session cookie + `Connection: keep-alive, cookie`.
    ConnectionNamesCookie,
    /// bob's Bearer + `Cookie: theme=dark` + a second `Cookie: session=<alice>`.
    SecondCookieHeader,
    /// A guest token + an empty `Authorization` + bob's Bearer.
    EmptyAuthorization,
}

/// A valid guest token (exp in an hour, float as Superset writes it), which
/// the upstream answers as `guest-a`.
fn guest_token() -> String {
    let exp = jsonwebtoken::get_current_timestamp() as f64 + 3600.5;
    let claims = serde_json::json!({"user": {"username": "embed"}, "resources": [],
        "rls_rules": [], "exp": exp, "aud": "superset", "type": "guest"});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"superset-side"),
    )
    .unwrap()
}

impl Shape {
    fn headers(self, guest: &str) -> Vec<(&'static str, Vec<u8>)> {
        let bob = b"Bearer bob-token".to_vec();
        match self {
            Shape::ConnectionNamesCookie => vec![
                ("authorization", bob),
                ("cookie", b"session=alice-session".to_vec()),
                ("connection", b"keep-alive, cookie".to_vec()),
            ],
            Shape::SecondCookieHeader => vec![
                ("authorization", bob),
                ("cookie", b"theme=dark".to_vec()),
                ("cookie", b"session=alice-session".to_vec()),
            ],
            Shape::EmptyAuthorization => vec![
                ("x-guesttoken", guest.as_bytes().to_vec()),
                ("authorization", Vec::new()),
                ("authorization", bob),
            ],
        }
    }

    /// The principal whose scope the shape pretended to be, and its own headers.
    fn victim(self, guest: &str) -> (&'static str, Vec<(&'static str, Vec<u8>)>) {
        match self {
            Shape::EmptyAuthorization => {
                ("guest-a", vec![("x-guesttoken", guest.as_bytes().to_vec())])
            }
            _ => ("alice", vec![("cookie", b"session=alice-session".to_vec())]),
        }
    }

    /// Whether the shape reaches chartcache as ambiguous on this protocol
    /// (HTTP/2 forbids `Connection` and joins cookie crumbs: those two are
    /// alice's credentials there, plainly).
    fn ambiguous_on(self, p: Proto) -> bool {
        p == Proto::H1 || self == Shape::EmptyAuthorization
    }
}

struct Client2 {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Client2 {
    fn new(p: Proto) -> Client2 {
        let mut b = Client::builder(TokioExecutor::new());
        if p == Proto::H2c {
            b.http2_only(true);
        }
        Client2 {
            client: b.build_http(),
        }
    }

    async fn chart(&self, proxy: &Proxy, headers: &[(&str, Vec<u8>)]) -> Resp {
        let body = serde_json::to_vec(&chart_body(BIGNUMBER)).unwrap();
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(proxy.url("/api/v1/chart/data"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let h = req.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        let resp = self.client.request(req).await.expect("request failed");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }
}

fn user_of(r: &Resp) -> String {
    serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["result"][0]["user"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("<{}>", r.status))
}

fn config(up: &Upstream) -> Config {
    let mut cfg = test_config(&up.url());
    let t = TierConfig {
        name: "t".into(),
        fresh_secs: 60,
        stale_while_revalidate_secs: 60,
        stale_if_error_secs: 600,
    };
    cfg.default_tier = t.name.clone();
    cfg.tiers = vec![t];
    cfg.refresh_ahead.hot_hits = 2;
    cfg.refresh_ahead.lead_secs = 10;
    cfg
}

async fn setup() -> (Upstream, Proxy, Arc<ManualClock>, String) {
    let up = Upstream::start().await;
    let guest = guest_token();
    up.allow_guest(&guest, "guest-a");
    let clock = ManualClock::new(T0);
    let proxy = Proxy::start_with_clock(config(&up), clock.clone()).await;
    (up, proxy, clock, guest)
}

async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..1000 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Everyone gets their own rows, from the cache or not.
async fn everyone_gets_their_own(c: &Client2, proxy: &Proxy, guest: &str, ctx: &str) {
    for _ in 0..2 {
        let alice = c
            .chart(proxy, &[("cookie", b"session=alice-session".to_vec())])
            .await;
        assert_eq!(
            user_of(&alice),
            "alice",
            "{ctx}: alice ({})",
            alice.cache_status()
        );
        let bob = c
            .chart(proxy, &[("authorization", b"Bearer bob-token".to_vec())])
            .await;
        assert_eq!(user_of(&bob), "bob", "{ctx}: bob ({})", bob.cache_status());
        let g = c
            .chart(proxy, &[("x-guesttoken", guest.as_bytes().to_vec())])
            .await;
        assert_eq!(
            user_of(&g),
            "guest-a",
            "{ctx}: guest ({})",
            g.cache_status()
        );
    }
}

/// The attack's own answer: ambiguous → uncached, with the reason.
fn check_attack(r: &Resp, shape: Shape, p: Proto, ctx: &str) {
    if shape.ambiguous_on(p) {
        assert!(
            r.cache_status()
                .contains("fwd=bypass; detail=ambiguous-credential"),
            "{ctx}: {}",
            r.cache_status()
        );
    }
}

async fn miss(p: Proto, shape: Shape) {
    {
        {
            let ctx = format!("{p:?} {shape:?} miss");
            let (_up, proxy, _clock, guest) = setup().await;
            let c = Client2::new(p);
            let r = c.chart(&proxy, &shape.headers(&guest)).await;
            everyone_gets_their_own(&c, &proxy, &guest, &ctx).await;
            check_attack(&r, shape, p, &ctx);
        }
    }
}

async fn coalesced_follower(p: Proto, shape: Shape) {
    {
        {
            let ctx = format!("{p:?} {shape:?} follower");
            let (up, proxy, _clock, guest) = setup().await;
            up.set_delay(Duration::from_millis(400));
            let c = Client2::new(p);
            let (who, victim) = shape.victim(&guest);
            let attack_headers = shape.headers(&guest);
            let attack = c.chart(&proxy, &attack_headers);
            let follower = async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                c.chart(&proxy, &victim).await
            };
            let (a, f) = tokio::join!(attack, follower);
            assert_eq!(user_of(&f), who, "{ctx}: {}", f.cache_status());
            up.set_delay(Duration::ZERO);
            everyone_gets_their_own(&c, &proxy, &guest, &ctx).await;
            check_attack(&a, shape, p, &ctx);
        }
    }
}

async fn stale_while_revalidate(p: Proto, shape: Shape) {
    {
        {
            let ctx = format!("{p:?} {shape:?} swr");
            let (_up, proxy, clock, guest) = setup().await;
            let c = Client2::new(p);
            let (who, victim) = shape.victim(&guest);
            assert_eq!(user_of(&c.chart(&proxy, &victim).await), who, "{ctx}");
            clock.advance_ms(61_000);
            let r = c.chart(&proxy, &shape.headers(&guest)).await;
            // Whatever it started in the background has landed.
            eventually("the background refresh", async || {
                proxy.app.coalescer.inflight() == 0
            })
            .await;
            everyone_gets_their_own(&c, &proxy, &guest, &ctx).await;
            check_attack(&r, shape, p, &ctx);
        }
    }
}

async fn refresh_ahead(p: Proto, shape: Shape) {
    {
        {
            let ctx = format!("{p:?} {shape:?} refresh-ahead");
            let (_up, proxy, clock, guest) = setup().await;
            let c = Client2::new(p);
            let (who, victim) = shape.victim(&guest);
            assert_eq!(user_of(&c.chart(&proxy, &victim).await), who, "{ctx}");
            // The shape's hits would make the entry hot and hand it its request.
            let mut attacks = Vec::new();
            for _ in 0..3 {
                attacks.push(c.chart(&proxy, &shape.headers(&guest)).await);
            }
            clock.advance_ms(52_000);
            proxy.app.refresher.wake();
            eventually("the refresh-ahead", async || {
                proxy.app.refresher.idle(clock.now_ms())
            })
            .await;
            everyone_gets_their_own(&c, &proxy, &guest, &ctx).await;
            for r in &attacks {
                check_attack(r, shape, p, &ctx);
            }
        }
    }
}

/// One test per protocol, shape and fetch kind.
macro_rules! cases {
    ($($name:ident: $mode:ident, $p:ident, $shape:ident;)*) => {$(
        #[tokio::test]
        async fn $name() {
            $mode(Proto::$p, Shape::$shape).await;
        }
    )*};
}

cases! {
    h1_connection_names_cookie_miss: miss, H1, ConnectionNamesCookie;
    h1_second_cookie_header_miss: miss, H1, SecondCookieHeader;
    h1_empty_authorization_miss: miss, H1, EmptyAuthorization;
    h2c_connection_names_cookie_miss: miss, H2c, ConnectionNamesCookie;
    h2c_second_cookie_header_miss: miss, H2c, SecondCookieHeader;
    h2c_empty_authorization_miss: miss, H2c, EmptyAuthorization;
    h1_connection_names_cookie_follower: coalesced_follower, H1, ConnectionNamesCookie;
    h1_second_cookie_header_follower: coalesced_follower, H1, SecondCookieHeader;
    h1_empty_authorization_follower: coalesced_follower, H1, EmptyAuthorization;
    h2c_connection_names_cookie_follower: coalesced_follower, H2c, ConnectionNamesCookie;
    h2c_second_cookie_header_follower: coalesced_follower, H2c, SecondCookieHeader;
    h2c_empty_authorization_follower: coalesced_follower, H2c, EmptyAuthorization;
    h1_connection_names_cookie_swr: stale_while_revalidate, H1, ConnectionNamesCookie;
    h1_second_cookie_header_swr: stale_while_revalidate, H1, SecondCookieHeader;
    h1_empty_authorization_swr: stale_while_revalidate, H1, EmptyAuthorization;
    h2c_connection_names_cookie_swr: stale_while_revalidate, H2c, ConnectionNamesCookie;
    h2c_second_cookie_header_swr: stale_while_revalidate, H2c, SecondCookieHeader;
    h2c_empty_authorization_swr: stale_while_revalidate, H2c, EmptyAuthorization;
    h1_connection_names_cookie_refresh_ahead: refresh_ahead, H1, ConnectionNamesCookie;
    h1_second_cookie_header_refresh_ahead: refresh_ahead, H1, SecondCookieHeader;
    h1_empty_authorization_refresh_ahead: refresh_ahead, H1, EmptyAuthorization;
    h2c_connection_names_cookie_refresh_ahead: refresh_ahead, H2c, ConnectionNamesCookie;
    h2c_second_cookie_header_refresh_ahead: refresh_ahead, H2c, SecondCookieHeader;
    h2c_empty_authorization_refresh_ahead: refresh_ahead, H2c, EmptyAuthorization;
}

/// The literal third shape: a made-up guest token, which Superset
/// refuses, must never be answered from what bob's Bearer fetched.
#[tokio::test]
async fn made_up_guest_token_never_gets_bobs_rows() {
    for p in [Proto::H1, Proto::H2c] {
        let (_up, proxy, _clock, _guest) = setup().await;
        let c = Client2::new(p);
        let r = c
            .chart(
                &proxy,
                &[
                    ("x-guesttoken", b"made-up".to_vec()),
                    ("authorization", Vec::new()),
                    ("authorization", b"Bearer bob-token".to_vec()),
                ],
            )
            .await;
        assert!(
            r.cache_status().contains("ambiguous-credential"),
            "{p:?}: {}",
            r.cache_status()
        );
        let alone = c
            .chart(&proxy, &[("x-guesttoken", b"made-up".to_vec())])
            .await;
        assert_eq!(alone.status, 401, "{p:?}: {}", alone.cache_status());
    }
}

/// A legitimate HTTP/2 request whose cookie arrives in crumbs is keyed and
/// fetched as one cookie: alice's, both ways.
#[tokio::test]
async fn h2_cookie_crumbs_are_joined() {
    let (up, proxy, _clock, guest) = setup().await;
    let c = Client2::new(Proto::H2c);
    let r = c
        .chart(
            &proxy,
            &[
                ("authorization", b"Bearer bob-token".to_vec()),
                ("cookie", b"theme=dark".to_vec()),
                ("cookie", b"session=alice-session".to_vec()),
            ],
        )
        .await;
    assert!(
        r.cache_status().contains("fwd=miss"),
        "{}",
        r.cache_status()
    );
    assert_eq!(user_of(&r), "alice");
    let (_, _, h, _) = up.last_seen("/api/v1/chart/data").unwrap();
    assert_eq!(h.get_all("cookie").iter().count(), 1);
    assert_eq!(h["cookie"], "theme=dark; session=alice-session");
    assert_eq!(h["authorization"], "Bearer bob-token");
    everyone_gets_their_own(&c, &proxy, &guest, "h2 crumbs").await;
}

/// Non-ASCII cookie bytes and a doubled session cookie are ambiguous too.
#[tokio::test]
async fn other_ambiguous_shapes_bypass() {
    let (_up, proxy, _clock, _guest) = setup().await;
    let c = Client2::new(Proto::H1);
    for headers in [
        vec![
            ("authorization", b"Bearer bob-token".to_vec()),
            (
                "cookie",
                b"theme=caf\xc3\xa9; session=alice-session".to_vec(),
            ),
        ],
        vec![(
            "cookie",
            b"session=bob-session; session=alice-session".to_vec(),
        )],
        vec![
            ("x-guesttoken", b"a".to_vec()),
            ("x-guesttoken", b"b".to_vec()),
        ],
        vec![
            ("x-guesttoken", Vec::new()),
            ("authorization", b"Bearer bob-token".to_vec()),
        ],
    ] {
        let r = c.chart(&proxy, &headers).await;
        assert!(
            r.cache_status()
                .contains("fwd=bypass; detail=ambiguous-credential"),
            "{headers:?}: {}",
            r.cache_status()
        );
    }
}

/// Two `Host` headers are refused; a client's own forwarding headers get this
/// hop appended, so Superset's ProxyFix never takes them for chartcache's.
#[tokio::test]
async fn forwarding_headers_and_two_hosts() {
    let (up, proxy, _clock, _guest) = setup().await;
    let c = TestClient::new();
    let r = c
        .send(
            Method::GET,
            &proxy.url("/echo"),
            &[
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-proto", "https"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    let (_, _, h, _) = up.last_seen("/echo").unwrap();
    let host = proxy.addr.to_string();
    assert_eq!(
        h["x-forwarded-host"],
        format!("evil.example, {host}").as_str()
    );
    assert_eq!(h["x-forwarded-proto"], "https, http");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    // Two Host headers: 400, on a pass-through and on a cached route.
    for path in ["/echo", "/api/v1/chart/data"] {
        let method = if path == "/echo" {
            Method::GET
        } else {
            Method::POST
        };
        let body = serde_json::to_vec(&chart_body(BIGNUMBER)).unwrap();
        let r = c
            .send(
                method,
                &proxy.url(path),
                &[
                    ("host", "a.example"),
                    ("host", "b.example"),
                    ("authorization", "Bearer alice-token"),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await;
        assert_eq!(r.status, 400, "{path}");
    }
}
