//! The coordinator and the replica side of client requests.

use std::collections::BTreeSet;
use std::sync::Arc;
#[cfg(feature = "sim")]
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ClientOp, ClientRequest, ClientResponse, RefusalCode};
use crate::clock::{ActorId, ConflictMode, Object};
use crate::config::{NodeConfig, ReadFanout};
use crate::env::Env;
use crate::membership::{ClusterView, Membership};
use crate::metrics::Metrics;
use crate::node::Services;
use crate::ring::{MemberId, PartitionId};
use crate::rpc::{ErrorCode, RemoteError, Request, Response, RpcClient, RpcError};
use crate::storage::{CoordinatedWrite, Durable, Hint, StorageError, Store};

/// Switches that make the node deliberately wrong, so tests can show the simulation's
/// checker catches such bugs. They exist only with the `sim` feature, all off.
#[cfg(feature = "sim")]
#[derive(Debug, Default)]
pub struct Faults {
    /// Acknowledge a write as soon as it is stored locally, before `W` replicas hold it.
    pub ack_writes_before_quorum: AtomicBool,
    /// Answer a write with the coordinator's whole clock (see `api::kv`).
    pub over_cover_write_contexts: AtomicBool,
}

pub struct Replicator {
    pub(super) me: MemberId,
    incarnation: u64,
    generation: u64,
    pub(super) config: NodeConfig,
    pub(super) env: Env,
    pub(super) store: Store,
    pub(super) membership: Arc<Membership>,
    pub(super) rpc: RpcClient,
    pub(super) metrics: Metrics,
    #[cfg(feature = "sim")]
    pub faults: Arc<Faults>,
}

/// One version of a key on its way to replicas.
#[derive(Clone, Copy)]
pub(super) struct Shipment<'a> {
    pub partition: PartitionId,
    pub key: &'a Bytes,
    pub object: &'a Object,
    pub mode: ConflictMode,
}

/// How one replica came to hold a write.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Delivery {
    /// The replica itself stored it.
    Direct,
    /// A fallback holds it as a hint for the replica.
    Hinted(MemberId),
    /// Nobody else could take it; the coordinator keeps a hint and retries later.
    Retrying,
    /// The coordinator's own copy could not be made durable (it was already sent on).
    NotDurable(StorageError),
}

impl Replicator {
    pub fn new(incarnation: u64, generation: u64, services: &Services) -> Arc<Replicator> {
        let s = services.clone();
        Arc::new(Replicator {
            me: s.config.id.clone(),
            incarnation,
            generation,
            config: s.config,
            env: s.env,
            store: s.store,
            membership: s.membership,
            rpc: s.rpc,
            metrics: s.metrics,
            #[cfg(feature = "sim")]
            faults: Arc::new(Faults::default()),
        })
    }

    /// The clock actor this member writes partition `p` as.
    ///
    /// A version vector entry `actor: k` claims every event of `actor` up to `k`, so an
    /// actor may only issue dots while its local store holds everything it issued before
    /// for the key. That holds for one run of the process (a restart can lose the last
    /// writes in periodic durability: Riak's kv679) and while the partition is held
    /// continuously (it may be handed off and come back before its data does). So the
    /// actor is derived from the data directory's incarnation, the process generation and
    /// the partition's tenure, which the store bumps whenever it drops the partition.
    /// The store's `epoch` counts engine reopens, which may lose writes too (the
    /// coordinator replicates a version before its local fsync, and in periodic mode the
    /// OS may hold it unsynced).
    pub fn actor_for(&self, p: PartitionId, epoch: u64) -> ActorId {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in [
            self.incarnation,
            self.generation,
            u64::from(p),
            u64::from(self.store.tenure(p)),
            epoch,
        ] {
            h.update(&part.to_le_bytes());
        }
        ActorId(h.digest())
    }

