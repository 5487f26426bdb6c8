//! Operations: exact metrics after known traffic, readiness during shutdown,
//! graceful drain, SIGHUP reload, JSON access logs and a rolling restart of
//! real processes under a bounded request loop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use http::Method;

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";

/// The value of one sample line in Prometheus text output.
fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Open connections per proxy thread, from `/metrics`.
async fn worker_connections(c: &TestClient, proxy: &Proxy) -> [f64; 2] {
    let m = c
        .send(Method::GET, &proxy.admin_url("/metrics"), &[], "")
        .await;
    let t = String::from_utf8(m.body.to_vec()).unwrap();
    [0, 1].map(|w| {
        metric(
            &t,
            &format!("chartcache_worker_connections{{worker=\"{w}\"}}"),
        )
    })
}

/// With the default runtime each new connection goes to the proxy thread with
/// the fewest open ones: four keep-alive connections (an ingress's, say) are
/// served two per thread, and a closed one frees its thread's slot.
#[tokio::test]
async fn connections_are_spread_evenly_over_the_proxy_threads() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(tokio::net::TcpStream::connect(proxy.addr).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut open = worker_connections(&c, &proxy).await;
    while open[0] + open[1] < 4.0 {
        assert!(
            Instant::now() < deadline,
            "connections not accepted: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        open = worker_connections(&c, &proxy).await;
    }
    assert_eq!(open, [2.0, 2.0]);
    conns.clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    while worker_connections(&c, &proxy).await != [0.0, 0.0] {
        assert!(
            Instant::now() < deadline,
            "closed connections still counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn metrics_count_known_traffic_exactly() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    c.chart(&proxy, "admin-token", &body).await; // miss
    c.chart(&proxy, "admin-token", &body).await; // hit
    c.chart(&proxy, "admin-token", &body).await; // hit
    c.send(
        Method::POST,
        &proxy.url("/api/v1/chart/data"),
        &[("content-type", "application/json")],
        serde_json::to_vec(&body).unwrap(),
    )
    .await; // bypass (no credential) → 401
    c.send(Method::GET, &proxy.url("/echo"), &[], "").await; // pass
    let m = c
        .send(Method::GET, &proxy.admin_url("/metrics"), &[], "")
        .await;
    assert_eq!(m.status, 200);
    let t = String::from_utf8(m.body.to_vec()).unwrap();
    let r = |o: &str, s: &str| {
        metric(
            &t,
            &format!(
                "chartcache_requests_total{{outcome=\"{o}\",route=\"chart_data\",status=\"{s}\"}}"
            ),
        )
    };
    assert_eq!(r("miss", "200"), 1.0);
    assert_eq!(r("hit", "200"), 2.0);
    assert_eq!(r("bypass", "401"), 1.0);
    assert_eq!(
        metric(
            &t,
            "chartcache_requests_total{outcome=\"pass\",route=\"pass\",status=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &t,
            "chartcache_upstream_requests_total{kind=\"chart\",status=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &t,
            "chartcache_upstream_requests_total{kind=\"chart\",status=\"401\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &t,
            "chartcache_identity_lookups_total{result=\"principal\"}"
        ),
        1.0
    );
    assert_eq!(metric(&t, "chartcache_memory_store_entries"), 1.0);
    assert!(metric(&t, "chartcache_memory_store_bytes") > 0.0);
    assert_eq!(
        metric(
            &t,
            "chartcache_request_duration_seconds_count{outcome=\"hit\",route=\"chart_data\"}"
        ),
        2.0
    );
    assert_eq!(metric(&t, "chartcache_inflight_requests"), 0.0);
    assert!(t.contains("process_resident_memory_bytes"));
}

#[tokio::test]
async fn shutdown_reports_not_ready_and_drains_in_flight_requests() {
    let up = Upstream::start().await;
    up.set_delay(Duration::from_millis(600));
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    assert_eq!(
        c.send(Method::GET, &proxy.admin_url("/readyz"), &[], "")
            .await
            .status,
        200
    );
    assert_eq!(
        c.send(Method::GET, &proxy.admin_url("/healthz"), &[], "")
            .await
            .status,
        200
    );
    let slow = {
        let c = c.clone();
        let url = proxy.url("/api/v1/chart/data");
        let body = serde_json::to_vec(&chart_body(BIGNUMBER)).unwrap();
        tokio::spawn(async move {
            c.send(
                Method::POST,
                &url,
                &[
                    ("authorization", "Bearer alice-token"),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
        })
    };
    // Wait until the request is at Superset, then begin shutdown.
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.chart_queries() == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.shutdown.cancel();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = c
            .send(Method::GET, &proxy.admin_url("/readyz"), &[], "")
            .await;
        if r.status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "in-flight request was not drained");
    let served = &mut { proxy }.served;
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("drain finished")
        .unwrap();
}

#[tokio::test]
async fn reload_swaps_rules_and_keeps_old_config_when_invalid() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    c.chart(&proxy, "admin-token", &body).await;
    assert!(
        c.chart(&proxy, "admin-token", &body)
            .await
            .cache_status()
            .contains("hit")
    );
    // New rule: big numbers bypass the cache.
    let mut cfg = (**proxy.app.config.load()).clone();
    cfg.rules.insert(
        0,
        chartcache::config::RuleConfig {
            name: "no-big-numbers".into(),
            viz_type: vec!["big_number_total".into()],
            bypass: true,
            ..Default::default()
        },
    );
    assert!(proxy.app.reload(cfg.clone()).unwrap().is_empty());
    assert_eq!(
        c.chart(&proxy, "admin-token", &body).await.cache_status(),
        "chartcache; fwd=bypass; detail=rule"
    );
    // An invalid config is refused and the current one stays.
    let mut bad = cfg;
    bad.default_tier = "no-such-tier".into();
    assert!(proxy.app.reload(bad).is_err());
    assert_eq!(
        c.chart(&proxy, "admin-token", &body).await.cache_status(),
        "chartcache; fwd=bypass; detail=rule"
    );
}

// ---- real processes ----

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A chartcache process, killed on drop if still running.
struct Proc {
    child: Child,
    port: u16,
    admin: u16,
    log: tempfile::NamedTempFile,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(upstream: &str, extra_env: &[(&str, &str)], config: Option<&std::path::Path>) -> Proc {
        let port = free_port();
        let admin = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chartcache"));
        cmd.arg("--upstream")
            .arg(upstream)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin}"));
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.env_remove("CHARTCACHE_LOG")
            .env("CHARTCACHE_SERVER__DRAIN_TIMEOUT_SECS", "10")
            .env("CHARTCACHE_ADMIN__TOKEN", "t0k");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        // Logs go to a file: a pipe nobody drains would block the process once full.
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Proc {
            child,
            port,
            admin,
            log,
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    async fn wait_ready(&self, c: &TestClient) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.admin))
                .await
                .is_ok()
            {
                let r = c
                    .send(
                        Method::GET,
                        &format!("http://127.0.0.1:{}/readyz", self.admin),
                        &[],
                        "",
                    )
                    .await;
                if r.status == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "chartcache did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_no_request() {
    let up = Upstream::start().await;
    up.set_delay(Duration::from_millis(50));
    let delay = [("CHARTCACHE_SERVER__SHUTDOWN_DELAY_SECS", "1")];
    let a = Proc::start(&up.url(), &delay, None);
    let mut b = Proc::start(&up.url(), &delay, None);
    let c = TestClient::new();
    a.wait_ready(&c).await;
    b.wait_ready(&c).await;
    let body = serde_json::to_vec(&chart_body(BIGNUMBER)).unwrap();
    // A client loop, bounded in count and time, spreads requests over the ready
    // instances like a Service would; B is terminated half-way.
    let ports = [a.port, b.port];
    let started = Instant::now();
    let mut ok = 0;
    let mut b_gone = false;
    let mut in_flight = Vec::new();
    for i in 0..400 {
        assert!(started.elapsed() < Duration::from_secs(60));
        if i == 100 {
            b.signal("TERM");
        }
        // After the signal B's readiness fails and it is taken out of rotation;
        // requests already sent to it must still complete.
        if i >= 100 && !b_gone {
            let r = tokio::net::TcpStream::connect(("127.0.0.1", b.admin)).await;
            b_gone = r.is_err()
                || c.send(
                    Method::GET,
                    &format!("http://127.0.0.1:{}/readyz", b.admin),
                    &[],
                    "",
                )
                .await
                .status
                    != 200;
        }
        let port = if b_gone { ports[0] } else { ports[i % 2] };
        let c = c.clone();
        let body = body.clone();
        let token = ["admin-token", "alice-token", "bob-token"][i % 3];
        in_flight.push(tokio::spawn(async move {
            let auth = format!("Bearer {token}");
            c.send(
                Method::POST,
                &format!("http://127.0.0.1:{port}/api/v1/chart/data"),
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
        }));
        if in_flight.len() >= 20 {
            for t in in_flight.drain(..) {
                let r = t.await.expect("request lost");
                assert_eq!(r.status, 200, "{:?}", r.body);
                ok += 1;
            }
        }
    }
    for t in in_flight.drain(..) {
        assert_eq!(t.await.expect("request lost").status, 200);
        ok += 1;
    }
    assert_eq!(ok, 400);
    // B drained and exited cleanly.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = b.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "terminated instance did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file_and_logs_are_json() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("chartcache.toml");
    std::fs::write(&cfg_path, "[log]\nformat = \"json\"\n").unwrap();
    let mut p = Proc::start(&up.url(), &[], Some(&cfg_path));
    let c = TestClient::new();
    p.wait_ready(&c).await;
    let body = serde_json::to_vec(&chart_body(BIGNUMBER)).unwrap();
    let send = || {
        let c = c.clone();
        let body = body.clone();
        let url = format!("http://127.0.0.1:{}/api/v1/chart/data", p.port);
        async move {
            c.send(
                Method::POST,
                &url,
                &[
                    ("authorization", "Bearer admin-token"),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
        }
    };
    assert!(send().await.cache_status().contains("fwd=miss"));
    assert!(send().await.cache_status().contains("hit"));
    // Add a bypass rule and reload.
    std::fs::write(&cfg_path, "[log]\nformat = \"json\"\n\n[[rules]]\nname = \"off\"\nviz_type = [\"big_number_total\"]\nbypass = true\n").unwrap();
    p.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if send().await.cache_status() == "chartcache; fwd=bypass; detail=rule" {
            break;
        }
        assert!(Instant::now() < deadline, "reload did not take effect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A broken file is refused; the running config stays.
    std::fs::write(&cfg_path, "[[rules]]\ntier = \"nope\"\n").unwrap();
    p.signal("HUP");
    p.signal("TERM");
    assert!(p.child.wait().unwrap().success());
    let lines: Vec<String> = BufReader::new(p.log.reopen().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    let json: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!json.is_empty(), "no JSON log lines: {lines:?}");
    let access: Vec<&serde_json::Value> = json.iter().filter(|v| v["target"] == "access").collect();
    assert!(access.len() >= 3, "{lines:?}");
    let hit = access
        .iter()
        .find(|v| v["outcome"] == "hit")
        .expect("an access line for the hit");
    for field in [
        "request_id",
        "method",
        "path",
        "status",
        "route",
        "key",
        "scope",
        "total_us",
    ] {
        assert!(hit.get(field).is_some(), "access log lacks {field}: {hit}");
    }
    assert!(
        json.iter().any(|v| v["message"]
            .as_str()
            .unwrap_or("")
            .contains("reload failed")),
        "{lines:?}"
    );
    drop(up);
}

/// `THP_enabled:` of a process, from /proc (Linux 5.0+; None where absent).
fn thp_enabled(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:").map(|v| v.trim().to_string()))
}

/// The proxy opts out of transparent huge pages unless
/// `server.transparent_huge_pages` is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_huge_pages_are_off_unless_asked_for() {
    if thp_enabled(std::process::id()).is_none() {
        eprintln!("no THP_enabled in /proc/self/status: nothing to check on this kernel");
        return;
    }
    let up = Upstream::start().await;
    let c = TestClient::new();
    let off = Proc::start(&up.url(), &[], None);
    off.wait_ready(&c).await;
    assert_eq!(thp_enabled(off.child.id()).as_deref(), Some("0"));
    let on = Proc::start(
        &up.url(),
        &[("CHARTCACHE_SERVER__TRANSPARENT_HUGE_PAGES", "true")],
        None,
    );
    on.wait_ready(&c).await;
    // Whatever this machine's own setting is (a test runner may have opted out).
    assert_eq!(thp_enabled(on.child.id()), thp_enabled(std::process::id()));
}
