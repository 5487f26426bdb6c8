//! The Redis store over TLS (`rediss://`) against a real redis-server whose
//! certificate is issued by a private CA generated for the test:
//! `redis.tls_ca_file` makes it trusted, without it the connection is refused;
//! `redis.tls_client_cert_file` / `tls_client_key_file` for mutual TLS.

// A binary of its own: it counts the store's connections, whose number
// depends on the process-wide per-core thread count (`chartcache::worker`)
// that the other integration tests set.
#[path = "it/support/redis_server.rs"]
mod redis_support;

use std::sync::Arc;

use chartcache::clock::{Clock, SharedClock, SystemClock};
use chartcache::config::RedisConfig;
use chartcache::key::CacheKey;
use chartcache::metrics::Metrics;
use chartcache::store::redis::RedisStore;
use chartcache::store::{Entry, Meta, Purge, Store};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use redis_support::*;

/// A CA, a server certificate for 127.0.0.1 / localhost and a client
/// certificate, as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "chartcache redis test CA");
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        for (name, usage) in [
            ("server", ExtendedKeyUsagePurpose::ServerAuth),
            ("client", ExtendedKeyUsagePurpose::ClientAuth),
        ] {
            let mut p =
                CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                    .unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.path().join(format!("{name}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, f: &str) -> String {
        self.dir.path().join(f).display().to_string()
    }
}

/// A redis-server with a TLS port (besides its plain port, used only to see
/// that it is up). Returns the process and the TLS port.
fn tls_server(pki: &Pki, auth_clients: bool) -> (RedisProc, u16) {
    let tls_port = free_port();
    let lines = [
        format!("tls-port {tls_port}"),
        format!("tls-cert-file {}", pki.path("server.crt")),
        format!("tls-key-file {}", pki.path("server.key")),
        format!("tls-ca-cert-file {}", pki.path("ca.crt")),
        format!(
            "tls-auth-clients {}",
            if auth_clients { "yes" } else { "no" }
        ),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    (RedisProc::server(&lines), tls_port)
}

fn store(cfg: RedisConfig) -> Arc<RedisStore> {
    let clock: SharedClock = Arc::new(SystemClock);
    RedisStore::new(cfg, Arc::new(Metrics::new()), clock).unwrap()
}

fn cfg(tls_port: u16) -> RedisConfig {
    RedisConfig {
        url: Some(format!("rediss://127.0.0.1:{tls_port}")),
        // TLS handshakes on a loaded test machine: more room than 50 ms.
        timeout_ms: 2_000,
        connect_timeout_ms: 3_000,
        ..RedisConfig::default()
    }
}

fn entry(tag: &str) -> Arc<Entry> {
    let now = SystemClock.now_ms();
    let body = br#"{"result": [{"data": "tls"}]}"#;
    let meta = Meta {
        status: 200,
        headers: vec![(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )],
        stored_at: now,
        fresh_until: now + 60_000,
        stale_until: now + 120_000,
        upstream_ms: 5,
        raw_len: body.len() as u32,
        tags: vec![tag.to_string()],
    };
    Arc::new(Entry::build(meta, body, 3, false).unwrap())
}

async fn round_trip(s: &RedisStore) {
    s.check().await.unwrap();
    let k = CacheKey([7; 32]);
    let e = entry("chart:7");
    s.put(&k, e.clone()).await.unwrap();
    let got = s.get(&k).await.unwrap().expect("entry read back over TLS");
    assert_eq!(got.meta, e.meta);
    assert_eq!(got.decompress().unwrap(), e.decompress().unwrap());
    assert_eq!(
        s.purge(&Purge::Tags(vec!["chart:7".into()])).await.unwrap(),
        1
    );
    assert!(s.get(&k).await.unwrap().is_none());
}

#[tokio::test]
async fn rediss_with_private_ca_round_trips_and_is_refused_without_it() {
    let pki = Pki::new();
    let (r, tls_port) = tls_server(&pki, false);

    // Trusted through tls_ca_file: put / get / purge over TLS.
    let s = store(RedisConfig {
        tls_ca_file: Some(pki.path("ca.crt")),
        ..cfg(tls_port)
    });
    round_trip(&s).await;
    // The store's connections are open on this server (over its TLS port).
    let mut plain = client(&r.url()).await;
    // This connection plus the store's `connections` multiplexed ones.
    let open = clients(&mut plain).await;
    assert!(
        open > RedisConfig::default().connections,
        "expected the store's TLS connections, counted {open}"
    );

    // Without the CA the server certificate is not trusted: refused, and the
    // startup check says why.
    let untrusted = store(cfg(tls_port));
    let err = untrusted.check().await.unwrap_err().to_string();
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert!(err.contains("redis.tls_ca_file"), "{err}");
    assert!(untrusted.get(&CacheKey([1; 32])).await.is_err());
}

#[tokio::test]
async fn invalidation_messages_over_tls() {
    let pki = Pki::new();
    let (_r, tls_port) = tls_server(&pki, false);
    let s = store(RedisConfig {
        tls_ca_file: Some(pki.path("ca.crt")),
        ..cfg(tls_port)
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    s.subscribe(move |m| drop(tx.send(m.to_vec())), || {});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while s.subscriptions() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no invalidation subscription over TLS"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    s.publish(b"purge chart:1".to_vec()).await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .expect("message over the TLS subscription")
        .unwrap();
    assert_eq!(got, b"purge chart:1");
}

#[tokio::test]
async fn mutual_tls_with_client_certificate() {
    let pki = Pki::new();
    let (_r, tls_port) = tls_server(&pki, true);

    let s = store(RedisConfig {
        tls_ca_file: Some(pki.path("ca.crt")),
        tls_client_cert_file: Some(pki.path("client.crt")),
        tls_client_key_file: Some(pki.path("client.key")),
        ..cfg(tls_port)
    });
    round_trip(&s).await;

    // The server requires a client certificate: without one, no connection.
    let no_cert = store(RedisConfig {
        tls_ca_file: Some(pki.path("ca.crt")),
        ..cfg(tls_port)
    });
    let err = no_cert.check().await.unwrap_err().to_string();
    assert!(err.contains("CertificateRequired"), "{err}");
}

#[test]
fn tls_files_are_checked_at_startup() {
    let pki = Pki::new();
    let new = |c: RedisConfig| RedisStore::new(c, Arc::new(Metrics::new()), Arc::new(SystemClock));
    // A CA file with redis:// (no TLS) is a mistake, not silently ignored.
    let e = new(RedisConfig {
        url: Some("redis://127.0.0.1:1".into()),
        tls_ca_file: Some(pki.path("ca.crt")),
        ..RedisConfig::default()
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("rediss://"), "{e}");
    // A missing file is named.
    let e = new(RedisConfig {
        tls_ca_file: Some(pki.path("nope.crt")),
        ..cfg(1)
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("nope.crt"), "{e}");
    // A file without a certificate.
    let e = new(RedisConfig {
        tls_ca_file: Some(pki.path("server.key")),
        ..cfg(1)
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
    // Client certificate without key.
    let e = new(RedisConfig {
        tls_client_cert_file: Some(pki.path("client.crt")),
        ..cfg(1)
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("tls_client_key_file"), "{e}");
}
