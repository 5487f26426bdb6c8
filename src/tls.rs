//! TLS for the listeners (rustls, ring provider).
//!
//! Certificates rotate without a restart and without dropping connections:
//! [`ReloadingCert`] answers each handshake with the current key pair and, at
//! most every `reload_check_ms`, compares the files' modification times and
//! sizes with the loaded pair. A changed pair is loaded for new handshakes;
//! established connections keep the keys they negotiated. A pair that does
//! not load (half-written files, a key that does not match the certificate)
//! is ignored and retried at the next check, so a botched rotation never takes
//! the listener down.

use std::fs::File;
use std::io::BufReader;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use prometheus::IntGauge;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: no certificate found")]
    NoCertificate(String),
    #[error("{0}: no private key found")]
    NoKey(String),
    #[error("certificate/key: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    ClientCa(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read all certificates of a PEM file.
pub fn load_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let f = File::open(path).map_err(|e| TlsError::Read(path.into(), e))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Read(path.into(), e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.into()));
    }
    Ok(certs)
}

fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let f = File::open(path).map_err(|e| TlsError::Read(path.into(), e))?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|e| TlsError::Read(path.into(), e))?
        .ok_or_else(|| TlsError::NoKey(path.into()))
}

/// Load a certificate chain and its key, checking that they belong together.
pub fn load_pair(
    cert: &str,
    key: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    Ok(CertifiedKey::from_der(
        load_certs(cert)?,
        load_key(key)?,
        provider,
    )?)
}

/// What identifies one version of the files on disk.
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(cert: &str, key: &str) -> Stamp {
    let one = |p: &str| match std::fs::metadata(p) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    };
    [one(cert), one(key)]
}

struct Check {
    last: Instant,
    stamp: Stamp,
}

/// A certificate resolver that picks up rotated files.
pub struct ReloadingCert {
    cert_file: String,
    key_file: String,
    interval: Duration,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    check: Mutex<Check>,
    /// `notAfter` of the certificate served (`chartcache_tls_cert_expiry_timestamp_seconds`).
    expiry: IntGauge,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish()
    }
}

impl ReloadingCert {
    /// Load the pair now (an unusable pair at startup is an error).
    pub fn new(
        cfg: &TlsConfig,
        provider: Arc<CryptoProvider>,
        expiry: IntGauge,
    ) -> Result<ReloadingCert, TlsError> {
        let st = stamp(&cfg.cert_file, &cfg.key_file);
        let ck = load_pair(&cfg.cert_file, &cfg.key_file, &provider)?;
        set_expiry(&expiry, &ck);
        Ok(ReloadingCert {
            expiry,
            cert_file: cfg.cert_file.clone(),
            key_file: cfg.key_file.clone(),
            interval: Duration::from_millis(cfg.reload_check_ms),
            provider,
            current: ArcSwap::from_pointee(ck),
            check: Mutex::new(Check {
                last: Instant::now(),
                stamp: st,
            }),
        })
    }

    /// Reload if the interval has passed and the files changed. Only one
    /// handshake pays for the check; the others use the current pair.
    fn maybe_reload(&self) {
        let Ok(mut check) = self.check.try_lock() else {
            return;
        };
        if check.last.elapsed() < self.interval {
            return;
        }
        check.last = Instant::now();
        let now = stamp(&self.cert_file, &self.key_file);
        if now == check.stamp {
            return;
        }
        match load_pair(&self.cert_file, &self.key_file, &self.provider) {
            Ok(ck) => {
                set_expiry(&self.expiry, &ck);
                self.current.store(Arc::new(ck));
                check.stamp = now;
                tracing::info!(cert = %self.cert_file, "TLS certificate reloaded");
            }
            Err(e) => {
                // Keep serving the old pair; try again at the next check.
                tracing::warn!(cert = %self.cert_file, error = %e, "TLS certificate reload failed; keeping the current one");
            }
        }
    }
}

/// The leaf's `notAfter` into the gauge (left as it was if it does not parse).
fn set_expiry(gauge: &IntGauge, ck: &CertifiedKey) {
    if let Some(t) = ck.cert.first().and_then(|c| cert_not_after(c)) {
        gauge.set(t);
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.maybe_reload();
        Some(self.current.load_full())
    }
}

/// A TLS acceptor for a listener: reloading certificate, ALPN h2 + http/1.1,
/// and client-certificate verification when `client_ca_file` is set.
pub fn acceptor(cfg: &TlsConfig, expiry: IntGauge) -> Result<TlsAcceptor, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &cfg.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::ClientCa(format!("{ca}: {e}")))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::ClientCa(format!("{ca}: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server =
        builder.with_cert_resolver(Arc::new(ReloadingCert::new(cfg, provider, expiry)?));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// `notAfter` of a DER certificate, Unix seconds (`None` if it does not parse).
pub fn cert_not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &std::path::Path, name: &str) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let c = dir.join("cert.pem");
        let k = dir.join("key.pem");
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
        (c.to_str().unwrap().into(), k.to_str().unwrap().into())
    }

    #[test]
    fn reloads_changed_files_and_keeps_old_pair_on_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "one.test");
        let cfg = TlsConfig {
            cert_file: c.clone(),
            key_file: k.clone(),
            client_ca_file: None,
            reload_check_ms: 0,
        };
        let expiry = IntGauge::new("expiry", "test").unwrap();
        let r = ReloadingCert::new(&cfg, provider(), expiry.clone()).unwrap();
        let first = r.current.load_full().cert[0].clone();
        let not_after = cert_not_after(&first).unwrap();
        assert!(not_after > 1_700_000_000);
        assert_eq!(expiry.get(), not_after, "the served certificate's notAfter");
        expiry.set(0);
        // Garbage: the old pair stays.
        std::fs::write(&c, "not a certificate").unwrap();
        r.maybe_reload();
        assert_eq!(r.current.load_full().cert[0], first);
        // A new valid pair is picked up.
        write_pair(dir.path(), "two.test");
        r.maybe_reload();
        assert_ne!(r.current.load_full().cert[0], first);
        assert_eq!(expiry.get(), not_after, "set again from the reloaded pair");
    }

    #[test]
    fn mismatched_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = write_pair(dir.path(), "a.test");
        let other = rcgen::KeyPair::generate().unwrap();
        let k = dir.path().join("other.pem");
        std::fs::write(&k, other.serialize_pem()).unwrap();
        assert!(load_pair(&c, k.to_str().unwrap(), &provider()).is_err());
    }

    #[test]
    fn cert_not_after_reads_the_validity() {
        let mut params = rcgen::CertificateParams::new(vec!["chartcache.test".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        // 2031-05-17T00:00:00Z
        assert_eq!(cert_not_after(cert.der()), Some(1_936_742_400));
        assert_eq!(cert_not_after(b"not a certificate"), None);
    }
}
