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
pub async fn read_limited(body: Body, limit: usize) -> Result<Limited, BoxError> {
    read_limited_with(body, limit, |_| true).await
}

/// [`read_limited`], asking `admit` before keeping each frame's bytes; a
/// refusal ends the read with an error.
async fn read_limited_with(
    mut body: Body,
    limit: usize,
    mut admit: impl FnMut(usize) -> bool,
) -> Result<Limited, BoxError> {
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
        if total <= limit && !admit(data.len()) {
            return Err("request bodies being received are over their budget".into());
        }
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

/// Bytes of request bodies being received right now, against
/// `server.max_buffered_body_bytes`: a reservation that gives its bytes back
/// when dropped (body complete, deadline passed, client gone).
struct Reservation<'a> {
    gauge: &'a prometheus::IntGauge,
    bytes: i64,
}

impl Reservation<'_> {
    /// Reserve `n` more bytes; false (and nothing reserved) beyond `cap`.
    fn grow(&mut self, n: usize, cap: usize) -> bool {
        let n = n as i64;
        if self.gauge.get() + n > cap as i64 {
            return false;
        }
        self.gauge.add(n);
        self.bytes += n;
        true
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

/// [`read_limited`] for a body the proxy buffers: the whole read must finish
/// within `deadline` (else [`Error::RequestTimeout`], counted as a `body`
/// deadline), and the bytes being received by all requests together stay
/// under `cap` (else [`Error::Overloaded`]). Bytes are counted while they are
/// received; a complete body is the request's own from then on.
pub async fn read_buffered(
    body: Body,
    limit: usize,
    cap: usize,
    deadline: std::time::Duration,
    metrics: &crate::metrics::Metrics,
) -> Result<Limited, crate::error::Error> {
    use crate::deadline::{Deadline, Refusal};
    use crate::error::Error;
    let mut reserved = Reservation {
        gauge: &metrics.buffered_body_bytes,
        bytes: 0,
    };
    let mut over_budget = false;
    let read = read_limited_with(body, limit, |n| {
        let ok = reserved.grow(n, cap);
        over_budget |= !ok;
        ok
    });
    let res = tokio::time::timeout(deadline, read).await;
    match res {
        Ok(Ok(l)) => Ok(l),
        Ok(Err(_)) if over_budget => {
            metrics
                .refused
                .with_label_values(&[Refusal::BodyBudget.as_str()])
                .inc();
            Err(Error::Overloaded)
        }
        Ok(Err(e)) => Err(Error::Client(format!("reading request body: {e}"))),
        Err(_) => {
            metrics
                .connection_deadlines
                .with_label_values(&[Deadline::Body.as_str()])
                .inc();
            Err(Error::RequestTimeout)
        }
    }
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

    #[tokio::test]
    async fn bodies_beyond_the_budget_are_refused_and_bytes_given_back() {
        let m = crate::metrics::Metrics::new();
        let secs = std::time::Duration::from_secs(5);
        // 6 bytes fit a budget of 10; 6 more do not.
        let r = read_buffered(frames(&[b"abcdef", b"ghijkl"]), 100, 10, secs, &m).await;
        assert!(matches!(r, Err(crate::error::Error::Overloaded)));
        assert_eq!(m.buffered_body_bytes.get(), 0);
        assert_eq!(m.refused.with_label_values(&["body_budget"]).get(), 1);
        let Ok(Limited::Complete(b)) = read_buffered(frames(&[b"abcdef"]), 100, 10, secs, &m).await
        else {
            panic!("within the budget");
        };
        assert_eq!(&b[..], b"abcdef");
        assert_eq!(m.buffered_body_bytes.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_in_time_is_a_408() {
        let m = crate::metrics::Metrics::new();
        // One byte, then nothing more.
        let first = stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"{")))]);
        let body = StreamBody::new(first.chain(stream::pending())).boxed_unsync();
        let r = read_buffered(body, 100, 1000, std::time::Duration::from_millis(300), &m).await;
        assert!(matches!(r, Err(crate::error::Error::RequestTimeout)));
        assert_eq!(m.buffered_body_bytes.get(), 0, "bytes given back");
        assert_eq!(m.connection_deadlines.with_label_values(&["body"]).get(), 1);
    }
}
