//! A small HTTP client for the CLI verbs (and tests): the client and admin APIs of one
//! member.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("request timed out")]
    Timeout,
    #[error("bad request: {0}")]
    Invalid(String),
}

/// A response: status, headers and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoint: String,
    token: Option<String>,
    timeout: Duration,
    /// For `https://` endpoints: verifies the member's certificate.
    tls: Option<tokio_rustls::TlsConnector>,
}

/// Percent-encodes a key for the URL path (unreserved characters and `/` stay as they are).
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl HttpClient {
    /// `endpoint` is `host:port` or `http://host:port`.
    pub fn new(endpoint: &str, token: Option<String>, timeout: Duration) -> HttpClient {
        let endpoint = if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
            endpoint.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", endpoint.trim_end_matches('/'))
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        HttpClient {
            client,
            endpoint,
            token,
            timeout,
            tls: None,
        }
    }

    /// A client for an `https://` endpoint whose certificate the CA in `ca_pem` signed.
    pub fn with_ca(mut self, ca_pem: &std::path::Path) -> Result<HttpClient, ClientError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_pem)
            .map_err(|e| ClientError::Invalid(format!("{}: {e}", ca_pem.display())))?;
        for cert in certs {
            let cert =
                cert.map_err(|e| ClientError::Invalid(format!("{}: {e}", ca_pem.display())))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Invalid(format!("{}: {e}", ca_pem.display())))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        self.tls = Some(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
            config,
        )));
        Ok(self)
    }

    /// One request over a fresh TLS connection (the CLI makes few requests; no pooling).
    async fn send_tls(
        &self,
        connector: &tokio_rustls::TlsConnector,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let authority = self
            .endpoint
            .trim_start_matches("https://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let host = crate::rpc::tls::host_of(&authority).to_string();
        let addr = if authority.contains(':') {
            authority.clone()
        } else {
            format!("{authority}:443")
        };
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| e.to_string())?;
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender.send_request(req).await.map_err(|e| e.to_string())
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.endpoint, path));
        if let Some(t) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let req = builder
            .body(Full::new(body))
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let send = async {
            let resp = match &self.tls {
                Some(connector) => self.send_tls(connector, req).await.map_err(|reason| {
                    ClientError::Unreachable {
                        endpoint: self.endpoint.clone(),
                        reason,
                    }
                })?,
                None => self
                    .client
                    .request(req)
                    .await
                    .map_err(|e| ClientError::Unreachable {
                        endpoint: self.endpoint.clone(),
                        reason: error_chain(&e),
                    })?,
            };
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| ClientError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    pub async fn get(&self, key: &str, query: &str) -> Result<Reply, ClientError> {
        self.request(
            Method::GET,
            &format!("/v1/kv/{}{query}", encode_key(key)),
            &[],
            Bytes::new(),
        )
        .await
    }

    pub async fn put(
        &self,
        key: &str,
        value: Bytes,
        context: Option<&str>,
        query: &str,
    ) -> Result<Reply, ClientError> {
        let headers: Vec<(&str, String)> = context
            .map(|c| ("x-dynamo-context", c.to_string()))
            .into_iter()
            .collect();
        self.request(
            Method::PUT,
            &format!("/v1/kv/{}{query}", encode_key(key)),
            &headers,
            value,
        )
        .await
    }

    pub async fn delete(
        &self,
        key: &str,
        context: Option<&str>,
        query: &str,
    ) -> Result<Reply, ClientError> {
        let headers: Vec<(&str, String)> = context
            .map(|c| ("x-dynamo-context", c.to_string()))
            .into_iter()
            .collect();
        self.request(
            Method::DELETE,
            &format!("/v1/kv/{}{query}", encode_key(key)),
            &headers,
            Bytes::new(),
        )
        .await
    }

    pub async fn admin_get(&self, path: &str) -> Result<Reply, ClientError> {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn admin_post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<Reply, ClientError> {
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        self.request(
            Method::POST,
            path,
            &[("content-type", "application/json".into())],
            bytes,
        )
        .await
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(encode_key("a b/c"), "a%20b/c");
        assert_eq!(encode_key("€"), "%E2%82%AC");
        assert_eq!(
            crate::api::kv::percent_decode(&encode_key("x?y#z%")).unwrap(),
            b"x?y#z%"
        );
    }
}
