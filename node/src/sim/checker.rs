//! Judges a simulated history against the final, converged state.
//!
//! * No acknowledged write is lost: its version is present, or a client overwrote it (some
//!   write on the key was sent with a context covering it) and the final state has seen it.
//! * Acknowledged deletes do not resurrect: no version a delete's context covered is
//!   present at the end.
//! * Siblings are exactly the concurrent versions: no present version was overwritten by
//!   another present one, and every present version is a client's write with its value.
//! * Only in runs without network faults or crashes ([`check_fresh_reads`]): a read that
//!   begins after a write was acknowledged sees it (R + W > N), including while partitions
//!   move between members. Sloppy quorum gives that up when replicas fail, so runs with
//!   faults do not check it.

use std::collections::BTreeMap;

use super::history::{History, OpKind, OpOutcome, OpRecord, dot};
use crate::clock::{Dot, VersionVector};

#[derive(Debug, Clone)]
pub struct Violation {
    pub key: String,
    pub what: String,
}

pub fn check(history: &History) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut by_key: BTreeMap<&str, Vec<&OpRecord>> = BTreeMap::new();
    for op in &history.ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, ops) in by_key {
        let empty = Default::default();
        let fin = history.finals.get(key).unwrap_or(&empty);
        let sent: Vec<&VersionVector> =
            ops.iter().filter_map(|o| o.sent_context.as_ref()).collect();
        let overwritten = |d: Dot| sent.iter().any(|c| c.contains(d));
        // A delete's tombstone carries the causal history it covers, and is collected once
        // the tombstone grace has passed; a later write without context then starts a
        // history that does not contain the deleted writes.
        let deleted = |d: Dot| {
            ops.iter().any(|o| {
                o.kind == OpKind::Delete && o.sent_context.as_ref().is_some_and(|c| c.contains(d))
            })
        };
        let present = |d: Dot| fin.values.iter().any(|(v, _)| *v == d);
        // Writes by version, for values and contexts of present siblings.
        let mut writes: BTreeMap<Dot, &OpRecord> = BTreeMap::new();
        for op in &ops {
            if let OpOutcome::Written { version } = op.outcome {
                writes.insert(version, op);
            }
        }
        for op in &ops {
            let OpOutcome::Written { version } = op.outcome else {
                continue;
            };
            if let OpKind::Put { value } = &op.kind {
                if present(version) {
                    continue;
                }
                if !overwritten(version) {
                    violations.push(Violation {
                        key: key.to_string(),
                        what: format!("acknowledged write {} ({value}) is lost: absent at the end and no client overwrote it", dot(version)),
                    });
                } else if !fin.context.is_empty()
                    && !fin.context.contains(version)
                    && !deleted(version)
                {
                    violations.push(Violation {
                        key: key.to_string(),
                        what: format!("acknowledged write {} ({value}) is absent and the final state never saw it", dot(version)),
                    });
                }
            }
            if op.kind == OpKind::Delete
                && let Some(ctx) = &op.sent_context
            {
                for (v, value) in &fin.values {
                    if ctx.contains(*v) {
                        violations.push(Violation {
                            key: key.to_string(),
                            what: format!("{} ({value}) was deleted by acknowledged delete {} but is present at the end", dot(*v), dot(version)),
                        });
                    }
                }
            }
        }
        for (v, value) in &fin.values {
            // Writes whose outcome the client never learnt can still be present; look the
            // version up among acknowledged ones, else accept any write of that value.
            let creator = writes.get(v).copied().or_else(|| {
                ops.iter()
                    .copied()
                    .find(|o| matches!(&o.kind, OpKind::Put { value: w } if w == value))
            });
            let Some(creator) = creator else {
                violations.push(Violation {
                    key: key.to_string(),
                    what: format!(
                        "present version {} ({value}) was never written by a client",
                        dot(*v)
                    ),
                });
                continue;
            };
            if let OpKind::Put { value: written } = &creator.kind
                && written != value
            {
                violations.push(Violation {
                    key: key.to_string(),
                    what: format!(
                        "version {} holds {value} but its write stored {written}",
                        dot(*v)
                    ),
                });
            }
            if let Some(ctx) = &creator.sent_context {
                for (other, other_value) in &fin.values {
                    if other != v && ctx.contains(*other) {
                        violations.push(Violation {
                            key: key.to_string(),
                            what: format!(
                                "siblings {} ({other_value}) and {} ({value}) are both present, but the second overwrote the first",
                                dot(*other),
                                dot(*v)
                            ),
                        });
                    }
                }
            }
        }
    }
    violations
}

