//! Data placement: the key hash, the `Q` equal partitions, the partition→member map (the
//! ring) and preference lists. The planner that decides which member owns which partition
//! lives in [`planner`]; everything here is pure and free of I/O.
//!
//! The 64-bit hash space is cut into `Q` equal ranges (`Q` a power of two). Partition `i`
//! covers hashes `[i * 2^64 / Q, (i + 1) * 2^64 / Q)`, so a key's partition is the top
//! `log2(Q)` bits of its hash. Each partition is owned by exactly one member; a key is
//! replicated on the first `N` distinct members met walking the ring clockwise from its
//! partition (its primaries), and the walk continues with fallbacks.

pub mod planner;

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The smallest and largest partition counts a cluster may be created with.
pub const MIN_PARTITIONS: u32 = 8;
pub const MAX_PARTITIONS: u32 = 65_536;
pub const DEFAULT_PARTITIONS: u32 = 256;

/// The stable 64-bit position of a key on the ring: XXH3-64 of the key's bytes with seed 0.
///
/// This function is part of the on-disk and wire format: changing it moves every key.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// A member's identity: a short printable name, stable across restarts (e.g. a pod name).
/// Its `Debug` form is the plain name too: logs print `peer=m2` (and `[m1, m2]` for a
/// list), not `MemberId("m2")`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemberId(pub String);

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl MemberId {
    pub fn new(id: impl Into<String>) -> Self {
        MemberId(id.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for MemberId {
    fn from(s: &str) -> Self {
        MemberId(s.to_string())
    }
}

/// A partition index in `0..Q`.
pub type PartitionId = u32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RingError {
    #[error(
        "partition count {0} must be a power of two between {MIN_PARTITIONS} and {MAX_PARTITIONS}"
    )]
    BadPartitionCount(u32),
    #[error("the ring has no members")]
    NoMembers,
    #[error("member {0} is already in the ring")]
    AlreadyMember(MemberId),
    #[error("member {0} is not in the ring")]
    NotMember(MemberId),
    #[error("member weight must be between 1 and {max}, got {got}")]
    BadWeight { got: u32, max: u32 },
    #[error("removing {member} would leave no member to own its partitions")]
    LastMember { member: MemberId },
    #[error("ring is malformed: {0}")]
    Malformed(String),
}

/// Largest accepted member weight; weights are relative, 1 is the default.
pub const MAX_WEIGHT: u32 = 1_000;

/// Checks that `q` is an accepted partition count.
pub fn validate_partition_count(q: u32) -> Result<(), RingError> {
    if q.is_power_of_two() && (MIN_PARTITIONS..=MAX_PARTITIONS).contains(&q) {
        Ok(())
    } else {
        Err(RingError::BadPartitionCount(q))
    }
}

/// A member as the ring knows it: who it is and how much of the ring it should own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingMember {
    pub id: MemberId,
    pub weight: u32,
}

/// One version of the partition→member map.
///
/// `owners[p]` is an index into `members`. `members` is kept sorted by id so that equal
/// rings compare equal however they were built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RingRepr", into = "RingRepr")]
pub struct Ring {
    pub epoch: u64,
    members: Vec<RingMember>,
    owners: Vec<u16>,
}

/// The serialized form of a [`Ring`]; decoding goes through [`Ring::try_from`], which
/// checks every invariant, so a malformed ring from the network or disk is never adopted.
#[derive(Serialize, Deserialize)]
struct RingRepr {
    epoch: u64,
    members: Vec<RingMember>,
    owners: Vec<u16>,
}

impl From<Ring> for RingRepr {
    fn from(r: Ring) -> Self {
        RingRepr {
            epoch: r.epoch,
            members: r.members,
            owners: r.owners,
        }
    }
}

impl TryFrom<RingRepr> for Ring {
    type Error = RingError;
    fn try_from(r: RingRepr) -> Result<Ring, RingError> {
        let mut owners = Vec::with_capacity(r.owners.len());
        for &i in &r.owners {
            let m = r
                .members
                .get(usize::from(i))
                .ok_or_else(|| RingError::Malformed("owner index out of range".into()))?;
            owners.push(m.id.clone());
        }
        let ring = Ring::from_owners(r.epoch, r.members, &owners)?;
        Ok(ring)
    }
}