    /// Entry point for a client request received by this member. Writes are forwarded to
    /// a primary unless this member replicates the key; reads are coordinated here.
    pub async fn handle_client(
        self: &Arc<Self>,
        request: ClientRequest,
        forwarded: bool,
    ) -> ClientResponse {
        let Some(view) = self.membership.view() else {
            return ClientResponse::Refused {
                code: RefusalCode::NotReady,
                message: "this member has not joined a cluster yet".into(),
            };
        };
        if !self.membership.may_coordinate() {
            return ClientResponse::Refused {
                code: RefusalCode::NotReady,
                message:
                    "this member has just started and not yet compared cluster views with a peer"
                        .into(),
            };
        }
        let p = view.current().partition_of_key(&request.key);
        match request.op {
            ClientOp::Get => self.coordinate_read(&view, p, request).await,
            _ => {
                // Held until the client is answered: handoff pulls wait until no write
                // begun under an older ring is still running on any member.
                let Some((view, _lease)) = self.membership.view_for_write() else {
                    return ClientResponse::Refused {
                        code: RefusalCode::NotReady,
                        message: "this member has not joined a cluster yet".into(),
                    };
                };
                if !forwarded
                    && !view.replicates(&self.me, p)
                    && let Some(resp) = self.forward(&view, p, &request).await
                {
                    return resp;
                }
                if let ClientOp::Replace { value } = request.op {
                    return self
                        .replace(
                            &view,
                            p,
                            request.key,
                            value,
                            request.r,
                            request.w,
                            request.conflicts,
                        )
                        .await;
                }
                self.coordinate_write(&view, p, request).await
            }
        }
    }

    /// Forwards a write to the first reachable primary; `None` if no primary could be
    /// asked, so this member coordinates the write itself.
    ///
    /// The next primary (or this member) is tried only when the request provably did not
    /// run: it was never sent (no connection, failed authentication) or the peer refused it
    /// before coordinating. After a timeout or a closed connection the first primary may
    /// well have applied the write, and coordinating it again would store one client write
    /// as two versions; the client is told that the outcome is unknown instead.
    async fn forward(
        &self,
        view: &ClusterView,
        p: PartitionId,
        request: &ClientRequest,
    ) -> Option<ClientResponse> {
        for target in view.current().primaries(p, view.settings.n) {
            if !self.membership.is_alive(&target) {
                continue;
            }
            let Some(addr) = self.membership.peer_addr(&target) else {
                continue;
            };
            match self
                .rpc
                .call(
                    &addr,
                    Request::Coordinate(request.clone()),
                    self.config.request_timeout,
                )
                .await
            {
                Ok(Response::Client(resp)) => {
                    self.metrics.forwarded.inc();
                    return Some(resp);
                }
                Err(RpcError::Unreachable(_)) => self.membership.report_unreachable(&target),
                Err(RpcError::Auth(_)) => {}
                Err(RpcError::Remote(e))
                    if matches!(e.code, ErrorCode::Unavailable | ErrorCode::BadRequest) =>
                {
                    tracing::debug!(peer = %target, partition = p, error = ?e, "forwarding refused")
                }
                other => {
                    tracing::debug!(peer = %target, partition = p, result = ?other, "forwarded write's outcome unknown");
                    let outcome = match &other {
                        Ok(_) => "an unexpected answer".to_string(),
                        Err(e) => e.to_string(),
                    };
                    return Some(ClientResponse::Unavailable {
                        needed: request.w.unwrap_or(view.settings.w) as u32,
                        acks: 0,
                        reason: format!(
                            "forwarded to {target}, which gave {outcome}: the write may have \
                             been applied; read the key before retrying"
                        ),
                    });
                }
            }
        }
        None
    }

