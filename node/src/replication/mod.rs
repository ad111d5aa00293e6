//! Replication: the coordinator of client requests (NWR quorums, sloppy quorum with hinted
//! writes, read repair), the replica side, and hinted handoff.
//!
//! A client request is coordinated by one of the key's primaries; any other member
//! forwards it to one. A write is applied locally first (which assigns its dot), then sent
//! to the other replicas concurrently; the client is answered once `W` replicas of every
//! live ring hold it. A replica that is down or does not answer in time is replaced by the
//! next fallback on the ring, which keeps the write as a *hint* for that replica (sloppy
//! quorum) and delivers it when the replica is back. A read asks the base ring's replicas
//! and answers after `R` replies, merged by clock; replicas found stale are repaired in the
//! background.

mod coordinator;
mod hints;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::{ConflictMode, Dot, Object, VersionVector};

pub use coordinator::Replicator;

/// A client's request, as received over HTTP or forwarded between members.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientRequest {
    pub key: Bytes,
    pub op: ClientOp,
    /// Per-request quorum overrides (validated against N by the API).
    pub r: Option<usize>,
    pub w: Option<usize>,
    pub conflicts: Option<ConflictMode>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientOp {
    Get,
    Put {
        value: Bytes,
        context: VersionVector,
    },
    Delete {
        context: VersionVector,
    },
    /// Replaces what the key holds now: the coordinator reads it at R and writes `value`
    /// (`None`: a tombstone) with the context of that read, as Riak's client does for a
    /// delete without a vclock. A concurrent write the read did not see stays a sibling.
    /// (Added after `Put`/`Delete` so their encoding, which older members speak, is kept.)
    Replace {
        value: Option<Bytes>,
    },
}

impl ClientOp {
    pub fn name(&self) -> &'static str {
        match self {
            ClientOp::Get => "get",
            ClientOp::Put { .. } => "put",
            ClientOp::Delete { .. } => "delete",
            ClientOp::Replace { value: Some(_) } => "put",
            ClientOp::Replace { value: None } => "delete",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// A read's merged result (possibly empty: not found, or only tombstones).
    Read {
        object: Object,
        replies: u32,
        r: u32,
    },
    /// A write reached its quorum in every live ring.
    Written {
        object: Object,
        dot: Dot,
        acks: u32,
        w: u32,
    },
    /// The quorum could not be reached; a write may still have reached some replicas.
    Unavailable {
        needed: u32,
        acks: u32,
        reason: String,
    },
    /// The request was refused without effect.
    Refused { code: RefusalCode, message: String },
    /// A [`ClientOp::Replace`] reached its quorum: `context` is the context of the read it
    /// replaced, which held `replaced` live values.
    Replaced {
        object: Object,
        dot: Dot,
        acks: u32,
        w: u32,
        context: VersionVector,
        replaced: u32,
    },
    /// A [`ClientOp::Replace`] of a delete found no live value: nothing was written.
    NothingToReplace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalCode {
    TooManySiblings,
    NotReady,
    Storage,
}
