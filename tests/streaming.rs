//! Large pass-through bodies are streamed both ways, never buffered: a 200 MB
//! upload and a 200 MB download pass with bounded memory. This file is its own
//! test binary so the peak-RSS reading is not disturbed by other tests.

#[path = "it/support/mod.rs"]
mod support;

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;

const SIZE: usize = 200 * 1024 * 1024;

fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_with_bounded_memory() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(test_config(&up.url())).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::combinators::BoxBody<Bytes, Infallible>>();
    let before = peak_rss_kib();

    // Upload: 200 MB generated on the fly, hashed on the way.
    let chunk = Bytes::from(vec![7u8; 256 * 1024]);
    let mut expect = blake3::Hasher::new();
    for _ in 0..SIZE / chunk.len() {
        expect.update(&chunk);
    }
    let stream = futures_util::stream::iter(
        (0..SIZE / chunk.len()).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
    );
    let req = http::Request::post(proxy.url("/upload"))
        .header("content-type", "text/csv")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["bytes"], SIZE as u64);
    assert_eq!(v["blake3"], expect.finalize().to_hex().to_string());

    // Download: 200 MB from Superset, counted without keeping it.
    let req = http::Request::get(proxy.url(&format!("/download?bytes={SIZE}")))
        .body(BodyExt::boxed(http_body_util::Empty::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut n = 0usize;
    let mut s = resp.into_body().into_data_stream();
    while let Some(c) = s.next().await {
        n += c.unwrap().len();
    }
    assert_eq!(n, SIZE);

    // Client, proxy and upstream share this process: had any of them buffered a
    // whole body, the peak would have grown by at least 200 MB.
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert!(
        grown_mib < 64,
        "peak RSS grew by {grown_mib} MiB while streaming 2 x 200 MiB"
    );
}
