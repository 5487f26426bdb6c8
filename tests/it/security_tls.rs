//! TLS end to end with certificates generated at test time: the proxy
//! listener serves the cached path over HTTPS, picks up rotated certificate
//! files for new connections while open connections keep working, and the
//! admin listener can require client certificates.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

use chartcache::config::TlsConfig;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "chartcache test CA");
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, cn: &str, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// Write a pair the way a mounted Secret changes: new files, then a rename.
fn install(dir: &std::path::Path, leaf: &Leaf) -> (String, String) {
    let c = dir.join("tls.crt");
    let k = dir.join("tls.key");
    std::fs::write(dir.join("tls.crt.new"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key.new"), &leaf.key_pem).unwrap();
    std::fs::rename(dir.join("tls.key.new"), &k).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), &c).unwrap();
    (c.to_str().unwrap().into(), k.to_str().unwrap().into())
}

fn connector(ca_pem: &str, client: Option<&Leaf>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match client {
        None => b.with_no_client_auth(),
        Some(l) => {
            let key = rustls_pemfile::private_key(&mut l.key_pem.as_bytes())
                .unwrap()
                .unwrap();
            b.with_client_auth_cert(vec![l.der.clone()], key).unwrap()
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // A resumed session reports the certificate of the original handshake:
    // full handshakes only, so each connection shows what the server serves now.
    cfg.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(cfg))
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Open a TLS connection; returns the sender and the server's leaf certificate.
async fn open(
    addr: std::net::SocketAddr,
    conn: &TlsConnector,
) -> std::io::Result<(Sender, CertificateDer<'static>)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = conn
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (sender, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(c);
    Ok((sender, peer))
}

async fn request(
    s: &mut Sender,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, http::HeaderMap, Bytes), hyper::Error> {
    let resp = s.send_request(req).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}

fn chart_req() -> Request<Full<Bytes>> {
    Request::post("/api/v1/chart/data")
        .header("host", "localhost")
        .header("authorization", "Bearer alice-token")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&chart_body("16-chart-data-bignumber-admin-miss.json")).unwrap(),
        )))
        .unwrap()
}

#[tokio::test]
async fn https_listener_serves_and_rotates_certificates_without_dropping_connections() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let up = Upstream::start().await;
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let first = ca.leaf("first", ExtendedKeyUsagePurpose::ServerAuth);
    let (cert_file, key_file) = install(dir.path(), &first);
    let mut cfg = test_config(&up.url());
    cfg.server.tls = Some(TlsConfig {
        cert_file,
        key_file,
        client_ca_file: None,
        reload_check_ms: 100,
    });
    let proxy = Proxy::start(cfg).await;
    let conn = connector(&ca.pem(), None);

    let (mut a, peer) = open(proxy.addr, &conn).await.unwrap();
    assert_eq!(peer, first.der);
    let (status, headers, _) = request(&mut a, chart_req()).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        headers["cache-status"]
            .to_str()
            .unwrap()
            .contains("fwd=miss")
    );
    let (_, _, seen, _) = up.last_seen("/api/v1/chart/data").unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");

    // Rotate: new connections get the new certificate...
    let second = ca.leaf("second", ExtendedKeyUsagePurpose::ServerAuth);
    install(dir.path(), &second);
    // The files are checked at a handshake once `reload_check_ms` has passed:
    // new connections until one is served the new pair (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut b = loop {
        let (s, peer) = open(proxy.addr, &conn).await.unwrap();
        if peer == second.der {
            break s;
        }
        assert_eq!(peer, first.der);
        assert!(
            std::time::Instant::now() < deadline,
            "rotated certificate not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, headers, _) = request(&mut b, chart_req()).await.unwrap();
    assert_eq!(status, 200);
    assert!(headers["cache-status"].to_str().unwrap().contains("hit"));
    // ...and the connection opened before the rotation still works.
    let (status, _, _) = request(&mut a, chart_req()).await.unwrap();
    assert_eq!(status, 200);

    // A broken rotation (garbage files) keeps the last good certificate.
    std::fs::write(dir.path().join("tls.crt"), "garbage").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, p) = open(proxy.addr, &conn).await.unwrap();
    let (_, p2) = open(proxy.addr, &conn).await.unwrap();
    assert!(p == second.der && p2 == second.der);

    // Plain HTTP on the TLS port gets no HTTP answer.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Full<Bytes>>()
            .get(proxy.url("/health").parse().unwrap()),
    )
    .await
    .unwrap();
    assert!(r.is_err());
}

#[tokio::test]
async fn admin_listener_requires_a_client_certificate_when_configured() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let up = Upstream::start().await;
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let server = ca.leaf("admin", ExtendedKeyUsagePurpose::ServerAuth);
    let (cert_file, key_file) = install(dir.path(), &server);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let mut cfg = test_config(&up.url());
    cfg.admin.tls = Some(TlsConfig {
        cert_file,
        key_file,
        client_ca_file: Some(ca_file.to_str().unwrap().into()),
        reload_check_ms: 5_000,
    });
    let proxy = Proxy::start(cfg).await;
    let get = |path: &str| {
        Request::get(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    // Without a client certificate: no answer at all (TLS 1.3 reports the
    // refusal on the first read, so either step may fail).
    let anon = connector(&ca.pem(), None);
    let refused = match open(proxy.admin, &anon).await {
        Err(_) => true,
        Ok((mut s, _)) => request(&mut s, get("/healthz")).await.is_err(),
    };
    assert!(refused, "admin answered a client without a certificate");

    // A certificate from another CA is refused too.
    let other = Ca::new();
    let stranger = other.leaf("stranger", ExtendedKeyUsagePurpose::ClientAuth);
    let foreign = connector(&ca.pem(), Some(&stranger));
    let refused = match open(proxy.admin, &foreign).await {
        Err(_) => true,
        Ok((mut s, _)) => request(&mut s, get("/healthz")).await.is_err(),
    };
    assert!(refused, "admin accepted a certificate from another CA");

    // With a client certificate from the CA: served; /purge still needs the token.
    let operator = ca.leaf("operator", ExtendedKeyUsagePurpose::ClientAuth);
    let trusted = connector(&ca.pem(), Some(&operator));
    let (mut s, _) = open(proxy.admin, &trusted).await.unwrap();
    let (status, _, _) = request(&mut s, get("/healthz")).await.unwrap();
    assert_eq!(status, 200);
    let purge = Request::post("/purge")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"tag": "chart:1"}"#)))
        .unwrap();
    let (status, _, _) = request(&mut s, purge).await.unwrap();
    assert_eq!(status, 401);
}
