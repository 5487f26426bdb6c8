//! `upstream_client.host_header` against a real loopback server (plain and TLS).

use super::*;
use std::sync::Arc;

/// Serve one connection per accept, answering each request with the
/// `Host` and `X-Forwarded-Host` it received, over TLS when `tls` is set.
async fn echo_host(tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default()
                    };
                    let body = format!("{}|{}", h("host"), h("x-forwarded-host"));
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(body),
                    )))
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(tcp).await {
                            let io = hyper_util::rt::TokioIo::new(s);
                            let _ = http.serve_connection(io, svc).await;
                        }
                    }
                    None => {
                        let io = hyper_util::rt::TokioIo::new(tcp);
                        let _ = http.serve_connection(io, svc).await;
                    }
                }
            });
        }
    });
    addr
}

/// Forward a client request for `dashboards.example.com` as the proxy does.
async fn forward(up: &Upstream) -> Result<String, Error> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::HOST,
        HeaderValue::from_static("dashboards.example.com"),
    );
    let uri = Uri::from_static("/api/v1/chart/1");
    prepare_request_headers(
        &mut headers,
        &uri,
        None,
        "https",
        &HeaderValue::from_static("id"),
        false,
    );
    let mut req = Request::new(crate::body::empty());
    *req.uri_mut() = up.uri_for("/api/v1/chart/1");
    *req.headers_mut() = headers;
    let resp = up.send(req).await?;
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
    Ok(String::from_utf8(body.to_bytes().to_vec()).unwrap())
}

fn config(upstream: String, host_header: Option<&str>, ca_file: Option<String>) -> Config {
    let mut cfg = Config {
        upstream,
        ..Config::default()
    };
    cfg.upstream_client.host_header = host_header.map(str::to_string);
    cfg.upstream_client.ca_file = ca_file;
    cfg
}

#[tokio::test]
async fn host_header_replaces_the_clients_host_which_goes_on_as_forwarded_host() {
    let addr = echo_host(None).await;
    let plain = Upstream::new(&config(format!("http://{addr}"), None, None)).unwrap();
    assert_eq!(
        forward(&plain).await.unwrap(),
        "dashboards.example.com|dashboards.example.com"
    );
    let named = config(format!("http://{addr}"), Some("superset.example.com"), None);
    let named = Upstream::new(&named).unwrap();
    assert_eq!(
        forward(&named).await.unwrap(),
        "superset.example.com|dashboards.example.com"
    );
}

/// Superset's certificate names `superset.example.com`; the upstream URL
/// is an address. Without the option the certificate check fails, with it
/// SNI and the check use the name.
#[tokio::test]
async fn host_header_is_the_tls_server_name() {
    let ck = rcgen::generate_simple_self_signed(vec!["superset.example.com".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let addr = echo_host(Some(acceptor)).await;
    let ca = Some(ca.to_str().unwrap().to_string());
    let by_address = Upstream::new(&config(format!("https://{addr}"), None, ca.clone())).unwrap();
    assert!(
        matches!(forward(&by_address).await, Err(Error::UpstreamConnect(_))),
        "an address is not the certificate's name"
    );
    let named = config(format!("https://{addr}"), Some("superset.example.com"), ca);
    let named = Upstream::new(&named).unwrap();
    assert_eq!(
        forward(&named).await.unwrap(),
        "superset.example.com|dashboards.example.com"
    );
}

#[test]
fn an_invalid_host_header_is_a_startup_error() {
    let cfg = config("http://127.0.0.1:1".into(), Some("bad host\n"), None);
    assert!(Upstream::new(&cfg).is_err());
}
