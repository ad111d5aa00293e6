//! Causality: version vectors with a dot per sibling (a "dotted causal container", the
//! structure behind Riak's dotted version vectors).
//!
//! An [`Object`] is the stored state of one key on one replica: a set of siblings, each
//! tagged with the unique [`Dot`] of the write that created it, plus a causal `context` (a
//! version vector) summarising every write this replica has seen for the key. A sibling is
//! alive while it is present; a dot covered by the context but absent from the siblings was
//! overwritten. That distinction is what bare vector clocks lack, and why two clients that
//! keep writing back with stale contexts make siblings grow without bound there ("sibling
//! explosion") but not here: a write with context `C` removes exactly the siblings whose
//! dots `C` covers, and adds one.
//!
//! Actors are member *incarnations* (a random id drawn when a data directory is created),
//! never bare member ids: a member that loses its disk comes back as a new actor, so it can
//! never reuse counters it issued before (Riak's kv679 data loss). Counters come from a
//! per-member sequence that only grows, so even after a key's tombstone has been reaped a
//! new write gets a dot no stale copy can cover.
//!
//! Limits: at most [`MAX_CONTEXT_ENTRIES`] actors are kept in a context; beyond that the
//! entries no sibling refers to are pruned, lowest counters first. Pruning forgets history,
//! so a stale copy arriving later may show up as a (false) sibling instead of being
//! recognised as overwritten — never as lost data. With actors being coordinators (the
//! primaries of a key and the occasional fallback), a key needs many membership changes
//! before it reaches the limit.

use std::cmp::Ordering;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A writer identity: one incarnation of one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActorId(pub u64);

impl ActorId {
    /// The `index`-th stand-in for this actor (the 0th is the actor itself): an actor of
    /// its own, issued by the same member under the same tenure, so it too only issues dots
    /// while that member's store holds everything it issued. See [`Object::write`] for
    /// why a write may need one.
    pub fn alternate(self, index: u32) -> ActorId {
        if index == 0 {
            return self;
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.0.to_le_bytes());
        h.update(&index.to_le_bytes());
        ActorId(h.digest())
    }
}

/// One write event: the `counter`-th event issued by `actor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub actor: ActorId,
    pub counter: u64,
}

/// Actors a context keeps before pruning.
pub const MAX_CONTEXT_ENTRIES: usize = 64;

/// A version vector: for each actor, the highest counter seen. Kept sorted by actor with no
/// zero entries, so equal vectors are equal values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "Vec<(ActorId, u64)>")]
pub struct VersionVector {
    entries: Vec<(ActorId, u64)>,
}

