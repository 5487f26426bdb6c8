//! One error type for the request path. It records where a fault came from and
//! maps to an HTTP status in one place; errors become responses only at the edge
//! ([`crate::respond::error`]), in Superset's error shape `{"message": ...}`.

use http::StatusCode;

/// Where a fault came from.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client sent something we will not handle.
    #[error("bad request: {0}")]
    Client(String),
    /// The client did not send its request in time (`server.body_read_timeout_ms`).
    #[error("request not received in time")]
    RequestTimeout,
    /// chartcache is at a configured capacity (connections, buffered bodies).
    #[error("chartcache is at capacity")]
    Overloaded,
    /// Superset could not be reached.
    #[error("upstream unreachable: {0}")]
    UpstreamConnect(String),
    /// Superset did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// Superset broke the connection or sent something unusable.
    #[error("upstream error: {0}")]
    Upstream(String),
    /// A cache store failed. The proxy fails open, so this never reaches a client
    /// on its own; it is logged and counted.
    #[error("store error: {0}")]
    Store(String),
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Client(_) => StatusCode::BAD_REQUEST,
            Error::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Error::UpstreamConnect(_) | Error::Upstream(_) => StatusCode::BAD_GATEWAY,
            Error::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Error::Store(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Metric/log label for the fault's origin.
    pub fn source_label(&self) -> &'static str {
        match self {
            Error::Client(_) | Error::RequestTimeout => "client",
            Error::Overloaded => "capacity",
            Error::UpstreamConnect(_) | Error::UpstreamTimeout | Error::Upstream(_) => "upstream",
            Error::Store(_) => "store",
            Error::Internal(_) => "internal",
        }
    }
}

/// Why a request to Superset failed (label `error` of
/// `chartcache_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No connection (refused, DNS, TLS handshake, connect timeout).
    Connect,
    /// No response head within `upstream_client.response_timeout_ms`.
    Timeout,
    /// The connection failed under the request, or the answer was malformed.
    Protocol,
}

impl UpstreamFailure {
    /// Every variant, for the series created at startup.
    pub const ALL: [UpstreamFailure; 3] = [Self::Connect, Self::Timeout, Self::Protocol];

    /// The failure an upstream error stands for.
    pub fn of(e: &Error) -> UpstreamFailure {
        match e {
            Error::UpstreamTimeout => Self::Timeout,
            Error::UpstreamConnect(_) => Self::Connect,
            _ => Self::Protocol,
        }
    }

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_to_status() {
        assert_eq!(Error::UpstreamTimeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            Error::UpstreamConnect("x".into()).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(Error::RequestTimeout.status(), StatusCode::REQUEST_TIMEOUT);
    }
}
