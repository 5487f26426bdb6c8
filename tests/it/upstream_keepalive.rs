//! Pooled upstream connections against gunicorn's keep-alive.
//!
//! gunicorn closes an idle keep-alive connection after 2 s; when its timer
//! fires just as a request arrives, the request is written and the connection
//! closes without a response byte. The upstream here does that on every
//! connection, deterministically: it answers the first request and closes the
//! connection when the next one arrives on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Proxy, TestClient, test_config};

/// A raw-TCP upstream that serves one request per connection and closes the
/// connection when a second request arrives on it.
struct OneShotUpstream {
    addr: std::net::SocketAddr,
    /// "METHOD path" → requests whose head arrived (answered or not).
    arrived: Arc<Mutex<HashMap<String, usize>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OneShotUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OneShotUpstream {
    async fn start() -> OneShotUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(Mutex::new(HashMap::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (a, c) = (arrived.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_connection(stream, a.clone()));
            }
        });
        OneShotUpstream {
            addr,
            arrived,
            connections,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn arrived(&self, method: &str, path: &str) -> usize {
        let k = format!("{method} {path}");
        self.arrived.lock().unwrap().get(&k).copied().unwrap_or(0)
    }
}

async fn serve_connection(mut s: TcpStream, arrived: Arc<Mutex<HashMap<String, usize>>>) {
    let mut buf = Vec::new();
    let mut answered = false;
    loop {
        let Some((method, path)) = read_request(&mut s, &mut buf).await else {
            return;
        };
        *arrived
            .lock()
            .unwrap()
            .entry(format!("{method} {path}"))
            .or_default() += 1;
        if answered {
            // The keep-alive timer fired as this request came in: close, no answer.
            return;
        }
        answered = true;
        let body: &[u8] = if path.starts_with("/api/v1/me") {
            br#"{"result":{"id":2,"username":"alice","first_name":"A","last_name":"L","is_active":true}}"#
        } else {
            br#"{"result":[{"data":[{"n":1}]}]}"#
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if s.write_all(head.as_bytes()).await.is_err() || s.write_all(body).await.is_err() {
            return;
        }
    }
}

/// Read one request (head and a `Content-Length` or chunked body), bounded.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, String)> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end);
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let header = |name: &str| {
        head.split("\r\n").find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    loop {
        let done = if chunked {
            buf.windows(5)
                .position(|w| w == b"0\r\n\r\n")
                .map(|i| i + 5)
        } else {
            (buf.len() >= len).then_some(len)
        };
        if let Some(n) = done {
            buf.drain(..n);
            return Some((method, path));
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn pass_through_gets_are_retried_on_a_new_connection() {
    let up = OneShotUpstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = c
            .send(Method::GET, &proxy.url("/api/v1/dashboard/"), &[], "")
            .await;
        statuses.push(r.status.as_u16());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 20, "statuses: {statuses:?}");
    // Every second GET met a closing pooled connection and was sent once more,
    // on a connection of its own (which is not pooled); the next GET opened a
    // new pooled connection.
    assert_eq!(up.arrived("GET", "/api/v1/dashboard/"), 30);
}

#[tokio::test]
async fn a_post_or_patch_on_a_closing_connection_reaches_superset_once() {
    let up = OneShotUpstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    for method in [Method::POST, Method::PATCH] {
        // Leaves one answered connection in the pool...
        let r = c
            .send(Method::GET, &proxy.url("/api/v1/dashboard/"), &[], "")
            .await;
        assert_eq!(r.status, 200);
        // ...on which the write is sent, and which closes under it.
        let r = c
            .send(
                method.clone(),
                &proxy.url("/api/v1/dashboard/7"),
                &[("content-type", "application/json")],
                r#"{"dashboard_title":"x"}"#,
            )
            .await;
        assert_eq!(r.status, 502, "{method}");
        assert_eq!(
            up.arrived(method.as_str(), "/api/v1/dashboard/7"),
            1,
            "{method}"
        );
    }
}

#[tokio::test]
async fn a_chart_data_post_on_a_closing_connection_reaches_superset_once() {
    let up = OneShotUpstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    // The identity lookup opens the pool's only connection; the chart-data
    // POST goes out on it and the connection closes under it.
    let r = c
        .chart(&proxy, "alice-token", &serde_json::json!({"datasource": {"id": 1, "type": "table"}, "queries": [{"metrics": ["count"]}]}))
        .await;
    assert_eq!(up.arrived("GET", "/api/v1/me/"), 1);
    assert_eq!(r.status, 502, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(up.arrived("POST", "/api/v1/chart/data"), 1);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn pool_idle_timeout_is_below_gunicorns_keep_alive() {
    let two_secs = std::time::Duration::from_secs(2);
    let cfg = chartcache::config::Config::default();
    assert!(cfg.upstream_client.pool_idle_timeout() < two_secs);
    for file in ["config/chartcache.toml", "deploy/base/chartcache.toml"] {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let cfg = chartcache::config::Config::load(Some(&p)).unwrap();
        assert!(cfg.upstream_client.pool_idle_timeout() < two_secs, "{file}");
    }
}
