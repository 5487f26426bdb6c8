//! The one pooled client that talks to Superset, built once and shared, plus
//! the header rewriting every forwarded request gets.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::config::Config;
use crate::error::Error;

type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Pooled HTTP/1.1 + HTTP/2 client for Superset, over TCP or rustls.
pub struct Upstream {
    client: HttpClient,
    /// The same connector without a pool: the one retry of an idempotent
    /// request goes out on a connection opened for it, never on another idle
    /// one that Superset may be closing as well.
    fresh: HttpClient,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// Path prefix of the upstream URL (without trailing slash), usually empty.
    prefix: String,
    response_timeout: Duration,
    /// `upstream_client.host_header`: replaces every request's `Host`.
    host_header: Option<HeaderValue>,
}

impl Upstream {
    /// Build the client from config. Fails on an invalid URL or CA file.
    pub fn new(cfg: &Config) -> anyhow::Result<Upstream> {
        let uri: Uri = cfg.upstream.parse()?;
        let scheme = uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP);
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("upstream has no host"))?;
        let prefix = uri.path().trim_end_matches('/').to_string();
        let uc = &cfg.upstream_client;

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(uc.connect_timeout_ms)));
        http.set_keepalive(Some(Duration::from_secs(60)));

        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = &uc.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("upstream_client.ca_file {ca}: {e}"))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(cert?)?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let host_header = match &uc.host_header {
            Some(h) => {
                let value = HeaderValue::from_str(h)
                    .map_err(|e| anyhow::anyhow!("upstream_client.host_header {h:?}: {e}"))?;
                // The name the certificate must carry: the host without a port.
                let host = h.parse::<http::uri::Authority>()?.host().to_string();
                let name = rustls::pki_types::ServerName::try_from(host)
                    .map_err(|e| anyhow::anyhow!("upstream_client.host_header {h:?}: {e}"))?;
                builder = builder
                    .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
                Some(value)
            }
            None => None,
        };
        let connector = builder.enable_http1().enable_http2().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(uc.pool_idle_timeout())
            .pool_max_idle_per_host(uc.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector.clone());
        let fresh = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Upstream {
            client,
            fresh,
            scheme,
            authority,
            prefix,
            response_timeout: Duration::from_millis(uc.response_timeout_ms),
            host_header,
        })
    }

    /// The upstream URI for a client request's path and query.
    pub fn uri_for(&self, path_and_query: &str) -> Uri {
        let pq = format!("{}{}", self.prefix, path_and_query);
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// Send a request and wait for the response head, within the response timeout.
    ///
    /// A pooled connection can die under a request: gunicorn closes an idle
    /// keep-alive connection after 2 s, and when its timer fires as our request
    /// arrives the request is written and the connection closes without an
    /// answer. Then a request that is idempotent and has no body is sent once
    /// more on a new connection (nginx's `proxy_next_upstream error`). Others
    /// (POST, PATCH, any streamed body) may have reached Superset or cannot be
    /// replayed, and fail as they are. Failures are logged with their cause.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, Error> {
        if let Some(h) = &self.host_header {
            req.headers_mut().insert(header::HOST, h.clone());
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let replay = Replay::of(&req);
        let attempt = async {
            match self.client.request(req).await {
                Err(e) if replay.is_some() && retryable(&e) => {
                    tracing::warn!(
                        %method,
                        path,
                        cause = %cause(&e),
                        "upstream connection failed before a response; retrying once on a new connection"
                    );
                    let again = replay.map(Replay::request).expect("checked above");
                    self.fresh.request(again).await
                }
                other => other,
            }
        };
        let res = match tokio::time::timeout(self.response_timeout, attempt).await {
            Err(_) => Err(Error::UpstreamTimeout),
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(e)) if e.is_connect() => Err(Error::UpstreamConnect(cause(&e))),
            Ok(Err(e)) => Err(Error::Upstream(cause(&e))),
        };
        if let Err(e) = &res {
            tracing::warn!(%method, path, error = %e, "upstream request failed");
        }
        res
    }
}

/// What is needed to send a request again: kept only for idempotent methods
/// whose body is known to be empty, so nothing is ever buffered for a retry.
struct Replay {
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    fn of(req: &Request<Body>) -> Option<Replay> {
        use http::Method;
        let idempotent = matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
        );
        let bodiless = hyper::body::Body::is_end_stream(req.body());
        // An upgrade hands the connection over; it is never replayed.
        let upgrade = req.headers().contains_key(header::UPGRADE);
        (idempotent && bodiless && !upgrade).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        })
    }

    fn request(self) -> Request<Body> {
        let mut req = Request::new(crate::body::empty());
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.headers_mut() = self.headers;
        req
    }
}

/// Whether a failed request died with its connection before a response
/// arrived (closed, reset, canceled), rather than on connecting (nothing was
/// sent, and a new connection would fail alike) or on a malformed answer.
fn retryable(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled() || h.is_closed())
        {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

/// An error with its chain of causes, for logs ("client error (SendRequest):
/// connection closed before message completed").
fn cause(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded in either direction.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A header value in its own allocation. Values parsed by hyper share the
/// connection's read buffer, so keeping one beyond the request (stored
/// entries, hot-entry refresh jobs) would pin that whole buffer.
pub fn owned_header_value(v: &HeaderValue) -> HeaderValue {
    let mut owned = HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
    owned.set_sensitive(v.is_sensitive());
    owned
}

/// Remove hop-by-hop headers, including those named in `Connection`.
/// `keep_upgrade` keeps `Connection: upgrade` + `Upgrade` for websockets.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let upgrade = headers.get(header::UPGRADE).cloned();
    for n in named.iter().chain(HOP_BY_HOP) {
        headers.remove(n);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if keep_upgrade && let Some(u) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u);
    }
}

