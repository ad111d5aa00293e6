//! Ownership handoff: filling the target ring before it replaces the base ring.
//!
//! When the claimant publishes a target ring, each member works out the partitions it
//! replicates in the target but not in the base (its *pull duties*). It starts pulling
//! only once every live member has acknowledged the target ring (see
//! [`Membership::acknowledge_ring`]): until then a member still on the older view may
//! acknowledge a write that reached only the old replicas, after the pull went by. Each
//! partition is pulled page by page from the old replica it replaces (or, if that one is
//! down, from every live old replica), merging every record by clock, then compared by
//! Merkle tree with the other live old replicas: a write acknowledged by `W` of them need
//! not be on the one pulled from. Progress is saved after every page,
//! so a restart of either side resumes where it stopped; transfers are throttled. Once all
//! its pulls are done a member announces `synced_epoch = target epoch` by gossip; when
//! every receiver has done so the claimant retires the base ring, and only then do old
//! replicas delete the partitions they no longer hold (old copies are dropped only after
//! the new owners confirmed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::antientropy::AntiEntropy;
use crate::config::NodeConfig;
use crate::membership::{ClusterView, Membership, PullDuty};
use crate::metrics::Metrics;
use crate::node::Services;
use crate::ring::{MemberId, PartitionId};
use crate::rpc::{ErrorCode, RemoteError, Request, Response, RpcClient};
use crate::storage::Store;

/// Bytes per pull page.
const PAGE_BYTES: u32 = 1 << 20;
/// Most bytes of one page a source serves, whatever the puller asks for.
pub const MAX_PULL_PAGE_BYTES: u32 = 4 << 20;

/// The page size a source serves for a request of `asked` bytes: at most
/// [`MAX_PULL_PAGE_BYTES`], and at least one byte (so a page always holds one record and
/// the pull moves on).
pub fn clamp_page_bytes(asked: u32) -> u32 {
    asked.clamp(1, MAX_PULL_PAGE_BYTES)
}

/// Records of a partition after `after` until their values reach `max_bytes` (the record
/// that passes it included).
fn pull_page(
    store: &Store,
    partition: PartitionId,
    after: Option<Bytes>,
    max_bytes: u32,
) -> Response {
    let mut items = Vec::new();
    let mut bytes = 0usize;
    let mut cursor = after;
    loop {
        let page = match store.scan_partition(partition, cursor.as_deref(), 256) {
            Ok(p) => p,
            Err(e) => {
                return Response::Error(RemoteError::new(ErrorCode::Storage, e.to_string()));
            }
        };
        let exhausted = page.len() < 256;
        for (key, obj) in page {
            bytes += key.len()
                + obj
                    .siblings
                    .iter()
                    .map(|s| s.value.as_ref().map_or(0, |v| v.len()) + 32)
                    .sum::<usize>();
            cursor = Some(key.clone());
            items.push((key, obj));
            if bytes >= max_bytes as usize {
                return Response::Page { items, done: false };
            }
        }
        if exhausted {
            return Response::Page { items, done: true };
        }
    }
}
/// How long the view must stay unchanged before partitions this member no longer
/// replicates are deleted (so a member with a stale view does not delete data a newer
/// view gives it).
const CLEANUP_SETTLE: Duration = Duration::from_secs(10);
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PullState {
    Pending,
    Pulling,
    Done,
}

/// One partition being received.
#[derive(Clone, Debug, Serialize)]
pub struct PullProgress {
    pub partition: PartitionId,
    pub from: Vec<MemberId>,
    pub state: PullState,
    pub keys: u64,
    pub bytes: u64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct HandoffStatus {
    pub base_epoch: u64,
    pub target_epoch: Option<u64>,
    pub pending: usize,
    /// Live members that have not acknowledged the target ring yet; pulls wait for them.
    pub awaiting_ack: Vec<MemberId>,
    pub partitions: Vec<PullProgress>,
}

struct Progress {
    /// (base epoch, target epoch) the entries belong to.
    epochs: (u64, u64),
    partitions: BTreeMap<PartitionId, PullProgress>,
}

pub struct Handoff {
    config: NodeConfig,
    store: Store,
    membership: Arc<Membership>,
    rpc: RpcClient,
    metrics: Metrics,
    antientropy: Arc<AntiEntropy>,
    progress: Mutex<Progress>,
    /// Members the last check found not to have acknowledged the target ring.
    awaiting_ack: Mutex<Vec<MemberId>>,
    /// Target epoch whose completion was last logged: the check runs every 500 ms and
    /// says "done" once per ring change, not on every round.
    logged_done: Mutex<Option<u64>>,
}

fn resume_key(base: u64, p: PartitionId) -> Vec<u8> {
    format!("handoff/{base}/{p}").into_bytes()
}

const DONE_MARK: &[u8] = b"\xffdone";

impl Handoff {
    pub fn new(services: &Services, antientropy: Arc<AntiEntropy>) -> Arc<Handoff> {
        let s = services.clone();
        Arc::new(Handoff {
            config: s.config,
            store: s.store,
            membership: s.membership,
            rpc: s.rpc,
            metrics: s.metrics,
            antientropy,
            progress: Mutex::new(Progress {
                epochs: (0, 0),
                partitions: BTreeMap::new(),
            }),
            awaiting_ack: Mutex::new(Vec::new()),
            logged_done: Mutex::new(None),
        })
    }