    /// Reads the key at R and writes `value` with the read's context (see
    /// [`ClientOp::Replace`]).
    #[allow(clippy::too_many_arguments)]
    async fn replace(
        self: &Arc<Self>,
        view: &Arc<ClusterView>,
        p: PartitionId,
        key: Bytes,
        value: Option<Bytes>,
        r: Option<usize>,
        w: Option<usize>,
        conflicts: Option<ConflictMode>,
    ) -> ClientResponse {
        let read = ClientRequest {
            key: key.clone(),
            op: ClientOp::Get,
            r,
            w,
            conflicts,
        };
        let (context, replaced) = match self.coordinate_read(view, p, read).await {
            ClientResponse::Read { object, .. } => {
                let live = object.values().count() as u32;
                (object.context, live)
            }
            other => return other,
        };
        if value.is_none() && replaced == 0 {
            return ClientResponse::NothingToReplace;
        }
        let op = match value {
            Some(value) => ClientOp::Put {
                value,
                context: context.clone(),
            },
            None => ClientOp::Delete {
                context: context.clone(),
            },
        };
        let write = ClientRequest {
            key,
            op,
            r,
            w,
            conflicts,
        };
        match self.coordinate_write(view, p, write).await {
            ClientResponse::Written {
                object,
                dot,
                acks,
                w,
            } => ClientResponse::Replaced {
                object,
                dot,
                acks,
                w,
                context,
                replaced,
            },
            other => other,
        }
    }

