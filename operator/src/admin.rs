//! The node admin API (`/v1/cluster/*`) as the operator uses it, behind [`NodeAdmin`] so the
//! state machine can be driven by a fake in tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

/// `GET /v1/cluster/members`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembersReport {
    /// The member that answered.
    pub member: String,
    pub claimant: Option<String>,
    /// 0 while the member has no cluster view (not bootstrapped, not joined).
    #[serde(default)]
    pub view_version: u64,
    #[serde(default)]
    pub members: Vec<MemberInfo>,
}

impl MembersReport {
    /// Whether the answering member belongs to a cluster.
    pub fn has_cluster(&self) -> bool {
        self.view_version > 0 || self.claimant.is_some()
    }

    pub fn get(&self, id: &str) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.id == id)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberInfo {
    pub id: String,
    #[serde(default)]
    pub peer_addr: String,
    #[serde(default)]
    pub http_addr: String,
    /// `joining`, `up`, `leaving` or `removed`.
    pub status: String,
    #[serde(default)]
    pub alive: bool,
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub weight: u32,
    #[serde(default)]
    pub synced_epoch: u64,
    #[serde(default)]
    pub pulls_pending: u32,
    #[serde(default)]
    pub partitions_owned: u32,
}

/// `GET /v1/cluster/ring` (the fields the operator uses).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RingReport {
    pub epoch: u64,
    #[serde(default)]
    pub base_epoch: u64,
    #[serde(default)]
    pub in_transition: bool,
    /// Fewest and most partitions owned by one member.
    #[serde(default)]
    pub balance: [u32; 2],
    #[serde(default)]
    pub members: Vec<RingMember>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RingMember {
    pub id: String,
    #[serde(default)]
    pub weight: u32,
    #[serde(default)]
    pub partitions: u32,
}

/// `GET /v1/cluster/handoffs` (the fields the operator uses).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoffsReport {
    pub in_transition: bool,
    #[serde(default)]
    pub base_epoch: u64,
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub pending: u64,
    #[serde(default)]
    pub pending_by_member: BTreeMap<String, u64>,
}

