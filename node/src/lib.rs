//! dynamo-rs: one member of a Dynamo-style distributed key-value store.
//!
//! The modules follow the design (`docs/architecture.md`): pure logic (`ring`, `clock`,
//! the Merkle trees, the cluster view) has no I/O so it can be property-tested and
//! simulated; the network sits behind [`rpc::transport`] and the wall clock and
//! randomness behind [`env`], so the same code runs in deterministic simulation.

pub mod antientropy;
pub mod api;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod env;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod handoff;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod replication;
pub mod ring;
pub mod rpc;
#[cfg(feature = "sim")]
pub mod sim;
pub mod storage;