/// Refuse a request with more than one `Host` header (400).
pub fn check_host(headers: &HeaderMap) -> Result<(), Error> {
    if headers.get_all(header::HOST).iter().nth(1).is_some() {
        return Err(Error::Client("more than one Host header".into()));
    }
    Ok(())
}

/// Rewrite a client request's headers for Superset: hop-by-hop stripped,
/// `X-Forwarded-For/Proto/Host` appended (one header each: the client's own
/// values, joined, then this hop's), `Host` kept (taken from the URI authority
/// for HTTP/2 clients), request id set.
///
/// Appending, never keeping a client's value as the last one, is what lets
/// Superset trust exactly its proxies: Werkzeug's `ProxyFix` (Superset's
/// `ENABLE_PROXY_FIX` / `PROXY_FIX_CONFIG`) reads the N-th value from the
/// right, N being the number of proxies in front of it, chartcache included.
pub fn prepare_request_headers(
    headers: &mut HeaderMap,
    uri: &Uri,
    client: Option<SocketAddr>,
    client_proto: &'static str,
    request_id: &HeaderValue,
    is_upgrade: bool,
) {
    strip_hop_by_hop(headers, is_upgrade);
    if !headers.contains_key(header::HOST)
        && let Some(a) = uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        headers.insert(header::HOST, a);
    }
    if let Some(addr) = client {
        append_forwarded(headers, X_FORWARDED_FOR, &addr.ip().to_string());
    }
    append_forwarded(headers, X_FORWARDED_PROTO, client_proto);
    if let Some(h) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
        let h = h.to_string();
        append_forwarded(headers, X_FORWARDED_HOST, &h);
    }
    headers.insert(crate::context::X_REQUEST_ID, request_id.clone());
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Replace every `name` header by one: the client's values joined with `, `
/// (unreadable ones dropped), then `ours`.
fn append_forwarded(headers: &mut HeaderMap, name: HeaderName, ours: &str) {
    let mut list = String::new();
    for v in headers.get_all(&name) {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                list.push_str(s);
                list.push_str(", ");
            }
        }
    }
    list.push_str(ours);
    match HeaderValue::from_str(&list) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => {
            headers.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn appends_forwarded_headers_and_keeps_host() {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("superset.example.com"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let id = HeaderValue::from_static("abc");
        prepare_request_headers(
            &mut h,
            &Uri::from_static("/x"),
            Some("10.0.0.9:5555".parse().unwrap()),
            "http",
            &id,
            false,
        );
        assert_eq!(h["host"], "superset.example.com");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "superset.example.com");
        assert_eq!(h["x-request-id"], "abc");
    }

    /// A client's own forwarding headers are never the last value Superset
    /// reads: ours is appended to every one of them, duplicates joined.
    #[test]
    fn client_forwarding_headers_get_this_hop_appended() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("cache.example.com"));
        h.append("x-forwarded-host", HeaderValue::from_static("evil.example"));
        h.append("x-forwarded-proto", HeaderValue::from_static("https"));
        h.append("x-forwarded-proto", HeaderValue::from_static("ftp"));
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        prepare_request_headers(
            &mut h,
            &Uri::from_static("/x"),
            Some("10.0.0.9:5555".parse().unwrap()),
            "http",
            &HeaderValue::from_static("id"),
            false,
        );
        let all = |n: &str| {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-forwarded-host"), ["evil.example, cache.example.com"]);
        assert_eq!(all("x-forwarded-proto"), ["https, ftp, http"]);
        assert_eq!(all("x-forwarded-for"), ["1.1.1.1, 2.2.2.2, 10.0.0.9"]);
    }

    #[test]
    fn two_host_headers_are_refused() {
        let mut h = HeaderMap::new();
        h.append(header::HOST, HeaderValue::from_static("a"));
        assert!(check_host(&h).is_ok());
        h.append(header::HOST, HeaderValue::from_static("b"));
        assert!(matches!(check_host(&h), Err(Error::Client(_))));
    }

    #[test]
    fn only_bodiless_idempotent_requests_are_replayable() {
        let req = |m: http::Method, body: Body| Request::builder().method(m).body(body).unwrap();
        for m in [http::Method::GET, http::Method::HEAD, http::Method::DELETE] {
            assert!(Replay::of(&req(m, crate::body::empty())).is_some());
        }
        for m in [http::Method::POST, http::Method::PATCH] {
            assert!(Replay::of(&req(m, crate::body::empty())).is_none());
        }
        // A body that may still stream is never buffered for a retry.
        let streamed = http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(
            futures_util::stream::iter(Vec::<Result<hyper::body::Frame<bytes::Bytes>, _>>::new()),
        ));
        assert!(Replay::of(&req(http::Method::PUT, streamed)).is_none());
        let mut ws = req(http::Method::GET, crate::body::empty());
        ws.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(Replay::of(&ws).is_none());
    }

    #[test]
    fn keeps_upgrade_for_websockets() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }
}

/// `upstream_client.host_header` against a real loopback server (plain and TLS).
#[cfg(test)]
mod host_header_tests;
