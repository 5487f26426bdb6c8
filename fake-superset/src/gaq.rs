//! Superset's GLOBAL_ASYNC_QUERIES mode of the fake (off until
//! [`Gaq::enable`]), as observed in Superset 6.1.0 (polling transport):
//!
//! - every client holds an `async-token` cookie, an HS256 JWT
//!   `{"channel", "sub"}`;
//! - a POST whose result is in Superset's data cache (and not `force`) gets
//!   200 with the data at once, token or not; otherwise, without the token,
//!   401; with it, 202 with a ticket for the cookie's channel, and a "job"
//!   (counted) runs; Superset never deduplicates jobs;
//! - a finished job fills the data cache, whose key holds the RLS of the
//!   user (here: the username) but not the user, and posts a `done` event with
//!   `result_url = /api/v1/chart/data/qc-<sha256>` to its channel only;
//! - `GET /api/v1/async_event/?last_id=` returns the channel's events after
//!   `last_id`; `GET result_url` returns the caller's own rows (404 for an
//!   unknown `qc-` key, 422 when the caller's data is not cached);
//! - async-event answers are gzipped for a client that accepts gzip
//!   (flask-compress, as Superset registers it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::reply::{self, Body};
use crate::server::State;

/// The JWT secret of the fake (`GLOBAL_ASYNC_QUERIES_JWT_SECRET`).
const SECRET: &[u8] = b"test-gaq-secret-that-is-32-bytes-long!";
/// The cookie Superset keeps a client's async channel in.
pub const COOKIE: &str = "async-token";

#[derive(Serialize, Deserialize)]
struct Claims {
    channel: String,
    sub: String,
}

/// GAQ state of the fake Superset.
#[derive(Default)]
pub struct Gaq {
    /// Whether chart data is answered the GAQ way (see [`Gaq::enable`]).
    pub enabled: AtomicBool,
    /// Jobs started (Celery tasks).
    pub jobs: AtomicUsize,
    /// How long a job runs.
    pub job_ms: AtomicU64,
    /// `GET result_url` requests answered.
    pub result_gets: AtomicUsize,
    /// Async-event polls answered.
    pub polls: AtomicUsize,
    next_id: AtomicU64,
    /// Data cache: (query digest, RLS = username) → generation of the data.
    cache: Mutex<HashMap<(String, String), u64>>,
    /// `qc-` key → query digest.
    qc: Mutex<HashMap<String, String>>,
    /// Channel → events (`id` increasing).
    events: Mutex<HashMap<String, Vec<Value>>>,
}

/// An async-token cookie value for `channel` of user `user_id`.
pub fn token(channel: &str, user_id: u64) -> String {
    let claims = Claims {
        channel: channel.to_string(),
        sub: user_id.to_string(),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// The verified claims of the request's async-token cookie.
fn channel_of(h: &HeaderMap) -> Option<(String, String)> {
    let h = crate::gunicorn::joined(h);
    let v = h.get(http::header::COOKIE)?;
    let s = String::from_utf8_lossy(v.as_bytes()).into_owned();
    let tok = s.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == COOKIE).then(|| v.trim().to_string())
    })?;
    let mut val = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    val.required_spec_claims.clear();
    val.validate_exp = false;
    let data =
        jsonwebtoken::decode::<Claims>(&tok, &jsonwebtoken::DecodingKey::from_secret(SECRET), &val)
            .ok()?;
    Some((data.claims.channel, data.claims.sub))
}

/// The query digest: the body without `force`, keys sorted (serde_json's map).
fn digest(body: &Value) -> String {
    let mut b = body.clone();
    if let Some(o) = b.as_object_mut() {
        o.remove("force");
    }
    blake3::hash(&serde_json::to_vec(&b).unwrap())
        .to_hex()
        .to_string()
}

/// The data a user sees for a query: their own rows (RLS), the generation of
/// the cached result, and the same bytes whichever way they are fetched.
pub fn data(user: &str, generation: u64) -> Value {
    json!({"result": [{"cache_timeout": 86400, "user": user, "generation": generation,
        "data": [{"region": format!("{user}-region"), "revenue": 1000 + generation}],
        "query": format!("SELECT sum(revenue) FROM sales WHERE owner = '{user}'")}]})
}

/// A GAQ answer: status, JSON body, `Set-Cookie` values.
pub type Answer = (u16, Value, Vec<String>);

impl Gaq {
    /// Answer chart data the GAQ way from now on, with jobs that run `job`.
    pub fn enable(&self, job: Duration) {
        self.job_ms.store(job.as_millis() as u64, Ordering::SeqCst);
        self.enabled.store(true, Ordering::SeqCst);
    }

    /// Jobs started so far.
    pub fn jobs(&self) -> usize {
        self.jobs.load(Ordering::SeqCst)
    }

    /// `GET result_url` requests answered so far.
    pub fn result_gets(&self) -> usize {
        self.result_gets.load(Ordering::SeqCst)
    }

