//! Client-side pressure: slow and silent connections next to normal clients,
//! and the memory store's cap under many distinct answers (RSS reported).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::load::{self, AFTER, BEFORE, DURING, Load};
use super::proxy::Chartcache;
use super::upstream::Upstream;
use super::{Report, Scale, sleep};

/// The kinds of slow connection.
#[derive(Debug, Clone, Copy)]
enum Slow {
    /// Connects and sends nothing.
    Silent,
    /// Sends a request head one byte every 500 ms.
    Head,
    /// Sends a complete head announcing 20 000 body bytes, then one byte every 500 ms.
    Body,
    /// One complete request, then an idle keep-alive connection.
    Idle,
}

const KINDS: [Slow; 4] = [Slow::Silent, Slow::Head, Slow::Body, Slow::Idle];

/// Open one slow connection and keep it going until the proxy closes it or
/// `bound` passes; seconds until the proxy closed it, if it did.
async fn slow_conn(port: u16, kind: Slow, bound: Duration) -> Option<f64> {
    let t0 = Instant::now();
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return Some(0.0);
    };
    let body_head = "POST /api/v1/chart/data HTTP/1.1\r\nHost: chaos\r\n\
        Authorization: Bearer alice-token\r\nContent-Type: application/json\r\n\
        Content-Length: 20000\r\n\r\n";
    let trickle: &[u8] = match kind {
        Slow::Silent => b"",
        Slow::Head => b"GET /api/v1/chart/1/data/ HTTP/1.1\r\nHost: chaos\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        Slow::Body => b"{\"queries\":[\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        Slow::Idle => b"",
    };
    match kind {
        Slow::Body if s.write_all(body_head.as_bytes()).await.is_err() => {
            return Some(t0.elapsed().as_secs_f64());
        }
        Slow::Idle => {
            let req = "GET /api/v1/me/ HTTP/1.1\r\nHost: chaos\r\nAuthorization: Bearer alice-token\r\n\r\n";
            if s.write_all(req.as_bytes()).await.is_err() {
                return Some(t0.elapsed().as_secs_f64());
            }
            // Read the answer's head and body (small, one read or a few).
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut got = Vec::new();
            while Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed().as_secs_f64()),
                    Ok(Ok(n)) => {
                        got.extend_from_slice(&buf[..n]);
                        if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}") {
                            break;
                        }
                    }
                    Err(_) => {}
                }
            }
        }
        _ => {}
    }
    let (mut rd, mut wr) = s.into_split();
    let closed = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {} // a 408 or similar: wait for the close.
            }
        }
    });
    let mut i = 0;
    let deadline = t0 + bound;
    while Instant::now() < deadline && !closed.is_finished() {
        if !trickle.is_empty() {
            let b = trickle[i % trickle.len()];
            i += 1;
            if wr.write_all(&[b]).await.is_err() {
                return Some(t0.elapsed().as_secs_f64());
            }
        }
        sleep(Duration::from_millis(if trickle.is_empty() {
            50
        } else {
            500
        }))
        .await;
    }
    if closed.is_finished() {
        return Some(closed.await.unwrap().duration_since(t0).as_secs_f64());
    }
    closed.abort();
    None
}

/// `slow_per_kind` connections of each kind next to the normal load. Goals:
/// the normal clients see 0 non-200 and 0 wrong-user answers, and the proxy
/// closes every slow connection within `slow_close_bound`.
pub async fn slow_clients(bin: &Path, scale: &Scale) -> Report {
    let up = Upstream::start().await;
    let cc = Chartcache::start(bin, &up.url(), scale.slow_toml).await;
    let load = Load::start(scale.load(&[cc.url()]));
    sleep(scale.before).await;
    load.set_phase(DURING);
    let slow: Vec<Vec<_>> = KINDS
        .iter()
        .map(|&kind| {
            (0..scale.slow_per_kind)
                .map(|_| tokio::spawn(slow_conn(cc.port, kind, scale.slow_close_bound)))
                .collect()
        })
        .collect();
    let mut per_kind = Vec::new();
    let mut still_open = 0;
    for (kind, handles) in KINDS.iter().zip(slow) {
        let mut closed = Vec::new();
        let mut open = 0;
        for h in handles {
            match h.await.unwrap() {
                Some(secs) => closed.push(secs),
                None => open += 1,
            }
        }
        closed.sort_by(f64::total_cmp);
        still_open += open;
        per_kind.push(format!(
            "{kind:?}: {} closed (max {:.1} s), {open} still open",
            closed.len(),
            closed.last().copied().unwrap_or(0.0)
        ));
    }
    load.set_phase(AFTER);
    sleep(scale.after).await;
    let samples = load.finish().await;
    let mut r = Report::new("slow_clients");
    r.add(&samples);
    r.fact(
        "slow connections",
        format!("{} of each kind", scale.slow_per_kind),
    );
    for (i, k) in per_kind.iter().enumerate() {
        r.fact(&format!("slow[{i}]"), k);
    }
    r.standard_goals(true);
    r.goal(
        "every slow connection closed by the proxy within the bound",
        still_open == 0,
        format!("{still_open} still open after {:?}", scale.slow_close_bound),
    );
    r
}

