//! Listeners: the proxy and the admin surface, served with hyper-util's `auto`
//! builder (HTTP/1.1 and h2c), a connection limit, a header-read timeout, and
//! graceful shutdown with a drain timeout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use crate::app::App;
use crate::layers::{ObserveLayer, RequestIdLayer};
use crate::proxy::{self, ConnInfo};

/// hyper's limit on request headers when none is set.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Sent to connections beyond `server.max_connections`, then closed.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 43\r\nconnection: close\r\n\r\n{\"message\": \"chartcache is at capacity\"}\r\n";

/// The per-connection service stack, outermost first:
/// 1. `ObserveLayer` — in-flight gauge, request metrics, access log (sees every response);
/// 2. `RequestIdLayer` — every request gets an `x-request-id` before anything logs it;
/// 3. the proxy handler, which never fails (errors are already responses).
fn service_stack(
    app: Arc<App>,
    conn: ConnInfo,
) -> TowerToHyperService<
    impl tower::Service<
        http::Request<Incoming>,
        Response = http::Response<crate::body::Body>,
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
            .layer(ObserveLayer::new(metrics, access_log))
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
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.server.max_header_bytes as u32)
        .max_concurrent_streams(256);
    b
}

/// Serve the proxy on `listener` until `shutdown` fires, then stop accepting,
/// mark not-ready and drain in-flight requests for up to `drain_timeout_secs`.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: CancellationToken) {
    let limit = Arc::new(Semaphore::new(app.config.load().server.max_connections));
    serve_limited(app, listener, limit, shutdown).await
}

/// [`serve`] with a connection limit shared with other accept loops.
async fn serve_limited(
    app: Arc<App>,
    listener: TcpListener,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let builder = builder(&app);
    let graceful = GracefulShutdown::new();
    let mut stop_at: Option<tokio::time::Instant> = None;
    let tls = app.tls.clone();
    let handshake_timeout = Duration::from_millis(app.config.load().server.header_read_timeout_ms);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (mut stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tokio::spawn(async move {
                        let _ = stream.write_all(OVERLOADED).await;
                        let _ = stream.shutdown().await;
                    });
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let proto = if tls.is_some() { "https" } else { "http" };
                let conn = ConnInfo { remote: Some(remote), proto };
                let svc = service_stack(app.clone(), conn);
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let res = match tls {
                        None => watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned()).await,
                        Some(acceptor) => {
                            // The handshake counts against the header-read budget:
                            // a client that stalls in it is a slowloris too.
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(tls), svc).into_owned()).await,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                    Ok(())
                                }
                                Err(_) => {
                                    tracing::debug!("TLS handshake timed out");
                                    Ok(())
                                }
                            }
                        }
                    };
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "connection ended with error");
                    }
                    drop(permit);
                });
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
    drop(listener);
    let drain = Duration::from_secs(app.config.load().server.drain_timeout_secs);
    tracing::info!(connections = graceful.count(), "draining");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
}

/// Serve the proxy on `threads` threads, each running its own single-threaded
/// runtime and its own accept loop on a duplicate of `listener`
/// (`server.runtime = "per_core"`). The kernel hands each new connection to
/// one of the threads waiting in `accept`, so an idle thread takes the next
/// one; after that a connection, its requests and the tasks they spawn stay on
/// that thread, with no hand-over between workers. The connection limit is
/// shared. Returns when every thread has drained.
pub fn serve_per_core(
    app: Arc<App>,
    listener: std::net::TcpListener,
    threads: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let limit = Arc::new(Semaphore::new(app.config.load().server.max_connections));
    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads.max(1) {
        let listener = listener.try_clone()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (app, limit, shutdown) = (app.clone(), limit.clone(), shutdown.clone());
        let handle = std::thread::Builder::new()
            .name(format!("chartcache-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => serve_limited(app, listener, limit, shutdown).await,
                        Err(e) => tracing::error!(error = %e, "cannot register the listener"),
                    }
                })
            })?;
        handles.push(handle);
    }
    drop(listener);
    for h in handles {
        let _ = h.join();
    }
    Ok(())
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
