//! TLS (rustls) for member-to-member connections and, optionally, the HTTP API.
//!
//! With certificates configured, every peer connection is TLS: the connecting member
//! verifies the other's certificate against the configured CA and the host name of its
//! peer address, so traffic is private and cannot be redirected. The cluster-secret
//! handshake still runs inside, so a certificate alone does not make a member. The TLS
//! handshake of an accepted connection runs in that connection's own task, bounded in
//! time, so a slow client cannot block accepting others.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::transport::BoxConnection;

/// Time allowed for a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the member's certificate, key and trusted CA are (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain presented to peers and clients.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA that signs the members' certificates (verifies peers).
    pub ca: PathBuf,
    /// Serve the HTTP API over TLS too (https).
    pub http: bool,
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("reading {path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Loaded TLS state. Peer connections are mutual: each side presents its certificate and
/// verifies the other's against the CA, so a process without a CA-signed certificate cannot
/// even reach the cluster-secret handshake. HTTP clients are not asked for a certificate.
#[derive(Clone)]
pub struct Tls {
    peer_acceptor: TlsAcceptor,
    http_acceptor: TlsAcceptor,
    connector: TlsConnector,
    pub http: bool,
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect();
    let certs = certs.map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no certificate in the file".into()));
    }
    Ok(certs)
}

impl Tls {
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certs(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::File {
            path: files.key.display().to_string(),
            reason: e.to_string(),
        })?;
        let config = |e: rustls::Error| TlsError::Config(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs(&files.ca)? {
            roots
                .add(ca)
                .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let http_server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config)?;
        let peer_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let peer_server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_client_cert_verifier(peer_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config)?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config)?;
        Ok(Tls {
            peer_acceptor: TlsAcceptor::from(Arc::new(peer_server)),
            http_acceptor: TlsAcceptor::from(Arc::new(http_server)),
            connector: TlsConnector::from(Arc::new(client)),
            http: files.http,
        })
    }

    /// Server side of a handshake on an accepted peer connection (client certificate
    /// required).
    pub async fn accept_peer(&self, conn: BoxConnection) -> std::io::Result<BoxConnection> {
        Self::accept(&self.peer_acceptor, conn).await
    }

    /// Server side of a handshake on an accepted HTTP connection.
    pub async fn accept_http(&self, conn: BoxConnection) -> std::io::Result<BoxConnection> {
        Self::accept(&self.http_acceptor, conn).await
    }

    async fn accept(acceptor: &TlsAcceptor, conn: BoxConnection) -> std::io::Result<BoxConnection> {
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })??;
        Ok(Box::new(stream))
    }

    /// Client side: `addr` is the `host:port` dialled; its host must match the peer's
    /// certificate.
    pub async fn connect(&self, addr: &str, conn: BoxConnection) -> std::io::Result<BoxConnection> {
        let host = host_of(addr);
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}"))
        })?;
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(name, conn))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })??;
        Ok(Box::new(stream))
    }
}

/// The host part of `host:port` (IPv6 literals in brackets allowed).
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("db-1.peers.ns.svc:7070"), "db-1.peers.ns.svc");
        assert_eq!(host_of("127.0.0.1:7070"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7070"), "::1");
        assert_eq!(host_of("name"), "name");
    }

    #[test]
    fn missing_files_are_clear_errors() {
        let files = TlsFiles {
            cert: "/nonexistent/c.pem".into(),
            key: "/nonexistent/k.pem".into(),
            ca: "/nonexistent/ca.pem".into(),
            http: false,
        };
        let err = Tls::load(&files)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/c.pem"), "{err}");
    }
}