    async fn coordinate_write(
        self: &Arc<Self>,
        view: &Arc<ClusterView>,
        p: PartitionId,
        request: ClientRequest,
    ) -> ClientResponse {
        let settings = &view.settings;
        let mode = request.conflicts.unwrap_or(settings.conflicts);
        let w = request.w.unwrap_or(settings.w).clamp(1, settings.n);
        let (value, context) = match request.op {
            ClientOp::Put { value, context } => (Some(value), context),
            ClientOp::Delete { context } => (None, context),
            ClientOp::Get | ClientOp::Replace { .. } => {
                return ClientResponse::Refused {
                    code: RefusalCode::Storage,
                    message: "not a write".into(),
                };
            }
        };
        let sets = view.write_sets(p);
        let local_replica = sets.iter().any(|s| s.contains(&self.me));
        // A member without the key's data cannot vouch for any earlier dot: each write it
        // coordinates gets an actor of its own, used once.
        let epoch = self.store.epoch();
        let actor = if local_replica {
            self.actor_for(p, epoch)
        } else {
            ActorId(self.env.random_u64())
        };
        let write = CoordinatedWrite {
            actor,
            epoch,
            context,
            value,
            timestamp_ms: self.env.clock.now_ms(),
            mode,
            max_siblings: settings.max_siblings,
        };
        let key = request.key;
        // The local copy's fsync runs while the version is sent to the other replicas; its
        // acknowledgement is counted like theirs, when it is durable.
        let stored = if local_replica {
            self.store
                .apply_coordinated(p, key.clone(), write)
                .await
                .map(|(object, dot, durable)| (object, dot, Some(durable)))
        } else {
            self.store
                .mint(write)
                .await
                .map(|(object, dot)| (object, dot, None))
        };
        let (object, dot, durable) = match stored {
            Ok(o) => o,
            Err(StorageError::TooManySiblings { count, max }) => {
                // `count` includes the sibling this write would have added.
                return ClientResponse::Refused {
                    code: RefusalCode::TooManySiblings,
                    message: format!(
                        "the key has {} siblings and a write beside them would exceed the limit of {max}: read it and write back with the read's context (or overwrite it with ?overwrite=true)",
                        count.saturating_sub(1)
                    ),
                };
            }
            Err(e) => {
                tracing::error!(key = %String::from_utf8_lossy(&key), partition = p, error = %e, "local write failed");
                return ClientResponse::Refused {
                    code: RefusalCode::Storage,
                    message: format!("storage error: {e}"),
                };
            }
        };
        let mut acked: BTreeSet<MemberId> = BTreeSet::new();
        let targets: BTreeSet<MemberId> = sets
            .iter()
            .flatten()
            .filter(|m| **m != self.me)
            .cloned()
            .collect();
        let needed = |acked: &BTreeSet<MemberId>| {
            sets.iter()
                .all(|s| s.iter().filter(|m| acked.contains(*m)).count() >= w.min(s.len()))
        };
        // What the client is told W was: less than asked while a replica set is smaller
        // (a cluster with fewer members than N).
        let w_reported = sets.iter().map(|s| w.min(s.len())).min().unwrap_or(w) as u32;
        let shipment = Shipment {
            partition: p,
            key: &key,
            object: &object,
            mode,
        };
        #[cfg(feature = "sim")]
        if self.faults.ack_writes_before_quorum.load(Ordering::Relaxed) {
            let deadline = Instant::now() + self.config.request_timeout;
            self.spawn_deliveries(view, shipment, &targets, durable, deadline);
            return ClientResponse::Written {
                object,
                dot,
                acks: acked.len() as u32,
                w: w_reported,
            };
        }
        let mut pending = targets.len() + usize::from(durable.is_some());
        let deadline = Instant::now() + self.config.request_timeout;
        let mut results = self.spawn_deliveries(view, shipment, &targets, durable, deadline);
        let mut outcomes: Vec<(MemberId, Delivery)> = Vec::new();
        while !needed(&acked) && pending > 0 {
            match tokio::time::timeout_at(deadline, results.recv()).await {
                Ok(Some((target, delivery))) => {
                    pending -= 1;
                    if matches!(delivery, Delivery::Direct | Delivery::Hinted(_)) {
                        acked.insert(target.clone());
                    }
                    outcomes.push((target, delivery));
                }
                Ok(None) | Err(_) => break,
            }
        }
        if needed(&acked) {
            ClientResponse::Written {
                object,
                dot,
                acks: acked.len() as u32,
                w: w_reported,
            }
        } else {
            self.metrics
                .quorum_failures
                .with_label_values(&["write"])
                .inc();
            tracing::debug!(key = %String::from_utf8_lossy(&key), partition = p, ?acked, ?outcomes, pending, "write quorum not reached");
            // A failing local disk is the member's own fault, not the cluster's: said as
            // a storage error, as when the write fails before it is sent anywhere.
            if let Some(e) = outcomes.iter().find_map(|(_, d)| match d {
                Delivery::NotDurable(e) => Some(e),
                _ => None,
            }) {
                return ClientResponse::Refused {
                    code: RefusalCode::Storage,
                    message: format!(
                        "storage error: {e}; the write had already been sent to the other replicas and may still reach them"
                    ),
                };
            }
            // The set that fell short is the one to report: during a transition the
            // acknowledgements of the old and the new replicas are counted apart.
            let (acks, needed) = sets
                .iter()
                .map(|s| {
                    let acks = s.iter().filter(|m| acked.contains(*m)).count();
                    (acks, w.min(s.len()))
                })
                .find(|(acks, needed)| acks < needed)
                .unwrap_or((acked.len(), w_reported as usize));
            let reason = if sets.len() > 1 {
                format!(
                    "the key's replicas are moving, so a write needs {needed} acknowledgements from the old replicas and {needed} from the new ones; one of the two gave only {acks} in time ({} replicas in all); it may still reach the others",
                    acked.len()
                )
            } else {
                format!(
                    "only {acks} of the replicas acknowledged the write in time; it may still reach the others"
                )
            };
            ClientResponse::Unavailable {
                needed: needed as u32,
                acks: acks as u32,
                reason,
            }
        }
    }

