//! One member, assembled: storage, membership, replication, the RPC and HTTP servers and
//! the background tasks, started and stopped together.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, NodeConfig};
use crate::env::Env;
use crate::membership::{ClusterView, MemberState, MemberStatus, Membership};
use crate::metrics::Metrics;
use crate::replication::Replicator;
use crate::ring::MemberId;
use crate::rpc::server::{self, Handler, ServerContext};
use crate::rpc::tls::Tls;
use crate::rpc::transport::BoxFuture;
use crate::rpc::{ErrorCode, RemoteError, Request, Response, RpcClient};
use crate::storage::{CorruptKind, Engine, StorageError, Store, StoreConfig};
use crate::{antientropy, api, handoff};

const META_IDENTITY: &[u8] = b"identity";
const META_GENERATION: &[u8] = b"generation";
const META_VIEW: &[u8] = b"view";

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("data directory belongs to member {found:?}, not {expected:?}")]
    WrongIdentity { found: String, expected: String },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("corrupt metadata {what}: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("cannot bootstrap: {0}")]
    Bootstrap(String),
    #[error(transparent)]
    Tls(#[from] crate::rpc::tls::TlsError),
}

/// What a data directory records about the member that owns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Identity {
    id: MemberId,
    /// The clock actor of this incarnation of the data: a wiped disk gets a new one.
    incarnation: u64,
}

/// What the member's services share.
#[derive(Clone)]
pub struct Services {
    pub config: NodeConfig,
    pub env: Env,
    pub store: Store,
    pub membership: Arc<Membership>,
    pub rpc: RpcClient,
    pub metrics: Metrics,
}

pub struct Node {
    pub config: NodeConfig,
    pub env: Env,
    pub store: Store,
    pub metrics: Metrics,
    pub rpc: RpcClient,
    pub membership: Arc<Membership>,
    pub replicator: Arc<Replicator>,
    pub handoff: Arc<handoff::Handoff>,
    pub antientropy: Arc<antientropy::AntiEntropy>,
    pub incarnation: u64,
    pub generation: u64,
    /// Addresses actually bound (differ from the configuration when it asked for port 0).
    pub http_addr: String,
    pub peer_addr: String,
    /// TLS for peers (and HTTP if enabled), when configured.
    pub tls: Option<Tls>,
    /// Client requests allowed in flight (see `Limits::max_inflight_requests`).
    pub request_permits: Arc<tokio::sync::Semaphore>,
    /// Signs the causal contexts handed to clients and checks those they send back.
    pub contexts: crate::api::context::ContextCodec,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The peer server stops last (see [`Node::shutdown`]).
    peer_shutdown: watch::Sender<bool>,
    peer_server: Mutex<Option<JoinHandle<()>>>,
    started: tokio::time::Instant,
    /// Set once the member has known its peers (see [`Node::readiness`]); never unset, so
    /// a peer going down later does not make this member unready too.
    peers_known: std::sync::atomic::AtomicBool,
}