    /// What this member is receiving, for the admin API.
    pub fn status(&self) -> HandoffStatus {
        let view = self.membership.view();
        let progress = self.progress.lock();
        let partitions: Vec<PullProgress> = progress.partitions.values().cloned().collect();
        let in_transition = view.as_ref().is_some_and(|v| v.in_transition());
        HandoffStatus {
            base_epoch: view.as_ref().map_or(0, |v| v.base().epoch),
            target_epoch: view
                .as_ref()
                .filter(|v| v.in_transition())
                .map(|v| v.current().epoch),
            pending: partitions
                .iter()
                .filter(|p| p.state != PullState::Done)
                .count(),
            awaiting_ack: if in_transition {
                self.awaiting_ack.lock().clone()
            } else {
                Vec::new()
            },
            partitions: if in_transition {
                partitions
            } else {
                Vec::new()
            },
        }
    }

    /// Source side: the next page of a partition after `after`, of about `max_bytes`
    /// (clamped to [`MAX_PULL_PAGE_BYTES`]: the size comes from the peer). The page is
    /// scanned and decoded on the blocking pool.
    pub async fn serve_pull(
        &self,
        partition: PartitionId,
        after: Option<Bytes>,
        max_bytes: u32,
    ) -> Response {
        let max_bytes = clamp_page_bytes(max_bytes);
        let store = self.store.clone();
        match self
            .store
            .run_blocking(move || pull_page(&store, partition, after, max_bytes))
            .await
        {
            Ok(response) => response,
            Err(e) => Response::Error(RemoteError::new(ErrorCode::Storage, e.to_string())),
        }
    }

    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut stable_since: (u64, Instant) = (0, Instant::now());
        loop {
            tokio::select! {
                biased;
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            let Some(view) = self.membership.view() else {
                continue;
            };
            if view.version != stable_since.0 {
                stable_since = (view.version, Instant::now());
            }
            self.membership.acknowledge_ring();
            if view.in_transition() {
                let target = view.current().epoch;
                let awaiting = self.membership.not_acknowledged(target);
                let was_awaiting =
                    std::mem::replace(&mut *self.awaiting_ack.lock(), awaiting.clone());
                if !awaiting.is_empty() {
                    if awaiting != was_awaiting {
                        tracing::info!(epoch = target, members = ?awaiting, "handoff waits until these members acknowledge the target ring");
                    }
                    continue;
                }
                self.pull_round(&view, &mut shutdown).await;
            } else {
                self.settle(&view);
                if stable_since.1.elapsed() >= CLEANUP_SETTLE {
                    self.drop_orphans(&view).await;
                }
            }
        }
    }

    /// Not in transition: report the current ring as synced.
    fn settle(&self, view: &ClusterView) {
        let epoch = view.current().epoch;
        self.metrics.handoff_partitions_pending.set(0);
        if self
            .membership
            .self_state()
            .is_some_and(|s| s.synced_epoch != epoch || s.pulls_pending != 0)
        {
            self.membership.update_self(|s| {
                s.synced_epoch = epoch;
                s.pulls_pending = 0;
            });
        }
        let mut progress = self.progress.lock();
        progress.partitions.clear();
    }