    /// A chart-data POST by `user` (authenticated).
    pub fn post(self: &Arc<Self>, h: &HeaderMap, user: (u64, &str), body: &Bytes) -> Answer {
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            return (400, json!({"message": "malformed"}), vec![]);
        };
        // `_run_async`: the data cache first (no async token needed), then
        // the channel of the token, else 401.
        let force = body.get("force").and_then(Value::as_bool).unwrap_or(false);
        let dkey = (digest(&body), user.1.to_string());
        if !force && let Some(g) = self.cache.lock().unwrap().get(&dkey) {
            return (200, data(user.1, *g), vec![]);
        }
        let Some((channel, sub)) = channel_of(h) else {
            let cookie = format!(
                "{COOKIE}={}; Path=/; HttpOnly",
                token("fresh-channel", user.0)
            );
            return (401, json!({"msg": "Missing async-token"}), vec![cookie]);
        };
        let n = self.jobs.fetch_add(1, Ordering::SeqCst) + 1;
        let job_id = format!("job-{n:04}-{}", &dkey.0[..8]);
        let ticket = json!({"channel_id": channel, "job_id": job_id, "user_id": sub,
            "status": "pending", "errors": [], "result_url": null});
        let me = self.clone();
        let delay = Duration::from_millis(self.job_ms.load(Ordering::SeqCst));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // The qc key is the query context's: the same for every user.
            let qc = format!("qc-{}", &blake3::hash(dkey.0.as_bytes()).to_hex()[..64]);
            me.qc.lock().unwrap().insert(qc.clone(), dkey.0.clone());
            *me.cache.lock().unwrap().entry(dkey).or_insert(0) += 1;
            let id = me.next_id.fetch_add(1, Ordering::SeqCst) + 1;
            let ev = json!({"id": format!("{id}-0"), "channel_id": channel, "job_id": job_id,
                "user_id": sub, "status": "done", "errors": [],
                "result_url": format!("/api/v1/chart/data/{qc}")});
            me.events
                .lock()
                .unwrap()
                .entry(channel)
                .or_default()
                .push(ev);
        });
        (202, ticket, vec![])
    }

    /// `GET /api/v1/async_event/?last_id=...` on the cookie's channel.
    pub fn poll(&self, h: &HeaderMap, query: Option<&str>) -> Answer {
        self.polls.fetch_add(1, Ordering::SeqCst);
        let Some((channel, _)) = channel_of(h) else {
            return (401, json!({"message": "Unauthorized"}), vec![]);
        };
        let last: u64 = query
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("last_id=")))
            .and_then(|v| v.split('-').next()?.parse().ok())
            .unwrap_or(0);
        let events = self.events.lock().unwrap();
        let list: Vec<Value> = events
            .get(&channel)
            .map(|v| {
                v.iter()
                    .filter(|e| {
                        let id = e["id"].as_str().unwrap().split('-').next().unwrap();
                        id.parse::<u64>().unwrap() > last
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        (200, json!({"result": list}), vec![])
    }

    /// `GET /api/v1/chart/data/qc-...` by `user` (authenticated).
    pub fn result(&self, user: &str, qc: &str) -> Answer {
        self.result_gets.fetch_add(1, Ordering::SeqCst);
        let Some(d) = self.qc.lock().unwrap().get(qc).cloned() else {
            return (404, json!({"message": "Not found"}), vec![]);
        };
        match self.cache.lock().unwrap().get(&(d, user.to_string())) {
            Some(g) => (200, data(user, *g), vec![]),
            None => (
                422,
                json!({"message": "Error loading data from cache"}),
                vec![],
            ),
        }
    }
}

/// The GAQ routes, when that mode is on: chart-data POSTs, `result_url` GETs
/// (both authenticated as Superset does) and async-event polls; `None` for
/// any other request.
pub fn route(
    st: &State,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response<Body>> {
    if !st.gaq.enabled.load(Ordering::SeqCst) {
        return None;
    }
    let events = path == "/api/v1/async_event/";
    let (status, v, cookies) = if method == Method::GET && events {
        st.gaq.poll(headers, query)
    } else if method == Method::GET
        && let Some(qc) = path.strip_prefix("/api/v1/chart/data/")
    {
        let Some((_, user)) = st.authenticate(headers) else {
            return Some(reply::unauthorized());
        };
        st.gaq.result(&user, qc.trim_end_matches('/'))
    } else if method == Method::POST && path.trim_end_matches('/') == "/api/v1/chart/data" {
        let Some((id, user)) = st.authenticate(headers) else {
            return Some(reply::unauthorized());
        };
        st.gaq.post(headers, (id, &user), body)
    } else {
        return None;
    };
    let gzip = events
        && headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("gzip"));
    let mut r = if gzip {
        // flask-compress, as Superset registers it, for a client that asks.
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&serde_json::to_vec(&v).expect("json"))
            .expect("gzip into memory");
        let mut r = reply::json_bytes(status, e.finish().expect("gzip into memory"));
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        r
    } else {
        reply::json(status, v)
    };
    for c in cookies {
        r.headers_mut()
            .append(header::SET_COOKIE, c.parse().unwrap());
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_their_channel() {
        let mut h = HeaderMap::new();
        let cookie = format!("session=x; {COOKIE}={}", token("ch-1", 2));
        h.insert(header::COOKIE, cookie.parse().unwrap());
        assert_eq!(channel_of(&h), Some(("ch-1".into(), "2".into())));
        h.insert(header::COOKIE, format!("{COOKIE}=forged").parse().unwrap());
        assert_eq!(channel_of(&h), None);
    }

    #[test]
    fn the_digest_ignores_force() {
        let a = json!({"queries": [1], "force": true});
        let b = json!({"queries": [1]});
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&b), digest(&json!({"queries": [2]})));
    }
}
