//! Per-partition Merkle trees over key versions, kept up to date on every write.
//!
//! A partition's keys are spread over [`LEAVES`] leaves by the bits of their hash that
//! follow the partition bits. A leaf's hash is the XOR of `entry_hash(key, version)` over
//! its keys, and every inner node is the XOR of its children, so replacing one key's
//! version costs one XOR per level: no rebuild, no scan (Riak's tictac trees use the same
//! trick). The tree has three levels: the root, [`FANOUT`] middle nodes and `LEAVES`
//! leaves. Comparing two replicas costs one root, then 32 middle hashes for a differing
//! root, then 32 leaf hashes per differing middle node; only keys in differing leaves are
//! then exchanged.
//!
//! XOR combination means two differences could in principle cancel out in an inner node;
//! with 64-bit entry hashes that happens with probability 2^-64 per pair, and a later
//! write to either key breaks the tie.

use serde::{Deserialize, Serialize};

use crate::ring::PartitionId;

pub const FANOUT: usize = 32;
pub const LEAVES: usize = FANOUT * FANOUT;
const LEAF_BITS: u32 = LEAVES.trailing_zeros();

/// The hash one key at one version contributes to its leaf. `digest == 0` means absent.
pub fn entry_hash(key: &[u8], digest: u64) -> u64 {
    if digest == 0 {
        return 0;
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(key);
    h.update(&digest.to_le_bytes());
    h.digest()
}

/// The leaf of a key inside its partition: the hash bits right after the partition bits.
pub fn leaf_of(key_hash: u64, partitions: u32) -> usize {
    let shifted = key_hash << partitions.trailing_zeros();
    (shifted >> (64 - LEAF_BITS)) as usize
}

/// One partition's tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleTree {
    leaves: Vec<u64>,
    middle: Vec<u64>,
    root: u64,
    keys: u64,
}

impl Default for MerkleTree {
    fn default() -> Self {
        MerkleTree {
            leaves: vec![0; LEAVES],
            middle: vec![0; FANOUT],
            root: 0,
            keys: 0,
        }
    }
}

impl MerkleTree {
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Keys currently accounted for (present in the partition).
    pub fn keys(&self) -> u64 {
        self.keys
    }

    pub fn middle(&self) -> &[u64] {
        &self.middle
    }

    /// The leaf hashes under middle node `m`.
    pub fn leaves_under(&self, m: usize) -> &[u64] {
        let m = m.min(FANOUT - 1);
        &self.leaves[m * FANOUT..(m + 1) * FANOUT]
    }

    pub fn leaf(&self, i: usize) -> u64 {
        self.leaves[i % LEAVES]
    }

    /// Records that a key changed from `old` to `new` (each the entry hash, 0 = absent).
    pub fn update(&mut self, leaf: usize, old: u64, new: u64) {
        let delta = old ^ new;
        let leaf = leaf % LEAVES;
        self.leaves[leaf] ^= delta;
        self.middle[leaf / FANOUT] ^= delta;
        self.root ^= delta;
        match (old == 0, new == 0) {
            (true, false) => self.keys += 1,
            (false, true) => self.keys = self.keys.saturating_sub(1),
            _ => {}
        }
    }

    /// Checks the XOR invariants (used after loading a persisted tree).
    pub fn is_consistent(&self) -> bool {
        if self.leaves.len() != LEAVES || self.middle.len() != FANOUT {
            return false;
        }
        let mids_ok = (0..FANOUT)
            .all(|m| self.leaves_under(m).iter().fold(0, |a, b| a ^ b) == self.middle[m]);
        mids_ok && self.middle.iter().fold(0, |a, b| a ^ b) == self.root
    }
}

/// Middle nodes whose hashes differ between two trees.
pub fn differing_middles(a: &[u64], b: &[u64]) -> Vec<usize> {
    (0..FANOUT).filter(|&i| a.get(i) != b.get(i)).collect()
}

/// Leaves (global indices) under middle node `m` that differ, given both sides' hashes.
pub fn differing_leaves(m: usize, a: &[u64], b: &[u64]) -> Vec<usize> {
    (0..FANOUT)
        .filter(|&i| a.get(i) != b.get(i))
        .map(|i| m * FANOUT + i)
        .collect()
}

/// All trees of one member, indexed by partition.
#[derive(Debug, Default)]
pub struct MerkleForest {
    partitions: u32,
    trees: Vec<Option<Box<MerkleTree>>>,
}

