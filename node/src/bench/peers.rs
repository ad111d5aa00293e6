//! Targets for the stores dynamo-rs is compared with (`bench/compare.sh`): etcd through its
//! JSON gRPC gateway, and nginx serving one static file (the cost of an HTTP hop, the
//! upper limit for reads). Cassandra is in `cassandra.rs` (behind the `cassandra` feature).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::Deserialize;

use super::http::Http1Pool;
use super::target::{Target, TargetError};
use crate::rpc::transport::BoxFuture;

/// One HTTP client per endpoint, one lane each.
struct Endpoints {
    clients: Vec<Http1Pool>,
}

impl Endpoints {
    fn new(endpoints: &[String]) -> Result<Endpoints, TargetError> {
        if endpoints.is_empty() {
            return Err(TargetError::Other("no endpoints".into()));
        }
        Ok(Endpoints {
            clients: endpoints
                .iter()
                .map(|e| Http1Pool::new(e, None, Duration::from_secs(10)))
                .collect::<Result<_, _>>()?,
        })
    }

    fn client(&self, lane: usize) -> &Http1Pool {
        &self.clients[lane % self.clients.len()]
    }
}

/// The body of `POST /v3/kv/put`.
pub fn etcd_put_body(key: &str, value: &[u8]) -> Bytes {
    let body = serde_json::json!({
        "key": B64.encode(key.as_bytes()),
        "value": B64.encode(value),
    });
    Bytes::from(body.to_string())
}

/// The body of `POST /v3/kv/range` for one key. Linearizable (etcd's default: the read
/// goes through the leader's read index), not `serializable`.
pub fn etcd_range_body(key: &str) -> Bytes {
    let body = serde_json::json!({ "key": B64.encode(key.as_bytes()) });
    Bytes::from(body.to_string())
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<RangeKv>,
}

#[derive(Deserialize)]
struct RangeKv {
    key: String,
    #[serde(default)]
    value: String,
}

/// The value of `key` in a `/v3/kv/range` response: `None` if the key is absent. The
/// gateway omits empty fields, so an empty value has no `value`.
pub fn etcd_range_value(body: &[u8], key: &str) -> Result<Option<Vec<u8>>, TargetError> {
    let r: RangeResponse = serde_json::from_slice(body)
        .map_err(|e| TargetError::Other(format!("etcd range response: {e}")))?;
    let Some(kv) = r.kvs.first() else {
        return Ok(None);
    };
    let got = B64
        .decode(&kv.key)
        .map_err(|e| TargetError::Other(format!("etcd key: {e}")))?;
    if got != key.as_bytes() {
        return Err(TargetError::Other(format!(
            "etcd returned key {:?} for {key:?}",
            String::from_utf8_lossy(&got)
        )));
    }
    B64.decode(&kv.value)
        .map(Some)
        .map_err(|e| TargetError::Other(format!("etcd value: {e}")))
}

/// etcd v3 over its JSON gRPC gateway (`/v3/kv/put`, `/v3/kv/range`), requests spread
/// over the members round-robin (followers forward writes and read-index requests to the
/// leader, as they do for gRPC clients).
pub struct EtcdTarget {
    endpoints: Endpoints,
    label: String,
}

impl EtcdTarget {
    pub fn new(endpoints: &[String], label: &str) -> Result<Arc<EtcdTarget>, TargetError> {
        Ok(Arc::new(EtcdTarget {
            endpoints: Endpoints::new(endpoints)?,
            label: label.to_string(),
        }))
    }

    async fn post(&self, lane: usize, path: &str, body: Bytes) -> Result<Bytes, TargetError> {
        let r = self
            .endpoints
            .client(lane)
            .request("POST", path, &[("content-type", "application/json")], &body)
            .await?;
        if r.status != 200 {
            return Err(TargetError::Status {
                status: r.status,
                body: r.text(),
            });
        }
        Ok(r.body)
    }
}

impl Target for EtcdTarget {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn lanes(&self) -> usize {
        self.endpoints.clients.len()
    }

