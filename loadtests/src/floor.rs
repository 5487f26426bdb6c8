//! `floor`: the cheapest possible HTTP/1 server on the proxy's own stack
//! (tokio multi-thread runtime + hyper), answering every request with a
//! precomputed chart-data payload (the size the request's `X-Bench-Bytes`
//! asks for, among `--bytes`) after reading the request body. It does no
//! routing, keying, lookup or logging, so its CPU per request is the floor
//! any tokio + hyper proxy pays on this machine; `compare.sh` (section
//! `floor`) puts it next to nginx and chartcache under the same wrk load.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, header};
use hyper_util::rt::TokioIo;

use crate::args::Args;

async fn serve(listen: SocketAddr, bodies: Arc<Vec<(u64, Bytes)>>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("floor listening on {}", listener.local_addr()?);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let bodies = bodies.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let want = req
                    .headers()
                    .get("x-bench-bytes")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                let body = bodies
                    .iter()
                    .find(|(n, _)| Some(*n) == want)
                    .unwrap_or(&bodies[0])
                    .1
                    .clone();
                async move {
                    // Read the request body as a proxy must before it can key it.
                    let _ = req.into_body().collect().await;
                    let mut resp = Response::new(Full::new(body));
                    let h = resp.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    h.insert(
                        "cache-status",
                        header::HeaderValue::from_static("floor; hit"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// `chartcache-load floor --listen 127.0.0.1:PORT --bytes N[,N...] [--threads 0]`
/// (threads 0 = one per CPU, as chartcache's default).
pub fn run(args: &Args) -> Result<(), String> {
    let listen: SocketAddr = args.get("listen", "127.0.0.1:18090".parse().unwrap())?;
    if !listen.ip().is_loopback() {
        return Err("--listen must be a loopback address".into());
    }
    let sizes: String = args.get("bytes", "1024".to_string())?;
    let threads: usize = args.get("threads", 0)?;
    args.finish()?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        rt.worker_threads(threads);
    }
    let rt = rt.enable_all().build().map_err(|e| e.to_string())?;
    let mut bodies = Vec::new();
    for n in sizes.split(',') {
        let n: u64 = n
            .trim()
            .parse()
            .map_err(|_| format!("--bytes: not a size: {n:?}"))?;
        bodies.push((
            n,
            Bytes::from(crate::payload::superset_response(n as usize)),
        ));
    }
    rt.block_on(serve(listen, Arc::new(bodies)))
        .map_err(|e| e.to_string())
}