impl HandoffsReport {
    /// No ownership is moving and nothing is left to transfer.
    pub fn settled(&self) -> bool {
        !self.in_transition && self.pending == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapOutcome {
    Created,
    /// 409 `already_member`: the member already belongs to a cluster.
    AlreadyMember,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// Connection refused, DNS failure, timeout: the member is not reachable (yet).
    #[error("{member} is unreachable: {message}")]
    Unreachable { member: String, message: String },
    /// The member answered with an error (`{"code","message"}` body).
    #[error("{member} answered {status} {code}: {message}")]
    Api {
        member: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{member} sent an unreadable answer: {message}")]
    Decode { member: String, message: String },
    /// The CA to verify the member's HTTPS certificate with is missing or unusable.
    #[error("cannot verify {member} over HTTPS: {message}")]
    Tls { member: String, message: String },
}

impl AdminError {
    pub fn status(&self) -> Option<u16> {
        match self {
            AdminError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            AdminError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A member to call: its pod name (the member id) and how to reach its HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub member: String,
    pub base_url: String,
    /// For an `https://` base URL: the PEM CA bundle that must have signed the member's
    /// certificate (the `ca.crt` of the cluster's `spec.peerTls` Secret).
    pub https_ca: Option<Arc<[u8]>>,
}

/// Builds a member's base URL from a template with `{pod}`, `{service}` and `{namespace}`
/// placeholders (default `http://{pod}.{service}.{namespace}.svc:8080`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressTemplate {
    template: String,
    https_ca: Option<Arc<[u8]>>,
}

impl Default for AddressTemplate {
    fn default() -> Self {
        AddressTemplate::new(DEFAULT_ADDRESS_TEMPLATE)
    }
}

pub const DEFAULT_ADDRESS_TEMPLATE: &str = "http://{pod}.{service}.{namespace}.svc:8080";

impl AddressTemplate {
    pub fn new(template: impl Into<String>) -> Self {
        AddressTemplate {
            template: template.into(),
            https_ca: None,
        }
    }

    /// The same addresses for members that serve HTTPS: `http://` becomes `https://` and
    /// members must present a certificate that `ca_pem` signed.
    pub fn with_https(&self, ca_pem: Arc<[u8]>) -> Self {
        let template = match self.template.strip_prefix("http://") {
            Some(rest) => format!("https://{rest}"),
            None => self.template.clone(),
        };
        AddressTemplate {
            template,
            https_ca: Some(ca_pem),
        }
    }

    pub fn endpoint(&self, pod: &str, service: &str, namespace: &str) -> Endpoint {
        let base_url = self
            .template
            .replace("{pod}", pod)
            .replace("{service}", service)
            .replace("{namespace}", namespace);
        Endpoint {
            member: pod.to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            https_ca: self.https_ca.clone(),
        }
    }
}

/// The admin calls the operator makes. Every call carries the cluster token.
#[async_trait]
pub trait NodeAdmin: Send + Sync {
    async fn members(&self, at: &Endpoint, token: &str) -> Result<MembersReport, AdminError>;
    async fn ring(&self, at: &Endpoint, token: &str) -> Result<RingReport, AdminError>;
    async fn handoffs(&self, at: &Endpoint, token: &str) -> Result<HandoffsReport, AdminError>;
    /// `POST /v1/cluster/bootstrap` on the member that creates the cluster.
    async fn bootstrap(&self, at: &Endpoint, token: &str) -> Result<BootstrapOutcome, AdminError>;
    /// `POST /v1/cluster/join {"member": ...}` sent to a member of the cluster.
    async fn join(&self, at: &Endpoint, token: &str, member: &str) -> Result<(), AdminError>;
    /// `POST /v1/cluster/leave/<member>` sent to a member of the cluster.
    async fn leave(&self, at: &Endpoint, token: &str, member: &str) -> Result<(), AdminError>;
}

/// Ring and handoff reports of one member, fetched together.
pub struct ClusterReports {
    pub ring: Result<RingReport, AdminError>,
    pub handoffs: Result<HandoffsReport, AdminError>,
}

impl ClusterReports {
    pub async fn fetch(admin: &dyn NodeAdmin, at: &Endpoint, token: &str) -> Self {
        let (ring, handoffs) = tokio::join!(admin.ring(at, token), admin.handoffs(at, token));
        ClusterReports { ring, handoffs }
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// [`NodeAdmin`] over HTTP/1 (hyper-util): plain HTTP, or HTTPS verified against the CA the
/// endpoint names (one pooled client per CA).
#[derive(Clone)]
pub struct HttpNodeAdmin {
    plain: Client<HttpConnector, Full<Bytes>>,
    https: Arc<Mutex<HashMap<Arc<[u8]>, HttpsClient>>>,
    timeout: Duration,
}

impl HttpNodeAdmin {
    pub fn new(timeout: Duration) -> Self {
        let plain = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(Self::connector(timeout));
        HttpNodeAdmin {
            plain,
            https: Arc::default(),
            timeout,
        }
    }

    fn connector(timeout: Duration) -> HttpConnector {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        connector
    }

    /// The HTTPS client that trusts exactly `ca_pem` (built once per CA).
    fn https_client(&self, ca_pem: &Arc<[u8]>) -> Result<HttpsClient, String> {
        let mut clients = self.https.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(ca_pem) {
            return Ok(client.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| format!("unreadable CA bundle: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable CA certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err("the CA bundle holds no certificate".into());
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = Self::connector(self.timeout);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        clients.insert(ca_pem.clone(), client.clone());
        Ok(client)
    }

    async fn call(
        &self,
        at: &Endpoint,
        token: &str,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), AdminError> {
        let unreachable = |message: String| AdminError::Unreachable {
            member: at.member.clone(),
            message,
        };
        let url = format!("{}{}", at.base_url, path);
        let mut builder = Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some(json) => {
                builder = builder.header(http::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(json.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder
            .body(body)
            .map_err(|e| unreachable(format!("bad request {url}: {e}")))?;
        let pending = if url.starts_with("https://") {
            let ca = at.https_ca.as_ref().ok_or_else(|| AdminError::Tls {
                member: at.member.clone(),
                message: format!("{url}: no CA to verify the member with"),
            })?;
            let client = self.https_client(ca).map_err(|message| AdminError::Tls {
                member: at.member.clone(),
                message,
            })?;
            client.request(request)
        } else {
            self.plain.request(request)
        };
        let response = tokio::time::timeout(self.timeout, pending)
            .await
            .map_err(|_| unreachable(format!("no answer from {url} within {:?}", self.timeout)))?
            .map_err(|e| unreachable(format!("{url}: {}", error_chain(&e))))?;
        let status = response.status();
        let bytes = tokio::time::timeout(self.timeout, response.into_body().collect())
            .await
            .map_err(|_| unreachable(format!("{url}: body timed out")))?
            .map_err(|e| unreachable(format!("{url}: {e}")))?
            .to_bytes();
        Ok((status, bytes))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        at: &Endpoint,
        token: &str,
        path: &str,
    ) -> Result<T, AdminError> {
        let (status, bytes) = self.call(at, token, Method::GET, path, None).await?;
        if !status.is_success() {
            return Err(api_error(&at.member, status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| AdminError::Decode {
            member: at.member.clone(),
            message: format!("{path}: {e}"),
        })
    }
}

/// An error with its causes: hyper's "client error (Connect)" alone hides e.g. which
/// certificate check failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn api_error(member: &str, status: StatusCode, body: &[u8]) -> AdminError {
    #[derive(Deserialize)]
    struct ErrorBody {
        code: Option<String>,
        message: Option<String>,
    }
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (code, message) = match parsed {
        Some(b) => (b.code.unwrap_or_default(), b.message.unwrap_or_default()),
        None => (
            String::new(),
            String::from_utf8_lossy(body).trim().to_string(),
        ),
    };
    AdminError::Api {
        member: member.to_string(),
        status: status.as_u16(),
        code,
        message,
    }
}

#[async_trait]
impl NodeAdmin for HttpNodeAdmin {
    async fn members(&self, at: &Endpoint, token: &str) -> Result<MembersReport, AdminError> {
        self.get_json(at, token, "/v1/cluster/members").await
    }

    async fn ring(&self, at: &Endpoint, token: &str) -> Result<RingReport, AdminError> {
        self.get_json(at, token, "/v1/cluster/ring").await
    }

    async fn handoffs(&self, at: &Endpoint, token: &str) -> Result<HandoffsReport, AdminError> {
        self.get_json(at, token, "/v1/cluster/handoffs").await
    }

    async fn bootstrap(&self, at: &Endpoint, token: &str) -> Result<BootstrapOutcome, AdminError> {
        let (status, bytes) = self
            .call(at, token, Method::POST, "/v1/cluster/bootstrap", None)
            .await?;
        match status {
            s if s.is_success() => Ok(BootstrapOutcome::Created),
            StatusCode::CONFLICT => match api_error(&at.member, status, &bytes) {
                e if e.code() == Some("already_member") => Ok(BootstrapOutcome::AlreadyMember),
                e => Err(e),
            },
            _ => Err(api_error(&at.member, status, &bytes)),
        }
    }

    async fn join(&self, at: &Endpoint, token: &str, member: &str) -> Result<(), AdminError> {
        let (status, bytes) = self
            .call(
                at,
                token,
                Method::POST,
                "/v1/cluster/join",
                Some(serde_json::json!({ "member": member })),
            )
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(api_error(&at.member, status, &bytes))
        }
    }

    async fn leave(&self, at: &Endpoint, token: &str, member: &str) -> Result<(), AdminError> {
        let (status, bytes) = self
            .call(
                at,
                token,
                Method::POST,
                &format!("/v1/cluster/leave/{member}"),
                None,
            )
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(api_error(&at.member, status, &bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_template_fills_placeholders() {
        let t = AddressTemplate::default();
        let e = t.endpoint("db-1", "db-peers", "prod");
        assert_eq!(e.base_url, "http://db-1.db-peers.prod.svc:8080");
        assert_eq!(e.member, "db-1");
        let local = AddressTemplate::new("http://127.0.0.1:18080/").endpoint("db-0", "x", "y");
        assert_eq!(local.base_url, "http://127.0.0.1:18080");
        assert_eq!(local.https_ca, None);
    }

    #[test]
    fn https_template_switches_the_scheme_and_carries_the_ca() {
        let ca: Arc<[u8]> = Arc::from(&b"-----BEGIN CERTIFICATE-----"[..]);
        let e = AddressTemplate::default()
            .with_https(ca.clone())
            .endpoint("db-1", "db-peers", "prod");
        assert_eq!(e.base_url, "https://db-1.db-peers.prod.svc:8080");
        assert_eq!(e.https_ca, Some(ca));
    }

    #[tokio::test]
    async fn https_without_a_usable_ca_is_refused_before_connecting() {
        let admin = HttpNodeAdmin::new(Duration::from_secs(1));
        // Port 9 on loopback: nothing is contacted, the CA is checked first.
        let mut at = Endpoint {
            member: "db-0".into(),
            base_url: "https://127.0.0.1:9".into(),
            https_ca: None,
        };
        let err = admin.members(&at, "token").await.unwrap_err();
        assert!(matches!(err, AdminError::Tls { .. }), "{err}");
        assert!(err.to_string().contains("no CA"), "{err}");
        at.https_ca = Some(Arc::from(&b"not a certificate"[..]));
        let err = admin.members(&at, "token").await.unwrap_err();
        assert!(matches!(err, AdminError::Tls { .. }), "{err}");
        assert!(err.to_string().contains("no certificate"), "{err}");
    }

    #[test]
    fn reports_parse_the_node_json() {
        let members: MembersReport = serde_json::from_str(
            r#"{"member":"db-0","claimant":"db-0","viewVersion":4,"members":[{"id":"db-0","peerAddr":"a:7070","httpAddr":"a:8080","status":"up","alive":true,"generation":3,"weight":1,"syncedEpoch":2,"pullsPending":0,"partitionsOwned":86}]}"#,
        )
        .unwrap();
        assert!(members.has_cluster());
        assert_eq!(members.get("db-0").unwrap().partitions_owned, 86);
        let ring: RingReport = serde_json::from_str(
            r#"{"epoch":3,"baseEpoch":2,"inTransition":true,"balance":[85,86],"spacingViolations":0,"spacingFeasible":true,"settings":{"partitions":256,"n":3,"r":2,"w":2,"conflicts":"siblings","max_siblings":100},"members":[{"id":"db-0","weight":1,"partitions":86}],"owners":["db-0"],"viewVersion":4}"#,
        )
        .unwrap();
        assert_eq!(ring.balance, [85, 86]);
        let handoffs: HandoffsReport =
            serde_json::from_str(r#"{"inTransition":false,"baseEpoch":3,"epoch":3,"pending":0,"pendingByMember":{"db-0":0},"local":{"base_epoch":3}}"#).unwrap();
        assert!(handoffs.settled());
        let none: MembersReport = serde_json::from_str(
            r#"{"member":"db-1","claimant":null,"viewVersion":0,"members":[]}"#,
        )
        .unwrap();
        assert!(!none.has_cluster());
    }

    #[test]
    fn error_bodies_are_parsed() {
        let e = api_error(
            "db-0",
            StatusCode::CONFLICT,
            br#"{"code":"refused","message":"would drop below n"}"#,
        );
        assert_eq!(e.status(), Some(409));
        assert_eq!(e.code(), Some("refused"));
        let raw = api_error("db-0", StatusCode::BAD_GATEWAY, b"oops");
        assert!(raw.to_string().contains("oops"));
    }
}