    async fn pull_round(&self, view: &ClusterView, shutdown: &mut watch::Receiver<bool>) {
        let me = self.membership.me().clone();
        let epochs = (view.base().epoch, view.current().epoch);
        let duties = view.pull_duties(&me);
        {
            let mut progress = self.progress.lock();
            if progress.epochs != epochs {
                // A new target: keep partitions already pulled from the same base.
                let keep_base = progress.epochs.0 == epochs.0;
                let old = std::mem::take(&mut progress.partitions);
                progress.epochs = epochs;
                for d in &duties {
                    let prior = old
                        .get(&d.partition)
                        .filter(|p| keep_base && p.state == PullState::Done)
                        .cloned();
                    progress.partitions.insert(
                        d.partition,
                        prior.unwrap_or(PullProgress {
                            partition: d.partition,
                            from: Vec::new(),
                            state: PullState::Pending,
                            keys: 0,
                            bytes: 0,
                            error: None,
                        }),
                    );
                }
            }
        }
        let mut pending = 0usize;
        for duty in &duties {
            if *shutdown.borrow() {
                return;
            }
            let done = self
                .progress
                .lock()
                .partitions
                .get(&duty.partition)
                .is_some_and(|p| p.state == PullState::Done);
            if done {
                continue;
            }
            // A view change aborts the round; the next one starts from the new duties.
            if self
                .membership
                .view()
                .is_some_and(|v| v.version != view.version)
            {
                return;
            }
            match self.pull_partition(view, duty).await {
                Ok(()) => {}
                Err(e) => {
                    pending += 1;
                    tracing::warn!(partition = duty.partition, error = %e, "handoff pull failed; will retry");
                    if let Some(p) = self.progress.lock().partitions.get_mut(&duty.partition) {
                        p.error = Some(e);
                        p.state = PullState::Pending;
                    }
                }
            }
        }
        self.metrics.handoff_partitions_pending.set(pending as i64);
        let target = view.current().epoch;
        self.membership.update_self(|s| {
            s.pulls_pending = pending as u32;
            if pending == 0 {
                s.synced_epoch = target;
            }
        });
        let newly_done = pending == 0 && self.logged_done.lock().replace(target) != Some(target);
        if newly_done {
            tracing::info!(
                epoch = target,
                partitions = duties.len(),
                "all handoff pulls done"
            );
        }
    }

