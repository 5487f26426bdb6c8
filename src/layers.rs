//! Cross-cutting concerns as tower layers, one per concern. The stack is put
//! together in `server::service_stack`.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::context::{Outcome, RequestContext, RequestId, X_REQUEST_ID};
use crate::deadline::{Active, Activity, Tracked};
use crate::metrics::Metrics;

/// Gives every request an `x-request-id` (kept when the client sent a sane one).
#[derive(Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = SetRequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SetRequestId { inner }
    }
}

/// Sets the `x-request-id` header (forwarded to Superset) and the typed
/// [`RequestId`] extension (read by the request path).
#[derive(Clone)]
pub struct SetRequestId<S> {
    inner: S,
}

fn new_request_id() -> HeaderValue {
    let n: u128 = rand::random();
    let mut hex = [0u8; 32];
    hex::encode_to_slice(n.to_be_bytes(), &mut hex).expect("32 hex digits for 16 bytes");
    HeaderValue::from_bytes(&hex).expect("hex is a valid header value")
}

impl<S, B> Service<Request<B>> for SetRequestId<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = match req.headers().get(X_REQUEST_ID) {
            Some(v) if !v.is_empty() && v.len() <= 128 && v.to_str().is_ok() => v.clone(),
            _ => {
                let v = new_request_id();
                req.headers_mut().insert(X_REQUEST_ID, v.clone());
                v
            }
        };
        req.extensions_mut().insert(RequestId(id));
        self.inner.call(req)
    }
}

/// Reports each request to its connection's deadline watchdog: in flight
/// from its head until its response body ends.
#[derive(Clone)]
pub struct ActivityLayer(pub Arc<Activity>);

impl<S> Layer<S> for ActivityLayer {
    type Service = Tracking<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Tracking {
            inner,
            activity: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Tracking<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B, RB> Service<Request<B>> for Tracking<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<Tracked<RB>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: Request<B>) -> Self::Future {
        let active = self.activity.begin(req.version() == http::Version::HTTP_2);
        TrackedFuture {
            inner: self.inner.call(req),
            active: Some(active),
        }
    }
}

pin_project_lite::pin_project! {
    /// The handler's future; its response body carries the request's
    /// in-flight mark on. Dropped early, the mark goes with it.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        active: Option<Active>,
    }
}

impl<F, RB, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<Tracked<RB>>, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx));
        let active = this.active.take().expect("polled after completion");
        Poll::Ready(res.map(|r| r.map(|b| Tracked::new(b, active))))
    }
}

/// Counts requests, times them and writes the access log, from the
/// `RequestContext` the handler leaves in the response extensions.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    access_log: bool,
    client: Option<IpAddr>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>, access_log: bool) -> Self {
        ObserveLayer {
            metrics,
            access_log,
            client: None,
        }
    }

    /// The connection's peer, for the access log's `client_ip` (the layer is
    /// built per connection).
    pub fn client(mut self, remote: Option<SocketAddr>) -> Self {
        self.client = remote.map(|a| a.ip());
        self
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            access_log: self.access_log,
            client: self.client,
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
    access_log: bool,
    client: Option<IpAddr>,
}

/// What the access log says about the client beyond the request context.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The address that connected (the last proxy's, behind an ingress).
    pub ip: Option<IpAddr>,
    /// `X-Forwarded-For` as received (values joined with `, `), empty when absent.
    pub forwarded_for: Option<HeaderValue>,
}

impl<S, B, RB> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Observed<S::Future>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.metrics.inflight.inc();
        // Only read when it is logged: a clone of a header value is a
        // reference count, but there is no reason to pay even that.
        let peer = self.access_log.then(|| {
            Box::new(Peer {
                ip: self.client,
                forwarded_for: forwarded_for(req.headers()),
            })
        });
        Observed {
            inner: self.inner.call(req),
            metrics: Some(self.metrics.clone()),
            peer,
        }
    }
}

pin_project_lite::pin_project! {
    /// The handler's future, recorded when it completes. Not boxed: the
    /// handler's future is several KB, and boxing it would cost an allocation
    /// and a copy of it on every request.
    pub struct Observed<F> {
        #[pin]
        inner: F,
        // Taken when recorded, so a future dropped before completing (client
        // gone) still leaves the in-flight gauge right (see `PinnedDrop`).
        metrics: Option<Arc<Metrics>>,
        // Present when the access log is on.
        peer: Option<Box<Peer>>,
    }

    impl<F> PinnedDrop for Observed<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(m) = this.project().metrics.take() {
                m.inflight.dec();
            }
        }
    }
}

impl<F, RB, E> Future for Observed<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx));
        if let Some(metrics) = this.metrics.take() {
            metrics.inflight.dec();
            if let Ok(resp) = &res
                && let Some(ctx) = resp.extensions().get::<RequestContext>()
            {
                record(&metrics, ctx);
                if let Some(peer) = this.peer.as_deref() {
                    let bytes = ctx.bytes.or_else(|| content_length(resp.headers()));
                    access_log(ctx, peer, bytes);
                }
            }
        }
        Poll::Ready(res)
    }
}

fn record(m: &Metrics, ctx: &RequestContext) {
    let outcome = ctx.outcome.as_str();
    let elapsed = ctx.start.elapsed();
    if ctx.outcome == Outcome::Hit && ctx.status == 200 && ctx.route == "chart_data" {
        m.chart_data_hit.0.inc();
        m.chart_data_hit.1.observe(elapsed.as_secs_f64());
    } else {
        let mut buf = itoa::Buffer::new();
        let status = buf.format(ctx.status);
        m.requests
            .with_label_values(&[ctx.route, outcome, status])
            .inc();
        m.request_duration
            .with_label_values(&[ctx.route, outcome])
            .observe(elapsed.as_secs_f64());
    }
}