/// Reads that missed a write acknowledged before they began. A read sees write `d` when it
/// returns `d` itself, or a version whose write was sent with a context covering `d`.
/// Versions the history cannot attribute (a delete whose answer was lost) are given the
/// benefit of the doubt.
pub fn check_fresh_reads(history: &History) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut by_key: BTreeMap<&str, Vec<&OpRecord>> = BTreeMap::new();
    for op in &history.ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, ops) in by_key {
        let acked: Vec<(Dot, u64)> = ops
            .iter()
            .filter_map(|o| match o.outcome {
                OpOutcome::Written { version } => Some((version, o.end_ms)),
                _ => None,
            })
            .collect();
        let by_version: BTreeMap<Dot, &OpRecord> = ops
            .iter()
            .filter_map(|o| match o.outcome {
                OpOutcome::Written { version } => Some((version, *o)),
                _ => None,
            })
            .collect();
        // `None`: the version's write is unknown, so whether it covers anything is too.
        let covers = |returned: Dot, value: Option<&str>, d: Dot| -> Option<bool> {
            if returned == d {
                return Some(true);
            }
            let creator = by_version.get(&returned).copied().or_else(|| {
                let value = value?;
                ops.iter()
                    .copied()
                    .find(|o| matches!(&o.kind, OpKind::Put { value: w } if w == value))
            })?;
            Some(creator.sent_context.as_ref().is_some_and(|c| c.contains(d)))
        };
        for read in &ops {
            let OpOutcome::Read { values, tombstones } = &read.outcome else {
                continue;
            };
            for &(d, acked_at) in &acked {
                if acked_at >= read.start_ms {
                    continue;
                }
                let returned = values
                    .iter()
                    .map(|(v, value)| (*v, Some(value.as_str())))
                    .chain(tombstones.iter().map(|t| (*t, None)));
                let mut seen = false;
                for (v, value) in returned {
                    if covers(v, value, d) != Some(false) {
                        seen = true;
                        break;
                    }
                }
                if !seen {
                    violations.push(Violation {
                        key: key.to_string(),
                        what: format!(
                            "read at {} ms through {} missed write {} acknowledged at {acked_at} ms",
                            read.start_ms,
                            read.node,
                            dot(d)
                        ),
                    });
                }
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ActorId;
    use crate::sim::history::FinalState;

    fn d(c: u64) -> Dot {
        Dot {
            actor: ActorId(1),
            counter: c,
        }
    }

    fn put(key: &str, value: &str, version: u64, ctx: Option<VersionVector>) -> OpRecord {
        OpRecord {
            id: 0,
            client: 0,
            node: "n0".into(),
            key: key.into(),
            kind: OpKind::Put {
                value: value.into(),
            },
            sent_context: ctx,
            start_ms: 0,
            end_ms: 0,
            outcome: OpOutcome::Written {
                version: d(version),
            },
        }
    }

    fn ctx(c: u64) -> VersionVector {
        let mut v = VersionVector::new();
        v.add(d(c));
        v
    }

    #[test]
    fn detects_a_lost_write_and_accepts_an_overwritten_one() {
        let mut h = History::default();
        h.record(put("k", "a", 1, None));
        h.record(put("k", "b", 2, Some(ctx(1))));
        h.finals.insert(
            "k".into(),
            FinalState {
                values: vec![(d(2), "b".into())],
                tombstones: vec![],
                context: ctx(2),
            },
        );
        assert!(check(&h).is_empty(), "{:?}", check(&h));
        // Now b is missing although nobody overwrote it.
        h.finals.insert(
            "k".into(),
            FinalState {
                values: vec![],
                tombstones: vec![],
                context: ctx(1),
            },
        );
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert!(v[0].what.contains("lost"));
    }

    #[test]
    fn accepts_writes_a_collected_tombstone_deleted_and_not_others() {
        let other = |c: u64| Dot {
            actor: ActorId(2),
            counter: c,
        };
        let mut fresh = VersionVector::new();
        fresh.add(other(1));
        let fin = FinalState {
            values: vec![(other(1), "c".into())],
            tombstones: vec![],
            context: fresh,
        };
        let mut h = History::default();
        h.record(put("k", "a", 1, None));
        h.record(put("k", "b", 2, Some(ctx(1))));
        let mut c = put("k", "c", 0, None);
        c.outcome = OpOutcome::Written { version: other(1) };
        h.record(c.clone());
        h.finals.insert("k".into(), fin.clone());
        // Without a delete, a's overwrite by b and b itself are gone from the history.
        let v = check(&h);
        assert!(v.iter().any(|v| v.what.contains("never saw it")), "{v:?}");
        assert!(v.iter().any(|v| v.what.contains("lost")), "{v:?}");

        // b deleted (the delete's context covers a and b), its tombstone collected, then c
        // written without context: nothing is missing.
        let mut h = History::default();
        h.record(put("k", "a", 1, None));
        h.record(put("k", "b", 2, Some(ctx(1))));
        let mut del = put("k", "", 3, Some(ctx(2)));
        del.kind = OpKind::Delete;
        h.record(del);
        h.record(c);
        h.finals.insert("k".into(), fin);
        assert!(check(&h).is_empty(), "{:?}", check(&h));
    }

    #[test]
    fn detects_resurrection_and_false_siblings() {
        let mut h = History::default();
        h.record(put("k", "a", 1, None));
        let mut del = put("k", "", 2, Some(ctx(1)));
        del.kind = OpKind::Delete;
        h.record(del);
        h.finals.insert(
            "k".into(),
            FinalState {
                values: vec![(d(1), "a".into())],
                tombstones: vec![],
                context: ctx(2),
            },
        );
        assert!(check(&h).iter().any(|v| v.what.contains("deleted")));

        let mut h = History::default();
        h.record(put("k", "a", 1, None));
        h.record(put("k", "b", 2, Some(ctx(1))));
        h.finals.insert(
            "k".into(),
            FinalState {
                values: vec![(d(1), "a".into()), (d(2), "b".into())],
                tombstones: vec![],
                context: ctx(2),
            },
        );
        assert!(check(&h).iter().any(|v| v.what.contains("overwrote")));
    }
}
