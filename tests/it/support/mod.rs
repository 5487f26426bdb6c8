//! Shared integration-test harness: a Superset-shaped upstream (the shared
//! `fake_superset` with pass-through routes), real `redis-server` processes,
//! an in-process chartcache on loopback ports, and a small HTTP client.

#![allow(dead_code)]

pub mod browser;
pub mod redis_cluster;
pub mod redis_server;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use chartcache::app::App;
use chartcache::clock::{SharedClock, SystemClock};
use chartcache::config::{Config, RuntimeFlavor};

#[allow(unused_imports)]
pub use upstream::{ChartMode, Upstream};

/// A chartcache instance serving on loopback, stopped on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub app: Arc<App>,
    /// Cancel to stop accepting and drain (the admin listener keeps serving).
    pub shutdown: CancellationToken,
    pub admin_shutdown: CancellationToken,
    pub served: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.admin_shutdown.cancel();
    }
}

/// Default test config pointing at `upstream`, with an admin token.
/// Threads of a per-core proxy started by [`Proxy::start_app`], as on a two-core machine.
pub const PROXY_THREADS: usize = 2;

pub fn test_config(upstream: &str) -> Config {
    let mut cfg = Config {
        upstream: upstream.to_string(),
        ..Config::default()
    };
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin_listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin.token = Some("test-admin-token".into());
    cfg.log.access_log = false;
    cfg.upstream_client.response_timeout_ms = 5_000;
    cfg
}

impl Proxy {
    /// Start with the memory store.
    /// Announce the proxy threads before building a store that keeps Redis
    /// connections per thread (main does so before the store is built).
    pub fn expect_threads() {
        chartcache::worker::expect(PROXY_THREADS);
    }

    pub async fn start(cfg: Config) -> Proxy {
        Self::start_with_clock(cfg, Arc::new(SystemClock)).await
    }

    pub async fn start_with_clock(cfg: Config, clock: SharedClock) -> Proxy {
        let app = App::with_memory_store(cfg, clock).expect("app");
        Self::start_app(app).await
    }

    /// Serve a prebuilt app (e.g. with another store).
    pub async fn start_app(app: Arc<App>) -> Proxy {
        let cfg = app.config.load();
        let listener = tokio::net::TcpListener::bind(cfg.listen).await.unwrap();
        let admin_listener = tokio::net::TcpListener::bind(cfg.admin_listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let token = cfg.admin.resolve_token().unwrap().map(Arc::<str>::from);
        let shutdown = CancellationToken::new();
        let admin_shutdown = CancellationToken::new();
        tokio::spawn(chartcache::server::serve_admin(
            app.clone(),
            admin_listener,
            token,
            admin_shutdown.clone(),
        ));
        let served = match cfg.server.runtime {
            RuntimeFlavor::WorkStealing => tokio::spawn(chartcache::server::serve(
                app.clone(),
                listener,
                shutdown.clone(),
            )),
            // The default: two threads of their own, as on a two-core machine.
            RuntimeFlavor::PerCore => {
                let (app, shutdown) = (app.clone(), shutdown.clone());
                tokio::spawn(async move {
                    chartcache::server::serve_per_core(app, listener, PROXY_THREADS, shutdown)
                        .await
                        .unwrap();
                })
            }
        };
        Proxy {
            addr,
            admin,
            app,
            shutdown,
            admin_shutdown,
            served,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// `POST /purge` on the admin listener with the test token; `body` is the
    /// purge request (`{"tags": [...]}`, `{"all": true}`).
    pub async fn purge(&self, c: &TestClient, body: &'static str) -> Resp {
        c.send(
            Method::POST,
            &self.admin_url("/purge"),
            &[
                ("authorization", "Bearer test-admin-token"),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await
    }
}

/// A response as the tests see it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn cache_status(&self) -> String {
        self.headers
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
    /// The body with its `Content-Encoding` (zstd or gzip) undone.
    pub fn decoded(&self) -> Vec<u8> {
        match self.header("content-encoding").as_deref() {
            Some("zstd") => zstd::stream::decode_all(&self.body[..]).unwrap(),
            Some("gzip") => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(&self.body[..]),
                    &mut out,
                )
                .unwrap();
                out
            }
            None => self.body.to_vec(),
            Some(other) => panic!("unexpected content-encoding {other}"),
        }
    }
}

/// A pooled test client.
#[derive(Clone)]
pub struct TestClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for TestClient {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClient {
    pub fn new() -> TestClient {
        TestClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).unwrap();
        let resp = self.client.request(req).await.expect("request failed");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    /// POST raw chart-data bytes as `token` (a Bearer token), content type JSON.
    pub async fn chart_bytes(&self, proxy: &Proxy, token: &str, body: impl Into<Bytes>) -> Resp {
        let auth = format!("Bearer {token}");
        self.send(
            Method::POST,
            &proxy.url("/api/v1/chart/data"),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await
    }

    /// POST a chart-data body as `token` (a Bearer token).
    pub async fn chart(&self, proxy: &Proxy, token: &str, body: &serde_json::Value) -> Resp {
        self.chart_with(proxy, token, body, &[]).await
    }

    /// [`TestClient::chart`] with more request headers (e.g. `accept-encoding`).
    pub async fn chart_with(
        &self,
        proxy: &Proxy,
        token: &str,
        body: &serde_json::Value,
        more: &[(&str, &str)],
    ) -> Resp {
        let auth = format!("Bearer {token}");
        let mut headers = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend_from_slice(more);
        self.send(
            Method::POST,
            &proxy.url("/api/v1/chart/data"),
            &headers,
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }
}

/// A fixture from `tests/fixtures/superset-6.1/`.
pub fn fixture(name: &str) -> serde_json::Value {
    fake_superset::fixtures::fixture(name)
}

/// The chart-data request body of a fixture.
pub fn chart_body(name: &str) -> serde_json::Value {
    fake_superset::fixtures::chart_body(name)
}
