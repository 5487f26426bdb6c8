//! Cross-cutting concerns as tower layers, one per concern. The stack is put
//! together in `server::service_stack`.

use std::future::Future;
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
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>, access_log: bool) -> Self {
        ObserveLayer {
            metrics,
            access_log,
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            access_log: self.access_log,
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
    access_log: bool,
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
        Observed {
            inner: self.inner.call(req),
            metrics: Some(self.metrics.clone()),
            access_log: self.access_log,
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
        access_log: bool,
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
                record(&metrics, ctx, *this.access_log);
            }
        }
        Poll::Ready(res)
    }
}

fn record(m: &Metrics, ctx: &RequestContext, access_log: bool) {
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
    if access_log {
        tracing::info!(
            target: "access",
            request_id = ctx.request_id.to_str().unwrap_or("-"),
            method = %ctx.method,
            path = ctx.uri.path(),
            status = ctx.status,
            route = ctx.route,
            outcome,
            detail = ctx.detail.unwrap_or(""),
            key = %ctx.key.map(|k| k.short()).unwrap_or_default(),
            scope = ctx.scope_kind.unwrap_or(""),
            tier = ctx.tier.as_ref().map_or("", |t| t.name.as_str()),
            upstream_ms = ctx.upstream_ms,
            total_us = elapsed.as_micros() as u64,
            bytes = ctx.bytes,
        );
    }
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
            record(&m, &ctx, false);
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
}
