//! Merkle-tree anti-entropy: replicas of a partition compare their trees ([`tree`]),
//! descend only into differing subtrees, and exchange only the keys of differing leaves,
//! merged by clock on both sides. It runs soon after start (so a member restarted with an
//! empty disk is refilled without waiting) and then every interval, throttled.
//!
//! The same task reaps tombstones: a key deleted longer ago than the grace period whose
//! every replica holds the identical tombstone is removed everywhere.

pub mod tree;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::NodeConfig;
use crate::env::Env;
use crate::membership::{ClusterView, Membership};
use crate::metrics::Metrics;
use crate::node::Services;
use crate::ring::{MemberId, PartitionId, key_hash};
use crate::rpc::{ErrorCode, RemoteError, Request, Response, RpcClient};
use crate::storage::Store;
use tree::{FANOUT, differing_leaves, differing_middles, leaf_of};

/// Delay before the first exchange after start.
const FIRST_EXCHANGE_AFTER: Duration = Duration::from_secs(2);
/// Keys fetched or pushed per request.
const KEY_BATCH: usize = 256;

/// What one exchange found and moved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExchangeReport {
    pub partitions_compared: u64,
    pub partitions_differing: u64,
    pub keys_compared: u64,
    /// Keys this member took from the peer.
    pub keys_pulled: u64,
    /// Keys the peer took from this member.
    pub keys_pushed: u64,
    /// Encoded bytes of every request and response of the exchange.
    pub bytes: u64,
}

impl ExchangeReport {
    fn add(&mut self, other: &ExchangeReport) {
        self.partitions_compared += other.partitions_compared;
        self.partitions_differing += other.partitions_differing;
        self.keys_compared += other.keys_compared;
        self.keys_pulled += other.keys_pulled;
        self.keys_pushed += other.keys_pushed;
        self.bytes += other.bytes;
    }
}

pub struct AntiEntropy {
    config: NodeConfig,
    env: Env,
    store: Store,
    membership: Arc<Membership>,
    rpc: RpcClient,
    metrics: Metrics,
    last: Mutex<Option<ExchangeReport>>,
}

fn encoded_len<T: Serialize>(v: &T) -> u64 {
    postcard::to_stdvec(v).map_or(0, |b| b.len() as u64)
}

impl AntiEntropy {
    pub fn new(services: &Services) -> Arc<AntiEntropy> {
        let s = services.clone();
        Arc::new(AntiEntropy {
            config: s.config,
            env: s.env,
            store: s.store,
            membership: s.membership,
            rpc: s.rpc,
            metrics: s.metrics,
            last: Mutex::new(None),
        })
    }

    /// The report of the last full round.
    pub fn last_report(&self) -> Option<ExchangeReport> {
        self.last.lock().clone()
    }

    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut wait = FIRST_EXCHANGE_AFTER.min(self.config.anti_entropy_interval);
        loop {
            tokio::select! {
                biased;
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            wait = self.config.anti_entropy_interval;
            let Some(view) = self.membership.view() else {
                wait = FIRST_EXCHANGE_AFTER;
                continue;
            };
            let report = self.exchange_all(&view).await;
            *self.last.lock() = Some(report);
            self.reap_tombstones(&view).await;
        }
    }

    /// One exchange with every live replica peer over the partitions both replicate.
    pub async fn exchange_all(&self, view: &ClusterView) -> ExchangeReport {
        let me = self.membership.me().clone();
        let mut by_peer: BTreeMap<MemberId, Vec<PartitionId>> = BTreeMap::new();
        for p in 0..view.settings.partitions {
            let replicas = view.read_set(p);
            if !replicas.contains(&me) {
                continue;
            }
            for peer in replicas.into_iter().filter(|m| *m != me) {
                by_peer.entry(peer).or_default().push(p);
            }
        }
        let mut total = ExchangeReport::default();
        for (peer, partitions) in by_peer {
            if !self.membership.is_alive(&peer) {
                continue;
            }
            match self.exchange(&peer, &partitions, view).await {
                Ok(r) => {
                    self.metrics
                        .ae_exchanges
                        .with_label_values(&[if r.partitions_differing > 0 {
                            "repaired"
                        } else {
                            "in_sync"
                        }])
                        .inc();
                    total.add(&r);
                }
                Err(e) => {
                    self.metrics
                        .ae_exchanges
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::debug!(peer = %peer, error = %e, "anti-entropy exchange failed");
                }
            }
        }
        total
    }