/// Written as the `Vec` of entries it is read back from (the same bytes), by hand because
/// `serde(into)` clones the vector for every record and message encoded: that clone was
/// the largest single source of allocations in a member's profile.
impl Serialize for VersionVector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(&self.entries)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ContextError {
    #[error("context is malformed: {0}")]
    Malformed(&'static str),
}

impl TryFrom<Vec<(ActorId, u64)>> for VersionVector {
    type Error = ContextError;
    fn try_from(entries: Vec<(ActorId, u64)>) -> Result<Self, ContextError> {
        if entries.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(ContextError::Malformed("actors not strictly increasing"));
        }
        if entries.iter().any(|&(_, c)| c == 0) {
            return Err(ContextError::Malformed("zero counter"));
        }
        Ok(VersionVector { entries })
    }
}

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (ActorId, u64)> + '_ {
        self.entries.iter().copied()
    }

    /// Highest counter seen from `actor` (0 if none).
    pub fn get(&self, actor: ActorId) -> u64 {
        match self.entries.binary_search_by(|e| e.0.cmp(&actor)) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    /// Whether the event `dot` is part of the history this vector summarises.
    pub fn contains(&self, dot: Dot) -> bool {
        self.get(dot.actor) >= dot.counter
    }

    /// Records that everything up to `dot` from its actor has been seen.
    pub fn add(&mut self, dot: Dot) {
        if dot.counter == 0 {
            return;
        }
        match self.entries.binary_search_by(|e| e.0.cmp(&dot.actor)) {
            Ok(i) => self.entries[i].1 = self.entries[i].1.max(dot.counter),
            Err(i) => self.entries.insert(i, (dot.actor, dot.counter)),
        }
    }

    /// Pointwise maximum.
    pub fn merge(&mut self, other: &VersionVector) {
        let mut out = Vec::with_capacity(self.entries.len().max(other.entries.len()));
        let (mut i, mut j) = (0, 0);
        while i < self.entries.len() || j < other.entries.len() {
            match (self.entries.get(i), other.entries.get(j)) {
                (Some(&a), Some(&b)) => match a.0.cmp(&b.0) {
                    Ordering::Less => {
                        out.push(a);
                        i += 1;
                    }
                    Ordering::Greater => {
                        out.push(b);
                        j += 1;
                    }
                    Ordering::Equal => {
                        out.push((a.0, a.1.max(b.1)));
                        i += 1;
                        j += 1;
                    }
                },
                (Some(&a), None) => {
                    out.push(a);
                    i += 1;
                }
                (None, Some(&b)) => {
                    out.push(b);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        self.entries = out;
    }

    pub fn merged(&self, other: &VersionVector) -> VersionVector {
        let mut m = self.clone();
        m.merge(other);
        m
    }

    /// `self` has seen everything `other` has (`self >= other`).
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.entries.iter().all(|&(a, c)| self.get(a) >= c)
    }

    /// Neither descends from the other.
    pub fn concurrent(&self, other: &VersionVector) -> bool {
        !self.descends(other) && !other.descends(self)
    }
}

/// How concurrent writes are resolved (per cluster, overridable per request).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictMode {
    /// Keep concurrent writes as siblings for the client to resolve (safe default).
    #[default]
    Siblings,
    /// Keep only the write with the latest timestamp. Loses concurrent writes and is
    /// exposed to clock skew: Jepsen saw 30-70% of acknowledged writes lost under
    /// partitions with last-write-wins.
    Lww,
}

impl std::str::FromStr for ConflictMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "siblings" => Ok(ConflictMode::Siblings),
            "lww" => Ok(ConflictMode::Lww),
            other => Err(format!(
                "unknown conflict mode {other:?} (expected siblings or lww)"
            )),
        }
    }
}

/// One concurrent version of a key: a value, or a tombstone left by a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    pub dot: Dot,
    /// `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Wall-clock milliseconds at the coordinator; used by `lww` and tombstone reaping.
    pub timestamp_ms: u64,
}

impl Sibling {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// The state of one key on one replica. Siblings are kept sorted by dot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub context: VersionVector,
    pub siblings: Vec<Sibling>,
}

/// A new write as the coordinator sees it.
#[derive(Clone, Debug)]
pub struct WriteRequest<'a> {
    /// The coordinator's actor.
    pub actor: ActorId,
    /// Lower bound for the new dot's counter (the coordinator's own sequence).
    pub min_counter: u64,
    /// What the client had seen (empty for a blind write).
    pub context: &'a VersionVector,
    /// `None` writes a tombstone.
    pub value: Option<Bytes>,
    pub timestamp_ms: u64,
    pub mode: ConflictMode,
}

