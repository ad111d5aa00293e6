//! What the load generator drives: a store behind two operations.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fnv::FnvHashMap;
use parking_lot::Mutex;
use thiserror::Error;

use super::http::{Http1Pool, HttpError};
use crate::cli::client::encode_key;
use crate::rpc::transport::BoxFuture;

#[derive(Debug, Error)]
pub enum TargetError {
    #[error("the store answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{0}")]
    Other(String),
}

pub trait Target: Send + Sync + 'static {
    fn name(&self) -> String;
    /// How many routes requests can take: one per endpoint when the target spreads them
    /// over several, one when its driver routes them itself. The generator gives each
    /// request a lane, round-robin, and at a fixed rate bounds each lane's outstanding
    /// requests apart, as an application keeps a connection pool per member.
    fn lanes(&self) -> usize {
        1
    }
    fn read<'a>(&'a self, lane: usize, key: &'a str) -> BoxFuture<'a, Result<(), TargetError>>;
    /// Writes `value` as the key's new value.
    fn update<'a>(
        &'a self,
        lane: usize,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), TargetError>>;
}

/// dynamo-rs over its HTTP API, one lane per member given. Like a
/// real client it remembers the last context it saw per key and writes with it, so
/// updates replace what the client read instead of piling up siblings.
pub struct DynamoTarget {
    clients: Vec<Http1Pool>,
    contexts: Vec<Mutex<FnvHashMap<String, String>>>,
    label: String,
}

const SHARDS: usize = 64;

impl DynamoTarget {
    pub fn new(
        endpoints: &[String],
        label: &str,
        token: Option<String>,
    ) -> Result<Arc<DynamoTarget>, TargetError> {
        if endpoints.is_empty() {
            return Err(TargetError::Other("no endpoints".into()));
        }
        Ok(Arc::new(DynamoTarget {
            clients: endpoints
                .iter()
                .map(|e| Http1Pool::new(e, token.clone(), Duration::from_secs(10)))
                .collect::<Result<_, _>>()?,
            contexts: (0..SHARDS)
                .map(|_| Mutex::new(FnvHashMap::default()))
                .collect(),
            label: label.to_string(),
        }))
    }

    fn client(&self, lane: usize) -> &Http1Pool {
        &self.clients[lane % self.clients.len()]
    }

    fn shard(&self, key: &str) -> &Mutex<FnvHashMap<String, String>> {
        &self.contexts[(xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % SHARDS as u64) as usize]
    }

    fn remember(&self, key: &str, context: Option<&str>) {
        if let Some(c) = context {
            self.shard(key)
                .lock()
                .insert(key.to_string(), c.to_string());
        }
    }
}

impl Target for DynamoTarget {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn lanes(&self) -> usize {
        self.clients.len()
    }

    fn read<'a>(&'a self, lane: usize, key: &'a str) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            let path = format!("/v1/kv/{}", encode_key(key));
            let r = self.client(lane).request("GET", &path, &[], &[]).await?;
            match r.status {
                200 | 300 | 404 => {
                    self.remember(key, r.header("x-dynamo-context"));
                    Ok(())
                }
                status => Err(TargetError::Status {
                    status,
                    body: r.text(),
                }),
            }
        })
    }

    fn update<'a>(
        &'a self,
        lane: usize,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            let context = self.shard(key).lock().get(key).cloned();
            let headers: Vec<(&str, &str)> = context
                .as_deref()
                .map(|c| ("x-dynamo-context", c))
                .into_iter()
                .collect();
            let path = format!("/v1/kv/{}", encode_key(key));
            let r = self
                .client(lane)
                .request("PUT", &path, &headers, &value)
                .await?;
            match r.status {
                204 => {
                    self.remember(key, r.header("x-dynamo-context"));
                    Ok(())
                }
                status => Err(TargetError::Status {
                    status,
                    body: r.text(),
                }),
            }
        })
    }
}
