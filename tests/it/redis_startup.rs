//! The real binary with a Redis that refuses its credentials: a clear error
//! at startup, no panic, and the proxy keeps serving.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::redis_server::*;
use crate::support::*;

/// Kills the child by pid on drop (also on panic).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_logs_a_clear_error_and_still_serves() {
    let r = RedisProc::server(&["requirepass rightpw"]);
    let up = Upstream::start().await;
    let (listen, admin) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chartcache"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CHARTCACHE_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .args(["--upstream", &up.url()])
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        // The password comes from the environment, as in production.
        .env(
            "CHARTCACHE_REDIS_URL",
            format!("redis://:wrongpw@{}", r.addr()),
        )
        .env("CHARTCACHE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(child);

    // Wait (bounded) until it listens.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
        if let Ok(Some(st)) = running.0.try_wait() {
            let mut err = String::new();
            running
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("chartcache exited with {st}: {err}");
        }
        assert!(Instant::now() < deadline, "chartcache did not start");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Chart requests and pass-through both work (Superset answers them).
    let c = TestClient::new();
    let url = format!("http://127.0.0.1:{listen}/api/v1/chart/data");
    for _ in 0..3 {
        let resp = c
            .send(
                http::Method::POST,
                &url,
                &[
                    ("authorization", "Bearer admin-token"),
                    ("content-type", "application/json"),
                ],
                serde_json::to_vec(&chart_body("16-chart-data-bignumber-admin-miss.json")).unwrap(),
            )
            .await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["result"][0]["user"], "admin");
    }
    let pass = c
        .send(
            http::Method::GET,
            &format!("http://127.0.0.1:{listen}/api/v1/me/"),
            &[("authorization", "Bearer admin-token")],
            "",
        )
        .await;
    assert_eq!(pass.status, 200);

    // The log says what is wrong and what to do, without the password.
    let _ = running.0.kill();
    let _ = running.0.wait();
    let mut err = String::new();
    running
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(err.contains("serving without the shared cache"), "{err}");
    assert!(!err.contains("wrongpw"), "password in the log: {err}");
    assert!(!err.contains("panicked"), "{err}");
}