impl Object {
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty()
    }

    /// Live values (tombstones left out), in dot order.
    pub fn values(&self) -> impl Iterator<Item = &Sibling> {
        self.siblings.iter().filter(|s| !s.is_tombstone())
    }

    /// True when every sibling is a tombstone (and there is at least one).
    pub fn is_deleted(&self) -> bool {
        !self.siblings.is_empty() && self.siblings.iter().all(Sibling::is_tombstone)
    }

    /// Applies a coordinated write: siblings the client's context covers are replaced by
    /// the new one; concurrent siblings stay. Returns the new object and the new dot.
    ///
    /// The client is answered with its own context plus the new dot (docs/api.md, "Write
    /// contexts"), which must cover no sibling that stays beside the new one: the writer
    /// has not seen those. The context never covers them (that is why they stay), but the
    /// new dot `actor: k` covers every earlier dot of `actor`, so when a staying sibling
    /// was issued by the coordinator's actor, the write is issued by the first of the
    /// actor's [alternates](ActorId::alternate) that no staying sibling uses.
    pub fn write(&self, w: WriteRequest<'_>) -> (Object, Dot) {
        let staying: Vec<Dot> = match w.mode {
            ConflictMode::Siblings => self
                .siblings
                .iter()
                .filter(|s| !w.context.contains(s.dot))
                .map(|s| s.dot)
                .collect(),
            ConflictMode::Lww => Vec::new(),
        };
        let actor = (0u32..)
            .map(|i| w.actor.alternate(i))
            .find(|a| staying.iter().all(|d| d.actor != *a))
            .unwrap_or(w.actor);
        let counter = self
            .context
            .get(actor)
            .max(w.context.get(actor))
            .max(w.min_counter)
            + 1;
        let dot = Dot { actor, counter };
        let mut siblings: Vec<Sibling> = match w.mode {
            ConflictMode::Siblings => self
                .siblings
                .iter()
                .filter(|s| !w.context.contains(s.dot))
                .cloned()
                .collect(),
            ConflictMode::Lww => Vec::new(),
        };
        siblings.push(Sibling {
            dot,
            value: w.value,
            timestamp_ms: w.timestamp_ms,
        });
        siblings.sort_by_key(|s| s.dot);
        let mut context = self.context.merged(w.context);
        context.add(dot);
        let mut obj = Object { context, siblings };
        obj.prune();
        (obj, dot)
    }

    /// Merges two replicas' states of the same key. A sibling survives if both hold it, or
    /// if the other side has never seen its dot; one side having seen a dot without holding
    /// it means it was overwritten there. Commutative, associative and idempotent.
    pub fn merge(&self, other: &Object, mode: ConflictMode) -> Object {
        let mut siblings = Vec::with_capacity(self.siblings.len() + other.siblings.len());
        let (mut i, mut j) = (0, 0);
        while i < self.siblings.len() || j < other.siblings.len() {
            match (self.siblings.get(i), other.siblings.get(j)) {
                (Some(a), Some(b)) if a.dot == b.dot => {
                    // The same dot is the same write; pick deterministically in case a
                    // corrupted peer sent different bytes under it.
                    siblings.push(if sibling_order(a, b) == Ordering::Greater {
                        b.clone()
                    } else {
                        a.clone()
                    });
                    i += 1;
                    j += 1;
                }
                (Some(a), Some(b)) if a.dot < b.dot => {
                    if !other.context.contains(a.dot) {
                        siblings.push(a.clone());
                    }
                    i += 1;
                }
                (Some(a), None) => {
                    if !other.context.contains(a.dot) {
                        siblings.push(a.clone());
                    }
                    i += 1;
                }
                (_, Some(b)) => {
                    if !self.context.contains(b.dot) {
                        siblings.push(b.clone());
                    }
                    j += 1;
                }
                (None, None) => break,
            }
        }
        let mut obj = Object {
            context: self.context.merged(&other.context),
            siblings,
        };
        if mode == ConflictMode::Lww {
            obj.keep_latest();
        }
        obj.prune();
        obj
    }

    /// Keeps only the sibling with the latest timestamp (dot breaks ties).
    fn keep_latest(&mut self) {
        if let Some(latest) = self
            .siblings
            .iter()
            .max_by(|a, b| a.timestamp_ms.cmp(&b.timestamp_ms).then(a.dot.cmp(&b.dot)))
            .cloned()
        {
            self.siblings = vec![latest];
        }
    }

    /// Drops context entries beyond [`MAX_CONTEXT_ENTRIES`] that no sibling refers to.
    fn prune(&mut self) {
        if self.context.len() <= MAX_CONTEXT_ENTRIES {
            return;
        }
        let mut removable: Vec<(u64, ActorId)> = self
            .context
            .iter()
            .filter(|(a, _)| !self.siblings.iter().any(|s| s.dot.actor == *a))
            .map(|(a, c)| (c, a))
            .collect();
        removable.sort();
        let excess = self.context.len() - MAX_CONTEXT_ENTRIES;
        let drop: Vec<ActorId> = removable.into_iter().take(excess).map(|(_, a)| a).collect();
        self.context.entries.retain(|(a, _)| !drop.contains(a));
    }

    /// Whether merging `other` into `self` would change nothing: every write `other` holds
    /// is held or known overwritten here.
    pub fn covers(&self, other: &Object) -> bool {
        self.context.descends(&other.context)
            && other.siblings.iter().all(|s| self.context.contains(s.dot))
            && self.siblings.iter().all(|s| {
                !other.context.contains(s.dot) || other.siblings.iter().any(|t| t.dot == s.dot)
            })
    }

    /// A 64-bit digest of the object's causal state (context and sibling dots). Two
    /// replicas with equal digests hold the same versions; values are determined by dots.
    pub fn digest(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (a, c) in self.context.iter() {
            h.update(&a.0.to_le_bytes());
            h.update(&c.to_le_bytes());
        }
        h.update(&[0xff]);
        for s in &self.siblings {
            h.update(&s.dot.actor.0.to_le_bytes());
            h.update(&s.dot.counter.to_le_bytes());
            h.update(&[u8::from(s.is_tombstone())]);
        }
        h.digest()
    }

    /// Newest timestamp among the siblings.
    pub fn latest_timestamp_ms(&self) -> u64 {
        self.siblings
            .iter()
            .map(|s| s.timestamp_ms)
            .max()
            .unwrap_or(0)
    }

    /// Checks the structural invariants of an object decoded from untrusted bytes.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.siblings.windows(2).any(|w| w[0].dot >= w[1].dot) {
            return Err("siblings not sorted by dot");
        }
        if self.siblings.iter().any(|s| !self.context.contains(s.dot)) {
            return Err("sibling dot outside the context");
        }
        Ok(())
    }
}

