//! Membership: who is in the cluster and who is alive, spread by gossip.
//!
//! Two kinds of state travel by gossip:
//! * each member's own [`MemberState`] (addresses, generation, heartbeat, handoff progress),
//!   written only by that member and versioned by `(generation, version)`;
//! * the [`ClusterView`] (members' statuses and the live rings), written only by the
//!   claimant and versioned by `version`.
//!
//! Every gossip interval a member picks one random peer and runs the four-step exchange:
//! A sends the versions of everything it knows (digest); B answers with the entries where
//! it is newer plus the list of entries where A is newer; A sends those; both apply. A
//! change therefore reaches all members in O(log n) rounds.

pub mod detector;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::NodeConfig;
use crate::env::Env;
use crate::metrics::Metrics;
use crate::ring::{MemberId, PartitionId};
use crate::rpc::{ErrorCode, RemoteError, Request, Response, RpcClient, RpcError};
pub use detector::Arrivals;
pub use view::{ClusterView, MemberStatus, PullDuty, ViewError, ViewMember};

/// What one member says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    pub id: MemberId,
    /// Internal RPC address.
    pub peer_addr: String,
    /// Client/admin HTTP address.
    pub http_addr: String,
    /// Bumped at every restart.
    pub generation: u64,
    /// Bumped at every heartbeat and every change.
    pub version: u64,
    /// Newest ring epoch whose partitions this member has fully received.
    pub synced_epoch: u64,
    /// Partitions still to receive for the target ring.
    pub pulls_pending: u32,
    /// Incarnation of the member's data directory (its clock actor).
    pub incarnation: u64,
    /// Newest ring epoch this member has acknowledged: it has adopted a view with that
    /// ring and no write it began under an older ring is still running, so every write it
    /// coordinates from now on reaches that ring's replicas. Handoff pulls wait for it.
    pub acked_epoch: u64,
    /// Epoch of the ring this member's reads ask: the base ring while a move is in
    /// flight, the target once every receiver has synced it. The claimant retires the base
    /// (writes stop reaching it) only once every live member reads the target.
    pub read_epoch: u64,
}

impl MemberState {
    fn stamp(&self) -> (u64, u64) {
        (self.generation, self.version)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestEntry {
    pub id: MemberId,
    pub generation: u64,
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewStamp {
    pub version: u64,
    pub author: MemberId,
}

/// Step 1: the initiator's versions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GossipDigest {
    pub from: MemberId,
    pub entries: Vec<DigestEntry>,
    pub view: Option<ViewStamp>,
}

/// Step 2: the responder's newer entries and what it wants from the initiator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GossipDelta {
    pub entries: Vec<MemberState>,
    pub requests: Vec<MemberId>,
    pub view: Option<ClusterView>,
    pub want_view: bool,
}

/// Step 3: the entries the responder asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GossipPush {
    pub entries: Vec<MemberState>,
    pub view: Option<ClusterView>,
}

/// Encoded sizes of one gossip round's messages (see [`Membership::gossip_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GossipBytes {
    /// Step 1, initiator to responder.
    pub digest: u64,
    /// Step 2, responder to initiator.
    pub delta: u64,
    /// Step 3, initiator to responder (0 when nothing was asked for and nothing is sent).
    pub push: u64,
}

impl GossipBytes {
    /// Bytes the initiator sends.
    pub fn sent(&self) -> u64 {
        self.digest + self.push
    }
    /// Bytes the initiator receives.
    pub fn received(&self) -> u64 {
        self.delta
    }
}

/// How this member sees one other member, for the admin API and metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberInfo {
    pub id: MemberId,
    pub peer_addr: String,
    pub http_addr: String,
    /// `joining` (gossiping but not in the view), `up`, `leaving` or `removed`.
    pub status: String,
    pub alive: bool,
    pub generation: u64,
    pub weight: u32,
    pub synced_epoch: u64,
    pub pulls_pending: u32,
    pub partitions_owned: u32,
    /// See [`MemberState::acked_epoch`].
    pub acked_epoch: u64,
    /// See [`MemberState::read_epoch`].
    pub read_epoch: u64,
}

/// Writes being coordinated, counted by the ring epoch of the view each began under.
type WritesInFlight = Arc<Mutex<BTreeMap<u64, usize>>>;

/// Held while a write is coordinated under one view (see [`Membership::view_for_write`]).
pub struct WriteLease {
    epoch: u64,
    in_flight: WritesInFlight,
}

impl Drop for WriteLease {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock();
        if let Some(n) = in_flight.get_mut(&self.epoch) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                in_flight.remove(&self.epoch);
            }
        }
    }
}

struct State {
    table: BTreeMap<MemberId, MemberState>,
    arrivals: BTreeMap<MemberId, Arrivals>,
    view: Option<Arc<ClusterView>>,
    joins: BTreeMap<MemberId, u32>,
    leaves: BTreeSet<MemberId>,
    /// Members pruned from `table` and `arrivals` (see [`Membership::prune_removed`]),
    /// with the last stamp known of them: an entry no newer is not taken back from a peer
    /// that has not pruned it yet.
    pruned: BTreeMap<MemberId, (u64, u64)>,
}

/// Membership service of one member.
pub struct Membership {
    me: MemberId,
    config: NodeConfig,
    env: Env,
    rpc: RpcClient,
    metrics: Metrics,
    state: Mutex<State>,
    view_tx: watch::Sender<Option<Arc<ClusterView>>>,
    /// Whether an exchange with a peer believed down is under way (at most one at a time).
    probing: AtomicBool,
    /// A hand-over of queued membership changes to the claimant is under way.
    handing_over: AtomicBool,
    /// Locked after `state` when both are held.
    writes_in_flight: WritesInFlight,
    /// Whether this process has compared cluster views with a peer since it started.
    caught_up: AtomicBool,
    /// Which peers this process has reached by gossip, and which have reached it, since it
    /// started (see [`Membership::reached_but_not_reached_by`]).
    contacts: Mutex<Contacts>,
}

#[derive(Default)]
struct Contacts {
    reached: BTreeSet<MemberId>,
    reached_by: BTreeSet<MemberId>,
}

/// A join or leave queued at a member that was claimant when it accepted it.
enum QueuedChange {
    Join { member: MemberId, weight: u32 },
    Leave { member: MemberId },
}