impl MerkleForest {
    pub fn new(partitions: u32) -> Self {
        MerkleForest {
            partitions,
            trees: (0..partitions).map(|_| None).collect(),
        }
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn apply(
        &mut self,
        partition: PartitionId,
        key: &[u8],
        key_hash: u64,
        old_digest: u64,
        new_digest: u64,
    ) {
        let old = entry_hash(key, old_digest);
        let new = entry_hash(key, new_digest);
        if old == new {
            return;
        }
        let leaf = leaf_of(key_hash, self.partitions);
        if let Some(slot) = self.trees.get_mut(partition as usize) {
            slot.get_or_insert_with(Default::default)
                .update(leaf, old, new);
        }
    }

    pub fn tree(&self, partition: PartitionId) -> Option<&MerkleTree> {
        self.trees
            .get(partition as usize)
            .and_then(|t| t.as_deref())
    }

    pub fn root(&self, partition: PartitionId) -> u64 {
        self.tree(partition).map_or(0, MerkleTree::root)
    }

    pub fn set(&mut self, partition: PartitionId, tree: MerkleTree) {
        if let Some(slot) = self.trees.get_mut(partition as usize) {
            *slot = Some(Box::new(tree));
        }
    }

    pub fn clear(&mut self, partition: PartitionId) {
        if let Some(slot) = self.trees.get_mut(partition as usize) {
            *slot = None;
        }
    }

    /// Partitions that hold at least one key.
    pub fn populated(&self) -> impl Iterator<Item = (PartitionId, &MerkleTree)> {
        self.trees.iter().enumerate().filter_map(|(p, t)| {
            t.as_deref()
                .filter(|t| t.keys() > 0)
                .map(|t| (p as PartitionId, t))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn update_is_incremental_and_reversible() {
        let mut t = MerkleTree::default();
        t.update(5, 0, 0xabc);
        t.update(700, 0, 0x123);
        assert!(t.is_consistent());
        assert_eq!(t.keys(), 2);
        t.update(5, 0xabc, 0);
        t.update(700, 0x123, 0);
        assert_eq!(t, MerkleTree::default());
    }

    #[test]
    fn leaf_of_uses_bits_after_partition() {
        // Partition bits (top 8 for Q=256) do not influence the leaf.
        let h = 0x00ff_c000_0000_0000u64;
        assert_eq!(leaf_of(h, 256), leaf_of(h | 0xff00_0000_0000_0000, 256));
        assert_eq!(leaf_of(h, 256), LEAVES - 1);
    }

    proptest! {
        /// The tree depends only on the final set of (key, version) pairs, not on the order
        /// of updates; one differing key shows up in exactly one middle node and one leaf.
        #[test]
        fn order_independent_and_localises_differences(
            keys in proptest::collection::btree_map(any::<u32>(), 1..u64::MAX, 1..200),
            extra_key in any::<u32>(), extra_version in 1..u64::MAX,
        ) {
            let mut forward = MerkleForest::new(64);
            let mut backward = MerkleForest::new(64);
            let items: Vec<(Vec<u8>, u64)> = keys.iter().map(|(k, v)| (k.to_be_bytes().to_vec(), *v)).collect();
            for (k, v) in &items {
                forward.apply(0, k, crate::ring::key_hash(k), 0, *v);
            }
            for (k, v) in items.iter().rev() {
                backward.apply(0, k, crate::ring::key_hash(k), 0, *v);
            }
            prop_assert_eq!(forward.tree(0), backward.tree(0));
            prop_assert!(forward.tree(0).unwrap().is_consistent());

            let key = extra_key.to_be_bytes().to_vec();
            prop_assume!(!keys.contains_key(&extra_key));
            backward.apply(0, &key, crate::ring::key_hash(&key), 0, extra_version);
            let (a, b) = (forward.tree(0).unwrap(), backward.tree(0).unwrap());
            prop_assert_ne!(a.root(), b.root());
            let mids = differing_middles(a.middle(), b.middle());
            prop_assert_eq!(mids.len(), 1);
            let leaves = differing_leaves(mids[0], a.leaves_under(mids[0]), b.leaves_under(mids[0]));
            prop_assert_eq!(leaves, vec![leaf_of(crate::ring::key_hash(&key), 64)]);
        }
    }
}
