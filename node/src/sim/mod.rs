//! Deterministic simulation of whole clusters (feature `sim`).
//!
//! Several members run the real node code — storage (in memory, surviving simulated
//! crashes like a disk), membership, replication, handoff, anti-entropy, the HTTP API —
//! over turmoil's simulated network and clock. One seed fixes everything: the cluster's
//! shape, the workload, the faults and every scheduling decision, so a failing seed
//! replays exactly. For that, every `tokio::select!` in node code is `biased;`: without
//! `tokio_unstable`, tokio picks among branches ready together with a generator no seed
//! reaches, and a replay of the same seed once diverged on such a tie. And a crashed
//! member sends nothing (see [`crash_silently`]), since the order its tasks are dropped in
//! depends on what else ran in the process.
//!
//! A run: form the cluster; let concurrent clients put (with and without context), delete
//! and get a few hot keys while faults strike (partitions, one-way partitions, message
//! loss, delay, crashes with and without the disk, joins, leaves); heal everything; wait
//! until the cluster has converged (same ring everywhere, nothing moving, no hints, equal
//! Merkle roots on every partition's replicas); read every key from all replicas; and
//! check the history ([`checker`]).

pub mod checker;
pub mod history;
pub mod net;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::clock::{ConflictMode, Dot};
use crate::config::{ClusterSettings, FailureDetector, NodeConfig};
use crate::env::Env;
use crate::node::Node;
use crate::ring::{MemberId, Ring, RingMember};
use crate::storage::MemoryEngine;
use history::{
    ContextSource, FinalState, History, OpKind, OpOutcome, OpRecord, SentContext, parse_dot,
};
use net::{SimClock, SimNetwork, SimReply, http};

const TOKEN: &str = "simulation-cluster-token";
const HTTP_PORT: u16 = 8080;
const PEER_PORT: u16 = 7070;

/// The shape of one simulated run.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub seed: u64,
    pub initial_members: usize,
    /// Members that may join during the run.
    pub spare_members: usize,
    pub partitions: u32,
    pub n: usize,
    pub r: usize,
    pub w: usize,
    pub clients: usize,
    pub keys: usize,
    pub workload: Duration,
    /// Fault events during the workload (0 = a calm run).
    pub faults: usize,
    /// Upper bound of simulated time to converge after healing.
    pub converge_within: Duration,
    /// Make every member acknowledge writes before their quorum (a deliberate bug).
    pub bug_ack_before_quorum: bool,
    /// A deliberate bug for the checker's mutation test: a write answers with the
    /// coordinator's whole clock instead of what the request's context covered plus the
    /// new version, so a writer chaining it deletes siblings it never saw.
    pub bug_over_cover_write_contexts: bool,
    /// Faults at fixed times instead of random ones: (start after the cluster is ready,
    /// duration, fault), in milliseconds.
    pub scripted: Option<Vec<(u64, u64, Fault)>>,
    /// Also check that every read sees the writes acknowledged before it began
    /// ([`checker::check_fresh_reads`]); only for runs whose faults are joins and leaves.
    pub check_fresh_reads: bool,
    /// What the clients do.
    pub mix: Workload,
    /// Siblings, or last-write-wins (a cluster setting; checked by [`checker::check_lww`]).
    pub conflicts: ConflictMode,
    /// Clients sometimes write with the context their own previous write on the key
    /// answered with (a chained write), as docs/api.md invites.
    pub chain_write_contexts: bool,
}

/// What simulated clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Puts (after a read, blind, with a stale or chained context), deletes and gets on a
    /// few hot keys.
    Registers,
    /// Jepsen's set: every client adds keys of its own (blind puts of unique keys); the
    /// final reads must hold every acknowledged add.
    Set,
    /// Jepsen's list append: a client reads a key, unions the siblings' elements, appends
    /// an element of its own and writes with the read's context; every acknowledged
    /// element must be in the final siblings.
    ListAppend,
}

/// The N/R/W variants the seeds cycle through (see [`Scenario::variant`]).
pub const QUORUM_VARIANTS: [(usize, usize, usize); 4] =
    [(3, 2, 2), (3, 1, 1), (5, 3, 3), (3, 3, 1)];

impl Scenario {
    /// A scenario drawn from the seed: 3-5 members, up to 2 joiners, a varied workload and
    /// 2-8 fault events.
    pub fn from_seed(seed: u64) -> Scenario {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        Scenario {
            seed,
            initial_members: rng.random_range(3..=5),
            spare_members: rng.random_range(0..=2),
            partitions: 64,
            n: 3,
            r: 2,
            w: 2,
            clients: rng.random_range(2..=4),
            keys: rng.random_range(3..=8),
            workload: Duration::from_secs(rng.random_range(20..=40)),
            faults: rng.random_range(2..=8),
            converge_within: Duration::from_secs(240),
            bug_ack_before_quorum: false,
            bug_over_cover_write_contexts: false,
            scripted: None,
            check_fresh_reads: false,
            mix: Workload::Registers,
            conflicts: ConflictMode::Siblings,
            chain_write_contexts: true,
        }
    }

    /// [`Scenario::from_seed`] with quorums `(n, r, w)` (at least N members), a workload
    /// and a conflict mode.
    pub fn variant(
        seed: u64,
        (n, r, w): (usize, usize, usize),
        mix: Workload,
        conflicts: ConflictMode,
    ) -> Scenario {
        let mut s = Scenario::from_seed(seed);
        s.n = n;
        s.r = r;
        s.w = w;
        s.initial_members = s.initial_members.max(n);
        s.mix = mix;
        s.conflicts = conflicts;
        s
    }
}

