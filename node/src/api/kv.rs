//! `GET | PUT | DELETE /v1/kv/{key}`.
//!
//! * The key is the rest of the path, percent-decoded; it must be valid UTF-8, non-empty
//!   and at most the key limit.
//! * `X-Dynamo-Context` carries the causal context (signed, see [`super::context`]): GET
//!   returns it, PUT and DELETE take the one from the read they follow and return one that
//!   covers what that context covered plus the new version — never a sibling the writer
//!   was not shown.
//! * A PUT without a context is a blind write: it adds a sibling beside what is there.
//!   `PUT ?overwrite=true` replaces what the key holds now (the coordinator reads at R and
//!   writes with that read's context), and so does a DELETE without a context; both answer
//!   `X-Dynamo-Replaced: <live values replaced>`. A DELETE that finds no value answers 404.
//! * A GET with several concurrent values answers `300 Multiple Choices` with a JSON body
//!   `{"context": "...", "siblings": [{"value": "<base64>", "timestamp_ms": n}, ...]}`;
//!   writing with that context replaces them all.
//! * Query parameters: `r`, `w` (1..=N) override the quorums; `conflicts=siblings|lww`;
//!   `overwrite=true|false` (PUT). Any other parameter is refused (`400 bad_query`).

use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;

use super::{ApiError, Body, json_response, read_body};
use crate::api::context::ContextCodec;
use crate::clock::{ConflictMode, Dot, Object, VersionVector, write_context};
use crate::node::Node;
use crate::replication::{ClientOp, ClientRequest, ClientResponse, RefusalCode};

pub const CONTEXT_HEADER: &str = "x-dynamo-context";

#[derive(Serialize)]
struct SiblingsBody {
    context: String,
    siblings: Vec<SiblingBody>,
    /// Versions of concurrent deletes (tombstones) alongside the values.
    tombstones: Vec<String>,
}

#[derive(Serialize)]
struct SiblingBody {
    value: String,
    timestamp_ms: u64,
    version: String,
}

/// A write's version as clients see it: the coordinator's actor (hex) and its counter.
pub fn format_dot(dot: Dot) -> String {
    format!("{:016x}.{}", dot.actor.0, dot.counter)
}

/// Versions of every sibling: values as `actor.counter`, tombstones with a `~` suffix.
fn versions_header(object: &Object) -> String {
    object
        .siblings
        .iter()
        .map(|s| {
            if s.is_tombstone() {
                format!("{}~", format_dot(s.dot))
            } else {
                format_dot(s.dot)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Percent-decodes a path segment into bytes; `None` if an escape is malformed.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Validates a raw (still percent-encoded) key from the path.
pub fn parse_key(raw: &str, max_key_bytes: usize) -> Result<Bytes, ApiError> {
    let decoded = percent_decode(raw).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_key_encoding",
            "the key has a malformed percent-escape",
        )
    })?;
    if decoded.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_key",
            "the key must not be empty",
        ));
    }
    if decoded.len() > max_key_bytes {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "key_too_long",
            format!(
                "the key is {} bytes; the limit is {max_key_bytes}",
                decoded.len()
            ),
        ));
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "key_not_utf8",
            "the key must be valid UTF-8 after percent-decoding",
        ));
    }
    Ok(Bytes::from(decoded))
}

struct Options {
    r: Option<usize>,
    w: Option<usize>,
    conflicts: Option<ConflictMode>,
    overwrite: bool,
}

fn parse_options(query: Option<&str>, n: usize) -> Result<Options, ApiError> {
    let mut opts = Options {
        r: None,
        w: None,
        conflicts: None,
        overwrite: false,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let quorum = |v: &str| -> Result<usize, ApiError> {
            v.parse::<usize>()
                .ok()
                .filter(|q| (1..=n).contains(q))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_quorum",
                        format!("{name}={v:?} must be a number from 1 to N = {n}"),
                    )
                })
        };
        match name {
            "r" => opts.r = Some(quorum(value)?),
            "w" => opts.w = Some(quorum(value)?),
            "conflicts" => {
                opts.conflicts = Some(value.parse().map_err(|e: String| {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_conflicts", e)
                })?)
            }
            "overwrite" => {
                opts.overwrite = match value {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    other => {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "bad_query",
                            format!("overwrite={other:?} must be true or false"),
                        ));
                    }
                }
            }
            // A misspelt parameter (`rr=3`) silently ignored would leave the client
            // believing it asked for something it did not get.
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    format!(
                        "unknown query parameter {other:?}; the parameters are r, w, conflicts and overwrite"
                    ),
                ));
            }
        }
    }
    Ok(opts)
}

/// The context the client sent with a write of `key`, `None` if it sent none.
fn parse_context(
    req: &Request<Incoming>,
    codec: &ContextCodec,
    key: &[u8],
) -> Result<Option<VersionVector>, ApiError> {
    match req.headers().get(CONTEXT_HEADER) {
        None => Ok(None),
        Some(v) => {
            let s = v.to_str().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_context",
                    "the context header is not ASCII",
                )
            })?;
            codec
                .decode(key, s)
                .map(Some)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_context", e.to_string()))
        }
    }
}

