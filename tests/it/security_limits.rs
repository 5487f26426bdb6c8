//! Hostile input and resource limits, over raw TCP where the client must be
//! able to send what a well-behaved client library would refuse to: each case
//! gets its documented status (see SECURITY.md) and the proxy keeps serving
//! everyone else.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";

/// Write `bytes` while reading concurrently (the server may answer and close
/// before the whole request is written); returns what the server sent before
/// closing or before `wait` elapsed.
async fn raw(addr: SocketAddr, bytes: Vec<u8>, wait: Duration) -> String {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&bytes).await;
        // Keep the write half open: a half-close could end the exchange early.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(w);
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The proxy still answers a normal cached request, quickly.
async fn still_serving(proxy: &Proxy) {
    let started = Instant::now();
    let r = TestClient::new()
        .chart(proxy, "alice-token", &chart_body(BIGNUMBER))
        .await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
}

fn seen_count(up: &Upstream, path: &str) -> usize {
    up.state
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.1 == path)
        .count()
}

#[tokio::test]
async fn oversized_and_too_many_headers_get_431() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    // One header larger than server.max_header_bytes (64 KiB).
    let big = format!(
        "GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let resp = raw(proxy.addr, big.into_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&resp), 431, "{resp:.200}");
    // More headers than server.max_headers (100).
    let mut many = String::from("GET /echo HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let resp = raw(proxy.addr, many.into_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&resp), 431, "{resp:.200}");
    assert_eq!(seen_count(&up, "/echo"), 0, "never forwarded");
    still_serving(&proxy).await;
}

#[tokio::test]
async fn chart_body_above_the_limit_is_streamed_uncached_and_unaltered() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    cfg.cache.max_request_body_bytes = 4096;
    let proxy = Proxy::start(cfg).await;
    let mut body = chart_body(BIGNUMBER);
    body["padding"] = "p".repeat(200 * 1024).into();
    let bytes = serde_json::to_vec(&body).unwrap();
    let c = TestClient::new();
    for _ in 0..2 {
        let r = c
            .send(
                Method::POST,
                &proxy.url("/api/v1/chart/data"),
                &[
                    ("authorization", "Bearer alice-token"),
                    ("content-type", "application/json"),
                ],
                bytes.clone(),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.cache_status(),
            "chartcache; fwd=bypass; detail=body-too-large"
        );
        let (_, _, _, seen) = up.last_seen("/api/v1/chart/data").unwrap();
        assert_eq!(seen.as_ref(), &bytes[..], "body reached Superset unaltered");
    }
    assert_eq!(up.chart_queries(), 2);
}

#[tokio::test]
async fn smuggling_attempts_get_400_and_are_never_forwarded() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let cases: [(&str, &str); 7] = [
        (
            "duplicate Content-Length",
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "Content-Length list",
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!",
        ),
        (
            "signed Content-Length",
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
        ),
        (
            "chunked not last",
            "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            "POST /echo HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "space before colon",
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello",
        ),
        (
            "bad chunk size",
            "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    for (what, req) in cases {
        let resp = raw(proxy.addr, req.as_bytes().to_vec(), Duration::from_secs(3)).await;
        let st = status_of(&resp);
        // A bad chunk is found after the head was accepted: the exchange is
        // aborted (400 if nothing was sent yet, else a closed connection).
        if what == "bad chunk size" {
            assert!(st == 400 || st == 0 || st >= 500, "{what}: {resp:.200}");
        } else {
            assert_eq!(st, 400, "{what}: {resp:.200}");
        }
    }
    // Only the bad-chunk request may have reached Superset (its head was
    // valid), and never with a complete body.
    let seen: Vec<_> = up
        .state
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.1 == "/echo")
        .map(|s| s.3.clone())
        .collect();
    assert!(seen.iter().all(|b| b.as_ref() != b"hello"), "{seen:?}");
    assert!(seen.len() <= 1);

    // Content-Length together with Transfer-Encoding: hyper follows RFC 9112
    // 6.1 (chunked wins, Content-Length is dropped) and the request is
    // re-framed for Superset, which never sees both headers.
    let te_cl = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let resp = raw(
        proxy.addr,
        te_cl.as_bytes().to_vec(),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp:.300}");
    let (_, _, h, body) = up.last_seen("/echo").unwrap();
    assert_eq!(body.as_ref(), b"hello");
    assert!(
        !(h.contains_key("content-length") && h.contains_key("transfer-encoding")),
        "{h:?}"
    );
    still_serving(&proxy).await;
}