impl QueuedChange {
    fn kind(&self) -> &'static str {
        match self {
            QueuedChange::Join { .. } => "join",
            QueuedChange::Leave { .. } => "leave",
        }
    }

    fn member(&self) -> &MemberId {
        match self {
            QueuedChange::Join { member, .. } | QueuedChange::Leave { member } => member,
        }
    }

    fn request(&self) -> Request {
        match self {
            QueuedChange::Join { member, weight } => Request::Join {
                member: member.clone(),
                weight: *weight,
            },
            QueuedChange::Leave { member } => Request::Leave {
                member: member.clone(),
            },
        }
    }

    /// Puts the change back in the queue (a change queued since then for the same member
    /// is kept).
    fn queue_again(self, st: &mut State) {
        match self {
            QueuedChange::Join { member, weight } => {
                st.joins.entry(member).or_insert(weight);
            }
            QueuedChange::Leave { member } => {
                st.leaves.insert(member);
            }
        }
    }
}

impl Membership {
    pub fn new(
        config: NodeConfig,
        env: Env,
        rpc: RpcClient,
        metrics: Metrics,
        me_state: MemberState,
        view: Option<ClusterView>,
    ) -> Arc<Membership> {
        let me = me_state.id.clone();
        let now = Instant::now();
        let view = view.map(Arc::new);
        let (view_tx, _) = watch::channel(view.clone());
        Arc::new(Membership {
            me: me.clone(),
            config,
            env,
            rpc,
            metrics,
            state: Mutex::new(State {
                table: BTreeMap::from([(me.clone(), me_state)]),
                arrivals: BTreeMap::from([(me, Arrivals::new(now))]),
                view,
                joins: BTreeMap::new(),
                leaves: BTreeSet::new(),
                pruned: BTreeMap::new(),
            }),
            view_tx,
            probing: AtomicBool::new(false),
            handing_over: AtomicBool::new(false),
            writes_in_flight: WritesInFlight::default(),
            caught_up: AtomicBool::new(false),
            contacts: Mutex::new(Contacts::default()),
        })
    }

    pub fn me(&self) -> &MemberId {
        &self.me
    }

    pub fn view(&self) -> Option<Arc<ClusterView>> {
        self.state.lock().view.clone()
    }

    /// Whether this member may coordinate requests: it has compared cluster views with a
    /// peer since it started, or is the cluster's only member. A restarted member holds the
    /// view it had when it stopped; the ring may have moved since, and a write placed by
    /// that old ring lands on members that are about to drop the partition.
    pub fn may_coordinate(&self) -> bool {
        if self.caught_up.load(Ordering::Acquire) {
            return true;
        }
        let st = self.state.lock();
        st.view
            .as_ref()
            .is_some_and(|v| v.active_members().all(|m| *m == self.me))
    }

    /// Live peers this member has reached by gossip since it started that have not yet
    /// reached it. A restarted member may have a new address (a new pod IP) that its peers'
    /// name lookups return only seconds later; it reaches them at once, but until they
    /// reach it, every request they send it fails, so it is not yet a working replica.
    pub fn reached_but_not_reached_by(&self) -> Vec<MemberId> {
        let contacts = self.contacts.lock();
        let pending: Vec<MemberId> = contacts
            .reached
            .difference(&contacts.reached_by)
            .cloned()
            .collect();
        drop(contacts);
        pending.into_iter().filter(|m| self.is_alive(m)).collect()
    }

    fn record_reached(&self, peer: MemberId) {
        if peer != self.me {
            self.contacts.lock().reached.insert(peer);
        }
    }

    fn record_reached_by(&self, peer: &MemberId) {
        if *peer != self.me {
            let mut contacts = self.contacts.lock();
            if !contacts.reached_by.contains(peer) {
                contacts.reached_by.insert(peer.clone());
            }
        }
    }

    fn mark_caught_up(&self) {
        if !self.caught_up.swap(true, Ordering::AcqRel) {
            tracing::debug!("compared cluster views with a peer; coordinating requests");
        }
    }

    /// The view to coordinate a write under, registered until the lease is dropped so that
    /// [`Membership::acknowledge_ring`] can tell when writes under older rings are done.
    /// Taking both under one lock means no write can begin under a ring after a newer one
    /// was acknowledged.
    pub fn view_for_write(&self) -> Option<(Arc<ClusterView>, WriteLease)> {
        let st = self.state.lock();
        let view = st.view.clone()?;
        let epoch = view.current().epoch;
        *self.writes_in_flight.lock().entry(epoch).or_default() += 1;
        drop(st);
        let lease = WriteLease {
            epoch,
            in_flight: self.writes_in_flight.clone(),
        };
        Some((view, lease))
    }

    /// Acknowledges the ring of the adopted view once no write begun under an older ring
    /// is still running (Garage's layout "ack"): from then on every write this member
    /// coordinates reaches that ring's replicas, so what new owners pull afterwards cannot
    /// miss an acknowledged write. Returns the acknowledged epoch.
    pub fn acknowledge_ring(&self) -> u64 {
        let mut st = self.state.lock();
        let Some(epoch) = st.view.as_ref().map(|v| v.current().epoch) else {
            return 0;
        };
        let drained = self.writes_in_flight.lock().range(..epoch).next().is_none();
        let Some(me) = st.table.get_mut(&self.me) else {
            return 0;
        };
        if drained && me.acked_epoch < epoch {
            me.acked_epoch = epoch;
            me.version += 1;
            tracing::debug!(epoch, "acknowledged ring");
        }
        me.acked_epoch
    }

    /// Points this member's reads at the target ring once every member receiving
    /// partitions in it has synced (as gossip shows), back at the base while it has not
    /// (a new target may replace the synced one). Reading the base is always safe while it
    /// lives: every write of a view in transition reaches a quorum of it. Returns the epoch.
    pub fn update_read_ring(&self) -> u64 {
        let mut st = self.state.lock();
        let Some(view) = st.view.clone() else {
            return 0;
        };
        let target = view.current().epoch;
        let epoch = if !view.in_transition()
            || view
                .receivers()
                .all(|m| st.table.get(m).is_some_and(|s| s.synced_epoch >= target))
        {
            target
        } else {
            view.base().epoch
        };
        let Some(me) = st.table.get_mut(&self.me) else {
            return 0;
        };
        if me.read_epoch != epoch {
            me.read_epoch = epoch;
            me.version += 1;
            tracing::debug!(epoch, "reads now ask this ring");
        }
        epoch
    }

