//! Requests one member sends another, and the answers.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::{ConflictMode, Object};
use crate::membership::{GossipDelta, GossipDigest, GossipPush};
use crate::replication::{ClientRequest, ClientResponse};
use crate::ring::{MemberId, PartitionId};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Ping,
    /// Gossip step 1: the sender's versions of every entry it knows.
    GossipDigest(GossipDigest),
    /// Gossip step 3: the entries the receiver asked for.
    GossipPush(GossipPush),
    /// Merge `object` into the replica's record of `key` — or, with `hint_for`, hold it as a
    /// hint for that member.
    Replicate {
        partition: PartitionId,
        key: Bytes,
        object: Object,
        hint_for: Option<MemberId>,
        mode: ConflictMode,
    },
    /// The replica's record of `key` (or its hint held for `hint_for`).
    Read {
        partition: PartitionId,
        key: Bytes,
        hint_for: Option<MemberId>,
    },
    /// A client request forwarded to a primary, which coordinates it.
    Coordinate(ClientRequest),
    /// Asks the claimant to add a member to the ring.
    Join {
        member: MemberId,
        weight: u32,
    },
    /// Asks the claimant to decommission a member.
    Leave {
        member: MemberId,
    },
    /// Merkle roots of the given partitions.
    MerkleRoots {
        partitions: Vec<PartitionId>,
    },
    /// The middle level of a partition's tree (`middles: None`) or the leaves under the
    /// given middle nodes.
    MerkleNodes {
        partition: PartitionId,
        middles: Option<Vec<u16>>,
    },
    /// Key digests in the given leaves.
    LeafEntries {
        partition: PartitionId,
        leaves: Vec<u16>,
    },
    /// Full records of the given keys.
    Fetch {
        partition: PartitionId,
        keys: Vec<Bytes>,
    },
    /// The next page of a partition, for ownership handoff.
    HandoffPull {
        partition: PartitionId,
        after: Option<Bytes>,
        max_bytes: u32,
    },
    /// Removes a tombstone that every replica holds, if unchanged.
    Reap {
        partition: PartitionId,
        key: Bytes,
        digest: u64,
    },
}

impl Request {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::GossipDigest(_) => "gossip_digest",
            Request::GossipPush(_) => "gossip_push",
            Request::Replicate { .. } => "replicate",
            Request::Read { .. } => "read",
            Request::Coordinate(_) => "coordinate",
            Request::Join { .. } => "join",
            Request::Leave { .. } => "leave",
            Request::MerkleRoots { .. } => "merkle_roots",
            Request::MerkleNodes { .. } => "merkle_nodes",
            Request::LeafEntries { .. } => "leaf_entries",
            Request::Fetch { .. } => "fetch",
            Request::HandoffPull { .. } => "handoff_pull",
            Request::Reap { .. } => "reap",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Pong,
    GossipDelta(GossipDelta),
    Ack,
    Merged {
        changed: bool,
    },
    Object(Option<Object>),
    Client(ClientResponse),
    Roots(Vec<(PartitionId, u64)>),
    Nodes(Vec<u64>),
    Entries(Vec<(Bytes, u64)>),
    Objects(Vec<(Bytes, Object)>),
    Page {
        items: Vec<(Bytes, Object)>,
        done: bool,
    },
    Reaped(bool),
    Error(RemoteError),
}

/// Why a member could not serve a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The member cannot serve it now (no ring yet, storage closed).
    Unavailable,
    /// The request makes no sense to this member (wrong partition count, unknown member).
    BadRequest,
    /// The member is not the claimant.
    NotClaimant,
    /// A cluster rule refuses it (e.g. leaving would drop below N members).
    Refused,
    Storage,
    Internal,
}

impl RemoteError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RemoteError {
            code,
            message: message.into(),
        }
    }
}