impl Scenario {
    /// 3 members grow to 5 under load, as the operator scales a StatefulSet, with nothing
    /// else going wrong, so every read must see the writes acknowledged before it began.
    /// Members adopt each new view a gossip round or two apart: for a moment some still
    /// coordinate writes under the old ring alone, and new owners must not pull before
    /// those writes are done.
    pub fn grow_under_load(seed: u64) -> Scenario {
        Scenario {
            seed,
            initial_members: 3,
            spare_members: 2,
            partitions: 64,
            n: 3,
            r: 2,
            w: 2,
            clients: 4,
            keys: 8,
            workload: Duration::from_secs(15),
            faults: 0,
            converge_within: Duration::from_secs(240),
            bug_ack_before_quorum: false,
            bug_over_cover_write_contexts: false,
            scripted: Some(vec![
                (1_000, 0, Fault::Join { node: 3 }),
                (1_000, 0, Fault::Join { node: 4 }),
            ]),
            check_fresh_reads: true,
            mix: Workload::Registers,
            conflicts: ConflictMode::Siblings,
            chain_write_contexts: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Partition { a: usize, b: usize },
    OneWay { from: usize, to: usize },
    Loss { a: usize, b: usize },
    Delay { a: usize, b: usize },
    Crash { node: usize, wipe: bool },
    Join { node: usize },
    Leave { node: usize },
}

#[derive(Clone, Debug)]
struct Planned {
    at_ms: u64,
    until_ms: u64,
    fault: Fault,
}

/// What a successful run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub ops: usize,
    pub acknowledged_writes: usize,
    pub faults: Vec<String>,
    pub simulated_ms: u64,
    pub converged_after_ms: u64,
    /// A digest of the whole history, equal for two runs of the same seed.
    pub digest: u64,
    /// Accepted joins and leaves the controller had to ask for again, the members not
    /// showing them after a while (lost with a crashed claimant).
    pub repeated_changes: usize,
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub message: String,
    pub trace: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed: {}\n{}\nreplay: cargo run --release -p dynamo-node --features sim --bin dynamo-sim -- --seed {}",
            self.seed, self.message, self.trace, self.seed
        )
    }
}

fn host(i: usize) -> String {
    format!("n{i}")
}

/// State shared between the driver and the simulated clients.
struct Shared {
    history: Mutex<History>,
    /// Members clients may talk to (joined and not removed).
    active: Mutex<Vec<usize>>,
    ready: AtomicBool,
    healed: AtomicBool,
    workload_clients_done: AtomicUsize,
    repeated_changes: AtomicUsize,
    verified: AtomicBool,
    admin_queue: Mutex<Vec<(u64, AdminCmd)>>,
    convergence: Mutex<Option<Result<u64, String>>>,
}

#[derive(Clone, Copy, Debug)]
enum AdminCmd {
    Join(usize),
    Leave(usize),
}

fn node_config(s: &Scenario, i: usize, bootstrap: bool, all_initial: usize) -> NodeConfig {
    let mut c = NodeConfig::for_local(
        &host(i),
        HTTP_PORT,
        PEER_PORT,
        std::path::PathBuf::from("/sim"),
    );
    c.listen = format!("0.0.0.0:{HTTP_PORT}");
    c.peer_listen = format!("0.0.0.0:{PEER_PORT}");
    c.advertise = format!("{}:{HTTP_PORT}", host(i));
    c.advertise_peer = format!("{}:{PEER_PORT}", host(i));
    c.seeds = (0..all_initial)
        .filter(|&j| j != i)
        .map(|j| format!("{}:{PEER_PORT}", host(j)))
        .collect();
    c.bootstrap = bootstrap;
    c.cluster_token = crate::config::Secret::new(TOKEN);
    c.settings = ClusterSettings {
        partitions: s.partitions,
        n: s.n,
        r: s.r,
        w: s.w,
        conflicts: s.conflicts,
        ..Default::default()
    };
    c.gossip_interval = Duration::from_millis(500);
    c.failure_detector = FailureDetector::PhiAccrual {
        threshold: 8.0,
        min_std_dev: Duration::from_millis(250),
        max_silence: Duration::from_secs(10),
    };
    c.replica_timeout = Duration::from_millis(500);
    c.request_timeout = Duration::from_secs(2);
    c.hint_interval = Duration::from_millis(500);
    c.anti_entropy_interval = Duration::from_secs(5);
    c.transfer_rate_bytes = 0;
    c.tombstone_grace = Duration::from_secs(15);
    c
}

fn plan_faults(s: &Scenario, rng: &mut ChaCha8Rng, start_ms: u64) -> Vec<Planned> {
    if let Some(script) = &s.scripted {
        let mut out: Vec<Planned> = script
            .iter()
            .map(|(at, dur, fault)| Planned {
                at_ms: start_ms + at,
                until_ms: start_ms + at + dur,
                fault: fault.clone(),
            })
            .collect();
        out.sort_by_key(|p| p.at_ms);
        return out;
    }
    let mut out = Vec::new();
    let end = start_ms + s.workload.as_millis() as u64;
    let mut members: Vec<usize> = (0..s.initial_members).collect();
    let mut next_spare = s.initial_members;
    let mut wiped = false;
    // Times first, in order, so a fault involving a joiner always comes after its join.
    let mut times: Vec<u64> = (0..s.faults)
        .map(|_| rng.random_range(start_ms..end))
        .collect();
    times.sort_unstable();
    for at_ms in times {
        let until_ms = (at_ms + rng.random_range(1_000..15_000)).min(end);
        let pick =
            |rng: &mut ChaCha8Rng, members: &[usize]| members[rng.random_range(0..members.len())];
        let a = pick(rng, &members);
        let mut b = pick(rng, &members);
        if a == b {
            b = members[(members.iter().position(|&m| m == a).unwrap_or(0) + 1) % members.len()];
        }
        let fault = match rng.random_range(0..10) {
            0 | 1 => Fault::Partition { a, b },
            2 => Fault::OneWay { from: a, to: b },
            3 => Fault::Loss { a, b },
            4 => Fault::Delay { a, b },
            5 | 6 => Fault::Crash {
                node: a,
                wipe: false,
            },
            // At most one disk wipe per run: two lost replicas of one partition can lose
            // acknowledged data in any system with N = 3 and W = 2; with W = 1 one can.
            7 if !wiped && s.w > 1 => {
                wiped = true;
                Fault::Crash {
                    node: a,
                    wipe: true,
                }
            }
            8 if next_spare < s.initial_members + s.spare_members => {
                next_spare += 1;
                members.push(next_spare - 1);
                Fault::Join {
                    node: next_spare - 1,
                }
            }
            9 if members.len() > s.n + 1 => {
                members.retain(|&m| m != a);
                Fault::Leave { node: a }
            }
            _ => Fault::Crash {
                node: a,
                wipe: false,
            },
        };
        out.push(Planned {
            at_ms,
            until_ms,
            fault,
        });
    }
    out.sort_by_key(|p| p.at_ms);
    out
}