    fn read<'a>(&'a self, lane: usize, key: &'a str) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            let body = self
                .post(lane, "/v3/kv/range", etcd_range_body(key))
                .await?;
            etcd_range_value(&body, key).map(|_| ())
        })
    }

    fn update<'a>(
        &'a self,
        lane: usize,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            let body = self
                .post(lane, "/v3/kv/put", etcd_put_body(key, &value))
                .await?;
            // A successful put answers with at least the response header (its revision).
            let v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| TargetError::Other(format!("etcd put response: {e}")))?;
            if v.get("header").is_none() {
                return Err(TargetError::Other(format!(
                    "etcd put response without header: {}",
                    String::from_utf8_lossy(&body)
                )));
            }
            Ok(())
        })
    }
}

/// The path nginx serves for a read of `key`: `/kv/<key>` (its config maps every such
/// path to the same static file).
pub fn nginx_path(key: &str) -> String {
    format!("/kv/{}", crate::cli::client::encode_key(key))
}

/// nginx serving one static file for every key: reads only. The cost of one HTTP request
/// and response on this machine, with no storage behind it.
pub struct NginxTarget {
    endpoints: Endpoints,
    label: String,
}

impl NginxTarget {
    pub fn new(endpoints: &[String], label: &str) -> Result<Arc<NginxTarget>, TargetError> {
        Ok(Arc::new(NginxTarget {
            endpoints: Endpoints::new(endpoints)?,
            label: label.to_string(),
        }))
    }
}

impl Target for NginxTarget {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn lanes(&self) -> usize {
        self.endpoints.clients.len()
    }

    fn read<'a>(&'a self, lane: usize, key: &'a str) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            let r = self
                .endpoints
                .client(lane)
                .request("GET", &nginx_path(key), &[], &[])
                .await?;
            match r.status {
                200 if !r.body.is_empty() => Ok(()),
                status => Err(TargetError::Status {
                    status,
                    body: r.text(),
                }),
            }
        })
    }

    fn update<'a>(
        &'a self,
        _lane: usize,
        _key: &'a str,
        _value: Bytes,
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            Err(TargetError::Other(
                "nginx serves a static file: reads only (workload c)".into(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_put_body_is_base64_json() {
        let body = etcd_put_body("user000000000001", b"\x00\xffhello");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["key"], "dXNlcjAwMDAwMDAwMDAwMQ==");
        assert_eq!(
            B64.decode(v["value"].as_str().unwrap()).unwrap(),
            b"\x00\xffhello"
        );
        let range: serde_json::Value =
            serde_json::from_slice(&etcd_range_body("user000000000001")).unwrap();
        assert_eq!(
            range,
            serde_json::json!({"key": "dXNlcjAwMDAwMDAwMDAwMQ=="})
        );
    }

    #[test]
    fn etcd_range_response_decodes() {
        // As etcd 3.6's gateway answers (int64 fields are JSON strings).
        let body = br#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"5","raft_term":"2"},"kvs":[{"key":"dXNlcjE=","create_revision":"2","mod_revision":"5","version":"4","value":"aGk="}],"count":"1"}"#;
        assert_eq!(
            etcd_range_value(body, "user1").unwrap(),
            Some(b"hi".to_vec())
        );
        // Absent key: no kvs at all.
        let absent = br#"{"header":{"revision":"5"}}"#;
        assert_eq!(etcd_range_value(absent, "user1").unwrap(), None);
        // Empty value: the gateway omits the field.
        let empty = br#"{"header":{},"kvs":[{"key":"dXNlcjE=","version":"1"}],"count":"1"}"#;
        assert_eq!(etcd_range_value(empty, "user1").unwrap(), Some(Vec::new()));
        // Another key, bad base64 and bad JSON are errors.
        assert!(etcd_range_value(body, "user2").is_err());
        let bad = br#"{"kvs":[{"key":"dXNlcjE=","value":"!!"}]}"#;
        assert!(etcd_range_value(bad, "user1").is_err());
        assert!(etcd_range_value(b"<html>", "user1").is_err());
    }

    #[test]
    fn nginx_paths_are_escaped() {
        assert_eq!(nginx_path("user000000000001"), "/kv/user000000000001");
        assert_eq!(nginx_path("a b"), "/kv/a%20b");
    }
}
