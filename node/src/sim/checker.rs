//! Judges a simulated history. It trusts only what clients observed: contexts are opaque
//! tokens it never decodes, and what a write superseded is derived from the versions the
//! client had seen when it sent that context.
//!
//! The model, per key:
//! * every version a read returns (values and tombstones, from `x-dynamo-versions` or the
//!   300 body) belongs to a write: an acknowledged one (the version its 204 named), or one
//!   whose answer was lost, recognised by its value (every value the workload writes is
//!   unique);
//! * a write sent with a context supersedes exactly what the client observed for that
//!   context ([`SentContext::observed`]: the versions of the read it came from, or, for a
//!   context a write answered with, what that write's context stood for plus its own
//!   version), and transitively what those versions' writes superseded. A blind write
//!   supersedes nothing. A context that the store made cover more than that (a sibling
//!   the writer never saw) shows up as a lost write.
//!
//! [`check`] holds in every run, faults or not, for every read (final reads included):
//! * **no value that was never written**: every returned version is a client's write, with
//!   that write's value; a version no acknowledged or attempted write explains is flagged;
//! * **no false siblings**: a read never returns a version together with one whose write
//!   superseded it;
//! * at the end, after convergence: **no acknowledged write lost** (its version is
//!   present, or a present version's write superseded it, or a delete did — the grace
//!   exception below), and **nothing superseded comes back**: no version that an applied
//!   write (acknowledged, or seen by a read) superseded is present, which includes every
//!   acknowledged delete.
//!
//! The grace exception: a tombstone is collected once the tombstone grace has passed, so a
//! write a delete superseded may be absent with nothing present that covers it. Deletes
//! whose answer was lost get the same benefit of the doubt (they may have been applied).
//!
//! [`check_fresh_reads`] holds only where R + W > N and no fault can push writes to
//! fallback members (calm runs, joins and leaves): a read that begins after a write was
//! acknowledged returns nothing that write superseded, and sees the write (returns it or
//! a version superseding it). Sloppy quorum gives both up while replicas fail: a write
//! acknowledged by fallbacks is invisible to a read of the stale primaries until hints
//! arrive, so runs with network faults or crashes check this only at the end.
//!
//! [`check_lww`] is the weaker property of last-write-wins, and [`check_list_appends`]
//! the list-append workload's.

use std::collections::{BTreeMap, BTreeSet};

use super::history::{History, OpKind, OpOutcome, OpRecord, dot};
use crate::clock::Dot;

#[cfg(doc)]
use super::history::SentContext;

#[derive(Debug, Clone)]
pub struct Violation {
    pub key: String,
    pub what: String,
}

/// Ops grouped by key, in history order.
fn by_key(history: &History) -> BTreeMap<&str, Vec<&OpRecord>> {
    let mut out: BTreeMap<&str, Vec<&OpRecord>> = BTreeMap::new();
    for op in &history.ops {
        out.entry(op.key.as_str()).or_default().push(op);
    }
    out
}

/// The versions a read returned.
/// A read's values (with their versions) and tombstones.
type Returned<'a> = (&'a [(Dot, String)], &'a [Dot]);

fn returned(op: &OpRecord) -> Option<Returned<'_>> {
    match &op.outcome {
        OpOutcome::Read { values, tombstones } => Some((values, tombstones)),
        _ => None,
    }
}

fn is_write(op: &OpRecord) -> bool {
    !matches!(op.kind, OpKind::Get)
}

/// What the history says about one key's versions.
struct KeyModel<'a> {
    key: &'a str,
    ops: Vec<&'a OpRecord>,
    /// Each known version's write, by op id.
    writer: BTreeMap<Dot, &'a OpRecord>,
    /// The version of each write whose version is known, by op id.
    version_of: BTreeMap<u64, Dot>,
    /// What each write superseded, transitively, by op id.
    superseded: BTreeMap<u64, BTreeSet<Dot>>,
}

