//! Body types and helpers shared by the proxy, the client and the admin listener.

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, stream};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};

/// Boxed error for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type used everywhere: streamed or full, boxed once.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete in-memory body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Stream an incoming body through unchanged (no buffering).
pub fn stream(b: Incoming) -> Body {
    b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

/// A request with its body boxed: what the proxy handler takes, so it can be
/// driven in-process (benches, tests) as well as from a connection.
pub fn boxed_request(req: http::Request<Incoming>) -> http::Request<Body> {
    req.map(stream)
}

/// Result of reading a body up to a limit.
pub enum Limited {
    /// The whole body, at most `limit` bytes.
    Complete(Bytes),
    /// The body is larger than the limit: the bytes already read followed by the
    /// rest of the stream, ready to be forwarded unchanged.
    TooLarge(Body),
}

/// Read `body` completely if it is at most `limit` bytes; otherwise hand back a
/// body that replays what was read and streams the rest, so nothing is lost or
/// altered and memory stays bounded by `limit`.
pub async fn read_limited(mut body: Body, limit: usize) -> Result<Limited, BoxError> {
    let mut buf = BytesMut::new();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            if !buf.is_empty() {
                chunks.push(buf.freeze());
            }
            chunks.push(data);
            let head = stream::iter(
                chunks
                    .into_iter()
                    .map(|c| Ok::<_, BoxError>(Frame::data(c))),
            );
            let tail = http_body_util::BodyStream::new(body);
            return Ok(Limited::TooLarge(
                StreamBody::new(head.chain(tail)).boxed_unsync(),
            ));
        }
        buf.extend_from_slice(&data);
    }
    Ok(Limited::Complete(buf.freeze()))
}