    /// Starts delivering `object` to every target concurrently. Each delivery runs to its
    /// end in the background (the client may be answered before) and reports once; so
    /// does the local copy (`local`, when this member is a replica) once it is durable.
    fn spawn_deliveries(
        self: &Arc<Self>,
        view: &Arc<ClusterView>,
        shipment: Shipment<'_>,
        targets: &BTreeSet<MemberId>,
        local: Option<Durable>,
        deadline: Instant,
    ) -> mpsc::Receiver<(MemberId, Delivery)> {
        let Shipment {
            partition: p, mode, ..
        } = shipment;
        let (tx, rx) = mpsc::channel(targets.len() + 1);
        let local_replica = local.is_some();
        if let Some(durable) = local {
            let (tx, me) = (tx.clone(), self.me.clone());
            tokio::spawn(async move {
                let delivery = match durable.wait().await {
                    Ok(()) => Delivery::Direct,
                    Err(e) => {
                        tracing::error!(partition = p, error = %e, "the local copy of a write could not be made durable");
                        Delivery::NotDurable(e)
                    }
                };
                let _ = tx.send((me, delivery)).await;
            });
        }
        // Fallbacks are shared so two down replicas are not both hinted to the same member.
        let used: Arc<Mutex<BTreeSet<MemberId>>> = Arc::new(Mutex::new(
            targets.iter().cloned().chain([self.me.clone()]).collect(),
        ));
        for target in targets {
            let this = self.clone();
            let (view, used, tx) = (view.clone(), used.clone(), tx.clone());
            let (target, key, object) = (
                target.clone(),
                shipment.key.clone(),
                shipment.object.clone(),
            );
            tokio::spawn(async move {
                let shipment = Shipment {
                    partition: p,
                    key: &key,
                    object: &object,
                    mode,
                };
                let delivery = this
                    .deliver(&view, shipment, &target, &used, local_replica, deadline)
                    .await;
                let _ = tx.send((target, delivery)).await;
            });
        }
        rx
    }

    async fn deliver(
        &self,
        view: &ClusterView,
        shipment: Shipment<'_>,
        target: &MemberId,
        used: &Mutex<BTreeSet<MemberId>>,
        local_replica: bool,
        deadline: Instant,
    ) -> Delivery {
        let believed_up = self.membership.is_alive(target);
        // The replica may take until the request's deadline to answer: a slow one (a disk
        // stall) usually answers soon after the replica timeout, and when no stand-in
        // exists its answer is the write's only way to this replica. Past the replica
        // timeout the stand-ins are asked as well, and the first to take it wins.
        let direct = believed_up.then(|| {
            Box::pin(self.replicate_within(
                target,
                shipment,
                None,
                deadline.saturating_duration_since(Instant::now()),
            ))
        });
        let mut direct = match direct {
            Some(mut attempt) => {
                match tokio::time::timeout(self.config.replica_timeout, attempt.as_mut()).await {
                    Ok(Ok(())) => return Delivery::Direct,
                    Ok(Err(_)) => None,
                    Err(_) => Some(attempt),
                }
            }
            None => None,
        };
        let stand_in = self.hand_to_stand_in(view, shipment, target, used, believed_up);
        tokio::pin!(stand_in);
        if let Some(attempt) = direct.as_mut() {
            tokio::select! {
                // Biased like every select in node code, so a simulation seed replays.
                biased;
                answered = attempt.as_mut() => {
                    if answered.is_ok() {
                        return Delivery::Direct;
                    }
                    direct = None;
                }
                taken = &mut stand_in => {
                    if let Some(fallback) = taken {
                        return Delivery::Hinted(fallback);
                    }
                }
            }
        }
        match direct {
            // No stand-in took it: the replica's late answer is all that is left.
            Some(attempt) => {
                if attempt.await.is_ok() {
                    return Delivery::Direct;
                }
            }
            None => {
                if let Some(fallback) = stand_in.await {
                    return Delivery::Hinted(fallback);
                }
                // The detector is a guess (a peer is suspected after a few unlucky gossip
                // rounds, and one restarted a moment ago has heard nobody yet), so before
                // giving up on the replica, try it after all.
                if !believed_up && self.replicate_to(target, shipment, None).await.is_ok() {
                    return Delivery::Direct;
                }
            }
        }
        // Keep it here and retry until the target (or its successor) has it: the seed's
        // "retry list", made durable.
        let hint = Hint {
            target: target.clone(),
            partition: shipment.partition,
            key: shipment.key.clone(),
            object: shipment.object.clone(),
        };
        match self.store.put_hint(hint, shipment.mode).await {
            Ok(()) => {
                self.metrics.hints_stored.inc();
                tracing::debug!(peer = %target, partition = shipment.partition, "no replica or fallback reachable; keeping a hint");
                // A coordinator that is not itself a replica is a distinct stand-in.
                if local_replica {
                    Delivery::Retrying
                } else {
                    Delivery::Hinted(self.me.clone())
                }
            }
            Err(e) => {
                tracing::error!(peer = %target, partition = shipment.partition, error = %e, "could not keep a hint");
                Delivery::Retrying
            }
        }
    }