impl<'a> KeyModel<'a> {
    /// Builds the model, reporting versions no write explains.
    fn build(key: &'a str, ops: Vec<&'a OpRecord>, out: &mut Vec<Violation>) -> KeyModel<'a> {
        let mut violation = |what: String| {
            out.push(Violation {
                key: key.to_string(),
                what,
            })
        };
        let mut writer: BTreeMap<Dot, &OpRecord> = BTreeMap::new();
        let mut version_of: BTreeMap<u64, Dot> = BTreeMap::new();
        for op in &ops {
            if let OpOutcome::Written { version } = op.outcome {
                if let Some(other) = writer.insert(version, op) {
                    violation(format!(
                        "two acknowledged writes got version {}: {other} and {op}",
                        dot(version)
                    ));
                }
                version_of.insert(op.id, version);
            }
        }
        let unacked_deletes = ops
            .iter()
            .filter(|o| o.kind == OpKind::Delete && !matches!(o.outcome, OpOutcome::Written { .. }))
            .count();
        let mut unknown_tombstones: BTreeSet<Dot> = BTreeSet::new();
        for read in &ops {
            let Some((values, tombstones)) = returned(read) else {
                continue;
            };
            for (v, value) in values {
                match writer.get(v) {
                    Some(w) => match &w.kind {
                        OpKind::Put { value: written } if written == value => {}
                        OpKind::Put { value: written } => violation(format!(
                            "read at {} ms returned {} = {value}, but that version's write stored {written}",
                            read.start_ms,
                            dot(*v)
                        )),
                        _ => violation(format!(
                            "read at {} ms returned {} = {value}, the version of a delete",
                            read.start_ms,
                            dot(*v)
                        )),
                    },
                    None => {
                        let put = ops
                            .iter()
                            .copied()
                            .find(|o| matches!(&o.kind, OpKind::Put { value: w } if w == value));
                        match put {
                            None => violation(format!(
                                "read at {} ms returned {} = {value}, which no client wrote",
                                read.start_ms,
                                dot(*v)
                            )),
                            Some(put) => match (&put.outcome, version_of.get(&put.id)) {
                                (OpOutcome::Written { version }, _) => violation(format!(
                                    "read at {} ms returned {value} as {}, but its write was acknowledged as {}",
                                    read.start_ms,
                                    dot(*v),
                                    dot(*version)
                                )),
                                (_, Some(bound)) => violation(format!(
                                    "read at {} ms returned {value} as {}, elsewhere as {}",
                                    read.start_ms,
                                    dot(*v),
                                    dot(*bound)
                                )),
                                (_, None) => {
                                    writer.insert(*v, put);
                                    version_of.insert(put.id, *v);
                                }
                            },
                        }
                    }
                }
            }
            for t in tombstones {
                match writer.get(t) {
                    Some(w) if w.kind == OpKind::Delete => {}
                    Some(w) => violation(format!(
                        "read at {} ms returned {} as a tombstone, the version of {w}",
                        read.start_ms,
                        dot(*t)
                    )),
                    None => {
                        unknown_tombstones.insert(*t);
                    }
                }
            }
        }
        // A tombstone no acknowledged delete explains must be one whose answer was lost.
        if unknown_tombstones.len() > unacked_deletes {
            violation(format!(
                "reads returned {} tombstones no acknowledged delete made ({}), but only {unacked_deletes} delete(s) went unanswered",
                unknown_tombstones.len(),
                unknown_tombstones
                    .iter()
                    .map(|d| dot(*d))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        let mut model = KeyModel {
            key,
            ops,
            writer,
            version_of,
            superseded: BTreeMap::new(),
        };
        let superseded = model
            .ops
            .iter()
            .filter(|o| is_write(o))
            .map(|o| (o.id, model.closure(o)))
            .collect();
        model.superseded = superseded;
        model
    }

    /// What write `op` superseded: the versions its client observed for the context it
    /// sent, and what their writes superseded in turn.
    fn closure(&self, op: &OpRecord) -> BTreeSet<Dot> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<Dot> = op
            .sent_context
            .iter()
            .flat_map(|c| c.observed.iter().copied())
            .collect();
        while let Some(d) = todo.pop() {
            if !out.insert(d) {
                continue;
            }
            if let Some(ctx) = self.writer.get(&d).and_then(|w| w.sent_context.as_ref()) {
                todo.extend(ctx.observed.iter().copied());
            }
        }
        out
    }

    fn superseded_by(&self, op: &OpRecord) -> &BTreeSet<Dot> {
        static EMPTY: BTreeSet<Dot> = BTreeSet::new();
        self.superseded.get(&op.id).unwrap_or(&EMPTY)
    }

    /// What the write of version `v` superseded (empty when the version is unknown).
    fn superseded_by_version(&self, v: Dot) -> Option<&BTreeSet<Dot>> {
        self.writer.get(&v).map(|w| self.superseded_by(w))
    }

    /// Writes known to have been applied: acknowledged, or returned by some read.
    fn applied(&self) -> impl Iterator<Item = (&'a OpRecord, Dot)> + '_ {
        self.ops
            .iter()
            .filter_map(|o| self.version_of.get(&o.id).map(|v| (*o, *v)))
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            key: self.key.to_string(),
            what,
        }
    }
}

fn models<'a>(history: &'a History, out: &mut Vec<Violation>) -> Vec<KeyModel<'a>> {
    by_key(history)
        .into_iter()
        .map(|(key, ops)| KeyModel::build(key, ops, out))
        .collect()
}