impl Ring {
    /// Builds a ring from an explicit owner per partition. Used by the planner and by
    /// decoders; validates every invariant so a malformed ring can never be adopted.
    pub fn from_owners(
        epoch: u64,
        members: Vec<RingMember>,
        owners: &[MemberId],
    ) -> Result<Ring, RingError> {
        let q = u32::try_from(owners.len()).map_err(|_| RingError::BadPartitionCount(u32::MAX))?;
        validate_partition_count(q)?;
        if members.is_empty() {
            return Err(RingError::NoMembers);
        }
        let mut members = members;
        members.sort_by(|a, b| a.id.cmp(&b.id));
        for pair in members.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(RingError::Malformed(format!(
                    "member {} listed twice",
                    pair[0].id
                )));
            }
        }
        for m in &members {
            if m.weight == 0 || m.weight > MAX_WEIGHT {
                return Err(RingError::BadWeight {
                    got: m.weight,
                    max: MAX_WEIGHT,
                });
            }
        }
        if members.len() > usize::from(u16::MAX) {
            return Err(RingError::Malformed("too many members".into()));
        }
        let mut idx = Vec::with_capacity(owners.len());
        for owner in owners {
            let i = members
                .binary_search_by(|m| m.id.cmp(owner))
                .map_err(|_| RingError::NotMember(owner.clone()))?;
            idx.push(i as u16);
        }
        Ok(Ring {
            epoch,
            members,
            owners: idx,
        })
    }

    /// A ring of no members and no partitions: what a view without rings answers instead
    /// of panicking (such a view is never adopted: `ClusterView::validate` refuses it).
    pub const EMPTY: Ring = Ring {
        epoch: 0,
        members: Vec::new(),
        owners: Vec::new(),
    };

    /// Every owner index is in range: checked by [`Ring::from_owners`] and on decoding.
    fn member_at(&self, i: u16) -> &RingMember {
        &self.members[usize::from(i)]
    }

    pub fn partition_count(&self) -> u32 {
        self.owners.len() as u32
    }

    pub fn members(&self) -> &[RingMember] {
        &self.members
    }

    pub fn member_ids(&self) -> impl Iterator<Item = &MemberId> {
        self.members.iter().map(|m| &m.id)
    }

    pub fn contains(&self, id: &MemberId) -> bool {
        self.members.binary_search_by(|m| m.id.cmp(id)).is_ok()
    }

    pub fn weight_of(&self, id: &MemberId) -> Option<u32> {
        self.members
            .binary_search_by(|m| m.id.cmp(id))
            .ok()
            .map(|i| self.members[i].weight)
    }

    /// The owner of partition `p` (which must be `< Q`).
    pub fn owner(&self, p: PartitionId) -> &MemberId {
        let q = self.owners.len();
        &self.member_at(self.owners[(p as usize) % q]).id
    }

    /// Owners of all partitions in order.
    pub fn owners(&self) -> Vec<MemberId> {
        self.owners
            .iter()
            .map(|&i| self.member_at(i).id.clone())
            .collect()
    }

    /// The partition a key hash falls into.
    pub fn partition_of_hash(&self, hash: u64) -> PartitionId {
        partition_of_hash(hash, self.partition_count())
    }

    pub fn partition_of_key(&self, key: &[u8]) -> PartitionId {
        self.partition_of_hash(key_hash(key))
    }

    /// Partitions owned by `id`.
    pub fn partitions_of(&self, id: &MemberId) -> Vec<PartitionId> {
        match self.members.binary_search_by(|m| m.id.cmp(id)) {
            Ok(i) => (0..self.owners.len() as u32)
                .filter(|&p| usize::from(self.owners[p as usize]) == i)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Number of partitions each member owns, in member order.
    pub fn ownership_counts(&self) -> Vec<(MemberId, u32)> {
        let mut counts = vec![0u32; self.members.len()];
        for &o in &self.owners {
            counts[usize::from(o)] += 1;
        }
        self.members
            .iter()
            .zip(counts)
            .map(|(m, c)| (m.id.clone(), c))
            .collect()
    }

    /// The members met walking clockwise from partition `p`, each once, in order: the
    /// first `N` are the primaries of every key in `p`, the rest are its fallbacks.
    pub fn walk(&self, p: PartitionId) -> Vec<&MemberId> {
        let q = self.owners.len();
        let mut seen = vec![false; self.members.len()];
        let mut out = Vec::with_capacity(self.members.len());
        for step in 0..q {
            let i = self.owners[(p as usize + step) % q];
            if !seen[usize::from(i)] {
                seen[usize::from(i)] = true;
                out.push(&self.member_at(i).id);
                if out.len() == self.members.len() {
                    break;
                }
            }
        }
        out
    }

    /// The first `n` distinct members clockwise from `p` (fewer if the ring is smaller).
    pub fn primaries(&self, p: PartitionId, n: usize) -> Vec<MemberId> {
        self.walk(p).into_iter().take(n).cloned().collect()
    }

    /// Whether `id` holds a replica of partition `p` under replication factor `n`.
    pub fn is_primary(&self, p: PartitionId, n: usize, id: &MemberId) -> bool {
        self.walk(p).into_iter().take(n).any(|m| m == id)
    }

    /// Partitions for which `id` is one of the `n` primaries.
    pub fn replicated_by(&self, id: &MemberId, n: usize) -> Vec<PartitionId> {
        (0..self.partition_count())
            .filter(|&p| self.is_primary(p, n, id))
            .collect()
    }

    /// Number of windows of `n` consecutive partitions (wrapping) that do not hold `n`
    /// distinct members. Zero means the spacing rule holds.
    pub fn spacing_violations(&self, n: usize) -> usize {
        spacing_violations(&self.owners, n)
    }

    /// A copy with a new epoch.
    pub fn with_epoch(&self, epoch: u64) -> Ring {
        let mut r = self.clone();
        r.epoch = epoch;
        r
    }

    pub(crate) fn raw_owners(&self) -> &[u16] {
        &self.owners
    }
}

/// Partition of a hash for `q` partitions (a power of two).
pub fn partition_of_hash(hash: u64, q: u32) -> PartitionId {
    let bits = q.trailing_zeros();
    if bits == 0 {
        0
    } else {
        (hash >> (64 - bits)) as PartitionId
    }
}

/// Counts windows of `n` consecutive entries (wrapping) that repeat a value.
pub fn spacing_violations<T: PartialEq>(owners: &[T], n: usize) -> usize {
    let q = owners.len();
    if n <= 1 || q == 0 {
        return 0;
    }
    let n = n.min(q);
    (0..q)
        .filter(|&start| {
            (0..n).any(|i| (i + 1..n).any(|j| owners[(start + i) % q] == owners[(start + j) % q]))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_print_as_their_plain_name() {
        let ids = vec![MemberId::new("m1"), MemberId::new("m2")];
        assert_eq!(format!("{:?}", ids[1]), "m2");
        assert_eq!(format!("{ids:?}"), "[m1, m2]");
        assert_eq!(format!("{:?}", Some(&ids[0])), "Some(m1)");
    }

    fn ring_of(owners: &[&str]) -> Ring {
        let mut ids: Vec<&str> = owners.to_vec();
        ids.sort();
        ids.dedup();
        let members = ids
            .iter()
            .map(|id| RingMember {
                id: MemberId::from(*id),
                weight: 1,
            })
            .collect();
        let owners: Vec<MemberId> = owners.iter().map(|s| MemberId::from(*s)).collect();
        Ring::from_owners(1, members, &owners).unwrap()
    }

    #[test]
    fn partition_of_hash_uses_top_bits() {
        assert_eq!(partition_of_hash(0, 256), 0);
        assert_eq!(partition_of_hash(u64::MAX, 256), 255);
        assert_eq!(partition_of_hash(1u64 << 56, 256), 1);
        assert_eq!(partition_of_hash((1u64 << 56) - 1, 256), 0);
    }

    #[test]
    fn key_hash_is_stable() {
        // Part of the storage format: a change here must be deliberate.
        assert_eq!(key_hash(b""), 0x2d06800538d394c2);
        assert_eq!(
            key_hash(b"key0000001"),
            xxhash_rust::xxh3::xxh3_64(b"key0000001")
        );
    }

    /// 1,000,000 sequential keys over 256 partitions: the fullest partition holds less than
    /// 5% more than the mean.
    #[test]
    fn key_hash_spreads_sequential_keys_evenly() {
        let q = 256u32;
        let mut load = vec![0u64; q as usize];
        for i in 1..=1_000_000u32 {
            let key = format!("key{i:07}");
            load[partition_of_hash(key_hash(key.as_bytes()), q) as usize] += 1;
        }
        let mean = 1_000_000f64 / f64::from(q);
        let max = *load.iter().max().unwrap() as f64;
        assert!(max / mean < 1.05, "max/mean = {}", max / mean);
    }

    #[test]
    fn walk_wraps_and_skips_repeats() {
        let r = ring_of(&["a", "a", "b", "a", "c", "b", "a", "d"]);
        assert_eq!(
            r.primaries(0, 3),
            vec![MemberId::from("a"), "b".into(), "c".into()]
        );
        assert_eq!(
            r.primaries(6, 3),
            vec![MemberId::from("a"), "d".into(), "b".into()]
        );
        let walk: Vec<&str> = r.walk(7).into_iter().map(|m| m.as_str()).collect();
        assert_eq!(walk, vec!["d", "a", "b", "c"]);
    }

    #[test]
    fn primaries_of_small_ring_are_all_members() {
        let r = ring_of(&["a", "b", "a", "b", "a", "b", "a", "b"]);
        assert_eq!(r.primaries(3, 3).len(), 2);
    }

    #[test]
    fn spacing_violations_counts_wraparound() {
        // "tail violation": the last and first partitions belong to the same member.
        let r = ring_of(&["a", "b", "c", "a", "b", "c", "d", "a"]);
        assert_eq!(r.spacing_violations(3), 2);
        let ok = ring_of(&["a", "b", "c", "d", "a", "b", "c", "d"]);
        assert_eq!(ok.spacing_violations(3), 0);
    }

    #[test]
    fn rejects_bad_partition_counts() {
        assert_eq!(
            validate_partition_count(100),
            Err(RingError::BadPartitionCount(100))
        );
        assert_eq!(
            validate_partition_count(4),
            Err(RingError::BadPartitionCount(4))
        );
        assert!(validate_partition_count(256).is_ok());
    }

    #[test]
    fn from_owners_rejects_unknown_owner() {
        let members = vec![RingMember {
            id: "a".into(),
            weight: 1,
        }];
        let owners: Vec<MemberId> = (0..8)
            .map(|i| if i == 3 { "x".into() } else { "a".into() })
            .collect();
        assert_eq!(
            Ring::from_owners(1, members, &owners),
            Err(RingError::NotMember("x".into()))
        );
    }
}
