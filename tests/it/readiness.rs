//! `/readyz` means "this process can serve": Superset being down does not take
//! a replica out of the Service (its stale entries are what users get then),
//! unless `upstream_client.ready_requires_upstream` (the sidecar) couples them.

use std::sync::{Arc, Mutex};

use chartcache::clock::ManualClock;
use chartcache::config::TierConfig;
use http::Method;
use tokio::net::TcpListener;

use crate::support::*;

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";

/// A TCP relay to the upstream that can be cut: afterwards its port refuses
/// connections and every relayed connection is closed, as when Superset's
/// pods are gone.
struct Relay {
    addr: std::net::SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                t.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Relay { addr, tasks }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Superset is gone: close the listener and every connection.
    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// A proxy (manual clock) whose only tier is fresh 60 s, stale-if-error 1 h,
/// in front of a relay to a Superset-shaped upstream.
async fn start(ready_requires_upstream: bool) -> (Upstream, Relay, Proxy, Arc<ManualClock>) {
    let up = Upstream::start().await;
    let relay = Relay::start(up.addr).await;
    let mut cfg = test_config(&relay.url());
    cfg.tiers = vec![TierConfig {
        name: "t".into(),
        fresh_secs: 60,
        stale_while_revalidate_secs: 0,
        stale_if_error_secs: 3_600,
    }];
    cfg.default_tier = "t".into();
    cfg.upstream_client.response_timeout_ms = 1_000;
    cfg.upstream_client.ready_requires_upstream = ready_requires_upstream;
    let clock = ManualClock::new(1_764_000_000_000);
    let proxy = Proxy::start_with_clock(cfg, clock.clone()).await;
    (up, relay, proxy, clock)
}

async fn readyz(c: &TestClient, proxy: &Proxy) -> u16 {
    c.send(Method::GET, &proxy.admin_url("/readyz"), &[], "")
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn stays_ready_and_serves_stale_while_superset_is_down() {
    let (_up, relay, proxy, clock) = start(false).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);
    let stored = c.chart(&proxy, "alice-token", &body).await;
    assert_eq!(stored.status, 200);
    assert_eq!(readyz(&c, &proxy).await, 200);

    relay.cut();
    // Past fresh, and long past Superset's last answer.
    clock.advance_ms(120_000);
    assert_eq!(
        readyz(&c, &proxy).await,
        200,
        "ready while Superset is down"
    );
    for _ in 0..3 {
        let r = c.chart(&proxy, "alice-token", &body).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.cache_status(),
            "chartcache; fwd=stale; ttl=-60; detail=upstream-error"
        );
        assert_eq!(r.json(), stored.json());
    }
    assert_eq!(readyz(&c, &proxy).await, 200);

    // Draining is still unready.
    proxy
        .app
        .accepting
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(readyz(&c, &proxy).await, 503);
}

#[tokio::test]
async fn coupled_to_superset_when_configured() {
    let (_up, relay, proxy, clock) = start(true).await;
    let c = TestClient::new();
    assert_eq!(readyz(&c, &proxy).await, 200, "Superset answers its probe");
    relay.cut();
    clock.advance_ms(120_000);
    assert_eq!(readyz(&c, &proxy).await, 503);
}

#[test]
fn the_sidecar_overlay_couples_readiness_and_the_others_do_not() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let key = "CHARTCACHE_UPSTREAM_CLIENT__READY_REQUIRES_UPSTREAM";
    let sidecar = std::fs::read_to_string(
        root.join("deploy/overlays/sidecar/superset-deployment-patch.yaml"),
    )
    .unwrap();
    let at = sidecar.find(key).expect("sidecar sets the key");
    assert!(
        sidecar[at..].lines().nth(1).unwrap().contains("\"true\""),
        "sidecar sets it to true"
    );
    let helm = std::fs::read_to_string(root.join("deploy/helm-superset-values.yaml")).unwrap();
    assert!(helm.contains(key), "the Helm sidecar sets the key");
    for f in [
        "deploy/base/deployment.yaml",
        "deploy/overlays/edge/deployment-patch.yaml",
        "deploy/overlays/ingress-backend/deployment-patch.yaml",
    ] {
        let s = std::fs::read_to_string(root.join(f)).unwrap();
        assert!(!s.contains(key), "{f}");
    }
    let cfg =
        chartcache::config::Config::load(Some(&root.join("deploy/base/chartcache.toml"))).unwrap();
    assert!(!cfg.upstream_client.ready_requires_upstream);
}
