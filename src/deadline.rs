//! Deadlines on a client connection's phases, and what a connection's
//! requests tell its watchdog.
//!
//! hyper's HTTP/1.1 header timer only runs once the `auto` builder has decided
//! the protocol, which waits for the client's first bytes, so a socket that
//! sends nothing would keep its `server.max_connections` slot forever; and
//! HTTP/2 has no idle timer at all. The watchdog here runs from accept: no
//! complete request head within `server.header_read_timeout_ms` ends the
//! connection, and so does `server.idle_timeout_ms` without a request in
//! flight (HTTP/1.1 keep-alive and HTTP/2 alike).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

/// The phase whose deadline ended a connection (label of
/// `chartcache_connection_deadlines_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// No complete request head in time: from accept for the first request
    /// (TLS handshake and protocol detection included), and, for HTTP/1.1,
    /// from the end of the previous response for the next one.
    Head,
    /// A chart-data request body not received in full in time.
    Body,
    /// No request in flight for `server.idle_timeout_ms`.
    Idle,
    /// An HTTP/2 keep-alive PING not acknowledged in time.
    Http2KeepAlive,
}

impl Deadline {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Deadline::Head => "head",
            Deadline::Body => "body",
            Deadline::Idle => "idle",
            Deadline::Http2KeepAlive => "http2_keepalive",
        }
    }
}

/// Why a connection or request was turned away without being served (label
/// of `chartcache_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `server.max_connections` connections were open: answered 503.
    MaxConnections,
    /// As many refusals under way as we answer at once: closed unanswered.
    RefusalsBusy,
    /// `server.max_buffered_body_bytes` of request bodies were being
    /// received: answered 503.
    BodyBudget,
}

impl Refusal {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::RefusalsBusy => "refusals_busy",
            Refusal::BodyBudget => "body_budget",
        }
    }
}

/// What a connection's requests report to its watchdog: a few relaxed
/// atomics per request, no clock reads.
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicU64,
    active: AtomicUsize,
    http2: AtomicBool,
    /// Woken by the first request, which ends the head phase.
    first: tokio::sync::Notify,
}

impl Activity {
    /// A request head arrived; the guard lives until its response body ends.
    pub fn begin(self: &Arc<Self>, http2: bool) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        if self.started.fetch_add(1, Ordering::Relaxed) == 0 {
            self.first.notify_one();
        }
        if http2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        Active(self.clone())
    }

    /// Requests started on this connection so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Requests whose response has not ended yet.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether the connection speaks HTTP/2 (known once a request arrived).
    pub fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until the
    /// body ends or is dropped. A wrapper, not another box: no allocation.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        active: Option<Active>,
    }
}

impl<B> Tracked<B> {
    /// Wrap `inner`, holding `active` until it ends.
    pub fn new(inner: B, active: Active) -> Tracked<B> {
        Tracked {
            inner,
            active: Some(active),
        }
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = res {
            this.active.take();
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves with the deadline that ends the connection: [`Deadline::Head`]
/// when no request head arrived within `head` of accept, [`Deadline::Idle`]
/// once no request has been in flight for `idle`. Checked a few times per
/// `idle`, so an idle connection ends between `idle` and `idle * 1.5`.
pub async fn watch(activity: &Activity, head: Duration, idle: Duration) -> Deadline {
    tokio::select! {
        _ = tokio::time::sleep(head) => if activity.started() == 0 {
            return Deadline::Head;
        },
        _ = activity.first.notified() => {}
    }
    let tick = (idle / 4).max(Duration::from_millis(10));
    let mut seen = activity.started();
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let started = activity.started();
        if started != seen || activity.active() > 0 {
            seen = started;
            quiet_since = tokio::time::Instant::now();
        } else if quiet_since.elapsed() >= idle {
            return Deadline::Idle;
        }
    }
}

/// The deadline behind a connection error from hyper, if any: its HTTP/1.1
/// header timer or an unanswered HTTP/2 keep-alive PING.
pub fn from_conn_error(
    e: &(dyn std::error::Error + Send + Sync + 'static),
    activity: &Activity,
) -> Option<Deadline> {
    let timed_out = e
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout);
    match timed_out {
        false => None,
        true if activity.is_http2() => Some(Deadline::Http2KeepAlive),
        true => Some(Deadline::Head),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::full;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_request_counts_as_active_until_its_body_ends() {
        let a = Arc::new(Activity::default());
        let body = Tracked::new(full("abc"), a.begin(false));
        assert_eq!((a.started(), a.active()), (1, 1));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abc");
        assert_eq!(a.active(), 0);
        // Dropped before its end (client gone): not counted either.
        let body = Tracked::new(full("abc"), a.begin(true));
        assert_eq!(a.active(), 1);
        drop(body);
        assert_eq!((a.started(), a.active(), a.is_http2()), (2, 0, true));
    }

    #[tokio::test(start_paused = true)]
    async fn no_request_head_ends_the_connection_at_the_head_deadline() {
        let a = Activity::default();
        let t = tokio::time::Instant::now();
        let d = watch(&a, Duration::from_secs(10), Duration::from_secs(60)).await;
        assert_eq!(d, Deadline::Head);
        assert_eq!(t.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_idle() {
        let a = Arc::new(Activity::default());
        let active = a.begin(false);
        let w = watch(&a, Duration::from_secs(1), Duration::from_secs(4));
        tokio::pin!(w);
        let t = tokio::time::Instant::now();
        assert!(
            tokio::time::timeout(Duration::from_secs(60), &mut w)
                .await
                .is_err()
        );
        drop(active);
        assert_eq!(w.await, Deadline::Idle);
        let idle = t.elapsed() - Duration::from_secs(60);
        assert!(
            idle >= Duration::from_secs(4) && idle <= Duration::from_secs(6),
            "{idle:?}"
        );
    }

    #[test]
    fn labels_are_distinct() {
        let all = [
            Deadline::Head,
            Deadline::Body,
            Deadline::Idle,
            Deadline::Http2KeepAlive,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|d| d.as_str()).collect();
        assert_eq!(labels.len(), all.len());
    }
}