/// One access-log line. `client_ip` is the peer that connected; behind an
/// ingress or load balancer that is the proxy, and the client is in
/// `forwarded_for` (as received: only the entries added by proxies you run
/// can be trusted). `bytes` is the response body's length when known from
/// the entry or `Content-Length` (absent for a chunked pass-through).
fn access_log(ctx: &RequestContext, peer: &Peer, bytes: Option<u64>) {
    tracing::info!(
        target: "access",
        request_id = ctx.request_id.to_str().unwrap_or("-"),
        client_ip = peer.ip.map(tracing::field::display),
        forwarded_for = peer.forwarded_for.as_ref().and_then(|v| v.to_str().ok()),
        method = %ctx.method,
        path = ctx.uri.path(),
        status = ctx.status,
        route = ctx.route,
        outcome = ctx.outcome.as_str(),
        detail = ctx.detail.unwrap_or(""),
        key = %ctx.key.map(|k| k.short()).unwrap_or_default(),
        scope = ctx.scope_kind.unwrap_or(""),
        tier = ctx.tier.as_ref().map_or("", |t| t.name.as_str()),
        upstream_ms = ctx.upstream_ms,
        total_us = ctx.start.elapsed().as_micros() as u64,
        bytes,
    );
}

/// The request's `X-Forwarded-For` values, one value (joined like the header
/// chartcache forwards), or `None`.
fn forwarded_for(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let mut all = headers.get_all("x-forwarded-for").iter();
    let first = all.next()?.clone();
    let rest: Vec<&[u8]> = all.map(|v| v.as_bytes()).collect();
    if rest.is_empty() {
        return Some(first);
    }
    let mut joined = first.as_bytes().to_vec();
    for r in rest {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(r);
    }
    HeaderValue::from_bytes(&joined).ok()
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_lowercase_hex_digits_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        for id in [&a, &b] {
            let s = id.to_str().unwrap();
            assert_eq!(s.len(), 32);
            assert!(
                s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
                "{s}"
            );
        }
        assert_ne!(a, b);
    }

    #[test]
    fn hits_and_other_requests_land_in_the_same_labelled_series() {
        let m = Metrics::new();
        let mut ctx = RequestContext::new(
            HeaderValue::from_static("id"),
            http::Method::POST,
            http::Uri::from_static("/api/v1/chart/data"),
        );
        ctx.route = "chart_data";
        ctx.status = 200;
        for outcome in [Outcome::Hit, Outcome::Hit, Outcome::Miss] {
            ctx.outcome = outcome;
            record(&m, &ctx);
        }
        let count = |o: &str| {
            m.requests
                .with_label_values(&["chart_data", o, "200"])
                .get()
        };
        assert_eq!((count("hit"), count("miss")), (2, 1));
        let hist = |o: &str| {
            m.request_duration
                .with_label_values(&["chart_data", o])
                .get_sample_count()
        };
        assert_eq!((hist("hit"), hist("miss")), (2, 1));
    }

    /// A request whose client goes away mid-flight (hyper drops the handler's
    /// future) must not stay counted in flight.
    #[tokio::test]
    async fn in_flight_gauge_is_released_when_the_future_is_dropped() {
        let metrics = Arc::new(Metrics::new());
        let pending = tower::service_fn(|_req: Request<()>| {
            std::future::pending::<Result<Response<()>, std::convert::Infallible>>()
        });
        let ready = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        });
        let mut stuck = ObserveLayer::new(metrics.clone(), false).layer(pending);
        let mut done = ObserveLayer::new(metrics.clone(), false).layer(ready);
        let fut = stuck.call(Request::new(()));
        assert_eq!(metrics.inflight.get(), 1);
        drop(fut);
        assert_eq!(metrics.inflight.get(), 0);
        done.call(Request::new(())).await.unwrap();
        assert_eq!(
            metrics.inflight.get(),
            0,
            "completed requests are not counted twice"
        );
    }

    /// The access log names the peer, the forwarded chain as received and the
    /// response's length (from `Content-Length` when the context has none).
    #[test]
    fn access_log_has_client_ip_forwarded_for_and_bytes() {
        #[derive(Clone, Default)]
        struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let handler = tower::service_fn(|_req: Request<()>| async {
            let mut ctx = RequestContext::new(
                HeaderValue::from_static("rid"),
                http::Method::GET,
                http::Uri::from_static("/api/v1/chart/1"),
            );
            ctx.status = 200;
            let mut resp = Response::new(());
            resp.headers_mut().insert(
                http::header::CONTENT_LENGTH,
                HeaderValue::from_static("1234"),
            );
            resp.extensions_mut().insert(ctx);
            Ok::<_, std::convert::Infallible>(resp)
        });
        let peer: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let mut svc = ObserveLayer::new(Arc::new(Metrics::new()), true)
            .client(Some(peer))
            .layer(handler);
        let mut req = Request::new(());
        // Two headers, as gunicorn would see them joined.
        req.headers_mut()
            .append("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        req.headers_mut()
            .append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        tracing::subscriber::with_default(subscriber, || {
            use futures_util::FutureExt;
            svc.call(req).now_or_never().unwrap().unwrap();
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        let f = &line["fields"];
        assert_eq!(f["client_ip"], "10.1.2.3", "{out}");
        assert_eq!(f["forwarded_for"], "203.0.113.7, 10.0.0.1", "{out}");
        assert_eq!(f["bytes"], 1234, "{out}");
        assert_eq!(f["status"], 200, "{out}");
    }
}