    /// Pulls one partition completely from its sources.
    async fn pull_partition(&self, view: &ClusterView, duty: &PullDuty) -> Result<(), String> {
        let base = view.base().epoch;
        let sources: Vec<MemberId> = match &duty.preferred {
            Some(m) if self.membership.is_alive(m) => vec![m.clone()],
            _ => duty
                .sources
                .iter()
                .filter(|m| self.membership.is_alive(m) && *m != self.membership.me())
                .cloned()
                .collect(),
        };
        if sources.is_empty() {
            return Err("no live old replica to pull from".into());
        }
        let resume = self
            .store
            .meta_get(&resume_key(base, duty.partition))
            .map_err(|e| e.to_string())?;
        if resume.as_deref() == Some(DONE_MARK) {
            self.mark_done(duty.partition);
            return Ok(());
        }
        if let Some(p) = self.progress.lock().partitions.get_mut(&duty.partition) {
            p.state = PullState::Pulling;
            p.from = sources.clone();
            p.error = None;
        }
        let mode = view.settings.conflicts;
        for source in &sources {
            let addr = self
                .membership
                .peer_addr(source)
                .ok_or_else(|| format!("no address for {source}"))?;
            // With one source, resume where a previous run stopped; with several, every
            // source is read from the start (each may hold writes the others lack).
            let mut after = if sources.len() == 1 {
                resume.clone().map(Bytes::from)
            } else {
                None
            };
            loop {
                let started = Instant::now();
                let request = Request::HandoffPull {
                    partition: duty.partition,
                    after: after.clone(),
                    max_bytes: PAGE_BYTES,
                };
                let (items, done) = match self
                    .rpc
                    .call(&addr, request, self.config.request_timeout * 2)
                    .await
                {
                    Ok(Response::Page { items, done }) => (items, done),
                    Ok(other) => return Err(format!("unexpected answer from {source}: {other:?}")),
                    Err(e) => return Err(format!("{source}: {e}")),
                };
                let mut bytes = 0u64;
                for (key, obj) in &items {
                    bytes += key.len() as u64
                        + obj
                            .siblings
                            .iter()
                            .map(|s| s.value.as_ref().map_or(0, |v| v.len() as u64) + 32)
                            .sum::<u64>();
                    self.store
                        .merge(duty.partition, key.clone(), obj.clone(), mode)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                self.metrics.handoff_keys.inc_by(items.len() as u64);
                self.metrics.handoff_bytes.inc_by(bytes);
                if let Some(p) = self.progress.lock().partitions.get_mut(&duty.partition) {
                    p.keys += items.len() as u64;
                    p.bytes += bytes;
                }
                if let Some((last, _)) = items.last() {
                    after = Some(last.clone());
                    if sources.len() == 1 {
                        self.store
                            .meta_put(&resume_key(base, duty.partition), Some(last.to_vec()))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                }
                self.throttle(bytes, started).await;
                if done {
                    break;
                }
            }
        }
        self.reconcile_with_old_replicas(view, duty, &sources)
            .await?;
        self.store
            .meta_put(&resume_key(base, duty.partition), Some(DONE_MARK.to_vec()))
            .await
            .map_err(|e| e.to_string())?;
        self.mark_done(duty.partition);
        tracing::debug!(partition = duty.partition, from = ?sources, "partition received");
        Ok(())
    }

    /// Compares the pulled partition by Merkle tree with every other live old replica and
    /// exchanges what differs. A write acknowledged by `W` old replicas need not be on the
    /// one pulled from (it may have been down or slow for that write, its copy still
    /// travelling as a hint); one acknowledged by `W` is on every set of `N - W + 1` of them.
    /// Requires at least `R` old replicas covered in all, as a read of the base ring would.
    async fn reconcile_with_old_replicas(
        &self,
        view: &ClusterView,
        duty: &PullDuty,
        pulled_from: &[MemberId],
    ) -> Result<(), String> {
        let me = self.membership.me();
        let mut covered = pulled_from.len();
        for peer in duty
            .sources
            .iter()
            .filter(|m| *m != me && !pulled_from.contains(m))
        {
            if !self.membership.is_alive(peer) {
                continue;
            }
            self.antientropy
                .exchange(peer, &[duty.partition], view)
                .await
                .map_err(|e| format!("comparing with {peer}: {e}"))?;
            covered += 1;
        }
        let needed = view.settings.r.min(duty.sources.len());
        if covered < needed {
            return Err(format!(
                "only {covered} of the {} old replicas are reachable, {needed} are needed",
                duty.sources.len()
            ));
        }
        Ok(())
    }

    fn mark_done(&self, p: PartitionId) {
        if let Some(entry) = self.progress.lock().partitions.get_mut(&p) {
            entry.state = PullState::Done;
            entry.error = None;
        }
    }

    async fn throttle(&self, bytes: u64, started: Instant) {
        let rate = self.config.transfer_rate_bytes;
        if rate == 0 {
            return;
        }
        let budget = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let spent = started.elapsed();
        if budget > spent {
            tokio::time::sleep(budget - spent).await;
        }
    }

    /// Deletes partitions this member no longer replicates, once the base ring holding them
    /// has been retired (so their new owners confirmed having them).
    async fn drop_orphans(&self, view: &ClusterView) {
        let me = self.membership.me().clone();
        let held: Vec<PartitionId> = self
            .store
            .populated_partitions()
            .into_iter()
            .map(|(p, _, _)| p)
            .collect();
        for p in view.orphaned_partitions(&me, held.iter()) {
            loop {
                if self
                    .membership
                    .view()
                    .is_some_and(|v| v.version != view.version)
                {
                    return;
                }
                let page = match self.store.scan_partition(p, None, 512) {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::error!(partition = p, error = %e, "scanning a partition to drop failed");
                        break;
                    }
                };
                if page.is_empty() {
                    break;
                }
                let keys = page.into_iter().map(|(k, _)| k).collect();
                if let Err(e) = self.store.drop_keys(p, keys).await {
                    tracing::error!(partition = p, error = %e, "dropping a handed-off partition failed");
                    break;
                }
            }
            tracing::info!(
                partition = p,
                "dropped a partition this member no longer replicates"
            );
        }
        // Resume markers of retired bases are no longer needed.
        let current = format!("handoff/{}/", view.base().epoch).into_bytes();
        match self.store.meta_keys(b"handoff/") {
            Ok(keys) => {
                for key in keys.into_iter().filter(|k| !k.starts_with(&current)) {
                    if let Err(e) = self.store.meta_put(&key, None).await {
                        tracing::warn!(error = %e, "removing a handoff marker failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing handoff markers failed"),
        }
    }
}