/// Runs one scenario to the end and checks it.
pub fn run(s: &Scenario) -> Result<Report, Failure> {
    let fail = |message: String, trace: String| Failure {
        seed: s.seed,
        message,
        trace,
    };
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(3600))
        .tick_duration(Duration::from_millis(2))
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(Duration::from_millis(5))
        .rng_seed(s.seed)
        .enable_random_order()
        .build();
    let shared = Arc::new(Shared {
        history: Mutex::new(History::default()),
        active: Mutex::new((0..s.initial_members).collect()),
        ready: AtomicBool::new(false),
        healed: AtomicBool::new(false),
        workload_clients_done: AtomicUsize::new(0),
        repeated_changes: AtomicUsize::new(0),
        verified: AtomicBool::new(false),
        admin_queue: Mutex::new(Vec::new()),
        convergence: Mutex::new(None),
    });
    let total = s.initial_members + s.spare_members;
    let engines: Vec<MemoryEngine> = (0..total).map(|_| MemoryEngine::new()).collect();
    let bootstrapped = Arc::new(AtomicBool::new(false));
    let generations: Arc<Vec<AtomicUsize>> =
        Arc::new((0..total).map(|_| AtomicUsize::new(0)).collect());

    let add_host = |sim: &mut turmoil::Sim<'_>, i: usize| {
        let engine = engines[i].clone();
        let scenario = s.clone();
        let bootstrapped = bootstrapped.clone();
        let generations = generations.clone();
        let initial = s.initial_members;
        sim.host(host(i), move || {
            let engine = engine.clone();
            let scenario = scenario.clone();
            let bootstrap = i == 0 && !bootstrapped.swap(true, Ordering::SeqCst);
            let generation = generations[i].fetch_add(1, Ordering::SeqCst) as u64;
            let mut config = node_config(&scenario, i, bootstrap, initial);
            config.rng_seed = scenario
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add((i as u64) << 20)
                .wrapping_add(generation);
            async move {
                let env = Env {
                    network: Arc::new(SimNetwork),
                    clock: Arc::new(SimClock),
                    rng: Arc::new(parking_lot::Mutex::new(ChaCha8Rng::seed_from_u64(
                        config.rng_seed,
                    ))),
                };
                let node = Node::start(config, env, Arc::new(engine))
                    .await
                    .map_err(|e| e.to_string())?;
                if scenario.bug_over_cover_write_contexts {
                    node.replicator
                        .faults
                        .over_cover_write_contexts
                        .store(true, Ordering::Relaxed);
                }
                if scenario.bug_ack_before_quorum {
                    node.replicator
                        .faults
                        .ack_writes_before_quorum
                        .store(true, Ordering::Relaxed);
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    };
    for i in 0..s.initial_members {
        add_host(&mut sim, i);
    }
    // Every host on the simulated network, for crashing a member silently.
    let mut hosts: Vec<String> = (0..s.initial_members).map(host).collect();
    hosts.push("controller".into());
    hosts.extend((0..s.clients).map(|c| format!("client{c}")));
    hosts.push("verifier".into());

    // The controller forms the cluster, then runs queued admin commands.
    {
        let shared = shared.clone();
        let initial = s.initial_members;
        let n = s.n;
        sim.client("controller", async move {
            for i in 1..initial {
                if !join(&shared, i).await {
                    return Err(format!("{} could not join the new cluster", host(i)).into());
                }
            }
            wait_settled(&shared, initial, n).await;
            shared.ready.store(true, Ordering::SeqCst);
            // Accepted changes, followed to the end (see `confirm_or_repeat`).
            let mut followed: Vec<(AdminCmd, u64)> = Vec::new();
            while !shared.verified.load(Ordering::SeqCst) {
                let due: Vec<(u64, AdminCmd)> = std::mem::take(&mut *shared.admin_queue.lock());
                for (_, cmd) in due {
                    let accepted = match cmd {
                        AdminCmd::Join(i) => {
                            let ok = join(&shared, i).await;
                            if ok {
                                shared.active.lock().push(i);
                            }
                            ok
                        }
                        AdminCmd::Leave(i) => {
                            let ok = leave(&shared, i).await;
                            if ok {
                                shared.active.lock().retain(|&m| m != i);
                            }
                            ok
                        }
                    };
                    if accepted {
                        // The latest change of a member replaces any earlier one.
                        let (AdminCmd::Join(i) | AdminCmd::Leave(i)) = cmd;
                        followed.retain(|(c, _)| {
                            !matches!(c, AdminCmd::Join(m) | AdminCmd::Leave(m) if *m == i)
                        });
                        followed.push((cmd, now_ms()));
                    }
                }
                confirm_or_repeat(&shared, &mut followed).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(())
        });
    }

    for c in 0..s.clients {
        let shared = shared.clone();
        let scenario = s.clone();
        sim.client(format!("client{c}"), async move {
            while !shared.ready.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let stop_at = now_ms() + scenario.workload.as_millis() as u64;
            run_client(&shared, &scenario, c, stop_at).await;
            shared.workload_clients_done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
    }

    {
        let shared = shared.clone();
        let scenario = s.clone();
        sim.client("verifier", async move {
            while !shared.healed.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let healed_at = now_ms();
            let result = converge(&shared, &scenario, healed_at).await;
            let converged = result.is_ok();
            *shared.convergence.lock() = Some(result);
            if converged {
                final_reads(&shared, &scenario).await;
            }
            shared.verified.store(true, Ordering::SeqCst);
            Ok(())
        });
    }

    // Drive the simulation, injecting the planned faults.
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed ^ 0xfa17);
    let mut plan: Option<Vec<Planned>> = None;
    let mut active_faults: Vec<Planned> = Vec::new();
    let mut crashed: BTreeSet<usize> = BTreeSet::new();
    let mut fault_log = Vec::new();
    loop {
        let finished = sim
            .step()
            .map_err(|e| fail(format!("a member failed: {e}"), String::new()))?;
        if finished {
            break;
        }
        let now = sim.elapsed().as_millis() as u64;
        if plan.is_none() && shared.ready.load(Ordering::SeqCst) {
            plan = Some(plan_faults(s, &mut rng, now + 1_000));
        }
        let healed = shared.healed.load(Ordering::SeqCst);
        if let Some(p) = plan.as_mut() {
            while !healed && p.first().is_some_and(|f| f.at_ms <= now) {
                let f = p.remove(0);
                let text = format!("{:?} until {} ms", f.fault, f.until_ms);
                shared.history.lock().event(now, format!("start {text}"));
                fault_log.push(format!("{now} ms: {text}"));
                match f.fault {
                    Fault::Partition { a, b } => sim.partition(host(a), host(b)),
                    Fault::OneWay { from, to } => sim.partition_oneway(host(from), host(to)),
                    Fault::Loss { a, b } => sim.set_link_fail_rate(host(a), host(b), 0.05),
                    Fault::Delay { a, b } => sim.set_link_max_message_latency(
                        host(a),
                        host(b),
                        Duration::from_millis(300),
                    ),
                    Fault::Crash { node, wipe } => {
                        if crashed.insert(node) {
                            crash_silently(&mut sim, node, &hosts, &active_faults);
                            if wipe {
                                engines[node].wipe();
                            }
                        }
                    }
                    Fault::Join { node } => {
                        add_host(&mut sim, node);
                        hosts.push(host(node));
                        shared.admin_queue.lock().push((now, AdminCmd::Join(node)));
                    }
                    Fault::Leave { node } => {
                        shared.admin_queue.lock().push((now, AdminCmd::Leave(node)))
                    }
                }
                active_faults.push(f);
            }
        }
        // End faults whose time is up (and all of them once the workload is over).
        let workload_over = shared.workload_clients_done.load(Ordering::SeqCst) == s.clients;
        let mut still = Vec::new();
        for f in active_faults.drain(..) {
            if f.until_ms <= now || workload_over {
                heal(&mut sim, &f.fault, &mut crashed);
                shared
                    .history
                    .lock()
                    .event(now, format!("end {:?}", f.fault));
            } else {
                still.push(f);
            }
        }
        active_faults = still;
        if workload_over && !healed {
            for node in std::mem::take(&mut crashed) {
                sim.bounce(host(node));
            }
            shared.healed.store(true, Ordering::SeqCst);
            shared.history.lock().event(now, "all faults healed".into());
        }
    }

    let history = std::mem::take(&mut *shared.history.lock());
    let converged = shared.convergence.lock().clone();
    let simulated_ms = sim.elapsed().as_millis() as u64;
    match converged {
        Some(Ok(after)) => {
            let mut violations = match s.conflicts {
                ConflictMode::Siblings => checker::check(&history),
                ConflictMode::Lww => checker::check_lww(&history),
            };
            if s.mix == Workload::ListAppend {
                violations.extend(checker::check_list_appends(&history));
            }
            if s.check_fresh_reads {
                violations.extend(checker::check_fresh_reads(&history));
            }
            if let Some(v) = violations.first() {
                let all: Vec<String> = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.key, v.what))
                    .collect();
                return Err(fail(
                    format!("{} violation(s): {}", violations.len(), all.join("; ")),
                    format!("history of key {}:\n{}", v.key, history.trace(&v.key)),
                ));
            }
            Ok(Report {
                seed: s.seed,
                ops: history.ops.len(),
                acknowledged_writes: history
                    .ops
                    .iter()
                    .filter(|o| matches!(o.outcome, OpOutcome::Written { .. }))
                    .count(),
                faults: fault_log,
                simulated_ms,
                converged_after_ms: after,
                digest: digest(&history),
                repeated_changes: shared.repeated_changes.load(Ordering::SeqCst),
            })
        }
        Some(Err(why)) => Err(fail(
            format!("did not converge: {why}"),
            history
                .events
                .iter()
                .map(|(t, e)| format!("  {t:>7} ms  {e}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )),
        None => Err(fail("the verifier never ran".into(), String::new())),
    }
}

/// Crashes member `node` the way a machine crashes: it sends nothing more, and what it had
/// in flight is lost. Only this keeps a seed's replay exact: turmoil crashes a host by
/// dropping its runtime, the tasks are dropped in an order set by tokio's task ids, which
/// come from one counter shared by every runtime in the process, and each connection
/// dropped would send a FIN that draws its latency from the simulation's generator. The
/// same seed then replayed differently after (or beside) other simulations in one process.
fn crash_silently(sim: &mut turmoil::Sim<'_>, node: usize, hosts: &[String], active: &[Planned]) {
    let me = host(node);
    let others = || hosts.iter().filter(|h| **h != me);
    for other in others() {
        sim.partition_oneway(me.as_str(), other.as_str());
    }
    sim.crash(me.as_str());
    for other in others() {
        let cut_by_a_fault = active.iter().any(|f| match f.fault {
            Fault::Partition { a, b } => {
                (host(a) == me && host(b) == *other) || (host(b) == me && host(a) == *other)
            }
            Fault::OneWay { from, to } => host(from) == me && host(to) == *other,
            _ => false,
        });
        if !cut_by_a_fault {
            sim.repair_oneway(me.as_str(), other.as_str());
        }
    }
}

fn heal(sim: &mut turmoil::Sim<'_>, fault: &Fault, crashed: &mut BTreeSet<usize>) {
    match *fault {
        Fault::Partition { a, b } => sim.repair(host(a), host(b)),
        Fault::OneWay { from, to } => sim.repair_oneway(host(from), host(to)),
        Fault::Loss { a, b } => sim.set_link_fail_rate(host(a), host(b), 0.0),
        Fault::Delay { a, b } => {
            sim.set_link_max_message_latency(host(a), host(b), Duration::from_millis(5))
        }
        Fault::Crash { node, .. } => {
            if crashed.remove(&node) {
                sim.bounce(host(node));
            }
        }
        Fault::Join { .. } | Fault::Leave { .. } => {}
    }
}

fn digest(h: &History) -> u64 {
    let mut x = xxhash_rust::xxh3::Xxh3::new();
    for op in &h.ops {
        x.update(op.to_string().as_bytes());
    }
    for (k, f) in &h.finals {
        x.update(format!("{k}{f:?}").as_bytes());
    }
    x.digest()
}

fn now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

async fn admin(node: &str, method: Method, path: &str, body: &str) -> Result<SimReply, String> {
    let headers = [
        ("authorization", format!("Bearer {TOKEN}")),
        ("content-type", "application/json".to_string()),
    ];
    http(
        &format!("{node}:{HTTP_PORT}"),
        method,
        path,
        &headers,
        Bytes::from(body.to_string()),
        Duration::from_secs(3),
    )
    .await
}

fn first_active_other(shared: &Shared, not: usize) -> usize {
    shared
        .active
        .lock()
        .iter()
        .copied()
        .find(|&m| m != not)
        .unwrap_or(0)
}

/// Asks the cluster to add member `i` until it is accepted (or gives up after 150 s).
async fn join(shared: &Shared, i: usize) -> bool {
    let body = format!("{{\"member\": \"{}\"}}", host(i));
    for _ in 0..600 {
        let via = first_active_other(shared, i);
        if let Ok(r) = admin(&host(via), Method::POST, "/v1/cluster/join", &body).await
            && r.status.as_u16() == 202
        {
            shared
                .history
                .lock()
                .event(now_ms(), format!("join {} accepted", host(i)));
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    shared
        .history
        .lock()
        .event(now_ms(), format!("join {} never accepted", host(i)));
    false
}

/// Asks the cluster to remove member `i`; whether the claimant accepted it.
async fn leave(shared: &Shared, i: usize) -> bool {
    let via = first_active_other(shared, i);
    let r = admin(
        &host(via),
        Method::POST,
        &format!("/v1/cluster/leave/{}", host(i)),
        "",
    )
    .await;
    let ok = r.as_ref().is_ok_and(|r| r.status.as_u16() == 202);
    shared.history.lock().event(
        now_ms(),
        format!(
            "leave {} -> {}",
            host(i),
            if ok { "accepted" } else { "refused" }
        ),
    );
    ok
}

/// An accepted join or leave waits in the claimant's queue until it plans it, and is lost
/// if the claimant crashes first (docs/api.md); a view the claimant wrote but had not
/// gossiped yet is lost with its disk. Like the operator, the controller follows every
/// accepted change to the end and asks again whenever the members have not shown it for a
/// while: a join until the member is `up`, a leave while it is not `leaving` or `removed`.
/// `followed` holds each change with when it was last asked or last seen in the view.
async fn confirm_or_repeat(shared: &Shared, followed: &mut [(AdminCmd, u64)]) {
    const REPEAT_AFTER_MS: u64 = 3_000;
    for (cmd, last_ok_ms) in followed.iter_mut() {
        let (AdminCmd::Join(i) | AdminCmd::Leave(i)) = *cmd;
        let via = first_active_other(shared, i);
        let status = admin(&host(via), Method::GET, "/v1/cluster/members", "")
            .await
            .ok()
            .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .and_then(|m| {
                m["members"].as_array().and_then(|all| {
                    all.iter()
                        .find(|e| e["id"] == host(i).as_str())
                        .and_then(|e| e["status"].as_str().map(str::to_string))
                })
            });
        // No answer, or a member that lists no one yet (it has just lost its disk): ask
        // another time.
        let Some(status) = status else { continue };
        let shown = match cmd {
            AdminCmd::Join(_) => status == "up",
            AdminCmd::Leave(_) => matches!(status.as_str(), "leaving" | "removed"),
        };
        if shown {
            *last_ok_ms = now_ms();
            continue;
        }
        if now_ms() < *last_ok_ms + REPEAT_AFTER_MS {
            continue;
        }
        shared
            .history
            .lock()
            .event(now_ms(), format!("{cmd:?} not in the view: asked again"));
        shared.repeated_changes.fetch_add(1, Ordering::SeqCst);
        match *cmd {
            AdminCmd::Join(i) => join(shared, i).await,
            AdminCmd::Leave(i) => leave(shared, i).await,
        };
        *last_ok_ms = now_ms();
    }
}

async fn ring_of(node: usize) -> Option<serde_json::Value> {
    let r = admin(&host(node), Method::GET, "/v1/cluster/ring", "")
        .await
        .ok()?;
    serde_json::from_slice(&r.body).ok()
}

async fn wait_settled(shared: &Shared, members: usize, n: usize) {
    let _ = n;
    loop {
        let active = shared.active.lock().clone();
        let mut epochs = BTreeSet::new();
        let mut ok = true;
        for &i in &active {
            match ring_of(i).await {
                Some(r)
                    if r["inTransition"] == false
                        && r["members"].as_array().map(Vec::len) == Some(members) =>
                {
                    epochs.insert(r["epoch"].as_u64());
                }
                _ => ok = false,
            }
        }
        if ok && epochs.len() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A read's values, tombstones and (opaque) context.
type ReadState = (Vec<(Dot, String)>, Vec<Dot>, String);

fn parse_read(r: &SimReply) -> Option<ReadState> {
    // Opaque: the simulator never decodes a context, it only sends it back.
    let context = r.header("x-dynamo-context").unwrap_or("").to_string();
    match r.status.as_u16() {
        200 => {
            let versions = r.header("x-dynamo-versions").unwrap_or("");
            let mut values = Vec::new();
            let mut tombstones = Vec::new();
            for v in versions.split(',').filter(|v| !v.is_empty()) {
                let dot = parse_dot(v)?;
                if v.ends_with('~') {
                    tombstones.push(dot)
                } else {
                    values.push((dot, String::from_utf8_lossy(&r.body).into_owned()))
                }
            }
            Some((values, tombstones, context))
        }
        300 => {
            use base64::Engine as _;
            let json: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            let mut values = Vec::new();
            for s in json["siblings"].as_array()? {
                let value = base64::engine::general_purpose::STANDARD
                    .decode(s["value"].as_str()?)
                    .ok()?;
                values.push((
                    parse_dot(s["version"].as_str()?)?,
                    String::from_utf8_lossy(&value).into_owned(),
                ));
            }
            let tombstones = json["tombstones"]
                .as_array()?
                .iter()
                .filter_map(|t| t.as_str().and_then(parse_dot))
                .collect();
            Some((values, tombstones, context))
        }
        404 => {
            let tombstones = r
                .header("x-dynamo-versions")
                .unwrap_or("")
                .split(',')
                .filter(|v| !v.is_empty())
                .filter_map(parse_dot)
                .collect();
            Some((Vec::new(), tombstones, context))
        }
        _ => None,
    }
}

async fn run_client(shared: &Shared, s: &Scenario, c: usize, stop_at: u64) {
    let mut rng =
        ChaCha8Rng::seed_from_u64(s.seed.wrapping_add(1 + c as u64).wrapping_mul(0x9e37_79b9));
    match (s.mix, s.conflicts) {
        (_, ConflictMode::Lww) => run_lww_client(shared, s, c, stop_at, &mut rng).await,
        (Workload::Registers, _) => run_register_client(shared, s, c, stop_at, &mut rng).await,
        (Workload::Set, _) => run_set_client(shared, s, c, stop_at, &mut rng).await,
        (Workload::ListAppend, _) => run_append_client(shared, s, c, stop_at, &mut rng).await,
    }
}

fn pick_member(shared: &Shared, rng: &mut ChaCha8Rng) -> String {
    let active = shared.active.lock().clone();
    host(active[rng.random_range(0..active.len())])
}

async fn run_register_client(
    shared: &Shared,
    s: &Scenario,
    c: usize,
    stop_at: u64,
    rng: &mut ChaCha8Rng,
) {
    // The context this client holds per key: from its last read, or, when writes are
    // chained, from its last acknowledged write.
    let mut last_context: BTreeMap<String, SentContext> = BTreeMap::new();
    let mut seq = 0u64;
    while now_ms() < stop_at {
        let key = format!("key{}", rng.random_range(0..s.keys));
        let node = pick_member(shared, rng);
        let roll = rng.random_range(0..100);
        let read_first = roll < 45 || (55..65).contains(&roll);
        let mut context = None;
        if read_first || roll >= 80 {
            let (ctx, _) = get(shared, c, &node, &key, "").await;
            if let Some(ctx) = ctx {
                last_context.insert(key.clone(), ctx.clone());
                context = Some(ctx);
            }
        }
        let written = if roll < 45 || (65..80).contains(&roll) {
            // A read-modify-write, or a write with this client's possibly stale (or
            // chained) context.
            let ctx = if roll < 45 {
                context
            } else {
                last_context.get(&key).cloned()
            };
            seq += 1;
            let value = format!("c{c}-{seq}");
            write(shared, c, &node, &key, Some(value), ctx).await
        } else if roll < 55 {
            seq += 1;
            write(shared, c, &node, &key, Some(format!("c{c}-{seq}")), None).await
        } else if roll < 65 && context.is_some() {
            // A delete without a context deletes what the coordinator reads, which no
            // client saw; only deletes with a read's context are sent.
            write(shared, c, &node, &key, None, context).await
        } else {
            None
        };
        if s.chain_write_contexts
            && let Some(chained) = written
        {
            last_context.insert(key.clone(), chained);
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..80))).await;
    }
}

/// Adds keys of its own, each once, and now and then reads one back. Bounded: at most
/// 40 adds per client.
async fn run_set_client(
    shared: &Shared,
    _s: &Scenario,
    c: usize,
    stop_at: u64,
    rng: &mut ChaCha8Rng,
) {
    let mut added = 0u64;
    while now_ms() < stop_at && added < 40 {
        let node = pick_member(shared, rng);
        if added > 0 && rng.random_range(0..4) == 0 {
            let key = format!("set-c{c}-{}", rng.random_range(0..added));
            get(shared, c, &node, &key, "").await;
        } else {
            let key = format!("set-c{c}-{added}");
            added += 1;
            write(shared, c, &node, &key, Some(format!("c{c}-{added}")), None).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
    }
}

/// Reads a key, unions the siblings' elements, appends an element of its own and writes
/// the list back with the read's context.
async fn run_append_client(
    shared: &Shared,
    s: &Scenario,
    c: usize,
    stop_at: u64,
    rng: &mut ChaCha8Rng,
) {
    let mut seq = 0u64;
    while now_ms() < stop_at {
        let key = format!("list{}", rng.random_range(0..s.keys.min(3)));
        let node = pick_member(shared, rng);
        let (context, state) = get(shared, c, &node, &key, "").await;
        if let Some(state) = state {
            let mut elements: BTreeSet<String> = BTreeSet::new();
            for (_, value) in &state.values {
                elements.extend(checker::list_elements(value).map(str::to_string));
            }
            seq += 1;
            let own = format!("c{c}e{seq}");
            let mut list: Vec<String> = elements.into_iter().collect();
            list.push(own);
            write(shared, c, &node, &key, Some(list.join(",")), context).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..120))).await;
    }
}

/// Last-write-wins: blind puts, deletes and reads (contexts mean nothing there).
async fn run_lww_client(
    shared: &Shared,
    s: &Scenario,
    c: usize,
    stop_at: u64,
    rng: &mut ChaCha8Rng,
) {
    let mut seq = 0u64;
    while now_ms() < stop_at {
        let key = format!("key{}", rng.random_range(0..s.keys));
        let node = pick_member(shared, rng);
        match rng.random_range(0..10) {
            0..=4 => {
                seq += 1;
                write(shared, c, &node, &key, Some(format!("c{c}-{seq}")), None).await;
            }
            5 => {
                let (ctx, _) = get(shared, c, &node, &key, "").await;
                write(shared, c, &node, &key, None, ctx).await;
            }
            _ => {
                get(shared, c, &node, &key, "").await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..80))).await;
    }
}

/// Reads `key`; the context the client would send after this read (none when the key was
/// never written), and what the read returned.
async fn get(
    shared: &Shared,
    c: usize,
    node: &str,
    key: &str,
    query: &str,
) -> (Option<SentContext>, Option<FinalState>) {
    let start = now_ms();
    let r = http(
        &format!("{node}:{HTTP_PORT}"),
        Method::GET,
        &format!("/v1/kv/{key}{query}"),
        &[],
        Bytes::new(),
        Duration::from_secs(4),
    )
    .await;
    let (outcome, ctx, state) = match &r {
        Ok(reply) => match parse_read(reply) {
            Some((values, tombstones, context)) => {
                let sent = (!context.is_empty()).then(|| SentContext {
                    token: context.clone(),
                    observed: values
                        .iter()
                        .map(|(d, _)| *d)
                        .chain(tombstones.iter().copied())
                        .collect(),
                    source: ContextSource::Read,
                });
                (
                    OpOutcome::Read {
                        values: values.clone(),
                        tombstones: tombstones.clone(),
                    },
                    sent,
                    Some(FinalState {
                        values,
                        tombstones,
                        context,
                    }),
                )
            }
            None => (
                OpOutcome::Failed {
                    status: reply.status.as_u16(),
                    detail: String::from_utf8_lossy(&reply.body).into_owned(),
                },
                None,
                None,
            ),
        },
        Err(e) => (OpOutcome::Unknown { detail: e.clone() }, None, None),
    };
    let end = now_ms();
    shared.history.lock().record(OpRecord {
        id: 0,
        client: c,
        node: node.to_string(),
        key: key.to_string(),
        kind: OpKind::Get,
        sent_context: None,
        returned_context: None,
        start_ms: start,
        end_ms: end,
        outcome,
    });
    (ctx, state)
}

/// Writes `value` (a delete for `None`). For an acknowledged write that answered with a
/// context: that context as the client models it, what the sent context stood for plus
/// the write's own version.
async fn write(
    shared: &Shared,
    c: usize,
    node: &str,
    key: &str,
    value: Option<String>,
    context: Option<SentContext>,
) -> Option<SentContext> {
    let start = now_ms();
    let headers: Vec<(&str, String)> = context
        .iter()
        .map(|ctx| ("x-dynamo-context", ctx.token.clone()))
        .collect();
    let (method, body) = match &value {
        Some(v) => (Method::PUT, Bytes::from(v.clone())),
        None => (Method::DELETE, Bytes::new()),
    };
    let r = http(
        &format!("{node}:{HTTP_PORT}"),
        method,
        &format!("/v1/kv/{key}"),
        &headers,
        body,
        Duration::from_secs(4),
    )
    .await;
    let mut returned_context = None;
    let outcome = match r {
        Ok(reply) if reply.status.as_u16() == 204 => {
            returned_context = reply.header("x-dynamo-context").map(str::to_string);
            match reply.header("x-dynamo-version").and_then(parse_dot) {
                Some(version) => OpOutcome::Written { version },
                None => OpOutcome::Failed {
                    status: 204,
                    detail: "no version header".into(),
                },
            }
        }
        Ok(reply) => OpOutcome::Failed {
            status: reply.status.as_u16(),
            detail: String::from_utf8_lossy(&reply.body)
                .chars()
                .take(120)
                .collect(),
        },
        Err(e) => OpOutcome::Unknown { detail: e },
    };
    let chained = match (&outcome, &returned_context) {
        (OpOutcome::Written { version }, Some(token)) => {
            let mut observed = context
                .as_ref()
                .map(|c| c.observed.clone())
                .unwrap_or_default();
            observed.insert(*version);
            Some(SentContext {
                token: token.clone(),
                observed,
                source: ContextSource::OwnWrite,
            })
        }
        _ => None,
    };
    let kind = match value {
        Some(value) => OpKind::Put { value },
        None => OpKind::Delete,
    };
    let end = now_ms();
    shared.history.lock().record(OpRecord {
        id: 0,
        client: c,
        node: node.to_string(),
        key: key.to_string(),
        kind,
        sent_context: context,
        returned_context,
        start_ms: start,
        end_ms: end,
        outcome,
    });
    chained
}

/// Waits until every active member agrees on a settled, balanced, spaced ring, no hints
/// or handoffs are pending, and every partition's replicas have equal Merkle roots.
async fn converge(shared: &Shared, s: &Scenario, healed_at: u64) -> Result<u64, String> {
    let deadline = healed_at + s.converge_within.as_millis() as u64;
    let mut last_reason = String::from("never checked");
    while now_ms() < deadline {
        match converged_now(shared, s).await {
            Ok(()) => return Ok(now_ms() - healed_at),
            Err(why) => last_reason = why,
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    Err(last_reason)
}

async fn converged_now(shared: &Shared, s: &Scenario) -> Result<(), String> {
    let active = shared.active.lock().clone();
    let mut rings = Vec::new();
    for &i in &active {
        let r = ring_of(i)
            .await
            .ok_or_else(|| format!("{} did not answer", host(i)))?;
        rings.push((i, r));
    }
    let (_, first) = rings.first().ok_or("no active member")?;
    for (i, r) in &rings {
        if r["epoch"] != first["epoch"] || r["inTransition"] != false {
            return Err(format!(
                "{} is at epoch {} (in transition: {})",
                host(*i),
                r["epoch"],
                r["inTransition"]
            ));
        }
    }
    let members: Vec<String> = first["members"]
        .as_array()
        .ok_or("no members")?
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    let mut expected: Vec<String> = active.iter().map(|&i| host(i)).collect();
    expected.sort();
    if members != expected {
        return Err(format!("ring members {members:?}, expected {expected:?}"));
    }
    let balance = &first["balance"];
    if balance[1].as_u64().unwrap_or(0) > balance[0].as_u64().unwrap_or(0) + 1 {
        return Err(format!("unbalanced ring {balance}"));
    }
    if first["spacingFeasible"] == true && first["spacingViolations"] != 0 {
        return Err(format!("spacing violated: {}", first["spacingViolations"]));
    }
    for &i in &active {
        let r = admin(&host(i), Method::GET, "/metrics", "")
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&r.body);
        let pending = text
            .lines()
            .find(|l| l.starts_with("dynamo_hints_pending "))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("0");
        if pending != "0" {
            let members = admin(&host(i), Method::GET, "/v1/cluster/members", "")
                .await
                .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                .unwrap_or_default();
            let json: serde_json::Value = serde_json::from_str(&members).unwrap_or_default();
            let alive: Vec<String> = json["members"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|m| format!("{}:{}:{}", m["id"], m["status"], m["alive"]))
                        .collect()
                })
                .unwrap_or_default();
            return Err(format!(
                "{} holds {pending} hints {} (sees {alive:?})",
                host(i),
                json["hintsHeld"]
            ));
        }
    }
    // Equal Merkle roots on every partition's replicas.
    let owners: Vec<MemberId> = first["owners"]
        .as_array()
        .ok_or("no owners")?
        .iter()
        .filter_map(|o| o.as_str().map(MemberId::new))
        .collect();
    let ring = Ring::from_owners(
        0,
        members
            .iter()
            .map(|m| RingMember {
                id: MemberId::new(m.clone()),
                weight: 1,
            })
            .collect(),
        &owners,
    )
    .map_err(|e| e.to_string())?;
    let mut roots: BTreeMap<String, BTreeMap<u32, String>> = BTreeMap::new();
    for &i in &active {
        let r = admin(&host(i), Method::GET, "/v1/cluster/antientropy", "")
            .await
            .map_err(|e| e.to_string())?;
        let json: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        let map = json["roots"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        roots.insert(host(i), map);
    }
    for p in 0..s.partitions {
        let replicas = ring.primaries(p, s.n);
        let values: BTreeSet<Option<&String>> = replicas
            .iter()
            .map(|m| roots.get(m.as_str()).and_then(|r| r.get(&p)))
            .collect();
        if values.len() > 1 {
            return Err(format!(
                "partition {p}: replicas {replicas:?} have different Merkle roots {values:?}"
            ));
        }
    }
    Ok(())
}

/// Reads every key a client touched from all replicas (r = N) once the cluster has
/// converged.
async fn final_reads(shared: &Shared, s: &Scenario) {
    let via = host(shared.active.lock().first().copied().unwrap_or(0));
    let keys: BTreeSet<String> = shared
        .history
        .lock()
        .ops
        .iter()
        .map(|o| o.key.clone())
        .collect();
    for key in keys {
        for _ in 0..20 {
            let (_, state) = get(shared, usize::MAX, &via, &key, &format!("?r={}", s.n)).await;
            if let Some(state) = state {
                shared.history.lock().finals.insert(key.clone(), state);
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