/// The context a write answers its client with: what the client's own context covered
/// plus the write's new version, and nothing else — not the siblings the coordinator held
/// beside them, which the client has not seen ([`Object::write`] makes sure the new dot
/// covers none of those).
pub fn write_context(request: &VersionVector, dot: Dot) -> VersionVector {
    let mut context = request.clone();
    context.add(dot);
    context
}

fn sibling_order(a: &Sibling, b: &Sibling) -> Ordering {
    a.timestamp_ms
        .cmp(&b.timestamp_ms)
        .then_with(|| a.value.cmp(&b.value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(entries: &[(u64, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(a, c) in entries {
            v.add(Dot {
                actor: ActorId(a),
                counter: c,
            });
        }
        v
    }

    /// The hand-written encoding is the one the derived `Vec` encoding produced and the
    /// decoder reads: records and messages of earlier versions still decode.
    #[test]
    fn version_vector_encodes_as_its_entries() {
        for v in [
            vv(&[]),
            vv(&[(3, 1)]),
            vv(&[(1, 7), (9, 300), (u64::MAX, u64::MAX)]),
        ] {
            let entries: Vec<(ActorId, u64)> = v.iter().collect();
            let bytes = postcard::to_stdvec(&v).unwrap();
            assert_eq!(bytes, postcard::to_stdvec(&entries).unwrap());
            assert_eq!(postcard::from_bytes::<VersionVector>(&bytes).unwrap(), v);
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, serde_json::to_string(&entries).unwrap());
            assert_eq!(serde_json::from_str::<VersionVector>(&json).unwrap(), v);
        }
    }

    fn put(obj: &Object, actor: u64, ctx: &VersionVector, value: &str, ts: u64) -> Object {
        obj.write(WriteRequest {
            actor: ActorId(actor),
            min_counter: 0,
            context: ctx,
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            timestamp_ms: ts,
            mode: ConflictMode::Siblings,
        })
        .0
    }

    fn values(obj: &Object) -> Vec<String> {
        obj.values()
            .map(|s| String::from_utf8(s.value.clone().unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn descends_and_concurrent() {
        let a = vv(&[(1, 2), (2, 1)]);
        let b = vv(&[(1, 1)]);
        let c = vv(&[(2, 2)]);
        assert!(a.descends(&b));
        assert!(!b.descends(&a));
        assert!(a.concurrent(&c));
        assert!(!VersionVector::new().concurrent(&a));
    }

    #[test]
    fn write_with_context_replaces_what_it_saw() {
        let empty = VersionVector::new();
        let o1 = put(&Object::default(), 1, &empty, "v1", 1);
        // A second blind write is concurrent with the first.
        let o2 = put(&o1, 1, &empty, "v2", 2);
        assert_eq!(values(&o2), vec!["v1", "v2"]);
        // Writing back with the merged context resolves both.
        let o3 = put(&o2, 2, &o2.context.clone(), "v3", 3);
        assert_eq!(values(&o3), vec!["v3"]);
    }

    /// Riak's sibling explosion: two clients alternate, each writing with the context of
    /// its own previous response. With per-sibling dots there are never more than two.
    #[test]
    fn interleaved_stale_writers_do_not_explode() {
        let mut obj = Object::default();
        let mut ctx_a = VersionVector::new();
        let mut ctx_b = VersionVector::new();
        for i in 0..100 {
            obj = put(&obj, 1, &ctx_a, &format!("a{i}"), i);
            ctx_a = obj.context.clone();
            assert!(obj.siblings.len() <= 2);
            obj = put(&obj, 1, &ctx_b, &format!("b{i}"), i);
            ctx_b = obj.context.clone();
            assert!(
                obj.siblings.len() <= 2,
                "round {i}: {} siblings",
                obj.siblings.len()
            );
        }
    }

    #[test]
    fn replica_merge_drops_overwritten_siblings() {
        let empty = VersionVector::new();
        let base = put(&Object::default(), 1, &empty, "v1", 1);
        // Replica X overwrites v1; replica Y still has only v1.
        let x = put(&base, 1, &base.context, "v2", 2);
        let merged = x.merge(&base, ConflictMode::Siblings);
        assert_eq!(values(&merged), vec!["v2"]);
        assert_eq!(base.merge(&x, ConflictMode::Siblings), merged);
    }

    #[test]
    fn lww_keeps_latest_timestamp() {
        let empty = VersionVector::new();
        let a = put(&Object::default(), 1, &empty, "early", 10);
        let b = put(&Object::default(), 2, &empty, "late", 20);
        let m = a.merge(&b, ConflictMode::Lww);
        assert_eq!(values(&m), vec!["late"]);
        assert_eq!(b.merge(&a, ConflictMode::Lww), m);
    }

    #[test]
    fn tombstone_write_deletes() {
        let empty = VersionVector::new();
        let o = put(&Object::default(), 1, &empty, "v", 1);
        let (d, _) = o.write(WriteRequest {
            actor: ActorId(1),
            min_counter: 0,
            context: &o.context,
            value: None,
            timestamp_ms: 2,
            mode: ConflictMode::Siblings,
        });
        assert!(d.is_deleted());
        assert_eq!(d.values().count(), 0);
    }

    #[test]
    fn min_counter_keeps_dots_fresh_after_reap() {
        // A key whose record was reaped is written again: the new dot must not be covered
        // by a stale copy's context.
        let stale = put(&Object::default(), 1, &VersionVector::new(), "old", 1);
        let (fresh, dot) = Object::default().write(WriteRequest {
            actor: ActorId(1),
            min_counter: 10,
            context: &VersionVector::new(),
            value: Some(Bytes::from_static(b"new")),
            timestamp_ms: 2,
            mode: ConflictMode::Siblings,
        });
        assert_eq!(dot.counter, 11);
        assert!(values(&stale.merge(&fresh, ConflictMode::Siblings)).contains(&"new".to_string()));
    }

    fn write_as(obj: &Object, actor: u64, ctx: &VersionVector, value: &str) -> (Object, Dot) {
        obj.write(WriteRequest {
            actor: ActorId(actor),
            min_counter: 0,
            context: ctx,
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            timestamp_ms: 0,
            mode: ConflictMode::Siblings,
        })
    }

    /// The sequence from issue 32: a client chaining its own write contexts must not
    /// replace a sibling another client wrote meanwhile, even when one coordinator (one
    /// actor) issued every version.
    #[test]
    fn a_write_context_covers_only_what_the_writer_saw() {
        let blind = VersionVector::new();
        let (o, _) = write_as(&Object::default(), 1, &blind, "a");
        let c1 = o.context.clone();
        let (o, _) = write_as(&o, 1, &blind, "b");
        assert_eq!(values(&o), vec!["a", "b"]);
        let (o, dot) = write_as(&o, 1, &c1, "c");
        let mut got = values(&o);
        got.sort();
        assert_eq!(got, vec!["b", "c"]);
        let c2 = write_context(&c1, dot);
        let (o, _) = write_as(&o, 1, &c2, "d");
        let mut got = values(&o);
        got.sort();
        assert_eq!(got, vec!["b", "d"], "b was never seen by the writer");
    }

    /// Two clients each chain 100 writes with the contexts their writes answered, all
    /// through one coordinator: exactly one sibling per client at the end.
    #[test]
    fn two_chaining_writers_keep_one_sibling_each() {
        let mut obj = Object::default();
        let mut ctx = [VersionVector::new(), VersionVector::new()];
        for i in 0..100 {
            for (c, ctx) in ctx.iter_mut().enumerate() {
                let (next, dot) = write_as(&obj, 7, ctx, &format!("c{c}-{i}"));
                obj = next;
                *ctx = write_context(ctx, dot);
            }
        }
        let mut got = values(&obj);
        got.sort();
        assert_eq!(got, vec!["c0-99", "c1-99"]);
        // Each client's context stays small: one alternate actor per concurrent sibling.
        assert!(ctx.iter().all(|c| c.len() <= 2), "{ctx:?}");
    }

    #[test]
    fn pruning_bounds_the_context() {
        let mut obj = Object::default();
        for actor in 0..(MAX_CONTEXT_ENTRIES as u64 + 20) {
            obj = put(&obj, actor, &obj.context.clone(), "v", actor);
        }
        assert_eq!(obj.context.len(), MAX_CONTEXT_ENTRIES);
        assert_eq!(obj.siblings.len(), 1);
        assert!(obj.validate().is_ok());
    }

    // ---- property tests ----

    /// A random history of writes on a few replicas: each step either coordinates a write
    /// on one replica with a context read from some replica, or syncs two replicas.
    #[derive(Clone, Debug)]
    enum Step {
        /// The coordinating replica is the actor, as in the node.
        Write {
            replica: usize,
            ctx_from: CtxFrom,
            client: usize,
        },
        Sync {
            from: usize,
            to: usize,
        },
    }

    /// Where a write's context comes from.
    #[derive(Clone, Copy, Debug)]
    enum CtxFrom {
        Blind,
        /// A read of this replica.
        Read(usize),
        /// The context the client's own previous write answered with.
        Chain,
    }

    fn step() -> impl Strategy<Value = Step> {
        let ctx_from = prop_oneof![
            Just(CtxFrom::Blind),
            (0..3usize).prop_map(CtxFrom::Read),
            Just(CtxFrom::Chain),
        ];
        prop_oneof![
            (0..3usize, ctx_from, 0..3usize).prop_map(|(replica, ctx_from, client)| {
                Step::Write {
                    replica,
                    ctx_from,
                    client,
                }
            }),
            (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Sync { from, to }),
        ]
    }

    /// Runs a history; returns the replicas' objects and, for every write, its dot and the
    /// set of dots it causally follows (ground truth computed independently of contexts).
    fn run(history: &[Step]) -> (Vec<Object>, Vec<(Dot, Vec<Dot>)>) {
        let mut replicas = vec![Object::default(); 3];
        // Ground truth: the set of write dots each replica's state has causally seen.
        let mut seen: Vec<Vec<Dot>> = vec![Vec::new(); 3];
        let mut writes = Vec::new();
        // Each client's context as its last write answered it (`write_context`), and the
        // dots that client has really seen.
        let mut chains: Vec<(VersionVector, Vec<Dot>)> =
            vec![(VersionVector::new(), Vec::new()); 3];
        let mut seq = 0u64;
        for (t, s) in history.iter().enumerate() {
            match *s {
                Step::Write {
                    replica,
                    ctx_from,
                    client,
                } => {
                    let (ctx, ctx_seen) = match ctx_from {
                        CtxFrom::Read(r) => (replicas[r].context.clone(), seen[r].clone()),
                        CtxFrom::Blind => (VersionVector::new(), Vec::new()),
                        CtxFrom::Chain => chains[client].clone(),
                    };
                    seq += 1;
                    let (obj, dot) = replicas[replica].write(WriteRequest {
                        actor: ActorId(replica as u64),
                        min_counter: seq,
                        context: &ctx,
                        value: Some(Bytes::from(format!("w{t}"))),
                        timestamp_ms: t as u64,
                        mode: ConflictMode::Siblings,
                    });
                    replicas[replica] = obj;
                    let mut chained_seen = ctx_seen.clone();
                    chained_seen.push(dot);
                    chains[client] = (write_context(&ctx, dot), chained_seen);
                    let mut past: Vec<Dot> = ctx_seen;
                    past.sort();
                    past.dedup();
                    writes.push((dot, past));
                    let mut now_seen = seen[replica].clone();
                    now_seen.extend(writes.last().unwrap().1.iter().copied());
                    now_seen.push(dot);
                    now_seen.sort();
                    now_seen.dedup();
                    seen[replica] = now_seen;
                }
                Step::Sync { from, to } => {
                    replicas[to] = replicas[to].merge(&replicas[from], ConflictMode::Siblings);
                    let mut now_seen = seen[to].clone();
                    now_seen.extend(seen[from].iter().copied());
                    now_seen.sort();
                    now_seen.dedup();
                    seen[to] = now_seen;
                }
            }
        }
        (replicas, writes)
    }

    /// Three replicas' states after one random history (dots are unique system-wide, as
    /// they are in the node, so states from one history are the only realistic inputs).
    fn arb_replicas() -> impl Strategy<Value = (Object, Object, Object)> {
        proptest::collection::vec(step(), 0..25).prop_map(|h| {
            let r = run(&h).0;
            (r[0].clone(), r[1].clone(), r[2].clone())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn vv_merge_laws(a in proptest::collection::vec((0..5u64, 1..6u64), 0..6),
                         b in proptest::collection::vec((0..5u64, 1..6u64), 0..6),
                         c in proptest::collection::vec((0..5u64, 1..6u64), 0..6)) {
            let (a, b, c) = (vv(&a), vv(&b), vv(&c));
            prop_assert_eq!(a.merged(&b), b.merged(&a));
            prop_assert_eq!(a.merged(&b).merged(&c), a.merged(&b.merged(&c)));
            prop_assert_eq!(a.merged(&a), a.clone());
            prop_assert!(a.merged(&b).descends(&a));
        }

        #[test]
        fn object_merge_laws((a, b, c) in arb_replicas()) {
            for mode in [ConflictMode::Siblings, ConflictMode::Lww] {
                prop_assert_eq!(a.merge(&b, mode), b.merge(&a, mode));
                prop_assert_eq!(a.merge(&b, mode).merge(&c, mode), a.merge(&b.merge(&c, mode), mode));
            }
            let aa = a.merge(&a, ConflictMode::Siblings);
            prop_assert_eq!(&aa, &a);
            let ab = a.merge(&b, ConflictMode::Siblings);
            prop_assert!(ab.covers(&a) && ab.covers(&b));
            prop_assert_eq!(a.covers(&b), a.merge(&b, ConflictMode::Siblings) == a);
        }

        /// After any history and a full sync, the surviving siblings are exactly the writes
        /// no other write causally follows (the maximal concurrent set), and every replica
        /// agrees.
        #[test]
        fn siblings_are_exactly_the_maximal_writes(history in proptest::collection::vec(step(), 1..40)) {
            let (replicas, writes) = run(&history);
            let mut all = replicas[0].clone();
            for r in &replicas[1..] {
                all = all.merge(r, ConflictMode::Siblings);
            }
            let superseded: Vec<Dot> = writes.iter().flat_map(|(_, past)| past.iter().copied()).collect();
            let mut expected: Vec<Dot> = writes.iter().map(|(d, _)| *d).filter(|d| !superseded.contains(d)).collect();
            expected.sort();
            let got: Vec<Dot> = all.siblings.iter().map(|s| s.dot).collect();
            prop_assert_eq!(got, expected);
            prop_assert!(all.validate().is_ok());
        }

        /// A write with context C removes every sibling C covers and no other.
        #[test]
        fn write_removes_exactly_what_context_covers((obj, other, _) in arb_replicas(), actor in 0..5u64) {
            let ctx = other.context.clone();
            let (next, dot) = obj.write(WriteRequest {
                actor: ActorId(actor), min_counter: 1000, context: &ctx,
                value: Some(Bytes::from_static(b"x")), timestamp_ms: 0, mode: ConflictMode::Siblings,
            });
            for s in &obj.siblings {
                let kept = next.siblings.iter().any(|t| t.dot == s.dot);
                prop_assert_eq!(kept, !ctx.contains(s.dot));
            }
            prop_assert!(next.siblings.iter().any(|t| t.dot == dot));
            prop_assert_eq!(next.siblings.len(), obj.siblings.iter().filter(|s| !ctx.contains(s.dot)).count() + 1);
        }
    }
}
