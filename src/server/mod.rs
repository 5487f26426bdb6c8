//! Listeners: the proxy and the admin surface, served with hyper-util's `auto`
//! builder (HTTP/1.1 and h2c), a connection limit, deadlines on every
//! connection phase (`deadline`), and graceful shutdown with a drain timeout. The proxy's connections are served
//! either on threads of their own, one single-threaded runtime each
//! ([`serve_per_core`], the default), or on the work-stealing runtime that
//! accepts them ([`serve`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use crate::app::App;
use crate::deadline::{self, Activity, Deadline, Refusal, Tracked};
use crate::layers::{ActivityLayer, ObserveLayer, RequestIdLayer};
use crate::proxy::{self, ConnInfo};

mod per_core;
pub use per_core::serve_per_core;

/// hyper's limit on request headers when none is set.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Connections beyond `server.max_connections` answered at once; more are
/// closed unanswered, so refusing cannot itself pile up work.
const MAX_REFUSING: usize = 256;
/// The most a refused connection may take to send its head and body.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);
/// Body bytes read from a refused request so that closing the connection
/// does not reset it before the client has read the answer.
const REFUSAL_BODY_BYTES: usize = 64 * 1024;
/// After a deadline asked a connection to close gracefully (HTTP/2 GOAWAY),
/// how long it may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The per-connection service stack, outermost first:
/// 1. `ActivityLayer` — tells the connection's deadline watchdog which requests are in flight;
/// 2. `ObserveLayer` — in-flight gauge, request metrics, access log (sees every response);
/// 3. `RequestIdLayer` — every request gets an `x-request-id` before anything logs it;
/// 4. the proxy handler, which never fails (errors are already responses).
fn service_stack(
    app: Arc<App>,
    conn: ConnInfo,
    activity: Arc<Activity>,
) -> TowerToHyperService<
    impl tower::Service<
        http::Request<Incoming>,
        Response = http::Response<Tracked<crate::body::Body>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone,
> {
    let access_log = app.config.load().log.access_log;
    let metrics = app.metrics.clone();
    let handler = tower::service_fn(move |req: http::Request<Incoming>| {
        let app = app.clone();
        async move {
            Ok::<_, Infallible>(proxy::handle(app, crate::body::boxed_request(req), conn).await)
        }
    });
    TowerToHyperService::new(
        ServiceBuilder::new()
            .layer(ActivityLayer(activity))
            .layer(ObserveLayer::new(metrics, access_log).client(conn.remote))
            .layer(RequestIdLayer)
            .service(handler),
    )
}

fn builder(app: &App) -> auto::Builder<TokioExecutor> {
    let cfg = app.config.load();
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(cfg.server.header_read_timeout_ms))
        .max_buf_size(cfg.server.max_header_bytes.max(8192));
    // With an explicit limit hyper fills a header array of that size for
    // every request; at its own default (100, ours too) it uses a fixed one.
    if cfg.server.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        b.http1().max_headers(cfg.server.max_headers);
    }
    let ping = cfg.server.http2_keep_alive_interval_ms;
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.server.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval((ping > 0).then(|| Duration::from_millis(ping)))
        .keep_alive_timeout(Duration::from_millis(
            cfg.server.http2_keep_alive_timeout_ms,
        ));
    b
}

/// Answer a connection beyond `server.max_connections` with the documented
/// 503 through hyper (which frames it), after reading its head and a bounded
/// part of its body, all within [`REFUSAL_DEADLINE`].
fn refuse(app: &App, stream: TcpStream, refusing: &Arc<Semaphore>) {
    let m = &app.metrics.refused;
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        m.with_label_values(&[Refusal::RefusalsBusy.as_str()]).inc();
        return;
    };
    m.with_label_values(&[Refusal::MaxConnections.as_str()])
        .inc();
    let deadline = REFUSAL_DEADLINE.min(Duration::from_millis(
        app.config.load().server.header_read_timeout_ms,
    ));
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
            let mut body = req.into_body();
            let mut read = 0;
            while read < REFUSAL_BODY_BYTES {
                use http_body_util::BodyExt;
                match body.frame().await {
                    Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                    _ => break,
                }
            }
            Ok::<_, Infallible>(crate::respond::error(crate::error::Error::Overloaded))
        });
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(deadline)
            .keep_alive(false);
        let conn = b.serve_connection(TokioIo::new(stream), svc);
        let _ = tokio::time::timeout(deadline, conn).await;
        drop(permit);
    });
}

/// A client connection accepted under the connection limit.
struct Admitted {
    stream: TcpStream,
    remote: SocketAddr,
    /// Held for the connection's lifetime: its slot under `server.max_connections`.
    permit: OwnedSemaphorePermit,
}

/// Accept connections until `shutdown` fires and the shutdown delay has passed,
/// answering those beyond `server.max_connections` with a 503, and hand every
/// other one to `dispatch`.
async fn accept_loop(
    app: &App,
    listener: TcpListener,
    shutdown: CancellationToken,
    mut dispatch: impl FnMut(Admitted),
) {
    let limit = Arc::new(Semaphore::new(app.config.load().server.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let mut stop_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    refuse(app, stream, &refusing);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                dispatch(Admitted { stream, remote, permit });
            }
            _ = shutdown.cancelled(), if stop_at.is_none() => {
                // Report not-ready at once, but keep accepting for the shutdown
                // delay so load balancers can take us out of rotation first.
                app.accepting.store(false, Ordering::SeqCst);
                let delay = Duration::from_secs(app.config.load().server.shutdown_delay_secs);
                stop_at = Some(tokio::time::Instant::now() + delay);
            }
            _ = tokio::time::sleep_until(stop_at.unwrap_or_else(tokio::time::Instant::now)), if stop_at.is_some() => break,
        }
    }
}