fn set_header(resp: &mut Response<Body>, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

pub async fn handle(
    node: &Node,
    req: Request<Incoming>,
    raw_key: &str,
) -> Result<Response<Body>, ApiError> {
    if !node.config.client_tokens.is_empty() {
        let tokens: Vec<&crate::config::Secret> = node.config.client_tokens.iter().collect();
        super::check_bearer(&req, &tokens, node, "client")?;
    }
    let op_name = match *req.method() {
        Method::GET | Method::HEAD => "get",
        Method::PUT | Method::POST => "put",
        Method::DELETE => "delete",
        _ => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET, PUT or DELETE",
            ));
        }
    };
    let started = Instant::now();
    let result = handle_op(node, req, raw_key).await;
    let status = match &result {
        Ok(r) => match r.status() {
            StatusCode::OK | StatusCode::NO_CONTENT => "ok",
            StatusCode::MULTIPLE_CHOICES => "siblings",
            StatusCode::NOT_FOUND => "not_found",
            _ => "other",
        },
        Err(e) => e.code,
    };
    node.metrics
        .requests
        .with_label_values(&[op_name, status])
        .inc();
    node.metrics
        .request_duration
        .with_label_values(&[op_name])
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn handle_op(
    node: &Node,
    req: Request<Incoming>,
    raw_key: &str,
) -> Result<Response<Body>, ApiError> {
    let key = parse_key(raw_key, node.config.limits.max_key_bytes)?;
    let n = node
        .membership
        .view()
        .map_or(node.config.settings.n, |v| v.settings.n);
    let opts = parse_options(req.uri().query(), n)?;
    let limit = node.config.limits.max_value_bytes;
    let op = match *req.method() {
        Method::GET | Method::HEAD => ClientOp::Get,
        Method::PUT | Method::POST => {
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            if declared.is_some_and(|l| l > limit) {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "value_too_large",
                    format!("the value exceeds the limit of {limit} bytes"),
                ));
            }
            let context = parse_context(&req, &node.contexts, &key)?;
            if context.is_some() && opts.overwrite {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    "overwrite=true replaces what the key holds now; it cannot be combined with a context, which says what to replace",
                ));
            }
            // A client that sends its body slowly cannot hold the request open forever.
            let value = tokio::time::timeout(
                node.config.request_timeout,
                read_body(req.into_body(), limit),
            )
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request body did not arrive in time",
                )
            })??;
            match context {
                Some(context) => ClientOp::Put { value, context },
                None if opts.overwrite => ClientOp::Replace { value: Some(value) },
                None => ClientOp::Put {
                    value,
                    context: VersionVector::new(),
                },
            }
        }
        Method::DELETE => match parse_context(&req, &node.contexts, &key)? {
            Some(context) => ClientOp::Delete { context },
            None => ClientOp::Replace { value: None },
        },
        _ => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET, PUT or DELETE",
            ));
        }
    };
    let sent_context = match &op {
        ClientOp::Put { context, .. } | ClientOp::Delete { context } => context.clone(),
        ClientOp::Get | ClientOp::Replace { .. } => VersionVector::new(),
    };
    let request = ClientRequest {
        key: key.clone(),
        op,
        r: opts.r,
        w: opts.w,
        conflicts: opts.conflicts,
    };
    let timeout = node.config.request_timeout * 2;
    let response = tokio::time::timeout(timeout, node.replicator.handle_client(request, false))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request did not complete in time",
            )
        })?;
    #[cfg(feature = "sim")]
    let sent_context = match &response {
        ClientResponse::Written { object, .. }
            if node
                .replicator
                .faults
                .over_cover_write_contexts
                .load(std::sync::atomic::Ordering::Relaxed) =>
        {
            object.context.clone()
        }
        _ => sent_context,
    };
    render(&node.contexts, &key, &sent_context, response)
}

/// A write's 204: the context it answers covers `seen` (what the client's context covered,
/// or what the coordinator read for it) plus the new version, and nothing else.
fn render_written(
    codec: &ContextCodec,
    key: &[u8],
    seen: &VersionVector,
    dot: Dot,
    acks: u32,
    w: u32,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let context = write_context(seen, dot);
    set_header(&mut resp, CONTEXT_HEADER, &codec.encode(key, &context));
    set_header(&mut resp, "x-dynamo-version", &format_dot(dot));
    set_header(&mut resp, "x-dynamo-acks", &acks.to_string());
    set_header(&mut resp, "x-dynamo-w", &w.to_string());
    resp
}