/// The properties every run must have (see the module's documentation).
pub fn check(history: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    for m in models(history, &mut out) {
        // No read returns a version with one that superseded it.
        for read in &m.ops {
            let Some((values, tombstones)) = returned(read) else {
                continue;
            };
            let all: Vec<Dot> = values
                .iter()
                .map(|(d, _)| *d)
                .chain(tombstones.iter().copied())
                .collect();
            for &u in &all {
                let Some(covered) = m.superseded_by_version(u) else {
                    continue;
                };
                for &v in &all {
                    if covered.contains(&v) {
                        out.push(m.violation(format!(
                            "read at {} ms through {} returned {} and {}, but the write of the second superseded the first",
                            read.start_ms,
                            read.node,
                            dot(v),
                            dot(u)
                        )));
                    }
                }
            }
        }
        let Some(fin) = history.finals.get(m.key) else {
            out.push(m.violation("no final read answered".into()));
            continue;
        };
        let present: BTreeSet<Dot> = fin
            .values
            .iter()
            .map(|(d, _)| *d)
            .chain(fin.tombstones.iter().copied())
            .collect();
        // Nothing an applied write superseded is present at the end.
        for (op, version) in m.applied() {
            for v in m.superseded_by(op) {
                if present.contains(v) {
                    out.push(m.violation(format!(
                        "{} is present at the end, but {} (version {}) superseded it",
                        dot(*v),
                        op,
                        dot(version)
                    )));
                }
            }
        }
        // Every acknowledged write is present or justly gone.
        for op in &m.ops {
            let (OpOutcome::Written { version }, OpKind::Put { value }) = (&op.outcome, &op.kind)
            else {
                continue;
            };
            if present.contains(version) {
                continue;
            }
            let justified = m.ops.iter().any(|x| {
                m.superseded_by(x).contains(version)
                    && (x.kind == OpKind::Delete
                        || m.version_of.get(&x.id).is_some_and(|v| present.contains(v)))
            });
            if !justified {
                out.push(m.violation(format!(
                    "acknowledged write {} ({value}) is lost: absent at the end, and no present version's write nor any delete superseded it as its client observed",
                    dot(*version)
                )));
            }
        }
    }
    out
}