/// `mem_entries` distinct ~20 KB answers (two users, eight clients) through a
/// memory store capped at `mem_cap_bytes`. Reported: RSS before/after, the
/// peak, the store's own byte count. Goals: the store stays within its cap;
/// RSS growth stays within the README's memory budget: the store cap plus
/// the canonical-body memo and raw-copy caches (a quarter of the cap each),
/// plus allocator slack of a third of those caches and 8 MiB of connection
/// buffers under load.
pub async fn memory_cap(bin: &Path, scale: &Scale) -> Report {
    let up = Upstream::start().await;
    up.set_size(20_000);
    let cap = scale.mem_cap_bytes;
    let toml = format!(
        "[memory]\nmax_bytes = {cap}\n[cache]\ncanonical_memo_bytes = {}\nraw_copy_bytes = {}\n",
        cap / 4,
        cap / 4
    );
    let cc = Chartcache::start(bin, &up.url(), &toml).await;
    let mut r = Report::new("memory_cap");
    let t = Duration::from_secs(10);
    // Warm up: connections, identity, allocator.
    let c = load::client();
    for key in 0..20 {
        r.add_answer(
            BEFORE,
            &load::chart(&c, &cc.url(), key as usize, 10_000_000 + key, t).await,
        );
    }
    let (rss0, _) = cc.proc.rss_kib().unwrap_or_default();
    let next = Arc::new(AtomicU64::new(0));
    let n = scale.mem_entries;
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (next, url) = (next.clone(), cc.url());
            tokio::spawn(async move {
                let c = load::client();
                let mut v = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    if k >= n {
                        return v;
                    }
                    v.push(load::chart(&c, &url, k as usize, k, t).await);
                }
            })
        })
        .collect();
    let mut peak_rss = rss0;
    while !workers.iter().all(|w| w.is_finished()) {
        if let Some((rss, _)) = cc.proc.rss_kib() {
            peak_rss = peak_rss.max(rss);
        }
        sleep(Duration::from_millis(200)).await;
    }
    for w in workers {
        for a in w.await.unwrap() {
            r.add_answer(DURING, &a);
        }
    }
    // The newest keys again: hits.
    for key in n.saturating_sub(50)..n {
        r.add_answer(
            AFTER,
            &load::chart(&c, &cc.url(), key as usize, key, t).await,
        );
    }
    let (rss1, hwm) = cc.proc.rss_kib().unwrap_or_default();
    let store = cc
        .metric("chartcache_memory_store_bytes")
        .await
        .unwrap_or(-1.0);
    let entries = cc
        .metric("chartcache_memory_store_entries")
        .await
        .unwrap_or(-1.0);
    let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
    r.fact("entries pushed", format!("{n} × ~20 KB"));
    r.fact("memory.max_bytes (MiB)", cap >> 20);
    r.fact(
        "store bytes / entries (metric)",
        format!("{:.1} MiB / {entries}", store / 1048576.0),
    );
    r.fact("rss_before_mib", mib(rss0));
    r.fact("rss_after_mib", mib(rss1));
    r.fact(
        "rss_peak_mib (sampled / VmHWM)",
        format!("{} / {}", mib(peak_rss), mib(hwm)),
    );
    r.fact("rss_growth_mib", mib(rss1.saturating_sub(rss0)));
    r.standard_goals(true);
    r.goal(
        "the store stays within memory.max_bytes",
        store >= 0.0 && store <= cap as f64,
        format!("{store}"),
    );
    let caches = cap + cap / 4 + cap / 4;
    let budget_kib = (caches + caches / 3 + (8 << 20)) / 1024;
    r.fact(
        "growth beyond the caches (slack and buffers)",
        format!(
            "{} MiB ({:.0} % of the caches)",
            mib(peak_rss.saturating_sub(rss0).saturating_sub(caches / 1024)),
            (peak_rss.saturating_sub(rss0) as f64 * 1024.0 / caches as f64 - 1.0) * 100.0
        ),
    );
    r.goal(
        "RSS growth within the caches + a third of them + 8 MiB (README memory budget)",
        peak_rss.saturating_sub(rss0) <= budget_kib,
        format!(
            "peak growth {} MiB, budget {} MiB",
            mib(peak_rss.saturating_sub(rss0)),
            mib(budget_kib)
        ),
    );
    r
}