fn render(
    codec: &ContextCodec,
    key: &[u8],
    sent_context: &VersionVector,
    response: ClientResponse,
) -> Result<Response<Body>, ApiError> {
    match response {
        ClientResponse::Read { object, replies, r } => {
            Ok(render_read(codec, key, &object, replies, r))
        }
        ClientResponse::Written { dot, acks, w, .. } => {
            Ok(render_written(codec, key, sent_context, dot, acks, w))
        }
        ClientResponse::Replaced {
            dot,
            acks,
            w,
            context,
            replaced,
            ..
        } => {
            let mut resp = render_written(codec, key, &context, dot, acks, w);
            set_header(&mut resp, "x-dynamo-replaced", &replaced.to_string());
            Ok(resp)
        }
        ClientResponse::NothingToReplace => {
            let mut resp = ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no value for this key; nothing was deleted",
            )
            .into_response();
            set_header(&mut resp, "x-dynamo-replaced", "0");
            Ok(resp)
        }
        ClientResponse::Unavailable {
            needed,
            acks,
            reason,
        } => {
            let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason);
            e.acks = Some(acks);
            e.needed = Some(needed);
            Err(e)
        }
        ClientResponse::Refused { code, message } => Err(match code {
            RefusalCode::TooManySiblings => {
                ApiError::new(StatusCode::CONFLICT, "too_many_siblings", message)
            }
            RefusalCode::NotReady => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
            }
            // Retryable: a full disk or a failed fsync can clear (the engine reopens
            // itself), and nothing was acknowledged.
            RefusalCode::Storage => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_error", message)
            }
        }),
    }
}

fn render_read(
    codec: &ContextCodec,
    key: &[u8],
    object: &Object,
    replies: u32,
    r: u32,
) -> Response<Body> {
    let context = codec.encode(key, &object.context);
    let values: Vec<_> = object.values().collect();
    let mut resp = match values.as_slice() {
        [] => {
            let mut resp =
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no value for this key")
                    .into_response();
            if object.context.is_empty() {
                return resp;
            }
            set_header(&mut resp, "x-dynamo-context", &context);
            set_header(&mut resp, "x-dynamo-versions", &versions_header(object));
            resp
        }
        [one] => {
            let mut resp = Response::new(Full::new(one.value.clone().unwrap_or_default()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
        many => json_response(
            StatusCode::MULTIPLE_CHOICES,
            &SiblingsBody {
                context: context.clone(),
                siblings: many
                    .iter()
                    .map(|s| SiblingBody {
                        value: base64::engine::general_purpose::STANDARD
                            .encode(s.value.as_deref().unwrap_or_default()),
                        timestamp_ms: s.timestamp_ms,
                        version: format_dot(s.dot),
                    })
                    .collect(),
                tombstones: object
                    .siblings
                    .iter()
                    .filter(|s| s.is_tombstone())
                    .map(|s| format_dot(s.dot))
                    .collect(),
            },
        ),
    };
    set_header(&mut resp, "x-dynamo-context", &context);
    set_header(&mut resp, "x-dynamo-versions", &versions_header(object));
    set_header(&mut resp, "x-dynamo-replies", &replies.to_string());
    set_header(&mut resp, "x-dynamo-r", &r.to_string());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        assert_eq!(
            parse_key("hello%20world", 100).unwrap(),
            Bytes::from_static(b"hello world")
        );
        assert_eq!(parse_key("a/b", 100).unwrap(), Bytes::from_static(b"a/b"));
        assert_eq!(parse_key("", 100).unwrap_err().code, "empty_key");
        assert_eq!(parse_key("%zz", 100).unwrap_err().code, "bad_key_encoding");
        assert_eq!(parse_key("%4", 100).unwrap_err().code, "bad_key_encoding");
        assert_eq!(parse_key("%ff%fe", 100).unwrap_err().code, "key_not_utf8");
        assert_eq!(
            parse_key(&"k".repeat(101), 100).unwrap_err().code,
            "key_too_long"
        );
        assert_eq!(parse_key("%E2%82%AC", 100).unwrap(), Bytes::from("€"));
    }

    #[test]
    fn options_are_validated() {
        let o = parse_options(Some("r=1&w=3&conflicts=lww"), 3).unwrap();
        assert_eq!(
            (o.r, o.w, o.conflicts),
            (Some(1), Some(3), Some(ConflictMode::Lww))
        );
        assert_eq!(
            parse_options(Some("w=4"), 3).err().unwrap().code,
            "bad_quorum"
        );
        assert_eq!(
            parse_options(Some("r=0"), 3).err().unwrap().code,
            "bad_quorum"
        );
        assert_eq!(
            parse_options(Some("r=x"), 3).err().unwrap().code,
            "bad_quorum"
        );
        assert!(parse_options(Some("overwrite=true"), 3).unwrap().overwrite);
        assert!(!parse_options(Some("overwrite=false"), 3).unwrap().overwrite);
        assert!(!parse_options(None, 3).unwrap().overwrite);
        assert_eq!(
            parse_options(Some("overwrite=maybe"), 3)
                .err()
                .unwrap()
                .code,
            "bad_query"
        );
        let unknown = parse_options(Some("rr=3"), 3).err().unwrap();
        assert_eq!(unknown.code, "bad_query");
        assert!(unknown.message.contains("rr"), "{}", unknown.message);
        assert_eq!(
            parse_options(Some("conflicts=maybe"), 3)
                .err()
                .unwrap()
                .code,
            "bad_conflicts"
        );
    }
}
