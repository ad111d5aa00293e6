//! Settings of one member ([`NodeConfig`]) and of the whole cluster ([`ClusterSettings`]).
//!
//! Cluster settings (partitions, N/R/W, conflict mode, sibling limit) are fixed when the
//! cluster is bootstrapped and travel with the cluster view, so a joining member always
//! adopts the cluster's values rather than its own flags.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::clock::ConflictMode;
use crate::ring::{self, MemberId};
use crate::storage::Durability;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("replication must satisfy 1 <= r <= n and 1 <= w <= n (got n={n}, r={r}, w={w})")]
    Quorum { n: usize, r: usize, w: usize },
    #[error("n must be between 1 and {max}, got {n}")]
    ReplicationFactor { n: usize, max: usize },
    #[error(transparent)]
    Ring(#[from] ring::RingError),
    #[error("max siblings must be at least 1")]
    MaxSiblings,
    #[error("member id {0:?} must be 1-63 characters of [a-zA-Z0-9._-]")]
    MemberId(String),
    #[error("tokens must be at least 16 characters")]
    WeakToken,
}

/// A secret (token) whose `Debug` output never shows it, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself: only for authenticating, never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Which replicas a read asks before any has answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFanout {
    /// All `N` replicas; the replies beyond `R` arrive in the background and feed read
    /// repair (Riak's way).
    All,
    /// `R` replicas, this member first when it holds one. Another replica is asked when
    /// one fails, or when `R` replies have not all arrived after `speculate_after`
    /// (Cassandra's speculative retry). A read costs `R - 1` peer requests instead of
    /// `N - 1`; read repair then covers the replicas asked, and anti-entropy the others.
    Quorum { speculate_after: Duration },
}

impl Default for ReadFanout {
    fn default() -> Self {
        ReadFanout::Quorum {
            speculate_after: Duration::from_millis(DEFAULT_SPECULATIVE_READ_MS),
        }
    }
}

/// Default wait before a quorum read asks one more replica.
pub const DEFAULT_SPECULATIVE_READ_MS: u64 = 10;

/// Largest replication factor accepted.
pub const MAX_N: usize = 7;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// Number of partitions `Q` (power of two), fixed for the cluster's life.
    pub partitions: u32,
    /// Replicas per key.
    pub n: usize,
    /// Default read quorum.
    pub r: usize,
    /// Default write quorum.
    pub w: usize,
    pub conflicts: ConflictMode,
    /// Writes that would leave a key with more siblings are refused.
    pub max_siblings: usize,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            partitions: ring::DEFAULT_PARTITIONS,
            n: 3,
            r: 2,
            w: 2,
            conflicts: ConflictMode::Siblings,
            max_siblings: 100,
        }
    }
}

impl ClusterSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        ring::validate_partition_count(self.partitions)?;
        if self.n == 0 || self.n > MAX_N || 2 * self.n as u64 > u64::from(self.partitions) {
            return Err(ConfigError::ReplicationFactor {
                n: self.n,
                max: MAX_N.min(self.partitions as usize / 2),
            });
        }
        if self.r == 0 || self.r > self.n || self.w == 0 || self.w > self.n {
            return Err(ConfigError::Quorum {
                n: self.n,
                r: self.r,
                w: self.w,
            });
        }
        if self.max_siblings == 0 {
            return Err(ConfigError::MaxSiblings);
        }
        Ok(())
    }
}

/// Checks a member id: short, printable, usable in DNS names and metric labels.
pub fn validate_member_id(id: &str) -> Result<MemberId, ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(MemberId::new(id))
    } else {
        Err(ConfigError::MemberId(id.to_string()))
    }
}

/// How members decide a peer is down.
#[derive(Clone, Debug, PartialEq)]
pub enum FailureDetector {
    /// Phi-accrual over heartbeat inter-arrival times (Hayashibara et al.), as Cassandra.
    PhiAccrual {
        threshold: f64,
        min_std_dev: Duration,
        max_silence: Duration,
    },
    /// Down after a fixed silence.
    Timeout { after: Duration },
}

impl Default for FailureDetector {
    fn default() -> Self {
        FailureDetector::PhiAccrual {
            threshold: 8.0,
            min_std_dev: Duration::from_millis(500),
            max_silence: Duration::from_secs(30),
        }
    }
}

/// Limits on client requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Client requests processed at once; more are refused with a retryable 503.
    pub max_inflight_requests: usize,
    /// Open HTTP connections; more are closed on accept.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            max_inflight_requests: 1024,
            max_connections: 4096,
        }
    }
}

/// Limits on connections to the peer (RPC) port. They hold before a connection has proven
/// the cluster secret, so a process that can merely reach the port cannot exhaust the
/// member's memory or file descriptors (see docs/security.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLimits {
    /// Open peer connections, authenticated or not; more are closed on accept. Members
    /// keep one connection to each other member, so a cluster needs about its size.
    pub max_connections: usize,
    /// Open peer connections from one source address; more are closed on accept.
    pub max_connections_per_ip: usize,
    /// Time from accept to a completed handshake (TLS included); a connection that has
    /// not proven the cluster secret by then is closed.
    pub handshake_timeout: Duration,
}

/// Default of [`PeerLimits::max_connections`].
pub const DEFAULT_MAX_PEER_CONNECTIONS: usize = 1024;
/// Default of [`PeerLimits::max_connections_per_ip`].
pub const DEFAULT_MAX_PEER_CONNECTIONS_PER_IP: usize = 64;
/// Default of [`PeerLimits::handshake_timeout`], in milliseconds.
pub const DEFAULT_PEER_HANDSHAKE_TIMEOUT_MS: u64 = 5000;

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            max_connections: DEFAULT_MAX_PEER_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_PEER_CONNECTIONS_PER_IP,
            handshake_timeout: Duration::from_millis(DEFAULT_PEER_HANDSHAKE_TIMEOUT_MS),
        }
    }
}