/// Reads that began after a write was acknowledged: they return nothing it superseded,
/// and they see it (return its version or one whose write superseded it). Only for runs
/// where quorums intersect and no failure sends writes to fallbacks.
pub fn check_fresh_reads(history: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    for m in models(history, &mut Vec::new()) {
        let acked: Vec<(&OpRecord, Dot)> = m
            .ops
            .iter()
            .filter_map(|o| match o.outcome {
                OpOutcome::Written { version } => Some((*o, version)),
                _ => None,
            })
            .collect();
        for read in &m.ops {
            let Some((values, tombstones)) = returned(read) else {
                continue;
            };
            let all: Vec<Dot> = values
                .iter()
                .map(|(d, _)| *d)
                .chain(tombstones.iter().copied())
                .collect();
            for &(w, version) in &acked {
                if w.end_ms >= read.start_ms {
                    continue;
                }
                let covered = m.superseded_by(w);
                for v in &all {
                    if covered.contains(v) {
                        out.push(m.violation(format!(
                            "read at {} ms through {} returned {}, which write {} acknowledged at {} ms had superseded",
                            read.start_ms,
                            read.node,
                            dot(*v),
                            dot(version),
                            w.end_ms
                        )));
                    }
                }
                // A version whose write is unknown (a delete whose answer was lost) gets
                // the benefit of the doubt.
                let seen = all.iter().any(|&u| {
                    u == version
                        || m.superseded_by_version(u)
                            .is_none_or(|s| s.contains(&version))
                });
                if !seen {
                    out.push(m.violation(format!(
                        "read at {} ms through {} missed write {} acknowledged at {} ms",
                        read.start_ms,
                        read.node,
                        dot(version),
                        w.end_ms
                    )));
                }
            }
        }
    }
    out
}

/// Last-write-wins: concurrent writes may be dropped, but every returned version is a
/// client's write with its value, a read and the final state hold at most one version,
/// and the final version is not older than a write acknowledged before its own write
/// began. A write's timestamp is the coordinator's clock (the simulated clock, shared by
/// every member) while the request is in flight, so a write that starts after another was
/// acknowledged carries a later timestamp and must win.
pub fn check_lww(history: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    for m in models(history, &mut out) {
        for read in &m.ops {
            if let Some((values, tombstones)) = returned(read)
                && values.len() + tombstones.len() > 1
            {
                out.push(m.violation(format!(
                    "read at {} ms through {} returned {} versions under last-write-wins",
                    read.start_ms,
                    read.node,
                    values.len() + tombstones.len()
                )));
            }
        }
        let Some(fin) = history.finals.get(m.key) else {
            out.push(m.violation("no final read answered".into()));
            continue;
        };
        let winner = fin
            .values
            .iter()
            .map(|(d, _)| *d)
            .chain(fin.tombstones.iter().copied())
            .next();
        // The latest moment the winner's timestamp can be from; with no version left (a
        // collected tombstone), the latest any delete can be from.
        let winner_end = match winner {
            Some(w) => match m.writer.get(&w) {
                Some(op) => op.end_ms,
                // An unattributed tombstone: any unanswered delete may be it.
                None => m
                    .ops
                    .iter()
                    .filter(|o| o.kind == OpKind::Delete)
                    .map(|o| o.end_ms)
                    .max()
                    .unwrap_or(0),
            },
            None => m
                .ops
                .iter()
                .filter(|o| o.kind == OpKind::Delete)
                .map(|o| o.end_ms)
                .max()
                .unwrap_or(0),
        };
        for op in &m.ops {
            if let OpOutcome::Written { version } = op.outcome
                && op.start_ms > winner_end
            {
                out.push(m.violation(format!(
                    "the final state holds {} (written by {} ms), but {op} began later and was acknowledged",
                    winner.map_or("nothing".to_string(), dot),
                    winner_end
                )));
                let _ = version;
            }
        }
    }
    out
}

/// The elements of a list-append value: comma-separated, the writer's own element last.
pub fn list_elements(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').filter(|e| !e.is_empty())
}

