//! Requests that are not cached: forwarded unchanged, with forwarding headers,
//! request ids and protocol upgrades.

use crate::support::*;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn forwards_with_forwarding_headers_and_keeps_host() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let r = c
        .send(
            Method::POST,
            &proxy.url("/echo?x=1"),
            &[
                ("host", "superset.example.com"),
                ("x-forwarded-for", "203.0.113.7"),
                ("authorization", "Bearer admin-token"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "drop me"),
            ],
            "hello",
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("cache-status").is_none(),
        "pass-through has no Cache-Status"
    );
    let v = r.json();
    let h = &v["headers"];
    assert_eq!(h["host"], "superset.example.com");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "superset.example.com");
    assert_eq!(h["authorization"], "Bearer admin-token");
    assert_eq!(
        h["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert!(
        h.get("x-hop").is_none(),
        "headers named in Connection are hop-by-hop"
    );
    assert_eq!(
        v["body_blake3"],
        blake3::hash(b"hello").to_hex().to_string()
    );
    // A request id is added and echoed back to the client.
    let id = h["x-request-id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(r.header("x-request-id").as_deref(), Some(id));
    // A sane client request id is kept.
    let r = c
        .send(
            Method::GET,
            &proxy.url("/echo"),
            &[("x-request-id", "req-123")],
            "",
        )
        .await;
    assert_eq!(r.json()["headers"]["x-request-id"], "req-123");
    assert_eq!(r.header("x-request-id").as_deref(), Some("req-123"));
    // Upstream statuses pass through untouched.
    let r = c
        .send(Method::GET, &proxy.url("/nothing-here"), &[], "")
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: superset\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "connection closed during handshake"
        );
        head.push(b[0]);
        assert!(head.len() < 4096);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s.write_all(b"ping-through-the-tunnel").await.unwrap();
    let mut got = vec![0u8; 23];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping-through-the-tunnel");
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let body = serde_json::to_vec(&chart_body("16-chart-data-bignumber-admin-miss.json")).unwrap();
    for want in ["fwd=miss", "hit"] {
        let req = http::Request::post(proxy.url("/api/v1/chart/data"))
            .header("authorization", "Bearer bob-token")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let cs = resp.headers()["cache-status"].to_str().unwrap().to_string();
        assert!(cs.contains(want), "{cs}");
    }
    // The forwarded request carried a Host taken from the h2 authority.
    let (_, _, h, _) = up.last_seen("/api/v1/chart/data").unwrap();
    assert_eq!(h["host"], proxy.addr.to_string());
}