/// Everything one member needs to run.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: MemberId,
    /// Address the client/admin HTTP server binds.
    pub listen: String,
    /// Address other members and clients use to reach the HTTP server.
    pub advertise: String,
    /// Address the internal RPC server binds.
    pub peer_listen: String,
    /// Address other members use to reach the RPC server.
    pub advertise_peer: String,
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub sync_interval: Duration,
    pub cache_bytes: u64,
    /// Threads that flush and compact the storage engine; `None` leaves the count to the
    /// engine (one per CPU, at most four).
    pub engine_threads: Option<NonZeroUsize>,
    /// RPC addresses of members to contact first (DNS names allowed).
    pub seeds: Vec<String>,
    /// Create a new cluster with this member alone if it has no ring yet.
    pub bootstrap: bool,
    /// Shared secret: authenticates member connections and admin API calls. Members prove
    /// knowledge of this one.
    pub cluster_token: Secret,
    /// Further cluster tokens accepted from others (during a rotation).
    pub accepted_cluster_tokens: Vec<Secret>,
    /// When not empty, client API calls need one of these bearer tokens.
    pub client_tokens: Vec<Secret>,
    /// Used only when this member bootstraps the cluster.
    pub settings: ClusterSettings,
    pub limits: Limits,
    pub peer_limits: PeerLimits,
    pub gossip_interval: Duration,
    pub failure_detector: FailureDetector,
    /// Wait for a replica before fallbacks stand in for it; its answer counts until the
    /// request's deadline.
    pub replica_timeout: Duration,
    /// Deadline of a whole client request.
    pub request_timeout: Duration,
    pub read_fanout: ReadFanout,
    pub hint_interval: Duration,
    pub anti_entropy_interval: Duration,
    /// Bytes per second one member streams during handoff and repair (0 = unthrottled).
    pub transfer_rate_bytes: u64,
    /// Tombstones older than this, held by every replica, are removed; hints older than
    /// this are dropped (their data lives on the other replicas and anti-entropy).
    pub tombstone_grace: Duration,
    /// Seed of the member's random choices (gossip peers, nonces, planner).
    pub rng_seed: u64,
    /// TLS for peer connections (and optionally HTTP); `None` = plain TCP.
    pub tls: Option<crate::rpc::tls::TlsFiles>,
}

impl NodeConfig {
    /// Every cluster token this member accepts, the one it proves first.
    pub fn cluster_secrets(&self) -> Vec<Vec<u8>> {
        std::iter::once(&self.cluster_token)
            .chain(&self.accepted_cluster_tokens)
            .map(|t| t.expose().as_bytes().to_vec())
            .collect()
    }

    /// A configuration for tests and the dev cluster: loopback addresses, short intervals.
    pub fn for_local(id: &str, http_port: u16, peer_port: u16, data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            id: MemberId::new(id),
            listen: format!("127.0.0.1:{http_port}"),
            advertise: format!("127.0.0.1:{http_port}"),
            peer_listen: format!("127.0.0.1:{peer_port}"),
            advertise_peer: format!("127.0.0.1:{peer_port}"),
            data_dir,
            durability: Durability::Fsync,
            sync_interval: Duration::from_secs(1),
            cache_bytes: 64 << 20,
            engine_threads: None,
            seeds: Vec::new(),
            bootstrap: false,
            cluster_token: Secret::new("dev-cluster-token-change-me"),
            accepted_cluster_tokens: Vec::new(),
            client_tokens: Vec::new(),
            settings: ClusterSettings::default(),
            limits: Limits::default(),
            peer_limits: PeerLimits::default(),
            gossip_interval: Duration::from_secs(1),
            failure_detector: FailureDetector::default(),
            replica_timeout: Duration::from_millis(1000),
            request_timeout: Duration::from_secs(5),
            read_fanout: ReadFanout::default(),
            hint_interval: Duration::from_secs(1),
            anti_entropy_interval: Duration::from_secs(60),
            transfer_rate_bytes: 64 << 20,
            tombstone_grace: Duration::from_secs(3600),
            rng_seed: 0,
            tls: None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_member_id(self.id.as_str())?;
        self.settings.validate()?;
        if std::iter::once(&self.cluster_token)
            .chain(&self.accepted_cluster_tokens)
            .chain(&self.client_tokens)
            .any(|t| t.expose().len() < 16)
        {
            return Err(ConfigError::WeakToken);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_validation() {
        assert!(ClusterSettings::default().validate().is_ok());
        let bad = ClusterSettings {
            w: 4,
            ..Default::default()
        };
        assert_eq!(
            bad.validate(),
            Err(ConfigError::Quorum { n: 3, r: 2, w: 4 })
        );
        let bad_q = ClusterSettings {
            partitions: 100,
            ..Default::default()
        };
        assert!(matches!(bad_q.validate(), Err(ConfigError::Ring(_))));
    }

    #[test]
    fn secrets_never_print() {
        let c = NodeConfig::for_local("a", 1, 2, "/tmp".into());
        let printed = format!("{c:?}");
        assert!(!printed.contains("dev-cluster-token"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn member_ids() {
        assert!(validate_member_id("dynamo-0").is_ok());
        assert!(validate_member_id("").is_err());
        assert!(validate_member_id("a b").is_err());
        assert!(validate_member_id(&"x".repeat(64)).is_err());
    }
}