impl Node {
    /// Opens the data, binds both servers and starts every background task.
    pub async fn start(
        mut config: NodeConfig,
        env: Env,
        engine: Arc<dyn Engine>,
    ) -> Result<Arc<Node>, NodeError> {
        config.validate()?;
        let metrics = Metrics::new();
        let store = Store::open(
            engine,
            StoreConfig {
                durability: config.durability,
                sync_interval: config.sync_interval,
                ..StoreConfig::default()
            }
            .with_drawn_sync_offset(env.random_u64()),
        )?;
        store.report_corruption_to(metrics.corrupt_records.clone());

        let identity = match store.meta_get(META_IDENTITY)? {
            Some(bytes) => {
                let id: Identity =
                    postcard::from_bytes(&bytes).map_err(|e| NodeError::Corrupt {
                        what: "identity",
                        reason: e.to_string(),
                    })?;
                if id.id != config.id {
                    return Err(NodeError::WrongIdentity {
                        found: id.id.to_string(),
                        expected: config.id.to_string(),
                    });
                }
                id
            }
            None => {
                let id = Identity {
                    id: config.id.clone(),
                    incarnation: env.random_u64() | 1,
                };
                store
                    .meta_put(META_IDENTITY, postcard::to_stdvec(&id).ok())
                    .await?;
                id
            }
        };
        let generation = match store.meta_get(META_GENERATION)? {
            Some(b) => {
                u64::from_be_bytes(b.as_slice().try_into().map_err(|_| NodeError::Corrupt {
                    what: "generation",
                    reason: "bad length".into(),
                })?) + 1
            }
            None => 1,
        };
        store
            .meta_put(META_GENERATION, Some(generation.to_be_bytes().to_vec()))
            .await?;
        // The saved view gets the checks a gossiped one gets. One that fails them is not
        // trusted: the member starts without a view and adopts the one its peers gossip
        // (and saves it over the bad one).
        let saved_view = store.meta_get(META_VIEW)?;
        let view: Option<ClusterView> = match saved_view.as_deref().map(decode_saved_view) {
            Some(Ok(v)) => Some(v),
            Some(Err(reason)) => {
                store
                    .corruption()
                    .record(CorruptKind::Meta, META_VIEW, &reason);
                tracing::error!(
                    member = %config.id,
                    %reason,
                    "the saved cluster view is corrupt or invalid and is ignored; this member learns the view from its peers (--seeds)"
                );
                None
            }
            None => None,
        };
        // A member that had a view belongs to a cluster: bootstrapping a new one because
        // its copy of the view is damaged would split it.
        let had_view = saved_view.is_some();
        if let Some(v) = &view {
            store.init_partitions(v.settings.partitions).await?;
        }

        let peer_listener = env
            .network
            .bind(&config.peer_listen)
            .await
            .map_err(|source| NodeError::Bind {
                addr: config.peer_listen.clone(),
                source,
            })?;
        let http_listener =
            env.network
                .bind(&config.listen)
                .await
                .map_err(|source| NodeError::Bind {
                    addr: config.listen.clone(),
                    source,
                })?;
        let peer_addr = peer_listener
            .local_addr()
            .unwrap_or_else(|_| config.peer_listen.clone());
        let http_addr = http_listener
            .local_addr()
            .unwrap_or_else(|_| config.listen.clone());
        if config.advertise_peer.ends_with(":0") {
            config.advertise_peer = peer_addr.clone();
        }
        if config.advertise.ends_with(":0") {
            config.advertise = http_addr.clone();
        }

        let tls = config.tls.as_ref().map(Tls::load).transpose()?;
        let rpc = RpcClient::new(
            env.clone(),
            config.id.clone(),
            config.cluster_secrets(),
            config.replica_timeout,
            // A peer silent for a whole request is taken for gone; one slower than a
            // replica or gossip timeout may still answer a request waiting for it.
            config.request_timeout,
            metrics.clone(),
        )
        .with_tls(tls.clone());
        let me_state = MemberState {
            id: config.id.clone(),
            peer_addr: config.advertise_peer.clone(),
            http_addr: config.advertise.clone(),
            generation,
            version: 0,
            // The base ring, not the current one: a member restarted during a handoff
            // has not necessarily received the target's partitions yet, and announcing
            // them as synced would let the claimant retire the base early. The handoff
            // loop announces the target once its resume markers say so.
            synced_epoch: view.as_ref().map_or(0, |v| v.base().epoch),
            pulls_pending: 0,
            incarnation: identity.incarnation,
            acked_epoch: 0,
            read_epoch: view.as_ref().map_or(0, |v| v.base().epoch),
        };
        let membership = Membership::new(
            config.clone(),
            env.clone(),
            rpc.clone(),
            metrics.clone(),
            me_state,
            view,
        );
        let services = Services {
            config: config.clone(),
            env: env.clone(),
            store: store.clone(),
            membership: membership.clone(),
            rpc: rpc.clone(),
            metrics: metrics.clone(),
        };
        let replicator = Replicator::new(identity.incarnation, generation, &services);
        let antientropy = antientropy::AntiEntropy::new(&services);
        let handoff = handoff::Handoff::new(&services, antientropy.clone());

        if config.bootstrap && membership.view().is_none() && had_view {
            tracing::warn!(
                member = %config.id,
                "not bootstrapping although asked to: this data directory held a cluster view, so the member waits for its peers' view"
            );
        } else if config.bootstrap && membership.view().is_none() {
            let view = membership
                .bootstrap(1)
                .map_err(|e| NodeError::Bootstrap(e.to_string()))?;
            persist_view(&store, &view).await?;
            store.init_partitions(view.settings.partitions).await?;
            tracing::info!(member = %config.id, partitions = view.settings.partitions, "bootstrapped a new cluster");
        }

        let (shutdown, shutdown_rx) = watch::channel(false);
        let (peer_shutdown, peer_shutdown_rx) = watch::channel(false);
        let node = Arc::new(Node {
            config: config.clone(),
            env: env.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            rpc,
            membership: membership.clone(),
            replicator: replicator.clone(),
            handoff: handoff.clone(),
            antientropy: antientropy.clone(),
            incarnation: identity.incarnation,
            generation,
            http_addr,
            peer_addr,
            tls: tls.clone(),
            contexts: crate::api::context::ContextCodec::new(&config.cluster_secrets()),
            request_permits: Arc::new(tokio::sync::Semaphore::new(
                config.limits.max_inflight_requests,
            )),
            shutdown,
            tasks: Mutex::new(Vec::new()),
            peer_shutdown,
            peer_server: Mutex::new(None),
            started: tokio::time::Instant::now(),
            peers_known: std::sync::atomic::AtomicBool::new(false),
        });

        let ctx = ServerContext {
            env,
            me: config.id.clone(),
            secrets: Arc::new(config.cluster_secrets()),
            metrics,
            tls: tls.clone(),
            limits: config.peer_limits.clone(),
        };
        let handler: Arc<dyn Handler> = Arc::new(PeerService {
            node: Arc::downgrade(&node),
        });
        *node.peer_server.lock() = Some(tokio::spawn(server::serve(
            peer_listener,
            handler,
            ctx,
            peer_shutdown_rx,
        )));
        let mut tasks = vec![
            tokio::spawn(api::serve(http_listener, node.clone(), shutdown_rx.clone())),
            tokio::spawn(membership.clone().run_gossip(shutdown_rx.clone())),
            tokio::spawn(replicator.clone().run_hint_delivery(shutdown_rx.clone())),
            tokio::spawn(follow_views(node.clone(), shutdown_rx.clone())),
            tokio::spawn(handoff.run(shutdown_rx.clone())),
            tokio::spawn(antientropy.run(shutdown_rx.clone())),
            tokio::spawn(report_storage(node.clone(), shutdown_rx.clone())),
        ];
        node.tasks.lock().append(&mut tasks);
        tracing::info!(member = %config.id, http = %node.http_addr, peer = %node.peer_addr, generation, "member started");
        Ok(node)
    }

