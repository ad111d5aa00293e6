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
        let our_entries: BTreeMap<Bytes, u64> =
            self.leaf_entries(p, &leaves)?.into_iter().collect();
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

    /// `(key, digest)` of the local keys of `p` that fall into `leaves`.
    fn leaf_entries(
        &self,
        p: PartitionId,
        leaves: &BTreeSet<usize>,
    ) -> Result<Vec<(Bytes, u64)>, String> {
        let q = self.membership.view().map_or(0, |v| v.settings.partitions);
        let mut out = Vec::new();
        let mut after: Option<Bytes> = None;
        loop {
            let page = self
                .store
                .scan_partition(p, after.as_deref(), 1024)
                .map_err(|e| e.to_string())?;
            let last = page.last().map(|(k, _)| k.clone());
            for (key, obj) in page {
                if leaves.contains(&leaf_of(key_hash(&key), q)) {
                    out.push((key, obj.digest()));
                }
            }
            match last {
                Some(k) => after = Some(k),
                None => return Ok(out),
            }
        }
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

    /// Serves the peer side of an exchange and reaps.
    pub async fn handle(&self, peer: &MemberId, request: Request) -> Response {
        let _ = peer;
        match request {
            Request::MerkleRoots { partitions } => Response::Roots(
                partitions
                    .into_iter()
                    .map(|p| (p, self.store.merkle_root(p)))
                    .collect(),
            ),
            Request::MerkleNodes {
                partition,
                middles: None,
            } => Response::Nodes(self.store.with_tree(partition, |t| {
                t.map_or_else(|| vec![0; FANOUT], |t| t.middle().to_vec())
            })),
            Request::MerkleNodes {
                partition,
                middles: Some(ms),
            } => Response::Nodes(self.store.with_tree(partition, |t| {
                ms.iter()
                    .flat_map(|&m| {
                        t.map_or_else(
                            || vec![0; FANOUT],
                            |t| t.leaves_under(usize::from(m)).to_vec(),
                        )
                    })
                    .collect()
            })),
            Request::LeafEntries { partition, leaves } => {
                let leaves: BTreeSet<usize> = leaves.into_iter().map(usize::from).collect();
                match self.leaf_entries(partition, &leaves) {
                    Ok(e) => Response::Entries(e),
                    Err(e) => Response::Error(RemoteError::new(ErrorCode::Storage, e)),
                }
            }
            Request::Fetch { partition, keys } => {
                let mut out = Vec::with_capacity(keys.len());
                for key in keys.into_iter().take(KEY_BATCH * 4) {
                    match self.store.get(partition, &key) {
                        Ok(Some(obj)) => out.push((key, obj)),
                        Ok(None) => {}
                        Err(e) => {
                            return Response::Error(RemoteError::new(
                                ErrorCode::Storage,
                                e.to_string(),
                            ));
                        }
                    }
                }
                Response::Objects(out)
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
