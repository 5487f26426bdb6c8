//! The per-request context: filled along the way, read once at the end for
//! metrics, the access log and the `Cache-Status` header.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::config::TierConfig;
use crate::key::CacheKey;

/// `x-request-id`, as a constant: a name given as `&str` is parsed and, not
/// being a standard header, copied on every insert.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, set by the request-id layer as a request extension so
/// the request path does not read the header again.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);
/// RFC 9211 `Cache-Status`.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the cache, fresh.
    Hit,
    /// Served from the cache past `fresh` (revalidating, or because Superset failed).
    Stale,
    /// Fetched from Superset.
    Miss,
    /// Answered with another request's fetch.
    Coalesced,
    /// Cached route, but forwarded without using the cache.
    Bypass,
    /// Not a cached route.
    Pass,
    /// Answered with an error of our own.
    Error,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Stale => "stale",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Bypass => "bypass",
            Outcome::Pass => "pass",
            Outcome::Error => "error",
        }
    }
}

/// Everything known about one request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: HeaderValue,
    pub start: Instant,
    pub method: http::Method,
    /// The request's URI (a shared copy: no allocation).
    pub uri: http::Uri,
    pub route: &'static str,
    pub outcome: Outcome,
    /// Short reason (`no-credential`, `status`, ...).
    pub detail: Option<&'static str>,
    pub key: Option<CacheKey>,
    pub scope_kind: Option<&'static str>,
    pub tier: Option<std::sync::Arc<TierConfig>>,
    /// Whether the fetched response was stored.
    pub stored: bool,
    /// The response was a forced refresh (`fwd=request`).
    pub forced: bool,
    /// Entry freshness left, seconds (negative when stale).
    pub ttl: Option<i64>,
    /// Time Superset took (ms), when it was asked.
    pub upstream_ms: Option<u64>,
    pub status: u16,
    /// Response body bytes sent, when known up front.
    pub bytes: Option<u64>,
}

impl RequestContext {
    pub fn new(request_id: HeaderValue, method: http::Method, uri: http::Uri) -> RequestContext {
        RequestContext {
            request_id,
            start: Instant::now(),
            method,
            uri,
            route: "pass",
            outcome: Outcome::Pass,
            detail: None,
            key: None,
            scope_kind: None,
            tier: None,
            stored: false,
            forced: false,
            ttl: None,
            upstream_ms: None,
            status: 0,
            bytes: None,
        }
    }

    /// RFC 9211 `Cache-Status` value, e.g. `chartcache; hit; ttl=42` or
    /// `chartcache; fwd=miss; stored`. `None` for pass-through routes.
    pub fn cache_status(&self) -> Option<HeaderValue> {
        let mut s = String::with_capacity(48);
        s.push_str("chartcache");
        match self.outcome {
            Outcome::Pass => return None,
            Outcome::Hit => s.push_str("; hit"),
            Outcome::Stale if self.upstream_ms.is_none() => s.push_str("; hit"),
            Outcome::Stale => s.push_str("; fwd=stale"),
            Outcome::Miss if self.forced => s.push_str("; fwd=request"),
            Outcome::Miss | Outcome::Error => s.push_str("; fwd=miss"),
            Outcome::Coalesced => s.push_str("; fwd=miss; collapsed"),
            Outcome::Bypass => s.push_str("; fwd=bypass"),
        }
        if let Some(ttl) = self.ttl {
            s.push_str("; ttl=");
            s.push_str(itoa::Buffer::new().format(ttl));
        }
        if self.stored {
            s.push_str("; stored");
        }
        let detail = match self.outcome {
            Outcome::Coalesced => Some(self.detail.unwrap_or("coalesced")),
            Outcome::Stale if self.upstream_ms.is_none() => Some("stale"),
            _ => self.detail,
        };
        if let Some(d) = detail {
            s.push_str("; detail=");
            s.push_str(d);
        }
        // The string's buffer becomes the value's: one allocation, not two.
        HeaderValue::from_maybe_shared(Bytes::from(s)).ok()
    }
}

/// Connection facts the handler needs.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(o: Outcome) -> RequestContext {
        let mut c = RequestContext::new(
            HeaderValue::from_static("id"),
            http::Method::POST,
            http::Uri::from_static("/"),
        );
        c.outcome = o;
        c
    }

    #[test]
    fn cache_status_values() {
        let mut c = ctx(Outcome::Hit);
        c.ttl = Some(42);
        assert_eq!(c.cache_status().unwrap(), "chartcache; hit; ttl=42");
        let mut c = ctx(Outcome::Miss);
        c.stored = true;
        assert_eq!(c.cache_status().unwrap(), "chartcache; fwd=miss; stored");
        let mut c = ctx(Outcome::Bypass);
        c.detail = Some("no-credential");
        assert_eq!(
            c.cache_status().unwrap(),
            "chartcache; fwd=bypass; detail=no-credential"
        );
        assert_eq!(
            ctx(Outcome::Coalesced).cache_status().unwrap(),
            "chartcache; fwd=miss; collapsed; detail=coalesced"
        );
        let mut c = ctx(Outcome::Stale);
        c.ttl = Some(-5);
        assert_eq!(
            c.cache_status().unwrap(),
            "chartcache; hit; ttl=-5; detail=stale"
        );
        c.upstream_ms = Some(3);
        c.detail = Some("upstream-error");
        assert_eq!(
            c.cache_status().unwrap(),
            "chartcache; fwd=stale; ttl=-5; detail=upstream-error"
        );
        assert!(ctx(Outcome::Pass).cache_status().is_none());
    }
}
