//! Fingerprint cost: canonicalize a chart-data request body and build its key,
//! for the fixture bodies (1–2 KB) and a large query context (~30 KB).

mod common;

use std::hint::black_box;

use chartcache::fingerprint::{build_key, canonicalize};
use chartcache::route::CachedRoute;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PATH: &str = "/api/v1/chart/data";

fn fingerprint(c: &mut Criterion) {
    let mut bodies = common::chart_bodies();
    bodies.push(("large-30KB", common::large_chart_body()));
    let mut g = c.benchmark_group("fingerprint");
    for (name, body) in &bodies {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("{name}/{}B", body.len()), |b| {
            b.iter(|| {
                let c = canonicalize(
                    CachedRoute::ChartData,
                    PATH,
                    None,
                    Some("application/json"),
                    black_box(body),
                )
                .unwrap();
                build_key(
                    CachedRoute::ChartData,
                    PATH,
                    &c.query,
                    "user:1",
                    &c.body_digest,
                )
            })
        });
    }
    g.finish();

    // The parts separately, for the largest body.
    let (_, large) = bodies.last().unwrap();
    let canon = canonicalize(
        CachedRoute::ChartData,
        PATH,
        None,
        Some("application/json"),
        large,
    )
    .unwrap();
    let mut g = c.benchmark_group("fingerprint-parts");
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.bench_function("canonicalize/large-30KB", |b| {
        b.iter(|| {
            canonicalize(
                CachedRoute::ChartData,
                PATH,
                None,
                Some("application/json"),
                black_box(large),
            )
            .unwrap()
        })
    });
    g.bench_function("body-digest/large-30KB", |b| {
        b.iter(|| chartcache::fingerprint::body_digest(black_box(&canon.body)))
    });
    g.finish();

    // The key itself hashes the parts and the 32-byte body digest: its cost
    // does not depend on the body size.
    let mut g = c.benchmark_group("fingerprint-key");
    g.bench_function("build-key", |b| {
        b.iter(|| {
            build_key(
                CachedRoute::ChartData,
                PATH,
                &canon.query,
                "user:1",
                black_box(&canon.body_digest),
            )
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = fingerprint }
criterion_main!(benches);
