//! An entry read from Redis is untrusted input. Corrupt values written under a
//! real entry key of a real `redis-server` — garbage, a header claiming a body
//! far beyond `max_object_bytes` over a few KB of zstd, a zstd block that does
//! not decompress — are each a miss (never a 500, never a huge allocation) and
//! are deleted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::redis_server::*;
use crate::support::*;
use bytes::Bytes;
use chartcache::app::App;
use chartcache::clock::{SharedClock, SystemClock};
use chartcache::config::RedisConfig;
use chartcache::metrics::Metrics;
use chartcache::store::Entry;
use chartcache::store::setup;

const BIGNUMBER: &str = "16-chart-data-bignumber-admin-miss.json";

async fn start(up: &Upstream, url: String, tiered: bool) -> Proxy {
    Proxy::expect_threads();
    let mut cfg = test_config(&up.url());
    cfg.redis = RedisConfig {
        url: Some(url),
        tiered,
        ..RedisConfig::default()
    };
    let metrics = Arc::new(Metrics::new());
    let clock: SharedClock = Arc::new(SystemClock);
    let built = setup::build(&cfg, metrics.clone(), clock.clone())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tiered && built.redis.as_ref().unwrap().subscriptions() == 0 {
        assert!(Instant::now() < deadline, "no invalidation subscription");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Proxy::start_app(App::new(cfg, built.store, built.memory, metrics, clock).unwrap()).await
}

/// The one entry key in this test's Redis.
async fn entry_key(c: &mut redis::aio::MultiplexedConnection) -> String {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("chartcache:e:*")
        .query_async(c)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys.into_iter().next().unwrap()
}

/// Corrupt values for a stored entry: each name, and the bytes.
fn corruptions(good: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let e = Entry::decode(Bytes::copy_from_slice(good)).unwrap();
    let zstart = good.len() - e.zstd.len();
    let mut out = vec![("garbage", b"not an entry at all".to_vec())];
    // A bad header: status 7.
    let mut v = good.to_vec();
    v[4..6].copy_from_slice(&7u16.to_le_bytes());
    out.push(("bad-status", v));
    // Truncated.
    out.push(("truncated", good[..good.len() - 3].to_vec()));
    // An honest 8 KB zstd frame of 1 GiB of zeros, declared in the header: read
    // back, decompressing it allocated the whole claimed size.
    let zeros = vec![0u8; 1 << 30];
    let mut big = e.clone();
    big.zstd = Bytes::from(zstd::bulk::compress(&zeros, 3).unwrap());
    big.meta.raw_len = zeros.len() as u32;
    drop(zeros);
    assert!(big.zstd.len() < 64 * 1024, "{}", big.zstd.len());
    out.push(("claims-1-GiB", big.encode().to_vec()));
    // A block that does not decompress while the frame around it looks whole:
    // the first such byte flip (deterministic for a given input).
    let flipped = (zstart + 6..good.len())
        .map(|i| {
            let mut v = good.to_vec();
            v[i] ^= 0x5A;
            v
        })
        .find(|v| Entry::decode(Bytes::copy_from_slice(v)).is_ok_and(|e| e.decompress().is_err()))
        .expect("a corruption that only decompression finds");
    out.push(("bad-block", flipped));
    out
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn corrupt_entries_are_misses_and_deleted(tiered: bool) {
    let r = RedisProc::server(&[]);
    let up = Upstream::start().await;
    let proxy = start(&up, r.url(), tiered).await;
    let mut rc = client(&r.url()).await;
    let c = TestClient::new();
    let body = chart_body(BIGNUMBER);

    let first = c.chart(&proxy, "alice-token", &body).await;
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    let key = entry_key(&mut rc).await;
    let good: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut rc)
        .await
        .unwrap();

    for (name, bad) in corruptions(&good) {
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(&bad)
            .arg("PX")
            .arg(60_000)
            .query_async(&mut rc)
            .await
            .unwrap();
        if tiered {
            // Drop this replica's L1 copy so the value is read from Redis.
            let purge = chartcache::store::Purge::Keys(vec![
                chartcache::key::CacheKey::from_hex(key.rsplit(':').next().unwrap()).unwrap(),
            ]);
            proxy.app.store.purge(&purge).await.unwrap();
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(&bad)
                .arg("PX")
                .arg(60_000)
                .query_async(&mut rc)
                .await
                .unwrap();
        }
        // A response Superset marks no-store: whatever is under the key
        // afterwards was not put there by this request.
        up.set_mode(ChartMode::NoStore);
        let before = rss_kib();
        let r1 = c.chart(&proxy, "alice-token", &body).await;
        let grown_mib = rss_kib().saturating_sub(before) / 1024;
        assert_eq!(
            r1.status,
            200,
            "{name}: {:?}",
            String::from_utf8_lossy(&r1.body)
        );
        assert!(
            r1.cache_status().contains("fwd=miss"),
            "{name}: {}",
            r1.cache_status()
        );
        assert_eq!(r1.json()["result"][0]["user"], "alice", "{name}");
        assert!(grown_mib < 256, "{name}: RSS grew {grown_mib} MiB");
        let left: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut rc)
            .await
            .unwrap();
        assert_eq!(left, None, "{name}: the unreadable entry is still there");
        // Fill it again for the next corruption.
        up.set_mode(ChartMode::Ok);
        let refill = c.chart(&proxy, "alice-token", &body).await;
        assert!(
            refill.cache_status().contains("stored"),
            "{name}: {}",
            refill.cache_status()
        );
        let hit = c.chart(&proxy, "alice-token", &body).await;
        assert!(
            hit.cache_status().contains("hit"),
            "{name}: {}",
            hit.cache_status()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_redis_entries_are_misses_and_deleted() {
    corrupt_entries_are_misses_and_deleted(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_redis_entries_are_misses_and_deleted_behind_l1() {
    corrupt_entries_are_misses_and_deleted(true).await;
}
