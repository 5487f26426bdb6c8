//! The in-process caches that make up chartcache's memory budget (README,
//! "Memory budget") each stay within their bound when far more distinct
//! answers pass through than fit: the store (`memory.max_bytes`), the
//! canonical memo (`cache.canonical_memo_bytes`) and the uncompressed/gzip
//! copies (`cache.raw_copy_bytes`).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::support::{Proxy, TestClient, test_config};

const ANSWER_BYTES: usize = 20_000;

/// An upstream whose chart answers are 20 KB of hex derived from the request
/// body: distinct per request and only about 2:1 compressible, as real data.
async fn start_upstream() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let json = if path.starts_with("/api/v1/me") {
                        r#"{"result":{"id":2,"username":"alice"}}"#.to_string()
                    } else {
                        let mut raw = vec![0u8; ANSWER_BYTES / 2];
                        blake3::Hasher::new()
                            .update(&body)
                            .finalize_xof()
                            .fill(&mut raw);
                        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                        format!(r#"{{"result":[{{"data":"{hex}"}}]}}"#)
                    };
                    let mut r = Response::new(Full::new(Bytes::from(json)));
                    r.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (url, task)
}

#[tokio::test]
async fn store_memo_and_copies_stay_within_their_bounds() {
    let (url, upstream) = start_upstream().await;
    let mut cfg = test_config(&url);
    let (store_max, memo_max, copies_max) = (1 << 20, 64 << 10, 256 << 10);
    cfg.memory.max_bytes = store_max;
    cfg.cache.canonical_memo_bytes = memo_max;
    cfg.cache.raw_copy_bytes = copies_max;
    let proxy = Proxy::start(cfg).await;
    let c = TestClient::new();
    let body = |i: usize| {
        serde_json::json!({
            "datasource": {"id": 1, "type": "table"},
            "queries": [{"metrics": ["count"], "row_limit": i}],
            "result_format": "json",
            "result_type": "full",
        })
    };
    // Each answer is stored (a miss), then served again to a client that
    // accepts no compression (a hit from an uncompressed copy).
    const N: usize = 200;
    for i in 0..N {
        for _ in 0..2 {
            let r = c
                .send(
                    Method::POST,
                    &proxy.url("/api/v1/chart/data"),
                    &[
                        ("authorization", "Bearer alice-token"),
                        ("content-type", "application/json"),
                    ],
                    serde_json::to_vec(&body(i)).unwrap(),
                )
                .await;
            assert_eq!(r.status, 200);
            assert!(r.body.len() > ANSWER_BYTES, "{}", r.body.len());
        }
    }
    // The answers (about 20 KB each stored, 30 KB each copied) are many times
    // every bound: each part is full, and within its bound.
    let app = &proxy.app;
    let store = app.memory.as_ref().unwrap();
    store.sync();
    let stored = store.usage().1;
    let memo = app.canon_memo.bytes();
    let copies = app.copies.bytes();
    assert!(app.copies.made() >= N as u64 / 2, "{}", app.copies.made());
    for (what, used, max) in [
        ("store", stored, store_max),
        ("memo", memo, memo_max),
        ("copies", copies, copies_max),
    ] {
        assert!(used <= max, "{what}: {used} > {max}");
        assert!(used >= max / 2, "{what}: {used} of {max}: not filled");
    }
    assert!(stored + memo + copies <= store_max + memo_max + copies_max);
    // /metrics reports each part of the budget.
    let m = c
        .send(Method::GET, &proxy.admin_url("/metrics"), &[], "")
        .await;
    let text = String::from_utf8_lossy(&m.body);
    for line in [
        format!("chartcache_memory_store_bytes {stored}"),
        format!("chartcache_memory_cache_bytes{{cache=\"memo\"}} {memo}"),
        format!("chartcache_memory_cache_bytes{{cache=\"copies\"}} {copies}"),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in /metrics");
    }
    upstream.abort();
}