/// Serves admitted connections on the runtime it is used on, and drains them.
struct Connections {
    app: Arc<App>,
    builder: auto::Builder<TokioExecutor>,
    /// Sends the drain signal; every connection holds a receiver, so
    /// `closed()` resolves when the last one has ended.
    drain: watch::Sender<()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The per-connection deadlines, read once per connection.
#[derive(Clone, Copy)]
struct Deadlines {
    head: Duration,
    idle: Duration,
}

impl Connections {
    fn new(app: Arc<App>) -> Connections {
        Connections {
            builder: builder(&app),
            drain: watch::channel(()).0,
            tls: app.tls.clone(),
            app,
        }
    }

    /// Serve `conn` in a task of its own; `closed` runs when it ends.
    fn spawn(&self, conn: Admitted, closed: impl FnOnce() + Send + 'static) {
        let Admitted {
            stream,
            remote,
            permit,
        } = conn;
        let proto = if self.tls.is_some() { "https" } else { "http" };
        let info = ConnInfo {
            remote: Some(remote),
            proto,
        };
        let cfg = self.app.config.load();
        let limits = Deadlines {
            head: Duration::from_millis(cfg.server.header_read_timeout_ms),
            idle: Duration::from_millis(cfg.server.idle_timeout_ms),
        };
        let activity = Arc::new(Activity::default());
        let svc = service_stack(self.app.clone(), info, activity.clone());
        let builder = self.builder.clone();
        let drain = self.drain.subscribe();
        let tls = self.tls.clone();
        let app = self.app.clone();
        tokio::spawn(async move {
            let ended = {
                let watchdog = deadline::watch(&activity, limits.head, limits.idle);
                tokio::pin!(watchdog);
                match tls {
                    None => {
                        let io = TokioIo::new(stream);
                        serve_until(&builder, io, svc, drain, watchdog, &activity).await
                    }
                    // The handshake is under the head deadline: a client
                    // that stalls in it is a slowloris too.
                    Some(acceptor) => {
                        tokio::select! {
                            tls = acceptor.accept(stream) => match tls {
                                Ok(tls) => {
                                    let io = TokioIo::new(tls);
                                    serve_until(&builder, io, svc, drain, watchdog, &activity).await
                                }
                                Err(e) => {
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                    None
                                }
                            },
                            d = &mut watchdog => Some(d),
                        }
                    }
                }
            };
            if let Some(d) = ended {
                tracing::debug!(deadline = d.as_str(), %remote, "connection deadline passed");
                app.metrics
                    .connection_deadlines
                    .with_label_values(&[d.as_str()])
                    .inc();
            }
            drop(permit);
            closed();
        });
    }

    /// Let open connections finish their requests, for up to `drain_timeout_secs`.
    async fn drain(self) {
        let drain = Duration::from_secs(self.app.config.load().server.drain_timeout_secs);
        tracing::info!(connections = self.drain.receiver_count(), "draining");
        let _ = self.drain.send(());
        tokio::select! {
            _ = self.drain.closed() => tracing::info!("drained"),
            _ = tokio::time::sleep(drain) => tracing::warn!("drain timeout reached; closing remaining connections"),
        }
    }
}

/// Serve one connection until it ends: asked to close gracefully when the
/// drain begins or its idle deadline passes, dropped when its head deadline
/// passes (it has sent no request to answer). Returns the deadline that
/// ended it, if one did.
async fn serve_until<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    svc: S,
    mut drain: watch::Receiver<()>,
    mut watchdog: std::pin::Pin<&mut impl std::future::Future<Output = Deadline>>,
    activity: &Activity,
) -> Option<Deadline>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let mut draining = false;
    let mut ended: Option<Deadline> = None;
    let grace = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with error");
                    if ended.is_none() {
                        ended = deadline::from_conn_error(&*e, activity);
                    }
                }
                return ended;
            }
            _ = drain.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            d = &mut watchdog, if ended.is_none() => {
                ended = Some(d);
                if d == Deadline::Head {
                    return ended;
                }
                conn.as_mut().graceful_shutdown();
                grace.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            _ = &mut grace, if ended.is_some() => return ended,
        }
    }
}

/// Serve the proxy on `listener` until `shutdown` fires, then stop accepting,
/// mark not-ready and drain in-flight requests for up to `drain_timeout_secs`.
/// Connections are served on the current runtime (`server.runtime =
/// "work_stealing"`).
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: CancellationToken) {
    let conns = Connections::new(app.clone());
    accept_loop(&app, listener, shutdown, |c| conns.spawn(c, || {})).await;
    conns.drain().await;
}

/// Serve the admin listener until `shutdown` fires.
pub async fn serve_admin(
    app: Arc<App>,
    listener: TcpListener,
    token: Option<Arc<str>>,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let read_timeout = Duration::from_millis(app.config.load().server.header_read_timeout_ms);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let tls = app.admin_tls.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let app = app.clone();
                let token = token.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    let token = token.clone();
                    async move { Ok::<_, Infallible>(crate::admin::handle(app, token, req).await) }
                });
                let builder = builder.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        // With `client_ca_file`, clients without a valid
                        // certificate fail here, before any request is read.
                        Some(acceptor) => {
                            if let Ok(Ok(s)) = tokio::time::timeout(read_timeout, acceptor.accept(stream)).await {
                                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
            _ = shutdown.cancelled() => break,
        }
    }
}

/// Bind a TCP listener with a clear error.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({what}): {e}"))
}
