//! `server.runtime = "per_core"`: one single-threaded runtime per thread,
//! each serving the connections the accept task hands it.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Admitted, Connections, accept_loop};
use crate::app::App;

/// A connection on its way to a worker thread: the socket itself, because a
/// tokio stream stays bound to the runtime that registered it.
struct Handoff {
    stream: std::net::TcpStream,
    remote: SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// [`serve`] with `server.runtime = "per_core"`: `threads` threads, each
/// running a single-threaded runtime, serve the connections that this task
/// accepts. Each new connection goes to the thread with the fewest open
/// connections, so even an ingress holding a handful of keep-alive
/// connections keeps every thread busy; after that the connection, its
/// requests and the tasks they spawn stay on that thread, with no hand-over
/// between workers on the hit path. Returns when every thread has drained.
pub async fn serve_per_core(
    app: Arc<App>,
    listener: TcpListener,
    threads: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut senders = Vec::new();
    let mut open = Vec::new();
    let mut done = Vec::new();
    // Released once every thread has drained (see below).
    let all_drained = CancellationToken::new();
    let count = threads.max(1);
    crate::worker::expect(count);
    for i in 0..count {
        let (tx, rx) = mpsc::unbounded_channel::<Handoff>();
        let gauge = app
            .metrics
            .worker_connections
            .with_label_values(&[&i.to_string()]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let (app, closed) = (app.clone(), gauge.clone());
        let released = all_drained.clone();
        std::thread::Builder::new()
            .name(format!("chartcache-{i}"))
            .spawn(move || {
                crate::worker::enter(i);
                rt.block_on(async move {
                    worker(app, rx, closed).await;
                    let _ = done_tx.send(());
                    // The upstream pool is shared, but a pooled connection is
                    // driven by a task on the runtime of the thread that opened
                    // it, and a current-thread runtime drives its tasks only
                    // inside `block_on`: keep this one running until every
                    // thread has drained, so requests still in flight on other
                    // threads keep the connections they borrowed from here.
                    released.cancelled().await;
                });
            })?;
        senders.push(tx);
        open.push(gauge);
        done.push(done_rx);
    }
    let mut next = 0;
    accept_loop(&app, listener, shutdown, |c| {
        let i = least_loaded(&open, next);
        next = (i + 1) % open.len();
        match c.stream.into_std() {
            Ok(stream) => {
                // Counted here, not in the worker, so the next pick in a burst sees it.
                open[i].inc();
                let handoff = Handoff {
                    stream,
                    remote: c.remote,
                    permit: c.permit,
                };
                if senders[i].send(handoff).is_err() {
                    open[i].dec();
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot hand a connection to a worker"),
        }
    })
    .await;
    // Closing the channels tells the workers to drain.
    drop(senders);
    for d in done {
        let _ = d.await;
    }
    all_drained.cancel();
    Ok(())
}

/// The index with the fewest open connections; ties go to the first at or
/// after `start`, so that equal threads take turns.
fn least_loaded(open: &[IntGauge], start: usize) -> usize {
    let n = open.len();
    (0..n)
        .map(|k| (start + k) % n)
        .min_by_key(|&i| open[i].get())
        .unwrap_or(0)
}

/// One per-core thread: serve the connections handed to it until the channel
/// closes, then drain them.
async fn worker(app: Arc<App>, mut handoffs: mpsc::UnboundedReceiver<Handoff>, open: IntGauge) {
    let conns = Connections::new(app);
    while let Some(h) = handoffs.recv().await {
        let stream = match TcpStream::from_std(h.stream) {
            Ok(s) => s,
            Err(e) => {
                open.dec();
                tracing::warn!(error = %e, "cannot register a connection");
                continue;
            }
        };
        let closed = open.clone();
        conns.spawn(
            Admitted {
                stream,
                remote: h.remote,
                permit: h.permit,
            },
            move || closed.dec(),
        );
    }
    conns.drain().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges(counts: &[i64]) -> Vec<IntGauge> {
        counts
            .iter()
            .map(|&c| {
                let g = IntGauge::new("g", "g").unwrap();
                g.set(c);
                g
            })
            .collect()
    }

    #[test]
    fn a_new_connection_goes_to_the_thread_with_the_fewest() {
        assert_eq!(least_loaded(&gauges(&[3, 1, 2]), 0), 1);
        assert_eq!(least_loaded(&gauges(&[3, 1, 2]), 2), 1);
        assert_eq!(least_loaded(&gauges(&[0, 5]), 1), 0);
    }

    #[test]
    fn equal_threads_take_turns() {
        let open = gauges(&[0, 0, 0]);
        let mut next = 0;
        let mut picked = Vec::new();
        for _ in 0..6 {
            let i = least_loaded(&open, next);
            next = (i + 1) % open.len();
            open[i].inc();
            picked.push(i);
        }
        assert_eq!(picked, [0, 1, 2, 0, 1, 2]);
        // Connections that closed on one thread send the next ones there.
        open[1].sub(2);
        assert_eq!(least_loaded(&open, next), 1);
    }
}
