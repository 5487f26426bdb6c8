//! Entry codec and compression: what a miss pays once (zstd, gzip copy), what a
//! Redis hit pays (decode), and what an identity client pays per hit (decompress).

mod common;

use std::hint::black_box;

use chartcache::store::{Entry, Meta};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderName, HeaderValue};

fn meta(raw_len: usize) -> Meta {
    let h = |n: &'static str, v: &'static str| {
        (HeaderName::from_static(n), HeaderValue::from_static(v))
    };
    Meta {
        status: 200,
        headers: vec![
            h("content-type", "application/json; charset=utf-8"),
            h("server", "gunicorn"),
            h("vary", "Accept-Encoding, Cookie"),
            h("x-frame-options", "SAMEORIGIN"),
            h("x-content-type-options", "nosniff"),
            h("referrer-policy", "strict-origin-when-cross-origin"),
            h("permissions-policy", "browsing-topics=()"),
            h(
                "access-control-allow-origin",
                "https://tile.openstreetmap.org",
            ),
        ],
        stored_at: 1_764_000_000_000,
        fresh_until: 1_764_000_300_000,
        stale_until: 1_764_000_900_000,
        upstream_ms: 420,
        raw_len: raw_len as u32,
        tags: vec![
            "chart:2".into(),
            "dashboard:1".into(),
            "dataset:1__table".into(),
            "viz:echarts_timeseries_line".into(),
        ],
    }
}

fn codec(c: &mut Criterion) {
    for (label, size) in common::SIZES {
        let raw = common::superset_response(size);
        let entry = Entry::build(meta(raw.len()), &raw, 3, false).unwrap();
        let encoded = entry.encode();
        let mut g = c.benchmark_group(format!("entry/{label}"));
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function("build-zstd3", |b| {
            b.iter(|| Entry::build(meta(raw.len()), black_box(&raw), 3, false).unwrap())
        });
        g.bench_function("build-zstd3+gzip", |b| {
            b.iter(|| Entry::build(meta(raw.len()), black_box(&raw), 3, true).unwrap())
        });
        g.bench_function("encode", |b| b.iter(|| black_box(&entry).encode()));
        g.bench_function("decode", |b| {
            b.iter(|| Entry::decode(black_box(encoded.clone())).unwrap())
        });
        g.bench_function("decompress", |b| {
            b.iter(|| black_box(&entry).decompress().unwrap())
        });
        g.bench_function("gzip-transcode", |b| {
            b.iter(|| black_box(entry.clone()).with_gzip().unwrap())
        });
        g.finish();
        eprintln!(
            "entry/{label}: raw {} B, zstd {} B ({:.1}x), encoded {} B",
            raw.len(),
            entry.zstd.len(),
            raw.len() as f64 / entry.zstd.len() as f64,
            encoded.len()
        );
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! { name = benches; config = config(); targets = codec }
criterion_main!(benches);
