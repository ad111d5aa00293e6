//! The HTTP interface (HTTP/1.1 and HTTP/2 on one port): the client key-value API
//! ([`kv`]), the admin API ([`admin`]), health, readiness and metrics.
//!
//! Every error is a JSON body `{"code": "...", "message": "..."}` with a stable `code`.

mod admin;
pub mod context;
pub mod kv;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::Secret;
use crate::node::Node;
use crate::rpc::transport::Listener;

pub type Body = Full<Bytes>;

/// Headers must arrive within this time (slow clients cannot hold connections forever).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A request's header section may hold at most this many fields and bytes; more is
/// answered `431` with the JSON error.
pub const MAX_HEADER_FIELDS: usize = 100;
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Header fields HTTP/1.1 parses before answering `431` itself, with an empty body. Above
/// [`MAX_HEADER_FIELDS`] so that most oversized requests reach [`route`] and get the JSON
/// error; hyper's buffer limit (about 400 KiB of headers) still applies.
const PARSED_HEADER_FIELDS: usize = 4 * MAX_HEADER_FIELDS;

/// The methods `/v1/kv/{key}` serves, as the `Allow` header lists them.
pub const KV_METHODS: &str = "GET, HEAD, PUT, POST, DELETE";

/// A JSON error response.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acks: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needed: Option<u32>,
    /// For `405`: the methods the resource serves (the `Allow` header).
    #[serde(skip)]
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            acks: None,
            needed: None,
            allow: None,
        }
    }

    /// `405` for a method `resource` does not serve, listing the ones it does.
    pub fn method_not_allowed(method: &Method, resource: &str, allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{resource} does not serve {method}; use one of {allow}"),
            )
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status;
        let mut resp = json_response(status, &self);
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn text_response(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Reads a request body of at most `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "value_too_large",
                format!("the body exceeds the limit of {limit} bytes"),
            ))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("could not read the body: {e}"),
        )),
    }
}

/// Checks `Authorization: Bearer <token>`; 401 when absent, 403 when wrong.
pub fn check_bearer(
    req: &Request<Incoming>,
    tokens: &[&Secret],
    node: &Node,
    api: &'static str,
) -> Result<(), ApiError> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => {
            node.metrics.auth_failures.with_label_values(&[api]).inc();
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this endpoint needs an Authorization: Bearer token",
            ))
        }
        Some(t)
            if tokens
                .iter()
                .any(|token| constant_time_eq(t.trim().as_bytes(), token.expose().as_bytes())) =>
        {
            Ok(())
        }
        Some(_) => {
            node.metrics.auth_failures.with_label_values(&[api]).inc();
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the token is not valid for this cluster",
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `431` when the request's header section is over [`MAX_HEADER_FIELDS`] or
/// [`MAX_HEADER_BYTES`].
fn check_header_size(headers: &http::HeaderMap) -> Result<(), ApiError> {
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers.len() > MAX_HEADER_FIELDS || bytes > MAX_HEADER_BYTES {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request has {} header fields of {bytes} bytes; the limit is {MAX_HEADER_FIELDS} fields and {MAX_HEADER_BYTES} bytes",
                headers.len()
            ),
        ));
    }
    Ok(())
}

fn is_kv_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::POST | Method::DELETE
    )
}

async fn route(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let result = if let Err(e) = check_header_size(req.headers()) {
        node.metrics.rejected.with_label_values(&["headers"]).inc();
        Err(e)
    } else if path.starts_with("/v1/kv/") && !is_kv_method(req.method()) {
        Err(ApiError::method_not_allowed(
            req.method(),
            "/v1/kv/{key}",
            KV_METHODS,
        ))
    } else if let Some(key) = path.strip_prefix("/v1/kv/") {
        // Bounded work in flight: past the limit, shed load with a retryable 503 rather
        // than queue without bound.
        match node.request_permits.clone().try_acquire_owned() {
            Ok(_permit) => {
                let key = key.to_string();
                kv::handle(&node, req, &key).await
            }
            Err(_) => {
                node.metrics.rejected.with_label_values(&["overload"]).inc();
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too many requests in flight on this member; retry shortly",
                ))
            }
        }
    } else if path == "/v1/kv" || path == "/v1/kv/" {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_key",
            "the key must not be empty",
        ))
    } else if path.starts_with("/v1/cluster") {
        admin::handle(&node, req, &path).await
    } else {
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => Ok(text_response(StatusCode::OK, "ok\n", "text/plain")),
            (&Method::GET, "/readyz") => Ok(match node.readiness() {
                Ok(()) => text_response(StatusCode::OK, "ready\n", "text/plain"),
                Err(reason) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason)
                    .into_response(),
            }),
            (&Method::GET, "/metrics") => Ok(text_response(
                StatusCode::OK,
                node.metrics.render(),
                "text/plain; version=0.0.4",
            )),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_such_endpoint",
                format!("no endpoint {} {path}", req.method()),
            )),
        }
    };
    result.unwrap_or_else(ApiError::into_response)
}

/// Serves HTTP on `listener` until `shutdown`, then lets open requests finish.
pub async fn serve(
    mut listener: Box<dyn Listener>,
    node: Arc<Node>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_headers(PARSED_HEADER_FIELDS)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let connections = Arc::new(tokio::sync::Semaphore::new(
        node.config.limits.max_connections,
    ));
    loop {
        let (conn, _addr) = tokio::select! {
            biased;
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over the connection limit: close at once (the client sees a reset and retries).
            node.metrics
                .rejected
                .with_label_values(&["connections"])
                .inc();
            drop(conn);
            continue;
        };
        let tls = node.tls.clone().filter(|t| t.http);
        let node = node.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // The TLS handshake runs here, not in the accept loop, so a slow client
            // cannot hold up others.
            let conn = match tls {
                Some(tls) => match tls.accept_http(conn).await {
                    Ok(c) => c,
                    Err(e) => {
                        node.metrics.rejected.with_label_values(&["tls"]).inc();
                        tracing::debug!(error = %e, "TLS handshake with an HTTP client failed");
                        return;
                    }
                },
                None => conn,
            };
            let n = node.clone();
            let service = service_fn(move |req| {
                let node = n.clone();
                async move { Ok::<_, Infallible>(route(node, req).await) }
            });
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(conn), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}
