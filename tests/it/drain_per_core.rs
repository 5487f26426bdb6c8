//! SIGTERM with the default per-core runtime: every in-flight request on every
//! proxy thread completes, including requests that borrowed a pooled upstream
//! connection another thread opened.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use http::Method;

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";

/// A chart body that differs from every other `n` (so each is a miss).
fn body(n: u64) -> Vec<u8> {
    let mut b = chart_body(BIGNUMBER);
    b["queries"][0]["row_limit"] = serde_json::json!(1000 + n);
    serde_json::to_vec(&b).unwrap()
}

async fn post(c: &TestClient, url: &str, token: &str, body: Vec<u8>) -> Resp {
    let auth = format!("Bearer {token}");
    c.send(
        Method::POST,
        url,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// One miss and two hits open a pooled upstream connection on the first
/// client connection's thread; a slow miss on a new client connection (the
/// other thread) borrows it; shutdown begins while it waits for Superset.
/// The first thread drains at once (its client is idle), and the request on
/// the other thread must still get its answer.
async fn pooled_connection_from_a_drained_thread(
    up: &Upstream,
    url: &str,
    shutdown: impl FnOnce(),
) -> Resp {
    // Each on a connection of its own that closes after it, as with curl.
    for _ in 0..3 {
        let c = TestClient::new();
        assert_eq!(post(&c, url, "alice-token", body(0)).await.status, 200);
    }
    assert_eq!(up.chart_queries(), 1, "one miss, two hits");
    up.set_delay(Duration::from_millis(1500));
    let slow = {
        let url = url.to_string();
        tokio::spawn(async move { post(&TestClient::new(), &url, "bob-token", body(1)).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    shutdown();
    tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("answered within the drain")
        .unwrap()
}

#[tokio::test]
async fn a_request_using_another_threads_pooled_connection_is_drained() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let url = proxy.url("/api/v1/chart/data");
    let r = pooled_connection_from_a_drained_thread(&up, &url, || {
        assert_eq!(up.chart_queries(), 2, "the slow request is at Superset");
        proxy.shutdown.cancel();
    })
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let served = &mut { proxy }.served;
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("drain finished")
        .unwrap();
}

/// Eight slow misses in flight, four per thread, after both threads opened
/// pooled upstream connections: all answered 200 after shutdown begins.
#[tokio::test]
async fn slow_requests_on_every_thread_are_drained() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let url = proxy.url("/api/v1/chart/data");
    // Warm the pool from both threads: two client connections (one per
    // thread) with concurrent misses, so each thread opens connections.
    up.set_delay(Duration::from_millis(200));
    let warm: Vec<_> = (0..2)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let c = TestClient::new();
                let a = post(&c, &url, "alice-token", body(10 + i)).await;
                let b = post(&c, &url, "bob-token", body(20 + i)).await;
                (a.status, b.status, c)
            })
        })
        .collect();
    let mut keep = Vec::new();
    for w in warm {
        let (a, b, c) = w.await.unwrap();
        assert_eq!((a.as_u16(), b.as_u16()), (200, 200));
        keep.push(c);
    }
    drop(keep);
    up.set_delay(Duration::from_millis(1500));
    let slow: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            let token = ["alice-token", "bob-token"][i as usize % 2];
            tokio::spawn(async move { post(&TestClient::new(), &url, token, body(100 + i)).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.chart_queries() < 4 + 8 {
        assert!(
            Instant::now() < deadline,
            "slow requests did not reach Superset"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    proxy.shutdown.cancel();
    for s in slow {
        let r = s.await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let served = &mut { proxy }.served;
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("drain finished")
        .unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary, killed on drop if still running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first reproduction against the real binary, with a real SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_request_using_another_threads_pooled_connection() {
    let up = Upstream::start().await;
    let (port, admin) = (free_port(), free_port());
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut proc = Proc(
        Command::new(env!("CARGO_BIN_EXE_chartcache"))
            .args(["--upstream", &up.url()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .env_remove("CHARTCACHE_LOG")
            .env("CHARTCACHE_SERVER__WORKER_THREADS", "2")
            .env("CHARTCACHE_SERVER__RUNTIME", "per_core")
            .env("CHARTCACHE_SERVER__DRAIN_TIMEOUT_SECS", "10")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    let c = TestClient::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", admin))
            .await
            .is_ok()
            && c.send(
                Method::GET,
                &format!("http://127.0.0.1:{admin}/readyz"),
                &[],
                "",
            )
            .await
            .status
                == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "chartcache did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("http://127.0.0.1:{port}/api/v1/chart/data");
    let pid = proc.0.id().to_string();
    let r = pooled_connection_from_a_drained_thread(&up, &url, || {
        assert_eq!(up.chart_queries(), 2, "the slow request is at Superset");
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    })
    .await;
    let log_text = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert_eq!(r.status, 200, "{:?}\n{log_text}", r.body);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = proc.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "chartcache did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
}
