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

/// dynamo-rs over its HTTP API, one lane per member given. Like a real client it writes
/// with the last context it saw for a key, so an update replaces what the client knew of.
///
/// A write's answer covers only what its own context covered plus the new version, so two
/// updates of one key that overlap in time leave two siblings that neither answer covers
/// (that is the store's promise, not a defect). An application resolves them by reading;
/// so does this client: it notices when two of its own updates of a key overlapped (the
/// key's state changed while one was in flight) and reads the key before its next update,
/// within that update's measured time. Without this, a write-only workload would pile up
/// siblings on its hot keys until the store refuses them (`too_many_siblings`).
pub struct DynamoTarget {
    clients: Vec<Http1Pool>,
    keys: Vec<Mutex<FnvHashMap<String, KeyState>>>,
    label: String,
}

/// What this client knows of one key.
#[derive(Default)]
struct KeyState {
    /// The last context an answer carried.
    context: Option<String>,
    /// Counts the answers remembered, so an update can tell whether another one finished
    /// while it was in flight.
    generation: u64,
    /// Two of this client's updates overlapped: siblings exist that no remembered context
    /// covers, so the next update reads first.
    needs_read: bool,
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
            keys: (0..SHARDS)
                .map(|_| Mutex::new(FnvHashMap::default()))
                .collect(),
            label: label.to_string(),
        }))
    }

    fn client(&self, lane: usize) -> &Http1Pool {
        &self.clients[lane % self.clients.len()]
    }

    fn shard(&self, key: &str) -> &Mutex<FnvHashMap<String, KeyState>> {
        &self.keys[(xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % SHARDS as u64) as usize]
    }

    /// The context to write `key` with, whether to read first, and the generation seen.
    fn before_update(&self, key: &str) -> (Option<String>, bool, u64) {
        let shard = self.shard(key).lock();
        match shard.get(key) {
            Some(k) => (k.context.clone(), k.needs_read, k.generation),
            None => (None, false, 0),
        }
    }

    /// Remembers a read's context: it covers every version the read returned.
    fn remember_read(&self, key: &str, context: Option<&str>) {
        let mut shard = self.shard(key).lock();
        let k = shard.entry(key.to_string()).or_default();
        if let Some(c) = context {
            k.context = Some(c.to_string());
        }
        k.generation += 1;
        k.needs_read = false;
    }

    /// Remembers a write's context; an answer that finished while this write was in flight
    /// means the two overlapped and left siblings.
    fn remember_write(&self, key: &str, context: Option<&str>, started_at: u64) {
        let mut shard = self.shard(key).lock();
        let k = shard.entry(key.to_string()).or_default();
        if k.generation != started_at {
            k.needs_read = true;
        }
        if let Some(c) = context {
            k.context = Some(c.to_string());
        }
        k.generation += 1;
    }

    async fn get(&self, lane: usize, key: &str) -> Result<(), TargetError> {
        let path = format!("/v1/kv/{}", encode_key(key));
        let r = self.client(lane).request("GET", &path, &[], &[]).await?;
        match r.status {
            200 | 300 | 404 => {
                self.remember_read(key, r.header("x-dynamo-context"));
                Ok(())
            }
            status => Err(TargetError::Status {
                status,
                body: r.text(),
            }),
        }
    }

    async fn put(&self, lane: usize, key: &str, value: &Bytes) -> Result<(), TargetError> {
        let (mut context, mut read_first, mut generation) = self.before_update(key);
        let path = format!("/v1/kv/{}", encode_key(key));
        // One more round when the store refuses the write for its siblings: they came from
        // writers this client does not know of, and a read resolves them.
        let mut retried = false;
        loop {
            if read_first {
                self.get(lane, key).await?;
                (context, _, generation) = self.before_update(key);
            }
            let headers: Vec<(&str, &str)> = context
                .as_deref()
                .map(|c| ("x-dynamo-context", c))
                .into_iter()
                .collect();
            let r = self
                .client(lane)
                .request("PUT", &path, &headers, value)
                .await?;
            match r.status {
                204 => {
                    self.remember_write(key, r.header("x-dynamo-context"), generation);
                    return Ok(());
                }
                409 if !retried => {
                    retried = true;
                    read_first = true;
                }
                status => {
                    return Err(TargetError::Status {
                        status,
                        body: r.text(),
                    });
                }
            }
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
        Box::pin(self.get(lane, key))
    }

    fn update<'a>(
        &'a self,
        lane: usize,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move { self.put(lane, key, &value).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Arc<DynamoTarget> {
        DynamoTarget::new(&["127.0.0.1:1".to_string()], "t", None).expect("target")
    }

    #[test]
    fn sequential_updates_never_read_first() {
        let t = target();
        for i in 0..3 {
            let (_, read_first, generation) = t.before_update("k");
            assert!(!read_first);
            t.remember_write("k", Some(&format!("c{i}")), generation);
        }
        assert_eq!(t.before_update("k").0.as_deref(), Some("c2"));
    }

    #[test]
    fn overlapping_updates_make_the_next_one_read_first_and_a_read_clears_it() {
        let t = target();
        let (_, _, first) = t.before_update("k");
        let (_, _, second) = t.before_update("k");
        t.remember_write("k", Some("a"), first);
        assert!(!t.before_update("k").1, "one finished write is no overlap");
        t.remember_write("k", Some("b"), second);
        assert!(
            t.before_update("k").1,
            "the second finished after the first began"
        );
        t.remember_read("k", Some("r"));
        let (context, read_first, _) = t.before_update("k");
        assert_eq!((context.as_deref(), read_first), (Some("r"), false));
        assert!(!t.before_update("other").1);
    }
}
