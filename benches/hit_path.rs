//! The in-process hit path: request in → response out through `proxy::handle`
//! with the memory store, for identity, gzip and zstd clients and three payload
//! sizes. A small hyper upstream on loopback answers `/api/v1/me/` and fills the
//! cache once per key; every measured request is a hit.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use chartcache::app::App;
use chartcache::body::full;
use chartcache::clock::SystemClock;
use chartcache::config::Config;
use chartcache::proxy::{self, ConnInfo};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, header};
use http_body_util::BodyExt;

fn request(body: &Bytes, accept_encoding: Option<&'static str>) -> Request<chartcache::body::Body> {
    let mut b = Request::post("/api/v1/chart/data")
        .header(header::HOST, "superset.local")
        .header(header::AUTHORIZATION, "Bearer bench-admin-token")
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(ae) = accept_encoding {
        b = b.header(header::ACCEPT_ENCODING, ae);
    }
    b.body(full(body.clone())).unwrap()
}

const CONN: ConnInfo = ConnInfo {
    remote: Some(SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        40000,
    )),
    proto: "http",
};

const CLIENTS: [(&str, Option<&str>); 3] = [
    ("identity", None),
    ("gzip", Some("gzip, deflate, br")),
    ("zstd", Some("gzip, deflate, br, zstd")),
];

fn hit_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(async {
        let addr = common::start_upstream().await;
        let cfg = Config {
            upstream: format!("http://{addr}"),
            ..Config::default()
        };
        App::with_memory_store(cfg, Arc::new(SystemClock)).unwrap()
    });
    let template: serde_json::Value = serde_json::from_slice(&common::fixture_request_body(
        "20-chart-data-timeseries-admin-miss.json",
    ))
    .unwrap();

    for (label, size) in common::SIZES {
        let mut v = template.clone();
        v["queries"][0]["row_limit"] = size.into();
        let body = Bytes::from(serde_json::to_vec(&v).unwrap());
        // Fill the cache (miss), then check that the next request is a hit.
        rt.block_on(async {
            for round in 0..2 {
                let resp = proxy::handle(app.clone(), request(&body, None), CONN).await;
                let cs = resp.headers()["cache-status"].to_str().unwrap().to_string();
                let _ = resp.into_body().collect().await.unwrap();
                if round == 1 {
                    assert!(cs.contains("; hit"), "expected a hit, got {cs}");
                }
            }
        });
        let mut g = c.benchmark_group(format!("hit/{label}"));
        g.throughput(Throughput::Elements(1));
        for (client, ae) in CLIENTS {
            g.bench_function(client, |b| {
                b.to_async(&rt).iter(|| {
                    let app = app.clone();
                    let req = request(&body, ae);
                    async move {
                        let resp = proxy::handle(app, req, CONN).await;
                        resp.into_body().collect().await.unwrap().to_bytes()
                    }
                })
            });
        }
        g.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = hit_path }
criterion_main!(benches);
