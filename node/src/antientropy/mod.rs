//! Merkle-tree anti-entropy: per-partition trees maintained on every write ([`tree`]).

pub mod tree;