    /// Sloppy quorum: the next live members on the ring, not yet holding this write,
    /// stand in for `target`; returns the one that took it as a hint.
    async fn hand_to_stand_in(
        &self,
        view: &ClusterView,
        shipment: Shipment<'_>,
        target: &MemberId,
        used: &Mutex<BTreeSet<MemberId>>,
        believed_up: bool,
    ) -> Option<MemberId> {
        let p = shipment.partition;
        let walk: Vec<MemberId> = view.current().walk(p).into_iter().cloned().collect();
        for fallback in walk {
            let claimed = {
                let mut used = used.lock();
                if used.contains(&fallback) || !self.membership.is_alive(&fallback) {
                    false
                } else {
                    used.insert(fallback.clone());
                    true
                }
            };
            if !claimed {
                continue;
            }
            if self
                .replicate_to(&fallback, shipment, Some(target))
                .await
                .is_ok()
            {
                self.metrics.hints_stored.inc();
                tracing::debug!(peer = %target, fallback = %fallback, partition = p, believed_up, "a fallback keeps a hint for a replica");
                return Some(fallback);
            }
        }
        None
    }

    /// Sends `object` to `member` (as a hint for `hint_for` if given), waiting the
    /// replica timeout for its answer.
    pub(super) async fn replicate_to(
        &self,
        member: &MemberId,
        shipment: Shipment<'_>,
        hint_for: Option<&MemberId>,
    ) -> Result<(), RpcError> {
        self.replicate_within(member, shipment, hint_for, self.config.replica_timeout)
            .await
    }

    async fn replicate_within(
        &self,
        member: &MemberId,
        shipment: Shipment<'_>,
        hint_for: Option<&MemberId>,
        timeout: Duration,
    ) -> Result<(), RpcError> {
        let Shipment {
            partition: p,
            key,
            object,
            mode,
        } = shipment;
        if member == &self.me {
            let result = match hint_for {
                None => self
                    .store
                    .merge(p, key.clone(), object.clone(), mode)
                    .await
                    .map(|_| ()),
                Some(t) => {
                    self.store
                        .put_hint(
                            Hint {
                                target: t.clone(),
                                partition: p,
                                key: key.clone(),
                                object: object.clone(),
                            },
                            mode,
                        )
                        .await
                }
            };
            return result.map_err(|e| {
                RpcError::Remote(RemoteError::new(ErrorCode::Storage, e.to_string()))
            });
        }
        let addr = self
            .membership
            .peer_addr(member)
            .ok_or_else(|| RpcError::Unreachable(format!("no address for {member}")))?;
        let request = Request::Replicate {
            partition: p,
            key: key.clone(),
            object: object.clone(),
            hint_for: hint_for.cloned(),
            mode,
        };
        match self.rpc.call(&addr, request, timeout).await {
            Ok(Response::Merged { .. } | Response::Ack) => Ok(()),
            Ok(_) => Err(RpcError::Unexpected("replicate")),
            Err(e) => {
                if matches!(e, RpcError::Unreachable(_)) {
                    self.membership.report_unreachable(member);
                }
                Err(e)
            }
        }
    }

