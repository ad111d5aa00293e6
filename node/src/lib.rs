//! dynamo-rs: one member of a Dynamo-style distributed key-value store.
//!
//! The modules follow the design (`DESIGN.md` in the project docs): pure logic
//! (`ring`, `clock`) has no I/O so it can be property-tested and simulated.

pub mod ring;
pub mod clock;
pub mod antientropy;
pub mod storage;
