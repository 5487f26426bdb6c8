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
    // A chart request's body nearly always arrives as one frame: keep that
    // frame as it is and copy only when a second one follows.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            let chunks = first
                .take()
                .into_iter()
                .chain((!buf.is_empty()).then(|| buf.freeze()));
            let head = stream::iter(
                chunks
                    .chain(std::iter::once(data))
                    .map(|c| Ok::<_, BoxError>(Frame::data(c))),
            );
            let tail = http_body_util::BodyStream::new(body);
            return Ok(Limited::TooLarge(
                StreamBody::new(head.chain(tail)).boxed_unsync(),
            ));
        }
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
            None => buf.extend_from_slice(&data),
        }
    }
    Ok(Limited::Complete(first.unwrap_or_else(|| buf.freeze())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&'static [u8]]) -> Body {
        let s = stream::iter(
            parts
                .iter()
                .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p))))
                .collect::<Vec<_>>(),
        );
        StreamBody::new(s).boxed_unsync()
    }

    async fn collect(b: Body) -> Vec<u8> {
        b.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn one_frame_is_returned_without_a_copy() {
        static BODY: &[u8] = br#"{"queries":[{}]}"#;
        let Limited::Complete(b) = read_limited(frames(&[BODY]), 1024).await.unwrap() else {
            panic!("under the limit");
        };
        assert_eq!(b.as_ptr(), BODY.as_ptr());
    }

    #[tokio::test]
    async fn several_frames_are_joined_in_order() {
        let Limited::Complete(b) = read_limited(frames(&[b"ab", b"", b"cd", b"e"]), 5)
            .await
            .unwrap()
        else {
            panic!("exactly the limit");
        };
        assert_eq!(&b[..], b"abcde");
    }

    #[tokio::test]
    async fn over_the_limit_replays_every_byte() {
        let cases: [&[&[u8]]; 3] = [
            &[b"abcdef"],
            &[b"ab", b"cd", b"ef", b"gh"],
            &[b"abc", b"defg"],
        ];
        for parts in cases {
            let Limited::TooLarge(rest) = read_limited(frames(parts), 4).await.unwrap() else {
                panic!("over the limit");
            };
            assert_eq!(collect(rest).await, parts.concat(), "{parts:?}");
        }
    }
}
