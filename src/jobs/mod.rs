//! Superset's async-query (GLOBAL_ASYNC_QUERIES) messages, read with bounds:
//! the `202` job ticket of a chart-data POST, the `done` events of
//! `/api/v1/async_event/`, the shape of a `result_url`, and whether a request
//! carries an `async-token` cookie. Nothing here trusts what it reads beyond
//! matching it against what chartcache itself saw pass. [`registry`] keeps
//! the jobs of this process, [`shared`] their records in a shared tier.

use http::HeaderMap;
use http::header;
use serde::Deserialize;

pub mod registry;
pub mod shared;

/// Largest ticket body read (Superset's is about 150 bytes).
const MAX_TICKET_BYTES: usize = 16 * 1024;
/// Largest async-event body read; a larger one is not inspected.
pub const MAX_EVENTS_BYTES: usize = 1024 * 1024;
/// Events read from one poll answer at most.
const MAX_EVENTS: usize = 1_000;
/// Longest job id / channel id kept (Superset's are UUIDs, 36 bytes).
pub(crate) const MAX_ID: usize = 128;
/// Longest `result_url` kept (`/api/v1/chart/data/qc-` + 64 hex digits).
const MAX_RESULT_URL: usize = 256;
/// The path prefix of every `result_url`.
pub const RESULT_PREFIX: &str = "/api/v1/chart/data/qc-";
/// The cookie Superset keeps a client's async channel in.
pub const ASYNC_TOKEN_COOKIE: &str = "async-token";

/// A `202` answer's job ticket: the job and the channel it reports on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub job_id: String,
    pub channel_id: String,
}

/// A `done` event: the job's data is at `result_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub job_id: String,
    pub result_url: String,
}

#[derive(Deserialize)]
struct RawTicket {
    job_id: String,
    channel_id: String,
}

#[derive(Deserialize)]
struct RawEvents {
    result: Vec<RawEvent>,
}

#[derive(Deserialize)]
struct RawEvent {
    job_id: Option<String>,
    status: Option<String>,
    result_url: Option<String>,
}

/// An id as Superset makes them (UUIDs): short, printable, no separators
/// that could matter anywhere it is logged or compared.
pub(crate) fn plain_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Whether `path` is a `result_url`: the prefix, then a bounded digest.
pub fn is_result_path(path: &str) -> bool {
    path.len() <= MAX_RESULT_URL
        && path
            .strip_prefix(RESULT_PREFIX)
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Parse a `202` chart-data answer's ticket; `None` when it is not one.
pub fn parse_ticket(body: &[u8]) -> Option<Ticket> {
    if body.len() > MAX_TICKET_BYTES {
        return None;
    }
    let t: RawTicket = serde_json::from_slice(body).ok()?;
    (plain_id(&t.job_id) && plain_id(&t.channel_id)).then_some(Ticket {
        job_id: t.job_id,
        channel_id: t.channel_id,
    })
}

/// The `done` events of an `/api/v1/async_event/` answer (at most
/// [`MAX_EVENTS`]); anything unreadable gives none.
pub fn parse_done_events(body: &[u8]) -> Vec<Done> {
    if body.len() > MAX_EVENTS_BYTES {
        return Vec::new();
    }
    let Ok(ev) = serde_json::from_slice::<RawEvents>(body) else {
        return Vec::new();
    };
    ev.result
        .into_iter()
        .take(MAX_EVENTS)
        .filter(|e| e.status.as_deref() == Some("done"))
        .filter_map(|e| {
            let (job_id, result_url) = (e.job_id?, e.result_url?);
            (plain_id(&job_id) && is_result_path(&result_url))
                .then_some(Done { job_id, result_url })
        })
        .collect()
}

/// Whether the request carries an `async-token` cookie (a browser of a GAQ
/// deployment). Superset answers a chart-data POST without it `401`, so
/// requests with and without it never share an upstream answer.
pub fn has_async_token(headers: &HeaderMap) -> bool {
    headers.get_all(header::COOKIE).iter().any(|v| {
        v.as_bytes().split(|b| *b == b';').any(|pair| {
            let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
            name.trim_ascii() == ASYNC_TOKEN_COOKIE.as_bytes()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_read_with_bounds() {
        let t = br#"{"channel_id":"c-1","job_id":"j-1","user_id":"2","status":"pending","errors":[],"result_url":null}"#;
        assert_eq!(
            parse_ticket(t),
            Some(Ticket {
                job_id: "j-1".into(),
                channel_id: "c-1".into()
            })
        );
        assert_eq!(parse_ticket(br#"{"result":[]}"#), None);
        assert_eq!(parse_ticket(br#"{"channel_id":"c","job_id":"a b"}"#), None);
        let long = format!(r#"{{"channel_id":"c","job_id":"{}"}}"#, "j".repeat(200));
        assert_eq!(parse_ticket(long.as_bytes()), None);
        let huge = vec![b' '; MAX_TICKET_BYTES + 1];
        assert_eq!(parse_ticket(&huge), None);
    }

    #[test]
    fn only_done_events_with_a_result_url_count() {
        let qc = format!("{RESULT_PREFIX}{}", "a".repeat(64));
        let body = format!(
            r#"{{"result":[
            {{"id":"1-0","job_id":"j1","status":"pending","result_url":null}},
            {{"id":"2-0","job_id":"j2","status":"done","result_url":"{qc}"}},
            {{"id":"3-0","job_id":"j3","status":"error","result_url":null}},
            {{"id":"4-0","job_id":"j4","status":"done","result_url":"/elsewhere"}}]}}"#
        );
        assert_eq!(
            parse_done_events(body.as_bytes()),
            vec![Done {
                job_id: "j2".into(),
                result_url: qc
            }]
        );
        assert!(parse_done_events(b"not json").is_empty());
    }

    #[test]
    fn result_paths() {
        assert!(is_result_path("/api/v1/chart/data/qc-0123abcd"));
        assert!(!is_result_path("/api/v1/chart/data/qc-"));
        assert!(!is_result_path("/api/v1/chart/data/qc-ab/../x"));
        assert!(!is_result_path("/api/v1/chart/data"));
    }

    #[test]
    fn async_token_cookie_is_found_by_name_only() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "session=s; async-token=x.y.z".parse().unwrap(),
        );
        assert!(has_async_token(&h));
        h.insert(
            header::COOKIE,
            "session=s; my-async-token=x".parse().unwrap(),
        );
        assert!(!has_async_token(&h));
        assert!(!has_async_token(&HeaderMap::new()));
    }
}