    async fn read_from(
        &self,
        member: &MemberId,
        p: PartitionId,
        key: &Bytes,
        timeout: Duration,
    ) -> Result<Option<Object>, RpcError> {
        if member == &self.me {
            return self.store.get(p, key).map_err(|e| {
                RpcError::Remote(RemoteError::new(ErrorCode::Storage, e.to_string()))
            });
        }
        let addr = self
            .membership
            .peer_addr(member)
            .ok_or_else(|| RpcError::Unreachable(format!("no address for {member}")))?;
        match self
            .rpc
            .call(
                &addr,
                Request::Read {
                    partition: p,
                    key: key.clone(),
                    hint_for: None,
                },
                timeout,
            )
            .await
        {
            Ok(Response::Object(o)) => Ok(o),
            Ok(_) => Err(RpcError::Unexpected("read")),
            Err(e) => {
                if matches!(e, RpcError::Unreachable(_)) {
                    self.membership.report_unreachable(member);
                }
                Err(e)
            }
        }
    }

    /// The order a read asks replicas in: this member first (no network hop), then the
    /// others in preference order, those the failure detector believes alive first.
    fn read_order(&self, mut targets: Vec<MemberId>) -> Vec<MemberId> {
        // A stable sort keeps the preference order within each class. The key asks the
        // failure detector (under its lock) once per replica, not once per comparison.
        targets.sort_by_cached_key(|m| {
            if m == &self.me {
                0
            } else if self.membership.is_alive(m) {
                1
            } else {
                2
            }
        });
        targets
    }

