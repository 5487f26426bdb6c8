//! `chartcache healthcheck`: one GET of the admin `/healthz` or `/readyz` over
//! loopback, for exec probes in images without a shell or curl (distroless).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::config::Config;

/// Where the admin listener is reached from inside its own container: a
/// wildcard listen address is probed on loopback of the same family.
pub fn probe_addr(admin_listen: SocketAddr) -> SocketAddr {
    let ip = match admin_listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, admin_listen.port())
}

/// GET `path` on the admin listener of `cfg` within `timeout`; `Ok(())` on a 2xx.
pub async fn check(cfg: &Config, path: &str, timeout: Duration) -> anyhow::Result<()> {
    if cfg.admin.tls.is_some() {
        anyhow::bail!(
            "admin.tls is set and healthcheck speaks plain HTTP: use an httpGet probe with scheme HTTPS"
        );
    }
    let addr = probe_addr(cfg.admin_listen);
    let status = tokio::time::timeout(timeout, get(addr, path))
        .await
        .map_err(|_| anyhow::anyhow!("{addr}{path}: no answer within {timeout:?}"))??;
    if !status.is_success() {
        anyhow::bail!("{addr}{path}: {status}");
    }
    Ok(())
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<http::StatusCode> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    Ok(send.send_request(req).await?.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_is_probed_on_loopback() {
        assert_eq!(
            probe_addr("0.0.0.0:9090".parse().unwrap()),
            "127.0.0.1:9090".parse().unwrap()
        );
        assert_eq!(
            probe_addr("[::]:9090".parse().unwrap()),
            "[::1]:9090".parse().unwrap()
        );
        assert_eq!(
            probe_addr("10.1.2.3:9090".parse().unwrap()),
            "10.1.2.3:9090".parse().unwrap()
        );
    }
}