    /// The replicas of `p` a read coordinated here asks (see [`Membership::update_read_ring`]).
    pub fn read_set(&self, view: &ClusterView, p: PartitionId) -> Vec<MemberId> {
        let epoch = self
            .state
            .lock()
            .table
            .get(&self.me)
            .map_or(0, |s| s.read_epoch);
        view.read_set_at(p, epoch)
    }

    /// Members believed alive that have not acknowledged ring `epoch` yet: writes they
    /// coordinate may still go only to an older ring's replicas.
    pub fn not_acknowledged(&self, epoch: u64) -> Vec<MemberId> {
        let st = self.state.lock();
        let now = Instant::now();
        st.table
            .iter()
            .filter(|(id, s)| s.acked_epoch < epoch && self.alive_locked(&st, id, now))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Notified whenever a newer view is adopted.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<ClusterView>>> {
        self.view_tx.subscribe()
    }

    pub fn member_state(&self, id: &MemberId) -> Option<MemberState> {
        self.state.lock().table.get(id).cloned()
    }

    pub fn peer_addr(&self, id: &MemberId) -> Option<String> {
        self.state.lock().table.get(id).map(|s| s.peer_addr.clone())
    }

    pub fn is_alive(&self, id: &MemberId) -> bool {
        if id == &self.me {
            return true;
        }
        let st = self.state.lock();
        self.alive_locked(&st, id, Instant::now())
    }

    fn alive_locked(&self, st: &State, id: &MemberId, now: Instant) -> bool {
        if id == &self.me {
            return true;
        }
        st.arrivals.get(id).is_some_and(|a| {
            a.is_alive(
                now,
                &self.config.failure_detector,
                self.config.gossip_interval,
            )
        })
    }

    /// Records that a connection to `id` failed: it counts as down until it is heard again.
    pub fn report_unreachable(&self, id: &MemberId) {
        if let Some(a) = self.state.lock().arrivals.get_mut(id) {
            tracing::debug!(peer = %id, "peer unreachable");
            a.connection_failed(Instant::now());
        }
    }

    /// Adopts `view` if it supersedes ours; returns whether it did.
    pub fn offer_view(&self, view: ClusterView) -> bool {
        if let Err(e) = view.validate() {
            tracing::warn!(error = %e, "ignoring malformed cluster view");
            return false;
        }
        let mut st = self.state.lock();
        if st.view.as_ref().is_some_and(|v| !view.supersedes(v)) {
            return false;
        }
        let view = Arc::new(view);
        tracing::info!(version = view.version, author = %view.author, epoch = view.current().epoch, rings = view.rings.len(), "adopted cluster view");
        st.view = Some(view.clone());
        // Requests the new view already reflects are done.
        st.joins.retain(|id, _| {
            !view
                .members
                .get(id)
                .is_some_and(|m| m.status != MemberStatus::Removed)
        });
        st.leaves
            .retain(|id| view.status_of(id) == Some(MemberStatus::Up));
        drop(st);
        self.metrics.ring_epoch.set(view.current().epoch as i64);
        self.view_tx.send_replace(Some(view));
        true
    }

    /// Updates this member's own entry (e.g. handoff progress) and bumps its version.
    pub fn update_self(&self, f: impl FnOnce(&mut MemberState)) {
        let mut st = self.state.lock();
        if let Some(me) = st.table.get_mut(&self.me) {
            f(me);
            me.version += 1;
        }
    }

    pub fn self_state(&self) -> Option<MemberState> {
        self.member_state(&self.me)
    }

    /// Every member this member knows of, with its status as seen from here.
    pub fn members(&self) -> Vec<MemberInfo> {
        let st = self.state.lock();
        let now = Instant::now();
        let mut ids: BTreeSet<MemberId> = st.table.keys().cloned().collect();
        if let Some(v) = &st.view {
            ids.extend(v.members.keys().cloned());
        }
        ids.into_iter()
            .map(|id| {
                let state = st.table.get(&id);
                let in_view = st.view.as_ref().and_then(|v| v.members.get(&id));
                let status = match in_view.map(|m| m.status) {
                    None => "joining",
                    Some(MemberStatus::Up) => "up",
                    Some(MemberStatus::Leaving) => "leaving",
                    Some(MemberStatus::Removed) => "removed",
                };
                let owned = st
                    .view
                    .as_ref()
                    .map_or(0, |v| v.current().partitions_of(&id).len() as u32);
                MemberInfo {
                    alive: self.alive_locked(&st, &id, now),
                    peer_addr: state.map(|s| s.peer_addr.clone()).unwrap_or_default(),
                    http_addr: state.map(|s| s.http_addr.clone()).unwrap_or_default(),
                    status: status.to_string(),
                    generation: state.map_or(0, |s| s.generation),
                    weight: in_view.map_or(1, |m| m.weight),
                    synced_epoch: state.map_or(0, |s| s.synced_epoch),
                    pulls_pending: state.map_or(0, |s| s.pulls_pending),
                    partitions_owned: owned,
                    acked_epoch: state.map_or(0, |s| s.acked_epoch),
                    read_epoch: state.map_or(0, |s| s.read_epoch),
                    id,
                }
            })
            .collect()
    }

    /// The claimant as this member sees it.
    pub fn claimant(&self) -> Option<MemberId> {
        let st = self.state.lock();
        let now = Instant::now();
        st.view
            .as_ref()
            .and_then(|v| v.claimant(|id| self.alive_locked(&st, id, now)))
    }

    // ---- gossip ----

    fn digest(&self) -> GossipDigest {
        let st = self.state.lock();
        GossipDigest {
            from: self.me.clone(),
            entries: st
                .table
                .values()
                .map(|s| DigestEntry {
                    id: s.id.clone(),
                    generation: s.generation,
                    version: s.version,
                })
                .collect(),
            view: st.view.as_ref().map(|v| ViewStamp {
                version: v.version,
                author: v.author.clone(),
            }),
        }
    }

    /// Applies entries from a peer; newer versions count as heartbeats.
    fn apply_entries(&self, entries: Vec<MemberState>) {
        let now = Instant::now();
        let mut st = self.state.lock();
        for e in entries {
            if e.id == self.me {
                // Only we write our own entry; a higher stamp means a previous life of ours
                // is still gossiped: jump past it.
                let mine = st.table.get_mut(&self.me);
                if let Some(mine) = mine
                    && e.stamp() >= mine.stamp()
                {
                    mine.generation = mine.generation.max(e.generation + 1);
                    mine.version = 0;
                }
                continue;
            }
            let newer = st
                .table
                .get(&e.id)
                .is_none_or(|cur| e.stamp() > cur.stamp());
            if !newer
                || st
                    .pruned
                    .get(&e.id)
                    .is_some_and(|&stamp| e.stamp() <= stamp)
            {
                continue;
            }
            // A pruned member heard anew (it runs again): tracked like any other.
            st.pruned.remove(&e.id);
            let restarted = st
                .table
                .get(&e.id)
                .is_some_and(|cur| e.generation > cur.generation);
            match st.arrivals.get_mut(&e.id) {
                Some(a) if !restarted => a.heartbeat(now),
                _ => {
                    st.arrivals.insert(e.id.clone(), Arrivals::new(now));
                }
            }
            st.table.insert(e.id.clone(), e);
        }
    }

    /// Forgets members the view marks removed (and no ring holds) once they have been
    /// silent for the tombstone grace period: their gossip entry and failure-detector
    /// history would otherwise be kept, and gossiped, for the life of every member.
    /// Returns the members pruned.
    pub fn prune_removed(&self) -> Vec<MemberId> {
        let now = Instant::now();
        let grace = self.config.tombstone_grace;
        let mut st = self.state.lock();
        let Some(view) = st.view.clone() else {
            return Vec::new();
        };
        let stale: Vec<MemberId> = st
            .table
            .keys()
            .filter(|id| {
                **id != self.me
                    && view.status_of(id) == Some(MemberStatus::Removed)
                    && !view.rings.iter().any(|r| r.contains(id))
                    && st
                        .arrivals
                        .get(*id)
                        .is_none_or(|a| now.saturating_duration_since(a.last_heard()) >= grace)
            })
            .cloned()
            .collect();
        for id in &stale {
            if let Some(entry) = st.table.remove(id) {
                st.pruned.insert(id.clone(), entry.stamp());
            }
            st.arrivals.remove(id);
            tracing::info!(member = %id, "forgot a removed member after the grace period");
        }
        stale
    }

    fn view_is_newer(mine: Option<&Arc<ClusterView>>, theirs: &Option<ViewStamp>) -> (bool, bool) {
        match (mine, theirs) {
            (None, None) => (false, false),
            (Some(_), None) => (true, false),
            (None, Some(_)) => (false, true),
            (Some(v), Some(t)) => {
                let ours = (v.version, std::cmp::Reverse(&v.author));
                let other = (t.version, std::cmp::Reverse(&t.author));
                (ours > other, other > ours)
            }
        }
    }

    /// Step 2, as the responder.
    pub fn handle_digest(&self, digest: GossipDigest) -> GossipDelta {
        self.record_reached_by(&digest.from);
        let st = self.state.lock();
        let theirs: BTreeMap<&MemberId, (u64, u64)> = digest
            .entries
            .iter()
            .map(|e| (&e.id, (e.generation, e.version)))
            .collect();
        let entries = st
            .table
            .values()
            .filter(|s| theirs.get(&s.id).is_none_or(|&stamp| s.stamp() > stamp))
            .cloned()
            .collect();
        let requests = digest
            .entries
            .iter()
            .filter(|e| {
                st.table
                    .get(&e.id)
                    .is_none_or(|s| (e.generation, e.version) > s.stamp())
            })
            .map(|e| e.id.clone())
            .collect();
        let (ours_newer, theirs_newer) = Self::view_is_newer(st.view.as_ref(), &digest.view);
        drop(st);
        if !theirs_newer {
            self.mark_caught_up();
        }
        GossipDelta {
            entries,
            requests,
            view: if ours_newer {
                self.view().as_deref().cloned()
            } else {
                None
            },
            want_view: theirs_newer,
        }
    }

    /// Step 4, as the responder.
    pub fn handle_push(&self, push: GossipPush) {
        self.apply_entries(push.entries);
        if let Some(v) = push.view {
            self.offer_view(v);
            self.mark_caught_up();
        }
    }

    /// One gossip round: a heartbeat, then the four-step exchange with a live peer (or a
    /// seed, now and then and while no peer is known). Returns a peer believed down to
    /// probe as well, chosen now and then (see [`Membership::pick_peers`]).
    pub async fn gossip_round(&self) -> Option<String> {
        self.update_self(|_| {});
        let (peer, probe) = self.pick_peers();
        if let Some(addr) = peer {
            self.exchange(&addr).await;
        }
        probe
    }

    /// The exchange with the member at `addr`: digest, delta, push.
    async fn exchange(&self, addr: &str) {
        self.metrics.gossip_rounds.inc();
        let digest = self.digest();
        let timeout = self.config.gossip_interval.max(Duration::from_millis(500));
        let delta = match self
            .rpc
            .call(addr, Request::GossipDigest(digest), timeout)
            .await
        {
            Ok(Response::GossipDelta(d)) => d,
            Ok(_) => return,
            Err(e) => {
                if matches!(e, RpcError::Unreachable(_)) {
                    let id = self.id_by_addr(addr);
                    if let Some(id) = id {
                        self.report_unreachable(&id);
                    }
                }
                return;
            }
        };
        let push = self.apply_delta(delta);
        if let Some(id) = self.id_by_addr(addr) {
            self.record_reached(id);
        }
        let Some(push) = push else {
            return;
        };
        if let Ok(bytes) = postcard::to_stdvec(&push) {
            self.metrics.gossip_bytes.inc_by(bytes.len() as u64);
        }
        let _ = self
            .rpc
            .call(addr, Request::GossipPush(push), timeout)
            .await;
    }

    /// Step 3, as the initiator: applies the responder's delta and returns what the
    /// responder asked for (`None` when it asked for nothing).
    fn apply_delta(&self, delta: GossipDelta) -> Option<GossipPush> {
        let GossipDelta {
            entries,
            requests,
            view,
            want_view,
        } = delta;
        self.apply_entries(entries);
        if let Some(v) = view {
            self.offer_view(v);
        }
        // The peer sent its view if it was newer than ours; either way ours is now as new.
        self.mark_caught_up();
        let push = {
            let st = self.state.lock();
            GossipPush {
                entries: requests
                    .iter()
                    .filter_map(|id| st.table.get(id).cloned())
                    .collect(),
                view: if want_view {
                    st.view.as_deref().cloned()
                } else {
                    None
                },
            }
        };
        if push.entries.is_empty() && push.view.is_none() {
            return None;
        }
        Some(push)
    }

    /// One gossip round with `peer`, in process: what [`Membership::gossip_round`] does once
    /// it has picked a peer (heartbeat, the four steps), with the peer's handlers called
    /// directly instead of over RPC. For simulations of large clusters
    /// (`examples/scale_sim.rs`); returns the postcard-encoded size of each message.
    pub fn gossip_with(&self, peer: &Membership) -> GossipBytes {
        fn size<T: Serialize>(m: &T) -> u64 {
            postcard::to_stdvec(m).map_or(0, |b| b.len() as u64)
        }
        self.update_self(|_| {});
        self.metrics.gossip_rounds.inc();
        let digest = self.digest();
        let mut bytes = GossipBytes {
            digest: size(&digest),
            ..GossipBytes::default()
        };
        let delta = peer.handle_digest(digest);
        bytes.delta = size(&delta);
        self.record_reached(peer.me.clone());
        if let Some(push) = self.apply_delta(delta) {
            bytes.push = size(&push);
            self.metrics.gossip_bytes.inc_by(bytes.push);
            peer.handle_push(push);
        }
        bytes
    }

    fn id_by_addr(&self, addr: &str) -> Option<MemberId> {
        self.state
            .lock()
            .table
            .values()
            .find(|s| s.peer_addr == addr)
            .map(|s| s.id.clone())
    }

    /// The peer to gossip with this round, and now and then one believed down to probe.
    ///
    /// Heartbeats travel only by gossip, so a round spent on a member that is down is a
    /// round in which no live peer hears from us; with a uniform pick, a 3-member cluster
    /// with one member down let the two others go unheard for several rounds in a row
    /// often enough for the detector to suspect them. So (as Cassandra does) every round
    /// goes to a live peer, and a member believed down is probed besides, with probability
    /// down / (live + 1), so that its return is noticed even before it gossips itself.
    fn pick_peers(&self) -> (Option<String>, Option<String>) {
        let st = self.state.lock();
        let now = Instant::now();
        let removed = |id: &MemberId| {
            st.view.as_ref().and_then(|v| v.status_of(id)) == Some(MemberStatus::Removed)
        };
        let (live, down): (Vec<&MemberState>, Vec<&MemberState>) = st
            .table
            .values()
            .filter(|s| s.id != self.me && !removed(&s.id))
            .partition(|s| self.alive_locked(&st, &s.id, now));
        let mut rng = self.env.rng.lock();
        // Now and then contact a seed even when peers are known, so that two groups that
        // started apart (or were cut apart) find each other.
        let use_seed = (live.is_empty() && down.is_empty())
            || (!self.config.seeds.is_empty() && rng.random_ratio(1, 10));
        let peer = if use_seed {
            let seeds: Vec<&String> = self
                .config
                .seeds
                .iter()
                .filter(|s| **s != self.config.advertise_peer)
                .collect();
            seeds.choose(&mut *rng).map(|s| (*s).clone())
        } else {
            live.choose(&mut *rng).map(|s| s.peer_addr.clone())
        };
        let odds = (live.len() + 1) as u32;
        let probe = if !down.is_empty() && rng.random_ratio((down.len() as u32).min(odds), odds) {
            down.choose(&mut *rng)
                .map(|s| s.peer_addr.clone())
                .filter(|addr| peer.as_ref() != Some(addr))
        } else {
            None
        };
        (peer, probe)
    }

    /// Peers reach this member by the peer address it advertises, which is often a DNS
    /// name (a StatefulSet pod's, whose record appears only once the pod has an IP).
    /// Announcing the member before the name resolves makes the peers look it up too
    /// early, and resolvers cache the negative answer (CoreDNS for 5 s by default), so
    /// for that long after the member is in the ring nobody can reach it: writes to it
    /// become hints and a transition's new replica set misses its quorum. So gossip
    /// starts once the name resolves here, or after a minute regardless.
    async fn until_advertised_address_resolves(&self) {
        const PATIENCE: Duration = Duration::from_secs(60);
        let addr = self.config.advertise_peer.clone();
        let started = Instant::now();
        let mut reported = false;
        loop {
            match self.env.network.resolve(&addr).await {
                Ok(()) => {
                    if reported {
                        tracing::info!(peer_addr = %addr, waited_ms = started.elapsed().as_millis() as u64, "advertised peer address resolves; starting gossip");
                    }
                    return;
                }
                Err(e) if started.elapsed() >= PATIENCE => {
                    tracing::warn!(peer_addr = %addr, error = %e, "advertised peer address still does not resolve; gossiping anyway (peers cannot reach this member until it does)");
                    return;
                }
                Err(e) => {
                    if !reported {
                        tracing::info!(peer_addr = %addr, error = %e, "waiting for the advertised peer address to resolve before gossiping");
                        reported = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Runs gossip until `shutdown`.
    pub async fn run_gossip(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        tokio::select! {
            biased;
            _ = self.until_advertised_address_resolves() => {}
            _ = shutdown.changed() => return,
        }
        let mut tick = tokio::time::interval(self.config.gossip_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.acknowledge_ring();
            self.update_read_ring();
            if let Some(addr) = self.gossip_round().await
                && !self.probing.swap(true, Ordering::AcqRel)
            {
                // In the background: a peer that is really gone may take the whole
                // connect timeout to fail, and the live peers must not wait for it.
                let this = self.clone();
                tokio::spawn(async move {
                    this.exchange(&addr).await;
                    this.probing.store(false, Ordering::Release);
                });
            }
            self.claimant_duties();
            self.prune_removed();
            if self.holds_requests_for_another_claimant()
                && !self.handing_over.swap(true, Ordering::AcqRel)
            {
                // In the background, like the probe: the claimant may take the whole
                // request timeout to answer, and heartbeats must not wait for it.
                let this = self.clone();
                tokio::spawn(async move {
                    this.hand_over_queued_requests().await;
                    this.handing_over.store(false, Ordering::Release);
                });
            }
            self.update_member_gauges();
        }
    }

    fn update_member_gauges(&self) {
        let mut counts: BTreeMap<&str, i64> = BTreeMap::from([
            ("joining", 0),
            ("up", 0),
            ("leaving", 0),
            ("removed", 0),
            ("down", 0),
        ]);
        for m in self.members() {
            let state = if m.alive || m.status == "removed" {
                m.status.as_str()
            } else {
                "down"
            };
            if let Some(c) = counts.get_mut(state) {
                *c += 1;
            }
        }
        for (state, n) in counts {
            self.metrics.members.with_label_values(&[state]).set(n);
        }
    }

    // ---- claimant ----

    /// Queues a join (if we are the claimant) or forwards it to the claimant.
    pub async fn request_join(&self, member: MemberId, weight: u32) -> Result<(), RemoteError> {
        self.forward_or_queue(Request::Join { member, weight })
            .await
    }

    pub async fn request_leave(&self, member: MemberId) -> Result<(), RemoteError> {
        self.forward_or_queue(Request::Leave { member }).await
    }

    async fn forward_or_queue(&self, request: Request) -> Result<(), RemoteError> {
        let Some(claimant) = self.claimant() else {
            return Err(RemoteError::new(
                ErrorCode::Unavailable,
                "this member has no cluster view yet (bootstrap a cluster or join one first)",
            ));
        };
        if claimant == self.me {
            return self.accept_as_claimant(request);
        }
        let addr = self.peer_addr(&claimant).ok_or_else(|| {
            RemoteError::new(
                ErrorCode::Unavailable,
                format!("no address for claimant {claimant}"),
            )
        })?;
        match self
            .rpc
            .call(&addr, request, self.config.request_timeout)
            .await
        {
            Ok(Response::Ack) => Ok(()),
            Ok(Response::Error(e)) | Err(RpcError::Remote(e)) => Err(e),
            Ok(_) => Err(RemoteError::new(
                ErrorCode::Internal,
                "unexpected answer from the claimant",
            )),
            Err(e) => Err(RemoteError::new(
                ErrorCode::Unavailable,
                format!("claimant {claimant} unreachable: {e}"),
            )),
        }
    }

    /// Validates a join or leave at the claimant and queues it for the next planning.
    pub fn accept_as_claimant(&self, request: Request) -> Result<(), RemoteError> {
        let mut st = self.state.lock();
        let now = Instant::now();
        let Some(view) = st.view.clone() else {
            return Err(RemoteError::new(ErrorCode::Unavailable, "no cluster view"));
        };
        if view.claimant(|id| self.alive_locked(&st, id, now)).as_ref() != Some(&self.me) {
            return Err(RemoteError::new(
                ErrorCode::NotClaimant,
                "this member is not the claimant",
            ));
        }
        match request {
            Request::Join { member, weight } => {
                if view
                    .members
                    .get(&member)
                    .is_some_and(|m| m.status == MemberStatus::Up)
                {
                    return Ok(());
                }
                if view.status_of(&member) == Some(MemberStatus::Leaving) {
                    return Err(RemoteError::new(
                        ErrorCode::Refused,
                        format!("{member} is still leaving; wait until it is removed"),
                    ));
                }
                if !st.table.contains_key(&member) {
                    return Err(RemoteError::new(
                        ErrorCode::BadRequest,
                        format!(
                            "{member} is not known to the cluster yet: start it with --seeds pointing at a member, then retry"
                        ),
                    ));
                }
                if !self.alive_locked(&st, &member, now) {
                    return Err(RemoteError::new(
                        ErrorCode::Refused,
                        format!("{member} is not alive"),
                    ));
                }
                if !(1..=crate::ring::MAX_WEIGHT).contains(&weight) {
                    return Err(RemoteError::new(
                        ErrorCode::BadRequest,
                        format!("weight must be 1..={}", crate::ring::MAX_WEIGHT),
                    ));
                }
                st.joins.insert(member, weight);
                Ok(())
            }
            Request::Leave { member } => {
                let leaves: Vec<MemberId> = st
                    .leaves
                    .iter()
                    .cloned()
                    .chain(std::iter::once(member.clone()))
                    .collect();
                drop(st);
                // Check the rule now (planning, so outside the lock) so the caller gets the
                // refusal, not a silent no-op.
                view.with_changes(&[], &leaves, &self.me, 0)
                    .map_err(|e| match e {
                        ViewError::NotMember { .. } => {
                            RemoteError::new(ErrorCode::BadRequest, e.to_string())
                        }
                        other => RemoteError::new(ErrorCode::Refused, other.to_string()),
                    })?;
                self.state.lock().leaves.insert(member);
                Ok(())
            }
            _ => Err(RemoteError::new(
                ErrorCode::BadRequest,
                "not a membership request",
            )),
        }
    }

    /// Whether this member queued joins or leaves as claimant and another member is the
    /// claimant now (this one was not the first live member for a moment: the first came
    /// back from a restart, say).
    fn holds_requests_for_another_claimant(&self) -> bool {
        let st = self.state.lock();
        if st.joins.is_empty() && st.leaves.is_empty() {
            return false;
        }
        let now = Instant::now();
        st.view
            .as_ref()
            .and_then(|v| v.claimant(|id| self.alive_locked(&st, id, now)))
            .is_some_and(|claimant| claimant != self.me)
    }

    /// Forwards the joins and leaves queued here to the claimant. The caller was told they
    /// were accepted, and only the claimant plans: left here they would wait forever.
    /// Those the claimant cannot take now (unreachable, or not the claimant in its own
    /// view yet) stay queued for the next round; those it refuses are dropped, with the
    /// reason in the log.
    async fn hand_over_queued_requests(&self) {
        let changes: Vec<QueuedChange> = {
            let mut st = self.state.lock();
            let joins = std::mem::take(&mut st.joins);
            let leaves = std::mem::take(&mut st.leaves);
            joins
                .into_iter()
                .map(|(member, weight)| QueuedChange::Join { member, weight })
                .chain(
                    leaves
                        .into_iter()
                        .map(|member| QueuedChange::Leave { member }),
                )
                .collect()
        };
        for change in changes {
            let (kind, member) = (change.kind(), change.member().clone());
            match self.forward_or_queue(change.request()).await {
                Ok(()) => tracing::info!(
                    %member,
                    change = kind,
                    "handed a queued membership change to the claimant"
                ),
                Err(e) if matches!(e.code, ErrorCode::Unavailable | ErrorCode::NotClaimant) => {
                    tracing::debug!(%member, change = kind, error = %e.message, "claimant cannot take a queued membership change yet");
                    change.queue_again(&mut self.state.lock());
                }
                Err(e) => tracing::warn!(
                    %member,
                    change = kind,
                    error = %e.message,
                    "the claimant refused a queued membership change; dropping it"
                ),
            }
        }
    }

    /// If this member is the claimant: plans queued joins and leaves, and retires the base
    /// ring once every receiving member has synced and every live member reads the target
    /// (after the retirement, writes no longer reach the base ring's replicas).
    pub fn claimant_duties(&self) {
        // Gather what planning needs under the lock, plan without it (planning a large ring
        // takes milliseconds, and gossip handlers must not wait on it).
        let (view, joins, leaves, synced, all_read_target) = {
            let st = self.state.lock();
            let now = Instant::now();
            let Some(view) = st.view.clone() else { return };
            if view.claimant(|id| self.alive_locked(&st, id, now)).as_ref() != Some(&self.me) {
                return;
            }
            let joins: Vec<(MemberId, u32)> =
                st.joins.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let leaves: Vec<MemberId> = st.leaves.iter().cloned().collect();
            let synced: BTreeMap<MemberId, u64> = st
                .table
                .iter()
                .map(|(id, s)| (id.clone(), s.synced_epoch))
                .collect();
            let target = view.current().epoch;
            let all_read_target = st
                .table
                .iter()
                .all(|(id, s)| s.read_epoch >= target || !self.alive_locked(&st, id, now));
            (view, joins, leaves, synced, all_read_target)
        };
        let next = if !joins.is_empty() || !leaves.is_empty() {
            match view.with_changes(&joins, &leaves, &self.me, self.env.random_u64()) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot plan queued membership changes; dropping them");
                    let mut st = self.state.lock();
                    st.joins.clear();
                    st.leaves.clear();
                    None
                }
            }
        } else if all_read_target {
            view.retire_if_synced(|id| synced.get(id).copied().unwrap_or(0), &self.me)
        } else {
            None
        };
        if let Some(v) = next {
            tracing::info!(
                version = v.version,
                epoch = v.current().epoch,
                rings = v.rings.len(),
                "claimant wrote a new cluster view"
            );
            self.offer_view(v);
        }
    }

    /// Creates a new cluster with this member alone (first start with `--bootstrap`).
    pub fn bootstrap(&self, weight: u32) -> Result<Arc<ClusterView>, ViewError> {
        if let Some(v) = self.view() {
            return Ok(v);
        }
        let view = ClusterView::bootstrap(
            &self.me,
            weight,
            self.config.settings.clone(),
            self.env.random_u64(),
        )?;
        self.offer_view(view);
        self.view()
            .ok_or_else(|| ViewError::Malformed("bootstrap view not adopted".into()))
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicUsize;

    use rand::SeedableRng;

    use super::*;
    use crate::config::ClusterSettings;
    use crate::env::SystemClock;
    use crate::rpc::transport::{BoxConnection, BoxFuture, Listener, Network};

    /// Names resolve only after `unresolved` lookups (a pod's DNS record appears late);
    /// every connection attempt is counted and refused.
    struct LateDns {
        lookups: AtomicUsize,
        unresolved: usize,
        connects: Arc<AtomicUsize>,
    }

    impl Network for LateDns {
        fn connect(&self, _addr: &str) -> BoxFuture<'static, io::Result<BoxConnection>> {
            self.connects.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err(io::ErrorKind::ConnectionRefused.into()) })
        }

        fn bind(&self, _addr: &str) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
            Box::pin(async { Err(io::ErrorKind::Unsupported.into()) })
        }

        fn resolve(&self, _addr: &str) -> BoxFuture<'static, io::Result<()>> {
            let resolved = self.lookups.fetch_add(1, Ordering::SeqCst) >= self.unresolved;
            Box::pin(async move {
                if resolved {
                    Ok(())
                } else {
                    Err(io::ErrorKind::NotFound.into())
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gossip_starts_only_once_the_advertised_address_resolves() {
        let connects = Arc::new(AtomicUsize::new(0));
        let dns = LateDns {
            lookups: AtomicUsize::new(0),
            unresolved: 8,
            connects: connects.clone(),
        };
        let mut config = NodeConfig::for_local("m1", 8080, 7070, PathBuf::new());
        config.seeds = vec!["seed.example:7070".into()];
        config.gossip_interval = Duration::from_millis(100);
        let membership = test_member(config, dns, None);
        let (stop, stopped) = watch::channel(false);
        let gossip = tokio::spawn(membership.run_gossip(stopped));
        // 8 failed lookups 250 ms apart: nothing may be sent in the first 1.75 s.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            connects.load(Ordering::SeqCst),
            0,
            "gossiped before the address resolved"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            connects.load(Ordering::SeqCst) > 0,
            "gossip did not start once the address resolved"
        );
        stop.send_replace(true);
        gossip.await.unwrap();
    }

    /// A member over `network`, holding `view`.
    fn test_member(
        config: NodeConfig,
        network: LateDns,
        view: Option<ClusterView>,
    ) -> Arc<Membership> {
        let env = Env {
            network: Arc::new(network),
            clock: Arc::new(SystemClock),
            rng: Arc::new(Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(7))),
        };
        let metrics = Metrics::new();
        let rpc = RpcClient::new(
            env.clone(),
            config.id.clone(),
            config.cluster_secrets(),
            Duration::from_millis(100),
            config.request_timeout,
            metrics.clone(),
        );
        let me = MemberState {
            id: config.id.clone(),
            peer_addr: config.advertise_peer.clone(),
            http_addr: config.advertise.clone(),
            generation: 1,
            version: 0,
            synced_epoch: 0,
            pulls_pending: 0,
            incarnation: 1,
            acked_epoch: 0,
            read_epoch: 0,
        };
        Membership::new(config, env, rpc, metrics, me, view)
    }

    /// A member gossiping only in process (see [`Membership::gossip_with`]).
    fn in_process_member(id: &str, view: &ClusterView) -> Arc<Membership> {
        let dns = LateDns {
            lookups: AtomicUsize::new(0),
            unresolved: 0,
            connects: Arc::new(AtomicUsize::new(0)),
        };
        let config = NodeConfig::for_local(id, 8080, 7070, PathBuf::new());
        test_member(config, dns, Some(view.clone()))
    }

    /// Members `a` and `b`, the ring of `a` alone, and the ring after `b` joined.
    fn a_then_a_and_b() -> (MemberId, MemberId, ClusterView, ClusterView) {
        let (a, b) = (MemberId::from("a"), MemberId::from("b"));
        let settings = ClusterSettings {
            partitions: 16,
            n: 2,
            r: 1,
            w: 1,
            ..ClusterSettings::default()
        };
        let one = ClusterView::bootstrap(&a, 1, settings, 1).unwrap();
        let two = one.with_changes(&[(b.clone(), 1)], &[], &a, 2).unwrap();
        (a, b, one, two)
    }

    #[tokio::test]
    async fn a_ring_is_acknowledged_only_once_writes_begun_under_older_rings_are_done() {
        let (_, b, one, two) = a_then_a_and_b();
        let (e1, e2) = (one.current().epoch, two.current().epoch);
        assert!(e2 > e1);
        let ma = in_process_member("a", &one);
        let mb = in_process_member("b", &one);
        assert_eq!(ma.acknowledge_ring(), e1);
        assert_eq!(mb.acknowledge_ring(), e1);

        // b begins a write under the old ring, then both adopt the new one.
        let (write_view, lease) = mb.view_for_write().unwrap();
        assert_eq!(write_view.current().epoch, e1);
        assert!(ma.offer_view(two.clone()));
        assert!(mb.offer_view(two.clone()));
        assert_eq!(ma.acknowledge_ring(), e2);
        assert_eq!(
            mb.acknowledge_ring(),
            e1,
            "acknowledged while an old write runs"
        );
        // A write begun under the new ring does not hold the acknowledgement back.
        let (_, new_lease) = ma.view_for_write().unwrap();
        assert_eq!(ma.acknowledge_ring(), e2);
        drop(new_lease);

        ma.gossip_with(&mb);
        assert_eq!(ma.not_acknowledged(e2), vec![b.clone()]);
        assert_eq!(mb.not_acknowledged(e2), vec![b.clone()]);

        drop(lease);
        assert_eq!(mb.acknowledge_ring(), e2);
        mb.gossip_with(&ma);
        assert!(ma.not_acknowledged(e2).is_empty());
        assert!(mb.not_acknowledged(e2).is_empty());
    }

    /// A member the view marks removed is forgotten (gossip entry and detector history)
    /// once silent for the grace period; a peer that still holds its old entry does not
    /// gossip it back, but the member itself, heard anew, is tracked again.
    #[tokio::test]
    async fn removed_members_are_pruned_after_the_grace_period() {
        let (a, b, one, _) = a_then_a_and_b();
        let mut view = one.clone();
        view.version += 1;
        view.members.insert(
            b.clone(),
            ViewMember {
                status: MemberStatus::Removed,
                weight: 1,
            },
        );
        assert!(view.validate().is_ok());
        let pruning = |id: &str, grace: Duration| {
            let dns = LateDns {
                lookups: AtomicUsize::new(0),
                unresolved: 0,
                connects: Arc::new(AtomicUsize::new(0)),
            };
            let mut config = NodeConfig::for_local(id, 8080, 7070, PathBuf::new());
            config.tombstone_grace = grace;
            test_member(config, dns, Some(view.clone()))
        };
        let ma = pruning("a", Duration::ZERO);
        let mc = pruning("c", Duration::from_secs(3600));
        let mb = in_process_member("b", &view);
        ma.gossip_with(&mb);
        mc.gossip_with(&mb);
        assert!(ma.member_state(&b).is_some());

        // Within its grace period c keeps b; a's grace is over at once.
        assert!(mc.prune_removed().is_empty());
        assert_eq!(ma.prune_removed(), vec![b.clone()]);
        assert!(ma.member_state(&b).is_none());
        assert!(!ma.is_alive(&b));
        // Listed from the view alone (as removed), with no gossip state left.
        assert!(
            ma.members()
                .iter()
                .find(|m| m.id == b)
                .is_some_and(|m| m.status == "removed" && m.generation == 0 && !m.alive)
        );
        // The member itself is never pruned, nor one still in a ring.
        assert!(ma.member_state(&a).is_some());

        // c still gossips b's old entry: a does not take it back.
        ma.gossip_with(&mc);
        mc.gossip_with(&ma);
        assert!(ma.member_state(&b).is_none());

        // b heard anew (a newer heartbeat) is tracked again.
        mb.update_self(|_| {});
        ma.gossip_with(&mb);
        assert!(ma.member_state(&b).is_some());
    }

    #[tokio::test]
    async fn a_member_knows_which_peers_it_reached_have_not_yet_reached_it() {
        let (_, b, _, view) = a_then_a_and_b();
        let ma = in_process_member("a", &view);
        let mb = in_process_member("b", &view);
        assert!(ma.reached_but_not_reached_by().is_empty());

        // a reaches b (as a restarted member with a new address does at once) ...
        ma.gossip_with(&mb);
        assert_eq!(ma.reached_but_not_reached_by(), vec![b.clone()]);
        assert!(mb.reached_but_not_reached_by().is_empty());
        // ... and is a working replica for b once b has reached it.
        mb.gossip_with(&ma);
        assert!(ma.reached_but_not_reached_by().is_empty());
        assert!(mb.reached_but_not_reached_by().is_empty());
    }
}
