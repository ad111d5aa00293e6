//! What simulated clients did and saw: the complete history the checker judges.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::clock::{ActorId, Dot};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Put { value: String },
    Delete,
    Get,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    /// A write acknowledged by its quorum, with the version it created.
    Written { version: Dot },
    /// A read's merged answer: live values and tombstones with their versions.
    Read {
        values: Vec<(Dot, String)>,
        tombstones: Vec<Dot>,
    },
    /// The member answered with an error: the write may or may not have been applied.
    Failed { status: u16, detail: String },
    /// No answer (timeout, connection lost): outcome unknown.
    Unknown { detail: String },
}

#[derive(Clone, Debug)]
pub struct OpRecord {
    pub id: u64,
    pub client: usize,
    pub node: String,
    pub key: String,
    pub kind: OpKind,
    /// The context the client sent (writes only; `None` for a blind write).
    pub sent_context: Option<SentContext>,
    /// The opaque context a write's answer carried (for chaining the next write).
    pub returned_context: Option<String>,
    pub start_ms: u64,
    pub end_ms: u64,
    pub outcome: OpOutcome,
}

/// A context a client sent with a write. The token is the store's and is never decoded:
/// what it stands for, for the checker, is only what the client itself observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentContext {
    /// The opaque `x-dynamo-context` value, as the store issued it.
    pub token: String,
    /// The versions the client observed that this context stands for: every version
    /// (values and tombstones) the read it came from returned; for a context a write
    /// answered with, what the context that write sent stood for plus the write's own
    /// version.
    pub observed: BTreeSet<Dot>,
    /// Where the client got the token.
    pub source: ContextSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextSource {
    /// From a read (GET).
    Read,
    /// From the answer to this client's own previous write on the key (a chained write).
    OwnWrite,
}

/// The converged state of one key, read from every replica at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinalState {
    pub values: Vec<(Dot, String)>,
    pub tombstones: Vec<Dot>,
    /// Opaque; shown in traces only.
    pub context: String,
}

#[derive(Debug, Default)]
pub struct History {
    pub ops: Vec<OpRecord>,
    pub finals: BTreeMap<String, FinalState>,
    /// Fault and membership events, with their simulated time, for traces.
    pub events: Vec<(u64, String)>,
    next_id: u64,
}

impl History {
    pub fn record(&mut self, mut op: OpRecord) {
        op.id = self.next_id;
        self.next_id += 1;
        self.ops.push(op);
    }

    pub fn event(&mut self, at_ms: u64, what: String) {
        self.events.push((at_ms, what));
    }

    /// A readable account of everything that happened to `key`.
    pub fn trace(&self, key: &str) -> String {
        let mut lines: Vec<(u64, String)> = self
            .events
            .iter()
            .map(|(t, e)| (*t, format!("  {t:>7} ms  ** {e}")))
            .collect();
        for op in self.ops.iter().filter(|o| o.key == key) {
            lines.push((op.start_ms, format!("  {:>7} ms  {op}", op.start_ms)));
        }
        lines.sort_by_key(|(t, _)| *t);
        let mut out: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
        if let Some(f) = self.finals.get(key) {
            out.push(format!(
                "  final: values {:?} tombstones {:?} context {}",
                f.values
                    .iter()
                    .map(|(d, v)| format!("{}={v}", dot(*d)))
                    .collect::<Vec<_>>(),
                f.tombstones.iter().map(|d| dot(*d)).collect::<Vec<_>>(),
                short(&f.context)
            ));
        }
        out.join("\n")
    }
}

pub fn dot(d: Dot) -> String {
    format!("{:x}.{}", d.actor.0 & 0xffff, d.counter)
}

/// An opaque context token, shortened for traces.
pub fn short(token: &str) -> String {
    let head: String = token.chars().take(12).collect();
    if head.len() < token.len() {
        format!("{head}…")
    } else {
        head
    }
}

fn dots<'a>(ds: impl IntoIterator<Item = &'a Dot>) -> String {
    let parts: Vec<String> = ds.into_iter().map(|d| dot(*d)).collect();
    format!("{{{}}}", parts.join(" "))
}

impl fmt::Display for OpRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            OpKind::Put { value } => format!("put {value}"),
            OpKind::Delete => "delete".to_string(),
            OpKind::Get => "get".to_string(),
        };
        let ctx = self.sent_context.as_ref().map_or(String::new(), |c| {
            let from = match c.source {
                ContextSource::Read => "read",
                ContextSource::OwnWrite => "own write",
            };
            format!(
                " ctx {} (from {from}, observed {})",
                short(&c.token),
                dots(&c.observed)
            )
        });
        let outcome = match &self.outcome {
            OpOutcome::Written { version } => format!("ok version {}", dot(*version)),
            OpOutcome::Read { values, tombstones } => format!(
                "read {:?} tombstones {:?}",
                values
                    .iter()
                    .map(|(d, v)| format!("{}={v}", dot(*d)))
                    .collect::<Vec<_>>(),
                tombstones.iter().map(|d| dot(*d)).collect::<Vec<_>>()
            ),
            OpOutcome::Failed { status, detail } => format!("FAILED {status} {detail}"),
            OpOutcome::Unknown { detail } => format!("UNKNOWN {detail}"),
        };
        write!(
            f,
            "client {} via {}: {kind}{ctx} -> {outcome} (done at {} ms)",
            self.client, self.node, self.end_ms
        )
    }
}

/// Parses a version as the API prints it: `<actor hex>.<counter>`.
pub fn parse_dot(s: &str) -> Option<Dot> {
    let (actor, counter) = s.trim().trim_end_matches('~').split_once('.')?;
    Some(Dot {
        actor: ActorId(u64::from_str_radix(actor, 16).ok()?),
        counter: counter.parse().ok()?,
    })
}