    async fn coordinate_read(
        self: &Arc<Self>,
        view: &ClusterView,
        p: PartitionId,
        request: ClientRequest,
    ) -> ClientResponse {
        let settings = &view.settings;
        let mode = request.conflicts.unwrap_or(settings.conflicts);
        let targets = self.membership.read_set(view, p);
        let r = request
            .r
            .unwrap_or(settings.r)
            .clamp(1, settings.n)
            .min(targets.len());
        let key = request.key;
        let targets = self.read_order(targets);
        let (initial, speculate_after) = match self.config.read_fanout {
            ReadFanout::All => (targets.len(), None),
            ReadFanout::Quorum { speculate_after } => (r, Some(speculate_after)),
        };
        let (tx, mut rx) = mpsc::channel(targets.len().max(1));
        let mut untried = targets.iter();
        let deadline = Instant::now() + self.config.request_timeout;
        // A replica may answer until the request's deadline: slow ones are covered by
        // asking the next replica (speculation), and when none is left a late answer is
        // better than a refused read.
        let ask = |target: &MemberId| {
            let this = self.clone();
            let (tx, target, key) = (tx.clone(), target.clone(), key.clone());
            tokio::spawn(async move {
                let timeout = deadline.saturating_duration_since(Instant::now());
                let result = this.read_from(&target, p, &key, timeout).await;
                let _ = tx.send((target, result)).await;
            });
        };
        let mut outstanding = 0usize;
        for target in untried.by_ref().take(initial) {
            ask(target);
            outstanding += 1;
        }
        let mut speculate_at = speculate_after.map(|after| Instant::now() + after);
        let mut replies: Vec<(MemberId, Option<Object>)> = Vec::new();
        while replies.len() < r && outstanding > 0 {
            let speculation = async {
                match speculate_at {
                    Some(at) if untried.len() > 0 => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                // Biased like every select in node code, so a simulation seed replays.
                biased;
                received = tokio::time::timeout_at(deadline, rx.recv()) => match received {
                    Ok(Some((member, result))) => {
                        outstanding -= 1;
                        match result {
                            Ok(obj) => replies.push((member, obj)),
                            // A quorum read replaces a replica that failed at once; an `All`
                            // read has asked every replica already.
                            Err(_) => {
                                if let Some(next) = untried.next() {
                                    self.metrics.extra_reads.with_label_values(&["failed"]).inc();
                                    ask(next);
                                    outstanding += 1;
                                }
                            }
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
                () = speculation => {
                    if let Some(next) = untried.next() {
                        self.metrics.extra_reads.with_label_values(&["slow"]).inc();
                        ask(next);
                        outstanding += 1;
                    }
                    speculate_at = speculate_after.map(|after| Instant::now() + after);
                }
            }
        }
        drop(tx);
        if replies.len() < r {
            self.metrics
                .quorum_failures
                .with_label_values(&["read"])
                .inc();
            return ClientResponse::Unavailable {
                needed: r as u32,
                acks: replies.len() as u32,
                reason: format!(
                    "only {} of {} replicas answered in time",
                    replies.len(),
                    targets.len()
                ),
            };
        }
        let merged = merge_all(replies.iter().filter_map(|(_, o)| o.as_ref()), mode);
        let answered = replies.len() as u32;
        // The rest of the replies arrive in the background and stale replicas are repaired.
        let this = self.clone();
        tokio::spawn(async move {
            let late_deadline = Instant::now() + this.config.replica_timeout;
            while let Ok(Some((member, result))) =
                tokio::time::timeout_at(late_deadline, rx.recv()).await
            {
                if let Ok(obj) = result {
                    replies.push((member, obj));
                }
            }
            this.read_repair(p, &key, replies, mode).await;
        });
        ClientResponse::Read {
            object: merged,
            replies: answered,
            r: r as u32,
        }
    }

    async fn read_repair(
        &self,
        p: PartitionId,
        key: &Bytes,
        replies: Vec<(MemberId, Option<Object>)>,
        mode: ConflictMode,
    ) {
        let merged = merge_all(replies.iter().filter_map(|(_, o)| o.as_ref()), mode);
        if merged.is_empty() && merged.context.is_empty() {
            return;
        }
        let digest = merged.digest();
        for (member, obj) in replies {
            if obj.as_ref().map(Object::digest) == Some(digest) {
                continue;
            }
            if self
                .replicate_to(
                    &member,
                    Shipment {
                        partition: p,
                        key,
                        object: &merged,
                        mode,
                    },
                    None,
                )
                .await
                .is_ok()
            {
                self.metrics.read_repairs.inc();
                tracing::debug!(peer = %member, partition = p, key = %String::from_utf8_lossy(key), "read repair");
            }
        }
    }

    // ---- replica side ----

    pub async fn handle_replicate(
        &self,
        p: PartitionId,
        key: Bytes,
        object: Object,
        hint_for: Option<MemberId>,
        mode: ConflictMode,
    ) -> Response {
        if let Err(e) = object.validate() {
            return Response::Error(RemoteError::new(ErrorCode::BadRequest, e));
        }
        match hint_for {
            Some(target) => {
                self.metrics
                    .replica_requests
                    .with_label_values(&["hint"])
                    .inc();
                match self
                    .store
                    .put_hint(
                        Hint {
                            target,
                            partition: p,
                            key,
                            object,
                        },
                        mode,
                    )
                    .await
                {
                    Ok(()) => Response::Ack,
                    Err(e) => Response::Error(RemoteError::new(ErrorCode::Storage, e.to_string())),
                }
            }
            None => {
                self.metrics
                    .replica_requests
                    .with_label_values(&["write"])
                    .inc();
                match self.store.merge(p, key, object, mode).await {
                    Ok(m) => Response::Merged { changed: m.changed },
                    Err(e) => Response::Error(RemoteError::new(ErrorCode::Storage, e.to_string())),
                }
            }
        }
    }

    pub fn handle_read(&self, p: PartitionId, key: &[u8], hint_for: Option<&MemberId>) -> Response {
        self.metrics
            .replica_requests
            .with_label_values(&["read"])
            .inc();
        let result = match hint_for {
            Some(t) => self.store.hint(t, p, key),
            None => self.store.get(p, key),
        };
        match result {
            Ok(o) => Response::Object(o),
            Err(e) => Response::Error(RemoteError::new(ErrorCode::Storage, e.to_string())),
        }
    }
}

/// Merges replicas' versions of one key.
pub fn merge_all<'a>(objects: impl Iterator<Item = &'a Object>, mode: ConflictMode) -> Object {
    objects.fold(Object::default(), |acc, o| acc.merge(o, mode))
}