    /// Stops every task and closes the store cleanly (its Merkle trees are saved, so the
    /// next start does not rescan).
    ///
    /// The peer server stops last: while clients drain, this member still answers the
    /// writes and reads other members coordinate. With one replica of a key going down,
    /// the others then need only each other once it is gone, not during its drain as well.
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        self.peer_shutdown.send_replace(true);
        let peer_server = self.peer_server.lock().take();
        if let Some(t) = peer_server {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        if let Err(e) = self.store.close().await {
            tracing::error!(error = %e, "closing the store failed");
        }
        tracing::info!(member = %self.config.id, "member stopped");
    }

    /// Creates a new cluster with this member alone (if it has none yet).
    pub async fn bootstrap(&self) -> Result<Arc<ClusterView>, NodeError> {
        let view = self
            .membership
            .bootstrap(1)
            .map_err(|e| NodeError::Bootstrap(e.to_string()))?;
        persist_view(&self.store, &view).await?;
        self.store.init_partitions(view.settings.partitions).await?;
        Ok(view)
    }

    /// Whether this member serves client traffic: it is an up member of a cluster.
    pub fn readiness(&self) -> Result<(), String> {
        let Some(view) = self.membership.view() else {
            return Err("not part of a cluster yet".into());
        };
        match view.status_of(&self.config.id) {
            Some(MemberStatus::Up) | Some(MemberStatus::Leaving) => self.peers_readiness(&view),
            Some(MemberStatus::Removed) => Err("removed from the cluster".into()),
            None => Err("waiting to be joined to the cluster".into()),
        }
    }

