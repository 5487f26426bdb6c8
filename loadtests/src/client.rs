//! HTTP client helpers shared by the load generators: loopback-only targets,
//! one pooled hyper client, response outcome from `Cache-Status`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Parse a base URL and refuse anything that is not loopback.
pub fn loopback_base(url: &str) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// targets"));
    }
    let host = uri.host().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !ok {
        return Err(format!("{url}: target must be a loopback address"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

pub fn client(max_idle: usize) -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(conn)
}

/// What the proxy said it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Hit,
    Coalesced,
    Stale,
    Miss,
    /// Superset's Force refresh forwarded (`fwd=request`).
    Refresh,
    Bypass,
    /// No `Cache-Status` (direct to the upstream).
    None,
    Error,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Coalesced => "coalesced",
            Outcome::Stale => "stale",
            Outcome::Miss => "miss",
            Outcome::Refresh => "refresh",
            Outcome::Bypass => "bypass",
            Outcome::None => "none",
            Outcome::Error => "error",
        }
    }

    /// chartcache: `chartcache; hit`, `chartcache; fwd=miss; stored`,
    /// `...; detail=coalesced`, `fwd=stale`, `fwd=bypass`.
    /// nginx (as configured by compare.sh): `nginx; HIT|MISS|EXPIRED|UPDATING|STALE|BYPASS`.
    pub fn from_cache_status(v: Option<&str>) -> Outcome {
        let Some(v) = v else { return Outcome::None };
        let v = v.to_ascii_lowercase();
        if v.contains("fwd=request") {
            Outcome::Refresh
        } else if v.contains("coalesced") {
            Outcome::Coalesced
        } else if v.contains("hit") {
            Outcome::Hit
        } else if v.contains("stale") || v.contains("updating") {
            Outcome::Stale
        } else if v.contains("miss") || v.contains("expired") {
            Outcome::Miss
        } else if v.contains("bypass") {
            Outcome::Bypass
        } else {
            Outcome::None
        }
    }
}

pub struct Sample {
    pub outcome: Outcome,
    pub latency: Duration,
    pub bytes: usize,
}

pub async fn post(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    timeout: Duration,
) -> Sample {
    let started = Instant::now();
    let mut b = Request::post(url).header(header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body)).expect("request");
    let fut = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let cs = resp
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((status, cs, body.to_bytes().len()))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok((status, cs, bytes))) => Sample {
            outcome: if status >= 400 {
                Outcome::Error
            } else {
                Outcome::from_cache_status(cs.as_deref())
            },
            latency: started.elapsed(),
            bytes,
        },
        _ => Sample {
            outcome: Outcome::Error,
            latency: started.elapsed(),
            bytes: 0,
        },
    }
}

pub async fn get_json(client: &HttpClient, url: &str) -> Option<serde_json::Value> {
    let req = Request::get(url).body(Full::new(Bytes::new())).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .ok()?
        .ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

/// Percentile (0..=100) of sorted microseconds, in ms.
pub fn pct_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted_us.len() - 1) as f64).round() as usize;
    sorted_us[idx.min(sorted_us.len() - 1)] as f64 / 1000.0
}

pub fn summary(mut us: Vec<u64>) -> serde_json::Value {
    us.sort_unstable();
    let mean = if us.is_empty() {
        f64::NAN
    } else {
        us.iter().sum::<u64>() as f64 / us.len() as f64 / 1000.0
    };
    serde_json::json!({
        "count": us.len(),
        "p50_ms": round3(pct_ms(&us, 50.0)),
        "p90_ms": round3(pct_ms(&us, 90.0)),
        "p95_ms": round3(pct_ms(&us, 95.0)),
        "p99_ms": round3(pct_ms(&us, 99.0)),
        "p999_ms": round3(pct_ms(&us, 99.9)),
        "max_ms": round3(pct_ms(&us, 100.0)),
        "mean_ms": round3(mean),
    })
}

pub fn round3(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1000.0).round() / 1000.0
    } else {
        -1.0
    }
}
