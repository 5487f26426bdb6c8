//! Deadlines on every connection phase, bounded memory for request bodies
//! being received, and the at-capacity answer, against a proxy on loopback
//! with short deadlines. Bounded in count (at most 20 connections) and time.

use std::time::{Duration, Instant};

use crate::support::*;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The value of one sample line in Prometheus text output.
async fn metric(proxy: &Proxy, name_and_labels: &str) -> f64 {
    let m = TestClient::new()
        .send(Method::GET, &proxy.admin_url("/metrics"), &[], "")
        .await;
    let text = String::from_utf8(m.body.to_vec()).unwrap();
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Wait (bounded) until a sample reaches `want`: a connection is counted once
/// the server side has finished with it, just after the client sees it close.
async fn wait_metric(proxy: &Proxy, name_and_labels: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = metric(proxy, name_and_labels).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name_and_labels} = {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the peer closed `s` within `within` (EOF or reset).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Everything the server sends until it closes (bounded in time).
async fn read_to_close(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    out
}

fn chart_head(len: usize) -> String {
    format!(
        "POST /api/v1/chart/data HTTP/1.1\r\nhost: x\r\nauthorization: Bearer alice-token\r\n\
         content-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    )
}

/// Sockets that send nothing are closed at the head deadline (counted), and
/// the `max_connections` slots they held serve normal clients again.
#[tokio::test]
async fn silent_connections_are_closed_and_free_their_slots() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    cfg.server.max_connections = 20;
    cfg.server.header_read_timeout_ms = 300;
    let proxy = Proxy::start(cfg).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    // Every slot is held: a normal client is refused meanwhile.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = TestClient::new();
    assert_eq!(
        c.send(Method::GET, &proxy.url("/health"), &[], "")
            .await
            .status,
        503
    );
    for s in &mut silent {
        assert!(
            closed_within(s, Duration::from_secs(3)).await,
            "a silent connection was not closed"
        );
    }
    let r = c.send(Method::GET, &proxy.url("/health"), &[], "").await;
    assert_eq!(r.status, 200);
    wait_metric(
        &proxy,
        "chartcache_connection_deadlines_total{phase=\"head\"}",
        20.0,
    )
    .await;
}

/// A head that trickles in never completes within the deadline either, and a
/// TLS-less h2c connection that sends only the preface is closed too.
#[tokio::test]
async fn slow_heads_and_bare_h2_prefaces_are_closed() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    cfg.server.header_read_timeout_ms = 300;
    let proxy = Proxy::start(cfg).await;
    let mut preface = TcpStream::connect(proxy.addr).await.unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let head = b"GET /health HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n";
    let mut closed = false;
    for b in head.iter().cycle().take(200) {
        if slow.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed || closed_within(&mut slow, Duration::from_secs(1)).await);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(closed_within(&mut preface, Duration::from_secs(2)).await);
}

/// A chart-data body sent at a byte every 20 ms gets 408 at the body
/// deadline and the connection is closed.
#[tokio::test]
async fn a_slow_body_gets_408_at_the_body_deadline() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    cfg.server.body_read_timeout_ms = 400;
    let proxy = Proxy::start(cfg).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(chart_head(20_000).as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(3) {
        if s.write_all(b" ").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    out.extend(read_to_close(&mut s, Duration::from_secs(1)).await);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        metric(
            &proxy,
            "chartcache_connection_deadlines_total{phase=\"body\"}"
        )
        .await,
        1.0
    );
    assert_eq!(up.chart_queries(), 0);
}

/// An h2c connection with no request in flight is closed at the idle deadline.
#[tokio::test]
async fn an_idle_h2c_connection_is_closed() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    cfg.server.idle_timeout_ms = 300;
    let proxy = Proxy::start(cfg).await;
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(proxy.addr).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(proxy.url("/health"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let r = send.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("idle h2c connection closed")
        .unwrap()
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(250));
    wait_metric(
        &proxy,
        "chartcache_connection_deadlines_total{phase=\"idle\"}",
        1.0,
    )
    .await;
}

/// An HTTP/1.1 keep-alive connection waiting for its next head is closed too.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    cfg.server.header_read_timeout_ms = 300;
    let proxy = Proxy::start(cfg).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut s, Duration::from_secs(3)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
}

/// Partial chart-data bodies from many connections cannot hold more than
/// `server.max_buffered_body_bytes`: beyond it requests get 503, and the
/// bytes are given back when the connections go.
#[tokio::test]
async fn bodies_being_received_stay_under_their_budget() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    cfg.cache.max_request_body_bytes = 64 * 1024;
    cfg.server.max_buffered_body_bytes = 256 * 1024;
    cfg.server.body_read_timeout_ms = 10_000;
    let proxy = Proxy::start(cfg).await;
    let part = vec![b' '; 50_000];
    let mut conns = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(chart_head(60_000).as_bytes()).await.unwrap();
        s.write_all(&part).await.unwrap();
        conns.push(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = metric(&proxy, "chartcache_buffered_request_body_bytes").await;
    assert!(held <= 256.0 * 1024.0, "{held}");
    assert!(held >= 200_000.0, "{held}");
    let mut refused = 0;
    for s in &mut conns {
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
            && n > 0
        {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(text.starts_with("HTTP/1.1 503"), "{text}");
            assert!(text.contains("chartcache is at capacity"), "{text}");
            refused += 1;
        }
    }
    assert_eq!(refused, 3);
    assert_eq!(
        metric(&proxy, "chartcache_refused_total{reason=\"body_budget\"}").await,
        3.0
    );
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(3);
    while metric(&proxy, "chartcache_buffered_request_body_bytes").await != 0.0 {
        assert!(Instant::now() < deadline, "bytes were not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A normal chart request is served again.
    let r = TestClient::new()
        .chart(
            &proxy,
            "alice-token",
            &chart_body("16-chart-data-bignumber-admin-miss.json"),
        )
        .await;
    assert_eq!(r.status, 200);
}

/// At `max_connections` the documented 503 JSON arrives whole, framed by
/// hyper: for a hyper client (GET, and POST with a body) and for curl.
#[tokio::test]
async fn the_at_capacity_answer_arrives_whole() {
    let up = Upstream::start().await;
    let mut cfg = test_config(&up.url());
    cfg.server.max_connections = 1;
    cfg.server.header_read_timeout_ms = 10_000;
    let proxy = Proxy::start(cfg).await;
    let _holder = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let expected = serde_json::json!({"message": "chartcache is at capacity"});
    let c = TestClient::new();
    let r = c.send(Method::GET, &proxy.url("/health"), &[], "").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json(), expected);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let r = c
        .send(
            Method::POST,
            &proxy.url("/api/v1/chart/data"),
            &[("content-type", "application/json")],
            vec![b' '; 16 * 1024],
        )
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json(), expected);
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok()
    {
        let url = proxy.url("/health");
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", &url])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(out.status.success(), "curl: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        assert_eq!(code, "503");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(body).unwrap(),
            expected
        );
    }
    assert!(
        metric(
            &proxy,
            "chartcache_refused_total{reason=\"max_connections\"}"
        )
        .await
            >= 2.0
    );
}