    async fn call(
        &self,
        peer: &MemberId,
        request: Request,
        report: &mut ExchangeReport,
    ) -> Result<Response, String> {
        let addr = self
            .membership
            .peer_addr(peer)
            .ok_or_else(|| format!("no address for {peer}"))?;
        report.bytes += encoded_len(&request);
        let response = self
            .rpc
            .call(&addr, request, self.config.request_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let n = encoded_len(&response);
        report.bytes += n;
        self.metrics.ae_bytes.inc_by(n);
        Ok(response)
    }

    /// Compares and repairs `partitions` with `peer`, in both directions.
    pub async fn exchange(
        &self,
        peer: &MemberId,
        partitions: &[PartitionId],
        view: &ClusterView,
    ) -> Result<ExchangeReport, String> {
        let mut report = ExchangeReport::default();
        let theirs = match self
            .call(
                peer,
                Request::MerkleRoots {
                    partitions: partitions.to_vec(),
                },
                &mut report,
            )
            .await?
        {
            Response::Roots(r) => r,
            other => return Err(format!("unexpected answer {other:?}")),
        };
        report.partitions_compared = partitions.len() as u64;
        let differing: Vec<PartitionId> = theirs
            .into_iter()
            .filter(|&(p, root)| self.store.merkle_root(p) != root)
            .map(|(p, _)| p)
            .collect();
        report.partitions_differing = differing.len() as u64;
        for p in differing {
            self.repair_partition(peer, p, view, &mut report).await?;
        }
        Ok(report)
    }

    async fn repair_partition(
        &self,
        peer: &MemberId,
        p: PartitionId,
        view: &ClusterView,
        report: &mut ExchangeReport,
    ) -> Result<(), String> {
        let their_middles = match self
            .call(
                peer,
                Request::MerkleNodes {
                    partition: p,
                    middles: None,
                },
                report,
            )
            .await?
        {
            Response::Nodes(n) => n,
            other => return Err(format!("unexpected answer {other:?}")),
        };
        let our_middles: Vec<u64> = self.store.with_tree(p, |t| {
            t.map_or_else(|| vec![0; FANOUT], |t| t.middle().to_vec())
        });
        let middles = differing_middles(&our_middles, &their_middles);
        if middles.is_empty() {
            return Ok(());
        }
        let request = Request::MerkleNodes {
            partition: p,
            middles: Some(middles.iter().map(|&m| m as u16).collect()),
        };
        let their_leaves = match self.call(peer, request, report).await? {
            Response::Nodes(n) => n,
            other => return Err(format!("unexpected answer {other:?}")),
        };
        let mut leaves: BTreeSet<usize> = BTreeSet::new();
        for (i, &m) in middles.iter().enumerate() {
            let theirs = their_leaves
                .get(i * FANOUT..(i + 1) * FANOUT)
                .unwrap_or(&[]);
            let ours: Vec<u64> = self.store.with_tree(p, |t| {
                t.map_or_else(|| vec![0; FANOUT], |t| t.leaves_under(m).to_vec())
            });
            leaves.extend(differing_leaves(m, &ours, theirs));
        }
        if leaves.is_empty() {
            return Ok(());
        }
        let request = Request::LeafEntries {
            partition: p,
            leaves: leaves.iter().map(|&l| l as u16).collect(),
        };
        let their_entries: BTreeMap<Bytes, u64> = match self.call(peer, request, report).await? {
            Response::Entries(e) => e.into_iter().collect(),
            other => return Err(format!("unexpected answer {other:?}")),
        };
        // Our own side has no peer-imposed bound: its size is what we hold.
        let our_entries: BTreeMap<Bytes, u64> = self
            .leaf_entries(p, leaves, usize::MAX)
            .await?
            .into_iter()
            .collect();
        report.keys_compared += (their_entries.len() + our_entries.len()) as u64;
        // Keys whose versions differ, or that one side lacks.
        let mut to_fetch: Vec<Bytes> = their_entries
            .iter()
            .filter(|(k, d)| our_entries.get(*k) != Some(d))
            .map(|(k, _)| k.clone())
            .collect();
        let to_push_only: Vec<Bytes> = our_entries
            .keys()
            .filter(|k| !their_entries.contains_key(*k))
            .cloned()
            .collect();
        let mode = view.settings.conflicts;
        let mut push: Vec<(Bytes, u64)> = Vec::new();
        to_fetch.sort();
        for chunk in to_fetch.chunks(KEY_BATCH) {
            let started = Instant::now();
            let fetched = match self
                .call(
                    peer,
                    Request::Fetch {
                        partition: p,
                        keys: chunk.to_vec(),
                    },
                    report,
                )
                .await?
            {
                Response::Objects(o) => o,
                other => return Err(format!("unexpected answer {other:?}")),
            };
            let mut bytes = 0u64;
            for (key, obj) in fetched {
                if obj.validate().is_err() {
                    continue;
                }
                bytes += encoded_len(&obj);
                let merged = self
                    .store
                    .merge(p, key.clone(), obj, mode)
                    .await
                    .map_err(|e| e.to_string())?;
                if merged.changed {
                    report.keys_pulled += 1;
                    self.metrics.ae_keys_repaired.inc();
                }
                // The peer lacks what we had (or we merged something new): send it back.
                if their_entries.get(&key) != Some(&merged.object.digest()) {
                    push.push((key, merged.object.digest()));
                }
            }
            self.throttle(bytes, started).await;
        }
        for key in to_push_only {
            push.push((key, 0));
        }
        for (key, _) in push {
            let Some(obj) = self.store.get(p, &key).map_err(|e| e.to_string())? else {
                continue;
            };
            let request = Request::Replicate {
                partition: p,
                key,
                object: obj,
                hint_for: None,
                mode,
            };
            let started = Instant::now();
            let size = encoded_len(&request);
            match self.call(peer, request, report).await? {
                Response::Merged { changed } => {
                    if changed {
                        report.keys_pushed += 1;
                        self.metrics.ae_keys_repaired.inc();
                    }
                }
                other => return Err(format!("unexpected answer {other:?}")),
            }
            self.throttle(size, started).await;
        }
        Ok(())
    }

    /// `(key, digest)` of the local keys of `p` that fall into `leaves`. The scan decodes
    /// every record of the partition, so it runs on the blocking pool, never on a runtime
    /// worker (where it would stall every request that worker serves).
    async fn leaf_entries(
        &self,
        p: PartitionId,
        leaves: BTreeSet<usize>,
        max_answer_bytes: usize,
    ) -> Result<Vec<(Bytes, u64)>, String> {
        let q = self.partition_count();
        let store = self.store.clone();
        self.store
            .run_blocking(move || scan_leaf_entries(&store, p, q, &leaves, max_answer_bytes))
            .await
            .map_err(|e| e.to_string())?
    }

    /// The cluster's partition count (0 before this member knows a ring).
    fn partition_count(&self) -> u32 {
        self.membership.view().map_or(0, |v| v.settings.partitions)
    }

    async fn throttle(&self, bytes: u64, started: Instant) {
        let rate = self.config.transfer_rate_bytes;
        if rate == 0 || bytes == 0 {
            return;
        }
        let budget = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let spent = started.elapsed();
        if budget > spent {
            tokio::time::sleep(budget - spent).await;
        }
    }

    /// Serves the peer side of an exchange and reaps. Every list in a request is checked
    /// against what the tree can hold and deduplicated first, so the size of the answer is
    /// bounded before it is built (see docs/security.md for the numbers).
    pub async fn handle(&self, peer: &MemberId, request: Request) -> Response {
        let bad_request = |message: String| {
            tracing::warn!(%peer, %message, "refused an anti-entropy request");
            Response::Error(RemoteError::new(ErrorCode::BadRequest, message))
        };
        match request {
            Request::MerkleRoots { partitions } => {
                let q = self.partition_count();
                if q == 0 {
                    return Response::Error(RemoteError::new(
                        ErrorCode::Unavailable,
                        "this member has no ring yet",
                    ));
                }
                match distinct_partitions(partitions, q) {
                    Ok(ps) => Response::Roots(
                        ps.into_iter()
                            .map(|p| (p, self.store.merkle_root(p)))
                            .collect(),
                    ),
                    Err(e) => bad_request(e),
                }
            }
            Request::MerkleNodes {
                partition,
                middles: None,
            } => Response::Nodes(self.store.with_tree(partition, |t| {
                t.map_or_else(|| vec![0; FANOUT], |t| t.middle().to_vec())
            })),
            Request::MerkleNodes {
                partition,
                middles: Some(ms),
            } => match distinct_middles(ms) {
                // At most FANOUT middles of FANOUT leaves each: 1,024 hashes.
                Ok(ms) => Response::Nodes(self.store.with_tree(partition, |t| {
                    ms.iter()
                        .flat_map(|&m| {
                            t.map_or_else(|| vec![0; FANOUT], |t| t.leaves_under(m).to_vec())
                        })
                        .collect()
                })),
                Err(e) => bad_request(e),
            },
            Request::LeafEntries { partition, leaves } => match distinct_leaves(leaves) {
                Ok(leaves) => match self.leaf_entries(partition, leaves, MAX_ANSWER_BYTES).await {
                    Ok(e) => Response::Entries(e),
                    Err(e) => Response::Error(RemoteError::new(ErrorCode::Storage, e)),
                },
                Err(e) => bad_request(e),
            },
            Request::Fetch { partition, keys } => {
                let store = self.store.clone();
                let fetched = self
                    .store
                    .run_blocking(move || fetch_bounded(&store, partition, keys, MAX_ANSWER_BYTES))
                    .await;
                match fetched {
                    Ok(Ok(objects)) => Response::Objects(objects),
                    Ok(Err(e)) | Err(e) => {
                        Response::Error(RemoteError::new(ErrorCode::Storage, e.to_string()))
                    }
                }
            }
            Request::Reap {
                partition,
                key,
                digest,
            } => match self.store.reap(partition, key, digest).await {
                Ok(done) => {
                    if done {
                        self.metrics.tombstones_reaped.inc();
                    }
                    Response::Reaped(done)
                }
                Err(e) => Response::Error(RemoteError::new(ErrorCode::Storage, e.to_string())),
            },
            other => Response::Error(RemoteError::new(
                ErrorCode::BadRequest,
                format!("{} is not an anti-entropy request", other.kind()),
            )),
        }
    }

    /// Removes tombstones older than the grace period that every replica holds unchanged.
    /// Only the first primary of a partition reaps it, and never while ownership moves.
    pub async fn reap_tombstones(&self, view: &ClusterView) -> u64 {
        if view.in_transition() {
            return 0;
        }
        let me = self.membership.me().clone();
        let now = self.env.clock.now_ms();
        let grace = self.config.tombstone_grace.as_millis() as u64;
        let mut reaped = 0;
        let mut after: Option<(PartitionId, Bytes)> = None;
        loop {
            let batch = match self
                .store
                .tombstones(after.as_ref().map(|(p, k)| (*p, k.as_ref())), 512)
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "listing tombstones failed");
                    return reaped;
                }
            };
            let Some(last) = batch.last() else {
                return reaped;
            };
            after = Some((last.0, last.1.clone()));
            for (p, key, ts) in batch {
                if now.saturating_sub(ts) < grace {
                    continue;
                }
                let replicas = view.read_set(p);
                if replicas.first() != Some(&me)
                    || !replicas.iter().all(|m| self.membership.is_alive(m))
                {
                    continue;
                }
                if self.reap_one(p, &key, &replicas).await {
                    reaped += 1;
                }
            }
        }
    }

    async fn reap_one(&self, p: PartitionId, key: &Bytes, replicas: &[MemberId]) -> bool {
        let Ok(Some(local)) = self.store.get(p, key) else {
            return false;
        };
        if !local.is_deleted() {
            return false;
        }
        let digest = local.digest();
        let mut scratch = ExchangeReport::default();
        for m in replicas.iter().filter(|m| **m != *self.membership.me()) {
            match self
                .call(
                    m,
                    Request::Read {
                        partition: p,
                        key: key.clone(),
                        hint_for: None,
                    },
                    &mut scratch,
                )
                .await
            {
                Ok(Response::Object(Some(o))) if o.digest() == digest => {}
                _ => return false,
            }
        }
        let mut all = true;
        for m in replicas {
            let done = if m == self.membership.me() {
                self.store
                    .reap(p, key.clone(), digest)
                    .await
                    .unwrap_or(false)
            } else {
                matches!(
                    self.call(
                        m,
                        Request::Reap {
                            partition: p,
                            key: key.clone(),
                            digest
                        },
                        &mut scratch
                    )
                    .await,
                    Ok(Response::Reaped(true))
                )
            };
            all &= done;
        }
        if all {
            self.metrics.tombstones_reaped.inc();
        }
        all
    }
}

