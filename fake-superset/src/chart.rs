//! The chart-data endpoint's core: which requests are chart data, and the
//! answer a user gets under the behaviour the caller set ([`ChartMode`],
//! delay, `cache_timeout`, answer size), counting every query.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, header};
use serde_json::json;

use crate::payload::{filler, superset_response};
use crate::reply::{Body, json};
use crate::server::State;

/// What chart-data requests get back (settable while running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChartMode {
    /// 200 JSON naming the user and the query number.
    Ok,
    /// This status with Superset's JSON error body.
    Status(u16),
    /// 200 JSON with `Set-Cookie`.
    SetCookie,
    /// 200 JSON with `Cache-Control: no-store`.
    NoStore,
    /// Accept and never answer.
    Hang,
    /// Close the connection without answering.
    Drop,
    /// 200 with a `filler` of this many bytes.
    Large(usize),
}

/// The shape of a 200 chart-data answer, fixed when the fake starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A small result naming the user and the query number (and the first
    /// query's `row_limit`), so a client can tell whose answer it got; with
    /// [`State::filler`] bytes of incompressible filler when that is set.
    Named,
    /// Rows of the sales dataset in Superset's envelope, as many bytes as the
    /// first query's `row_limit` (1024 without one): answers of a chosen size.
    Sized,
}

/// Chart-data requests: `POST /api/v1/chart/data`, `GET /api/v1/chart/{id}/data/`
/// and the legacy `/superset/explore_json/`.
pub fn is_chart(method: &Method, path: &str) -> bool {
    (method == Method::POST && path.trim_end_matches('/') == "/api/v1/chart/data")
        || (method == Method::GET && path.starts_with("/api/v1/chart/") && path.ends_with("/data/"))
        || path.starts_with("/superset/explore_json")
}

/// Answer a chart-data request of an authenticated `user`: a body that is
/// not JSON gets Superset's 400; otherwise the query is counted, delayed by
/// [`State::delay_ms`] and answered as [`State::mode`] says.
pub async fn answer(st: &State, user: &str, method: &Method, body: &Bytes) -> Response<Body> {
    let query = if method == Method::POST {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(q) => q,
            Err(_) => {
                return json(
                    400,
                    json!({"errors": [{"message": "400 Bad Request: malformed", "error_type": "GENERIC_BACKEND_ERROR"}]}),
                );
            }
        }
    } else {
        serde_json::Value::Null
    };
    let n = st.chart_queries.fetch_add(1, Ordering::SeqCst) + 1;
    *st.per_user
        .lock()
        .unwrap()
        .entry(user.to_string())
        .or_default() += 1;
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mode = st.mode.lock().unwrap().clone();
    let row_limit = query["queries"][0]["row_limit"].as_u64();
    let ct = st.cache_timeout.load(Ordering::SeqCst);
    let ok = || match st.answer {
        Answer::Named => {
            let mut r = json!({"cache_timeout": ct, "user": user, "query_no": n,
                "status": "success", "row_limit": row_limit.unwrap_or(0),
                "data": [{"region": format!("{user}-region"), "revenue": 1000 + n}],
                "query": format!("SELECT sum(revenue) FROM sales WHERE owner = '{user}'")});
            let size = st.filler.load(Ordering::SeqCst);
            if size > 0 {
                r["filler"] = filler(n as u64, size).into();
            }
            json(200, json!({"result": [r]}))
        }
        Answer::Sized => {
            crate::reply::json_bytes(200, superset_response(row_limit.unwrap_or(1024) as usize))
        }
    };
    match mode {
        ChartMode::Ok => ok(),
        ChartMode::Status(s) if s >= 500 => json(
            s,
            json!({"errors": [{"message": "Internal server error", "error_type": "GENERIC_BACKEND_ERROR"}]}),
        ),
        ChartMode::Status(s) => json(s, json!({"message": format!("status {s}")})),
        ChartMode::SetCookie => {
            let mut r = ok();
            r.headers_mut().insert(
                header::SET_COOKIE,
                "session=fresh-locale-cookie; HttpOnly; Path=/"
                    .parse()
                    .unwrap(),
            );
            r
        }
        ChartMode::NoStore => {
            let mut r = ok();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, "no-store".parse().unwrap());
            r
        }
        ChartMode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            ok()
        }
        // hyper closes the connection of a service that panics.
        ChartMode::Drop => panic!("drop the connection"),
        ChartMode::Large(size) => json(
            200,
            json!({"result": [{"user": user, "query_no": n, "filler": "x".repeat(size)}]}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_paths() {
        assert!(is_chart(&Method::POST, "/api/v1/chart/data"));
        assert!(is_chart(&Method::POST, "/api/v1/chart/data/"));
        assert!(is_chart(&Method::GET, "/api/v1/chart/2/data/"));
        assert!(!is_chart(&Method::GET, "/api/v1/chart/data"));
        assert!(!is_chart(&Method::POST, "/api/v1/dataset/1"));
    }
}
