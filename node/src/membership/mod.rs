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
use crate::ring::MemberId;
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
}

struct State {
    table: BTreeMap<MemberId, MemberState>,
    arrivals: BTreeMap<MemberId, Arrivals>,
    view: Option<Arc<ClusterView>>,
    joins: BTreeMap<MemberId, u32>,
    leaves: BTreeSet<MemberId>,
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
            }),
            view_tx,
            probing: AtomicBool::new(false),
        })
    }

    pub fn me(&self) -> &MemberId {
        &self.me
    }

    pub fn view(&self) -> Option<Arc<ClusterView>> {
        self.state.lock().view.clone()
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
            if !newer {
                continue;
            }
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
        GossipDelta {
            entries,
            requests,
            view: if ours_newer {
                st.view.as_deref().cloned()
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
        let Some(push) = self.apply_delta(delta) else {
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

    /// If this member is the claimant: plans queued joins and leaves, and retires the base
    /// ring once every receiving member has synced.
    pub fn claimant_duties(&self) {
        // Gather what planning needs under the lock, plan without it (planning a large ring
        // takes milliseconds, and gossip handlers must not wait on it).
        let (view, joins, leaves, synced) = {
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
            (view, joins, leaves, synced)
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
        } else {
            view.retire_if_synced(|id| synced.get(id).copied().unwrap_or(0), &self.me)
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
        let env = Env {
            network: Arc::new(LateDns {
                lookups: AtomicUsize::new(0),
                unresolved: 8,
                connects: connects.clone(),
            }),
            clock: Arc::new(SystemClock),
            rng: Arc::new(Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(7))),
        };
        let mut config = NodeConfig::for_local("m1", 8080, 7070, PathBuf::new());
        config.seeds = vec!["seed.example:7070".into()];
        config.gossip_interval = Duration::from_millis(100);
        let metrics = Metrics::new();
        let rpc = RpcClient::new(
            env.clone(),
            config.id.clone(),
            config.cluster_secrets(),
            Duration::from_millis(100),
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
        };
        let membership = Membership::new(config, env, rpc, metrics, me, None);
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
}
