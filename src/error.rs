//! One error type for the request path. It records where a fault came from and
//! maps to an HTTP status in one place; errors become responses only at the edge
//! (`into_response`), in Superset's error shape `{"message": ...}`.

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{Body, full};

/// Where a fault came from.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client sent something we will not handle.
    #[error("bad request: {0}")]
    Client(String),
    /// The request body is larger than allowed.
    #[error("request body too large")]
    BodyTooLarge,
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
            Error::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
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
            Error::Client(_) | Error::BodyTooLarge | Error::RequestTimeout => "client",
            Error::Overloaded => "capacity",
            Error::UpstreamConnect(_) | Error::UpstreamTimeout | Error::Upstream(_) => "upstream",
            Error::Store(_) => "store",
            Error::Internal(_) => "internal",
        }
    }

    /// The response a client sees: Superset's `{"message": ...}` shape.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let msg = match &self {
            // Do not leak internal details (addresses, store names) to clients.
            Error::UpstreamConnect(_) => "Superset is unreachable".to_string(),
            Error::UpstreamTimeout => "Superset did not answer in time".to_string(),
            Error::Upstream(_) => "Superset returned an invalid response".to_string(),
            Error::Store(_) | Error::Internal(_) => "Internal error in chartcache".to_string(),
            other => other.to_string(),
        };
        let body = serde_json::to_vec(&serde_json::json!({ "message": msg })).unwrap_or_default();
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // The request may not have been read to its end: the connection
        // cannot carry another one.
        if matches!(self, Error::RequestTimeout | Error::Overloaded) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn maps_to_status_and_superset_shape() {
        assert_eq!(Error::UpstreamTimeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            Error::UpstreamConnect("x".into()).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(Error::BodyTooLarge.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let r = Error::UpstreamConnect("10.0.0.1:8088 refused".into()).into_response();
        assert_eq!(r.status(), 502);
        let b = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["message"], "Superset is unreachable");
    }
}