#[tokio::test]
async fn slow_header_senders_are_cut_off_without_stalling_others() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    cfg.server.header_read_timeout_ms = 500;
    let proxy = Proxy::start(cfg).await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..20 {
        let addr = proxy.addr;
        slow.push(tokio::spawn(async move {
            let t = Instant::now();
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"POST /api/v1/chart/data HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            // Trickle one header byte at a time, never finishing the head.
            let mut out = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => out.extend_from_slice(&buf[..n]),
                    },
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        if s.write_all(b"X").await.is_err() { break; }
                    }
                }
                if t.elapsed() > Duration::from_secs(5) {
                    break;
                }
            }
            (t.elapsed(), String::from_utf8_lossy(&out).into_owned())
        }));
    }
    // Meanwhile everyone else is served promptly.
    tokio::time::sleep(Duration::from_millis(100)).await;
    still_serving(&proxy).await;
    for h in slow {
        let (took, resp) = h.await.unwrap();
        assert!(
            took < Duration::from_secs(3),
            "slow sender kept for {took:?}"
        );
        // hyper closes the connection (no response is owed to a half request).
        assert!(resp.is_empty() || status_of(&resp) == 408, "{resp}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    cfg.server.header_read_timeout_ms = 400;
    let proxy = Proxy::start(cfg).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle connection left open");
    assert_eq!(status_of(&String::from_utf8_lossy(&all)), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503_and_capacity_returns() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    cfg.server.max_connections = 2;
    let proxy = Proxy::start(cfg).await;
    let a = TcpStream::connect(proxy.addr).await.unwrap();
    let b = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resp = raw(
        proxy.addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&resp), 503, "{resp}");
    assert!(resp.contains("chartcache is at capacity"));
    drop(a);
    drop(b);
    // Closed connections give their slots back.
    let mut ok = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let resp = raw(
            proxy.addr,
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            Duration::from_secs(3),
        )
        .await;
        if status_of(&resp) == 200 {
            ok = true;
            break;
        }
    }
    assert!(ok, "capacity never came back");
}

#[tokio::test]
async fn invalid_utf8_and_deep_nesting_are_forwarded_uncached_without_crashing() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let deep_arrays = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_objects = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let unclosed = "[".repeat(100_000);
    let mut bad_utf8 = b"{\"datasource\": \"".to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    bad_utf8.extend_from_slice(b"\"}");
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("deep arrays", deep_arrays.into_bytes()),
        ("deep objects", deep_objects.into_bytes()),
        ("unclosed", unclosed.into_bytes()),
        ("invalid utf-8", bad_utf8),
    ];
    for (what, body) in bodies {
        let r = c
            .send(
                Method::POST,
                &proxy.url("/api/v1/chart/data"),
                &[
                    ("authorization", "Bearer alice-token"),
                    ("content-type", "application/json"),
                ],
                body.clone(),
            )
            .await;
        // Superset answers 400 for these; chartcache forwards them byte for byte.
        assert_eq!(r.status, 400, "{what}");
        assert_eq!(
            r.cache_status(),
            "chartcache; fwd=bypass; detail=invalid-json",
            "{what}"
        );
        let (_, _, _, seen) = up.last_seen("/api/v1/chart/data").unwrap();
        assert_eq!(seen.as_ref(), &body[..], "{what}: altered");
    }
    // Non-UTF-8 bytes in headers and a broken query string.
    let mut req = b"GET /api/v1/chart/2/data/?format=%ff%fe&x=%zz&force=%c3 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice-token\r\nCookie: theme=\xff\xfe; other=1\r\nConnection: close\r\n\r\n".to_vec();
    let resp = raw(proxy.addr, std::mem::take(&mut req), Duration::from_secs(5)).await;
    assert_eq!(status_of(&resp), 200, "{resp:.300}");
    still_serving(&proxy).await;
}