/// List append: every element an acknowledged append added is in the union of the final
/// siblings, and no read ever returns an element no client appended.
pub fn check_list_appends(history: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    for (key, ops) in by_key(history) {
        let own = |o: &OpRecord| match &o.kind {
            OpKind::Put { value } => list_elements(value).last().map(str::to_string),
            _ => None,
        };
        let appended: BTreeSet<String> = ops.iter().filter_map(|o| own(o)).collect();
        for read in &ops {
            let Some((values, _)) = returned(read) else {
                continue;
            };
            for (_, value) in values {
                for e in list_elements(value) {
                    if !appended.contains(e) {
                        out.push(Violation {
                            key: key.to_string(),
                            what: format!(
                                "read at {} ms returned element {e}, which no client appended",
                                read.start_ms
                            ),
                        });
                    }
                }
            }
        }
        let Some(fin) = history.finals.get(key) else {
            continue;
        };
        let union: BTreeSet<&str> = fin
            .values
            .iter()
            .flat_map(|(_, v)| list_elements(v))
            .collect();
        for op in &ops {
            if matches!(op.outcome, OpOutcome::Written { .. })
                && let Some(e) = own(op)
                && !union.contains(e.as_str())
            {
                out.push(Violation {
                    key: key.to_string(),
                    what: format!("acknowledged append of {e} is missing from the final siblings"),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ActorId;
    use crate::sim::history::{ContextSource, FinalState, SentContext};

    fn d(actor: u64, c: u64) -> Dot {
        Dot {
            actor: ActorId(actor),
            counter: c,
        }
    }

    /// A builder of hand-made histories.
    #[derive(Default)]
    struct H {
        h: History,
        t: u64,
    }

    impl H {
        fn op(
            &mut self,
            client: usize,
            kind: OpKind,
            ctx: Option<SentContext>,
            outcome: OpOutcome,
        ) {
            self.t += 10;
            self.h.record(OpRecord {
                id: 0,
                client,
                node: "n0".into(),
                key: "k".into(),
                kind,
                sent_context: ctx,
                returned_context: None,
                start_ms: self.t,
                end_ms: self.t + 5,
                outcome,
            });
        }

        fn put(&mut self, client: usize, value: &str, v: Dot, ctx: Option<SentContext>) {
            self.op(
                client,
                OpKind::Put {
                    value: value.into(),
                },
                ctx,
                OpOutcome::Written { version: v },
            );
        }

        fn delete(&mut self, client: usize, v: Dot, ctx: SentContext) {
            self.op(
                client,
                OpKind::Delete,
                Some(ctx),
                OpOutcome::Written { version: v },
            );
        }

        /// A read returning `values`; the context the client would send after it.
        fn read(
            &mut self,
            client: usize,
            values: &[(Dot, &str)],
            tombstones: &[Dot],
        ) -> SentContext {
            let values: Vec<(Dot, String)> =
                values.iter().map(|(d, v)| (*d, v.to_string())).collect();
            let observed = values
                .iter()
                .map(|(d, _)| *d)
                .chain(tombstones.iter().copied())
                .collect();
            self.op(
                client,
                OpKind::Get,
                None,
                OpOutcome::Read {
                    values,
                    tombstones: tombstones.to_vec(),
                },
            );
            SentContext {
                token: "opaque".into(),
                observed,
                source: ContextSource::Read,
            }
        }

        fn finish(mut self, values: &[(Dot, &str)], tombstones: &[Dot]) -> History {
            self.read(usize::MAX, values, tombstones);
            self.h.finals.insert(
                "k".into(),
                FinalState {
                    values: values.iter().map(|(d, v)| (*d, v.to_string())).collect(),
                    tombstones: tombstones.to_vec(),
                    context: "opaque".into(),
                },
            );
            self.h
        }
    }

    /// The context a write answered with, as the checker models it.
    fn chained(before: Option<&SentContext>, own: Dot) -> SentContext {
        let mut observed: BTreeSet<Dot> = before.map(|c| c.observed.clone()).unwrap_or_default();
        observed.insert(own);
        SentContext {
            token: "opaque-from-write".into(),
            observed,
            source: ContextSource::OwnWrite,
        }
    }

    fn has(v: &[Violation], what: &str) -> bool {
        v.iter().any(|v| v.what.contains(what))
    }

    #[test]
    fn detects_a_lost_write_and_accepts_an_overwritten_one() {
        let mut h = H::default();
        h.put(0, "a", d(1, 1), None);
        let c = h.read(0, &[(d(1, 1), "a")], &[]);
        h.put(0, "b", d(1, 2), Some(c));
        let ok = h.finish(&[(d(1, 2), "b")], &[]);
        assert!(check(&ok).is_empty(), "{:?}", check(&ok));

        // b missing although nobody overwrote it.
        let mut h = H::default();
        h.put(0, "a", d(1, 1), None);
        let c = h.read(0, &[(d(1, 1), "a")], &[]);
        h.put(0, "b", d(1, 2), Some(c));
        let lost = h.finish(&[], &[]);
        let v = check(&lost);
        // a goes with b: only b, which is gone too, superseded it.
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(has(&v, "(b) is lost"), "{v:?}");
        assert!(has(&v, "(a) is lost"), "{v:?}");
    }

    /// The example of issue 32: a client chains writes with the context its own previous
    /// write answered with. A store whose answer covered a sibling the client never saw
    /// (b) drops it, and the checker must call that a lost write; the same history with
    /// b kept passes.
    #[test]
    fn an_over_covering_chained_write_context_is_a_lost_write() {
        let history = |keeps_b: bool| {
            let mut h = H::default();
            h.put(0, "a", d(1, 1), None);
            let c1 = h.read(0, &[(d(1, 1), "a")], &[]);
            h.put(1, "b", d(2, 1), None);
            h.read(1, &[(d(1, 1), "a"), (d(2, 1), "b")], &[]);
            h.put(0, "c", d(1, 2), Some(c1.clone()));
            let c2 = chained(Some(&c1), d(1, 2));
            h.put(0, "d", d(1, 3), Some(c2));
            if keeps_b {
                h.finish(&[(d(1, 3), "d"), (d(2, 1), "b")], &[])
            } else {
                h.finish(&[(d(1, 3), "d")], &[])
            }
        };
        let correct = check(&history(true));
        assert!(correct.is_empty(), "{correct:?}");
        let over_covering = check(&history(false));
        assert!(
            over_covering
                .iter()
                .any(|v| v.what.contains("lost") && v.what.contains("(b)")),
            "{over_covering:?}"
        );
        assert_eq!(over_covering.len(), 1, "{over_covering:?}");
    }

    #[test]
    fn accepts_writes_a_collected_tombstone_deleted_and_not_others() {
        // a, then b over a, then b deleted (tombstone collected), then c written blind.
        let mut h = H::default();
        h.put(0, "a", d(1, 1), None);
        let c = h.read(0, &[(d(1, 1), "a")], &[]);
        h.put(0, "b", d(1, 2), Some(c));
        let c = h.read(0, &[(d(1, 2), "b")], &[]);
        h.delete(0, d(1, 3), c);
        h.put(1, "c", d(2, 1), None);
        let v = check(&h.finish(&[(d(2, 1), "c")], &[]));
        assert!(v.is_empty(), "{v:?}");

        // Without the delete, b is lost (a was superseded by b, as its client saw).
        let mut h = H::default();
        h.put(0, "a", d(1, 1), None);
        let c = h.read(0, &[(d(1, 1), "a")], &[]);
        h.put(0, "b", d(1, 2), Some(c));
        h.put(1, "c", d(2, 1), None);
        let v = check(&h.finish(&[(d(2, 1), "c")], &[]));
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(has(&v, "(b) is lost"), "{v:?}");
        assert!(has(&v, "(a) is lost"), "{v:?}");
    }

    #[test]
    fn detects_resurrection_and_false_siblings() {
        let mut h = H::default();
        h.put(0, "a", d(1, 1), None);
        let c = h.read(0, &[(d(1, 1), "a")], &[]);
        h.delete(0, d(1, 2), c);
        let v = check(&h.finish(&[(d(1, 1), "a")], &[]));
        assert!(has(&v, "present at the end"), "{v:?}");

        let mut h = H::default();
        h.put(0, "a", d(1, 1), None);
        let c = h.read(0, &[(d(1, 1), "a")], &[]);
        h.put(0, "b", d(1, 2), Some(c));
        let v = check(&h.finish(&[(d(1, 1), "a"), (d(1, 2), "b")], &[]));
        assert!(has(&v, "superseded the first"), "{v:?}");
    }

    #[test]
    fn every_read_is_checked_for_values_never_written() {
        let mut h = H::default();
        h.put(0, "a", d(1, 1), None);
        h.read(1, &[(d(1, 1), "zzz")], &[]);
        h.read(1, &[(d(3, 7), "ghost")], &[]);
        h.read(1, &[(d(1, 9), "a")], &[]);
        let v = check(&h.finish(&[(d(1, 1), "a")], &[]));
        assert!(has(&v, "stored a"), "{v:?}");
        assert!(has(&v, "which no client wrote"), "{v:?}");
        assert!(has(&v, "acknowledged as"), "{v:?}");
        assert_eq!(v.len(), 3, "{v:?}");

        // A write whose answer was lost is recognised by its value, and what it
        // superseded counts once a read has shown its version.
        let mut h = H::default();
        h.put(0, "a", d(1, 1), None);
        let c = h.read(0, &[(d(1, 1), "a")], &[]);
        h.op(
            0,
            OpKind::Put { value: "b".into() },
            Some(c),
            OpOutcome::Unknown {
                detail: "timeout".into(),
            },
        );
        h.read(1, &[(d(1, 2), "b")], &[]);
        let v = check(&h.finish(&[(d(1, 2), "b")], &[]));
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn fresh_reads_return_nothing_an_earlier_acknowledged_write_superseded() {
        let mut h = H::default();
        h.put(0, "a", d(1, 1), None);
        let c = h.read(0, &[(d(1, 1), "a")], &[]);
        h.put(0, "b", d(1, 2), Some(c));
        h.read(1, &[(d(1, 1), "a")], &[]);
        let hist = h.finish(&[(d(1, 2), "b")], &[]);
        assert!(
            check(&hist).is_empty(),
            "stale reads are allowed by check()"
        );
        let v = check_fresh_reads(&hist);
        assert!(has(&v, "had superseded"), "{v:?}");
        assert!(has(&v, "missed write"), "{v:?}");
    }

    #[test]
    fn lww_keeps_the_later_write_and_list_appends_keep_every_element() {
        let mut h = H::default();
        h.put(0, "a", d(1, 1), None);
        h.put(1, "b", d(2, 1), None);
        let later_wins = h.finish(&[(d(2, 1), "b")], &[]);
        assert!(check_lww(&later_wins).is_empty());
        let mut h = H::default();
        h.put(0, "a", d(1, 1), None);
        h.put(1, "b", d(2, 1), None);
        let v = check_lww(&h.finish(&[(d(1, 1), "a")], &[]));
        assert!(has(&v, "began later"), "{v:?}");

        let mut h = H::default();
        h.put(0, "x1", d(1, 1), None);
        let c = h.read(1, &[(d(1, 1), "x1")], &[]);
        h.put(1, "x1,y1", d(2, 1), Some(c));
        assert!(check_list_appends(&h.finish(&[(d(2, 1), "x1,y1")], &[])).is_empty());
        let mut h = H::default();
        h.put(0, "x1", d(1, 1), None);
        let c = h.read(1, &[(d(1, 1), "x1")], &[]);
        h.put(1, "y1", d(2, 1), Some(c));
        h.read(1, &[(d(2, 1), "y1,q")], &[]);
        let v = check_list_appends(&h.finish(&[(d(2, 1), "y1")], &[]));
        assert!(has(&v, "x1 is missing"), "{v:?}");
        assert!(has(&v, "element q"), "{v:?}");
    }
}