    /// A restarted member knows the ring from disk but learns its peers' addresses by
    /// gossip; until then every request it coordinated would reach no other replica and
    /// fail its quorum, and until it has compared views with a peer it refuses to
    /// coordinate (the ring may have moved while it was down). So it is ready once it knows
    /// every other member of the ring and has compared views — or, since peers may really
    /// be down (a whole-cluster restart, pods started one by one), after a grace period.
    ///
    /// It also waits until every live peer it has reached has reached it: a restarted pod
    /// has a new IP, which the peers' name lookups return only seconds later, and a rolling
    /// update that stopped the next member as soon as this one was ready left the third
    /// member with no replica it could reach. That wait has a longer bound of its own, for
    /// a peer that can never reach this member.
    fn peers_readiness(&self, view: &ClusterView) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        if self.peers_known.load(Ordering::Relaxed) {
            return Ok(());
        }
        let elapsed = self.started.elapsed();
        let unknown: Vec<String> = view
            .active_members()
            .filter(|m| **m != self.config.id && self.membership.peer_addr(m).is_none())
            .map(|m| m.to_string())
            .collect();
        let grace = (self.config.gossip_interval * 10)
            .clamp(Duration::from_secs(3), Duration::from_secs(30));
        let caught_up = self.membership.may_coordinate();
        if !((unknown.is_empty() && caught_up) || elapsed >= grace) {
            if unknown.is_empty() {
                return Err("not yet compared cluster views with a peer".into());
            }
            return Err(format!(
                "not yet heard of {} by gossip: {}",
                unknown.len(),
                unknown.join(", ")
            ));
        }
        let reach_grace = (self.config.gossip_interval * 30)
            .clamp(Duration::from_secs(5), Duration::from_secs(60));
        let unreached_by: Vec<String> = self
            .membership
            .reached_but_not_reached_by()
            .into_iter()
            .filter(|m| {
                view.status_of(m)
                    .is_some_and(|s| s != MemberStatus::Removed)
            })
            .map(|m| m.to_string())
            .collect();
        if !unreached_by.is_empty() && elapsed < reach_grace {
            return Err(format!(
                "not yet reached by {} it reaches: {}",
                unreached_by.len(),
                unreached_by.join(", ")
            ));
        }
        self.peers_known.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Decodes and checks a view saved by [`persist_view`], as [`Membership::offer_view`]
/// checks a gossiped one.
fn decode_saved_view(bytes: &[u8]) -> Result<ClusterView, String> {
    let view: ClusterView = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
    view.validate().map_err(|e| e.to_string())?;
    Ok(view)
}

async fn persist_view(store: &Store, view: &ClusterView) -> Result<(), StorageError> {
    let bytes = postcard::to_stdvec(view).map_err(|e| StorageError::Engine(e.to_string()))?;
    store.meta_put(META_VIEW, Some(bytes)).await
}

/// Persists every adopted view and prepares storage the first time one arrives.
async fn follow_views(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut views = node.membership.subscribe();
    loop {
        tokio::select! {
            biased;
            changed = views.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let Some(view) = views.borrow_and_update().clone() else {
            continue;
        };
        if let Err(e) = node.store.init_partitions(view.settings.partitions).await {
            tracing::error!(error = %e, "preparing storage for the ring failed");
        }
        if let Err(e) = persist_view(&node.store, &view).await {
            tracing::error!(error = %e, "persisting the cluster view failed");
        }
        let me = &node.config.id;
        node.metrics
            .partitions_owned
            .set(view.current().partitions_of(me).len() as i64);
        node.metrics
            .partitions_replicated
            .set(view.current().replicated_by(me, view.settings.n).len() as i64);
    }
}

/// Bytes allocated on disk to the files under `dir` (their blocks, so a sparse or
/// preallocated file counts what it holds), or `None` when `dir` cannot be read (a member
/// whose engine keeps no files there).
pub fn disk_usage(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = std::fs::symlink_metadata(dir).ok()?.blocks() * 512;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        // Files come and go under compaction; one that vanished simply does not count.
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Some(total)
}

/// Keeps the storage gauges current.
async fn report_storage(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let keys: u64 = node
            .store
            .populated_partitions()
            .iter()
            .map(|(_, _, k)| k)
            .sum();
        node.metrics.storage_keys.set(keys as i64);
        // What the data directory takes on disk, as `du` counts it: the engine's own figure
        // counts its journal at its preallocated length (64 MiB) however little is in it.
        // Only a directory that holds the on-disk engine (its lock file) is measured: a
        // member over the in-memory engine (simulation, examples) has no files of its own.
        let dir = node.config.data_dir.clone();
        let on_disk = if dir.join("engine").join("lock").exists() {
            tokio::task::spawn_blocking(move || disk_usage(&dir))
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        node.metrics
            .storage_bytes
            .set(on_disk.unwrap_or_else(|| node.store.size_bytes()) as i64);
        node.metrics
            .hints_pending
            .set(node.store.hint_counts().values().sum::<u64>() as i64);
        tokio::select! {
            biased;
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Answers other members' requests.
struct PeerService {
    node: std::sync::Weak<Node>,
}

impl Handler for PeerService {
    fn handle(&self, peer: MemberId, request: Request) -> BoxFuture<'static, Response> {
        let node = self.node.upgrade();
        Box::pin(async move {
            let Some(node) = node else {
                return Response::Error(RemoteError::new(
                    ErrorCode::Unavailable,
                    "member is shutting down",
                ));
            };
            match request {
                Request::Ping => Response::Pong,
                Request::GossipDigest(d) => Response::GossipDelta(node.membership.handle_digest(d)),
                Request::GossipPush(p) => {
                    node.membership.handle_push(p);
                    Response::Ack
                }
                Request::Replicate {
                    partition,
                    key,
                    object,
                    hint_for,
                    mode,
                } => {
                    node.replicator
                        .handle_replicate(partition, key, object, hint_for, mode)
                        .await
                }
                Request::Read {
                    partition,
                    key,
                    hint_for,
                } => node
                    .replicator
                    .handle_read(partition, &key, hint_for.as_ref()),
                Request::Coordinate(req) => {
                    Response::Client(node.replicator.handle_client(req, true).await)
                }
                r @ (Request::Join { .. } | Request::Leave { .. }) => {
                    match node.membership.accept_as_claimant(r) {
                        Ok(()) => Response::Ack,
                        Err(e) => Response::Error(e),
                    }
                }
                r @ (Request::MerkleRoots { .. }
                | Request::MerkleNodes { .. }
                | Request::LeafEntries { .. }
                | Request::Fetch { .. }
                | Request::Reap { .. }) => node.antientropy.handle(&peer, r).await,
                Request::HandoffPull {
                    partition,
                    after,
                    max_bytes,
                } => node.handoff.serve_pull(partition, after, max_bytes).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{BatchOp, MemoryEngine, Space};

    fn config(bootstrap: bool) -> NodeConfig {
        let mut c = NodeConfig::for_local("view-0", 0, 0, std::path::PathBuf::from("/nonexistent"));
        c.bootstrap = bootstrap;
        c.settings.n = 1;
        c.settings.r = 1;
        c.settings.w = 1;
        c.settings.partitions = 64;
        c
    }

    fn plant_view(engine: &MemoryEngine, bytes: Vec<u8>) {
        engine
            .write(
                &[BatchOp {
                    space: Space::Meta,
                    key: META_VIEW.to_vec(),
                    value: Some(bytes),
                }],
                false,
            )
            .unwrap();
    }

    /// A saved view that does not decode, or decodes but fails the checks a gossiped view
    /// gets (here: no ring at all, which used to panic), is ignored and counted; the member
    /// starts without a view and, though started with `--bootstrap`, does not found a new
    /// cluster over it.
    #[tokio::test]
    async fn a_corrupt_or_invalid_saved_view_is_ignored() {
        let mut valid =
            ClusterView::bootstrap(&MemberId::new("view-0"), 1, config(true).settings, 1).unwrap();
        valid.rings.clear();
        let invalid = postcard::to_stdvec(&valid).unwrap();
        for (what, bytes) in [("undecodable", vec![0xff; 40]), ("no ring", invalid)] {
            let engine = MemoryEngine::new();
            plant_view(&engine, bytes);
            let node = Node::start(config(true), Env::production(1), Arc::new(engine))
                .await
                .unwrap_or_else(|e| panic!("{what}: the member did not start: {e}"));
            assert!(
                node.membership.view().is_none(),
                "{what}: a view was adopted"
            );
            assert_eq!(
                node.store.corruption().count(CorruptKind::Meta),
                1,
                "{what}"
            );
            assert!(
                node.metrics
                    .render()
                    .contains("dynamo_corrupt_records_total{kind=\"meta\"} 1"),
                "{what}"
            );
            node.shutdown().await;
        }
    }

    /// A valid saved view is adopted as before.
    #[tokio::test]
    async fn a_valid_saved_view_is_adopted() {
        let view =
            ClusterView::bootstrap(&MemberId::new("view-0"), 1, config(false).settings, 1).unwrap();
        let engine = MemoryEngine::new();
        plant_view(&engine, postcard::to_stdvec(&view).unwrap());
        let node = Node::start(config(false), Env::production(1), Arc::new(engine))
            .await
            .unwrap();
        assert_eq!(
            node.membership.view().map(|v| v.version),
            Some(view.version)
        );
        assert_eq!(node.store.corruption().count(CorruptKind::Meta), 0);
        node.shutdown().await;
    }
}