/// Most encoded bytes of one `LeafEntries` or `Fetch` answer: half the frame limit, so an
/// answer is refused or cut while it is built, not after.
pub const MAX_ANSWER_BYTES: usize = crate::rpc::frame::MAX_FRAME_BYTES / 2;
/// Most distinct keys one `Fetch` answer holds.
pub const MAX_FETCH_KEYS: usize = KEY_BATCH * 4;

/// The partitions of a `MerkleRoots` request, deduplicated in their order. A list longer
/// than the ring, or naming a partition the ring does not have, is refused: an answer
/// then holds at most `q` roots (about 13 bytes each).
pub fn distinct_partitions(
    partitions: Vec<PartitionId>,
    q: u32,
) -> Result<Vec<PartitionId>, String> {
    if partitions.len() > q as usize {
        return Err(format!(
            "asks for {} partitions; the ring has {q}",
            partitions.len()
        ));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(partitions.len());
    for p in partitions {
        if p >= q {
            return Err(format!("partition {p} is outside the ring of {q}"));
        }
        if seen.insert(p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// The middle nodes of a `MerkleNodes` request, deduplicated in their order (the answer
/// lists their leaves in the same order). At most [`FANOUT`], each below it.
pub fn distinct_middles(middles: Vec<u16>) -> Result<Vec<usize>, String> {
    if middles.len() > FANOUT {
        return Err(format!(
            "asks for {} middle nodes; a tree has {FANOUT}",
            middles.len()
        ));
    }
    let mut out: Vec<usize> = Vec::with_capacity(middles.len());
    for m in middles.into_iter().map(usize::from) {
        if m >= FANOUT {
            return Err(format!("middle node {m} is outside a tree of {FANOUT}"));
        }
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

/// The leaves of a `LeafEntries` request: at most [`tree::LEAVES`], each below it.
pub fn distinct_leaves(leaves: Vec<u16>) -> Result<BTreeSet<usize>, String> {
    if leaves.len() > tree::LEAVES {
        return Err(format!(
            "asks for {} leaves; a tree has {}",
            leaves.len(),
            tree::LEAVES
        ));
    }
    let mut out = BTreeSet::new();
    for l in leaves.into_iter().map(usize::from) {
        if l >= tree::LEAVES {
            return Err(format!("leaf {l} is outside a tree of {}", tree::LEAVES));
        }
        out.insert(l);
    }
    Ok(out)
}

/// Bytes one `(key, digest)` entry takes in an answer: the key, its length prefix and the
/// digest (postcard varints, at most 5 and 10 bytes).
fn entry_bytes(key: &[u8]) -> usize {
    key.len() + 5 + 10
}

/// Scans partition `p` page by page for the keys in `leaves`; refuses once the answer
/// would pass `max_answer_bytes`, before any more of it is built.
fn scan_leaf_entries(
    store: &Store,
    p: PartitionId,
    q: u32,
    leaves: &BTreeSet<usize>,
    max_answer_bytes: usize,
) -> Result<Vec<(Bytes, u64)>, String> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut after: Option<Bytes> = None;
    loop {
        let page = store
            .scan_partition(p, after.as_deref(), 1024)
            .map_err(|e| e.to_string())?;
        let last = page.last().map(|(k, _)| k.clone());
        for (key, obj) in page {
            if leaves.contains(&leaf_of(key_hash(&key), q)) {
                bytes = bytes.saturating_add(entry_bytes(&key));
                if bytes > max_answer_bytes {
                    return Err(format!(
                        "the entries of {} leaves of partition {p} exceed {max_answer_bytes} bytes; ask for fewer leaves",
                        leaves.len()
                    ));
                }
                out.push((key, obj.digest()));
            }
        }
        match last {
            Some(k) => after = Some(k),
            None => return Ok(out),
        }
    }
}

/// The records of `keys` (deduplicated, at most [`MAX_FETCH_KEYS`]) until the answer
/// would pass `max_answer_bytes`; keys left out are found again by the next exchange.
fn fetch_bounded(
    store: &Store,
    partition: PartitionId,
    keys: Vec<Bytes>,
    max_answer_bytes: usize,
) -> Result<Vec<(Bytes, crate::clock::Object)>, crate::storage::StorageError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for key in keys {
        if seen.len() >= MAX_FETCH_KEYS {
            break;
        }
        if !seen.insert(key.clone()) {
            continue;
        }
        if let Some(obj) = store.get(partition, &key)? {
            let size = entry_bytes(&key)
                + postcard::experimental::serialized_size(&obj).unwrap_or(usize::MAX / 2);
            // The first record is always sent, so a single large one still moves.
            if !out.is_empty() && bytes.saturating_add(size) > max_answer_bytes {
                break;
            }
            bytes = bytes.saturating_add(size);
            out.push((key, obj));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ActorId, ConflictMode, Object, VersionVector, WriteRequest};
    use crate::node::Node;

    async fn member() -> Arc<Node> {
        let mut config =
            NodeConfig::for_local("ae-0", 0, 0, std::path::PathBuf::from("/nonexistent"));
        config.bootstrap = true;
        config.settings.n = 1;
        config.settings.r = 1;
        config.settings.w = 1;
        config.settings.partitions = 64;
        Node::start(
            config,
            Env::production(1),
            Arc::new(crate::storage::MemoryEngine::new()),
        )
        .await
        .unwrap()
    }

    fn object(value: Vec<u8>) -> Object {
        Object::default()
            .write(WriteRequest {
                actor: ActorId(5),
                min_counter: 0,
                context: &VersionVector::new(),
                value: Some(Bytes::from(value)),
                timestamp_ms: 1,
                mode: ConflictMode::Siblings,
            })
            .0
    }

    fn refused(r: &Response) -> bool {
        matches!(r, Response::Error(e) if e.code == ErrorCode::BadRequest)
    }

    #[tokio::test]
    async fn hostile_tree_requests_are_refused_or_deduplicated() {
        let node = member().await;
        let ae = &node.antientropy;
        let hostile = MemberId::new("hostile");
        let peer = &hostile;
        let ask = move |r: Request| ae.handle(peer, r);

        // Roots: more partitions than the ring, or one outside it, is refused; duplicates
        // are answered once.
        let too_many = Request::MerkleRoots {
            partitions: (0..65).collect(),
        };
        assert!(refused(&ask(too_many).await));
        let outside = Request::MerkleRoots {
            partitions: vec![64],
        };
        assert!(refused(&ask(outside).await));
        let repeated = Request::MerkleRoots {
            partitions: vec![3; 64],
        };
        assert!(matches!(ask(repeated).await, Response::Roots(r) if r.len() == 1));

        // Middle nodes: at most FANOUT, each inside the tree, duplicates once.
        let too_many = Request::MerkleNodes {
            partition: 0,
            middles: Some(vec![0; FANOUT + 1]),
        };
        assert!(refused(&ask(too_many).await));
        let outside = Request::MerkleNodes {
            partition: 0,
            middles: Some(vec![FANOUT as u16]),
        };
        assert!(refused(&ask(outside).await));
        let repeated = Request::MerkleNodes {
            partition: 0,
            middles: Some(vec![5; FANOUT]),
        };
        assert!(matches!(ask(repeated).await, Response::Nodes(n) if n.len() == FANOUT));

        // Leaves: at most LEAVES, each inside the tree.
        let too_many = Request::LeafEntries {
            partition: 0,
            leaves: vec![1; tree::LEAVES + 1],
        };
        assert!(refused(&ask(too_many).await));
        let outside = Request::LeafEntries {
            partition: 0,
            leaves: vec![tree::LEAVES as u16],
        };
        assert!(refused(&ask(outside).await));
        node.shutdown().await;
    }

    #[tokio::test]
    async fn fetch_answers_each_key_once_and_within_its_byte_bound() {
        let node = member().await;
        let key = Bytes::from_static(b"big");
        node.store
            .merge(
                0,
                key.clone(),
                object(vec![7; 64 << 10]),
                ConflictMode::Siblings,
            )
            .await
            .unwrap();
        // The same 64 KiB record asked 4,000 times is read and sent once, not 4,000 times
        // (256 MiB).
        let r = node
            .antientropy
            .handle(
                &MemberId::new("hostile"),
                Request::Fetch {
                    partition: 0,
                    keys: vec![key.clone(); 4000],
                },
            )
            .await;
        assert!(matches!(&r, Response::Objects(o) if o.len() == 1), "{r:?}");

        // Distinct keys stop at the byte bound: with a bound of 200 KiB, three 64 KiB
        // records fit, the fourth does not.
        for i in 0..8u8 {
            node.store
                .merge(
                    0,
                    Bytes::from(vec![b'k', i]),
                    object(vec![i; 64 << 10]),
                    ConflictMode::Siblings,
                )
                .await
                .unwrap();
        }
        let keys: Vec<Bytes> = (0..8u8).map(|i| Bytes::from(vec![b'k', i])).collect();
        let got = fetch_bounded(&node.store, 0, keys.clone(), 200 << 10).unwrap();
        assert_eq!(got.len(), 3);
        // One record larger than the bound is still sent alone, so it can be repaired.
        let got = fetch_bounded(&node.store, 0, keys, 1 << 10).unwrap();
        assert_eq!(got.len(), 1);
        node.shutdown().await;
    }

    #[tokio::test]
    async fn leaf_entries_refuse_an_answer_past_the_bound_while_building_it() {
        let node = member().await;
        for i in 0..100u32 {
            node.store
                .merge(
                    0,
                    Bytes::from(format!("key-{i:04}")),
                    object(b"v".to_vec()),
                    ConflictMode::Siblings,
                )
                .await
                .unwrap();
        }
        let all: BTreeSet<usize> = (0..tree::LEAVES).collect();
        let entries = scan_leaf_entries(&node.store, 0, 64, &all, usize::MAX).unwrap();
        assert_eq!(entries.len(), 100);
        // Each entry counts 8 + 15 bytes: a bound of 50 entries' worth is refused.
        let err = scan_leaf_entries(&node.store, 0, 64, &all, 50 * 23).unwrap_err();
        assert!(err.contains("ask for fewer leaves"), "{err}");
        node.shutdown().await;
    }

    #[tokio::test]
    async fn handoff_pull_size_is_clamped_by_the_source() {
        let node = member().await;
        // 64 records of 128 KiB: 8 MiB in partition 0.
        for i in 0..64u8 {
            node.store
                .merge(
                    0,
                    Bytes::from(vec![b'h', i]),
                    object(vec![i; 128 << 10]),
                    ConflictMode::Siblings,
                )
                .await
                .unwrap();
        }
        let max = crate::handoff::MAX_PULL_PAGE_BYTES as usize;
        match node.handoff.serve_pull(0, None, u32::MAX).await {
            Response::Page { items, done } => {
                let bytes: usize = items
                    .iter()
                    .flat_map(|(_, o)| &o.siblings)
                    .map(|s| s.value.as_ref().map_or(0, Bytes::len))
                    .sum();
                assert!(
                    !done,
                    "a page asked for u32::MAX bytes held the whole partition"
                );
                assert!(bytes <= max + (128 << 10), "{bytes} bytes in one page");
                assert!(bytes >= max, "the page stopped early: {bytes} bytes");
            }
            other => panic!("{other:?}"),
        }
        // A page of 0 bytes still moves on by one record.
        match node.handoff.serve_pull(0, None, 0).await {
            Response::Page { items, done } => assert!(items.len() == 1 && !done),
            other => panic!("{other:?}"),
        }
        node.shutdown().await;
    }

    #[test]
    fn list_bounds() {
        assert_eq!(
            distinct_partitions(vec![2, 1, 2, 1], 4).unwrap(),
            vec![2, 1]
        );
        assert!(distinct_partitions(vec![0; 5], 4).is_err());
        assert!(distinct_partitions(vec![4], 4).is_err());
        assert_eq!(distinct_middles(vec![3, 1, 3]).unwrap(), vec![3, 1]);
        assert!(distinct_middles(vec![32]).is_err());
        assert_eq!(distinct_leaves(vec![9, 9, 2]).unwrap().len(), 2);
        assert!(distinct_leaves(vec![1024]).is_err());
        assert_eq!(crate::handoff::clamp_page_bytes(0), 1);
        assert_eq!(
            crate::handoff::clamp_page_bytes(u32::MAX),
            crate::handoff::MAX_PULL_PAGE_BYTES
        );
    }
}
