//! Scale simulation: gossip convergence and message sizes with the real membership code at
//! 10, 100 and 1000 members, ring planning with the real planner at 1000 members, and the
//! Dynamo paper's load-balancing comparison (§6.2, figure 8) of random tokens against our
//! equal partitions. Deterministic: seeded, no network, simulated time (only the planner
//! timings read the wall clock).
//!
//! ```text
//! cargo run --release -p dynamo-node --example scale_sim
//! ```
//!
//! Environment: `SCALE_SEEDS` (gossip seeds per size, default 5), `SCALE_SIZES` (default
//! `10,100,1000`), `SCALE_PLAN_Q` (default `4096,16384`), `SCALE_LB_SEEDS` (default 10).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dynamo::config::{ClusterSettings, NodeConfig};
use dynamo::env::Env;
use dynamo::membership::{
    ClusterView, GossipPush, MemberState, MemberStatus, Membership, ViewMember,
};
use dynamo::metrics::Metrics;
use dynamo::ring::planner::{self, PlanConfig};
use dynamo::ring::{MemberId, Ring, RingMember, key_hash, partition_of_hash};
use dynamo::rpc::RpcClient;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The operator's naming: member `demo-<ordinal>`, reached at
/// `<id>.demo-peers.<namespace>.svc:<port>`, so message sizes are those of a real cluster.
fn member_id(i: usize) -> String {
    format!("demo-{i}")
}

fn env_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let seeds = env_u64("SCALE_SEEDS", 5);
    let sizes = env_list("SCALE_SIZES", "10,100,1000");
    let plan_q = env_list("SCALE_PLAN_Q", "4096,16384");
    let lb_seeds = env_u64("SCALE_LB_SEEDS", 10);

    println!("# scale_sim\n");
    gossip(&sizes, seeds)?;
    planning(1000, &plan_q)?;
    load_balancing(lb_seeds)?;
    Ok(())
}

// =======================================================================================
// 1. Gossip
// =======================================================================================

/// Partitions of the simulated cluster: about 4 or more per member.
fn partitions_for(n: usize) -> u32 {
    (4 * n as u32).next_power_of_two().max(256)
}

fn ring_members(n: usize) -> Vec<RingMember> {
    (0..n)
        .map(|i| RingMember {
            id: MemberId::new(member_id(i)),
            weight: 1,
        })
        .collect()
}

/// The agreed view every member starts with (version 1), and the next one: the claimant
/// planning the leave of one member (a ring change, base + target ring), version 2.
fn views(n: usize) -> Result<(ClusterView, ClusterView)> {
    let q = partitions_for(n);
    let settings = ClusterSettings {
        partitions: q,
        ..ClusterSettings::default()
    };
    let members = ring_members(n);
    let ring = planner::plan_initial(&members, q, &PlanConfig { n: 3, seed: 1 })?;
    let claimant = MemberId::new(member_id(0));
    let v1 = ClusterView {
        version: 1,
        author: claimant.clone(),
        settings,
        members: members
            .iter()
            .map(|m| {
                (
                    m.id.clone(),
                    ViewMember {
                        status: MemberStatus::Up,
                        weight: 1,
                    },
                )
            })
            .collect(),
        rings: vec![ring],
    };
    let leaver = MemberId::new(member_id(n - 1));
    let v2 = v1.with_changes(&[], &[leaver], &claimant, 2)?;
    Ok((v1, v2))
}

fn member_state(i: usize, rng: &mut ChaCha8Rng) -> MemberState {
    let id = member_id(i);
    MemberState {
        id: MemberId::new(id.clone()),
        peer_addr: format!("{id}.demo-peers.default.svc:7070"),
        http_addr: format!("{id}.demo-peers.default.svc:8080"),
        generation: 1,
        version: 0,
        synced_epoch: 1,
        pulls_pending: 0,
        incarnation: rng.next_u64(),
        acked_epoch: 1,
        read_epoch: 1,
    }
}

#[derive(Default, Clone, Copy)]
struct Bytes3 {
    digest: u64,
    delta: u64,
    push: u64,
    exchanges: u64,
}

impl Bytes3 {
    fn total(&self) -> u64 {
        self.digest + self.delta + self.push
    }
}

struct SeedRun {
    /// Rounds after the claimant adopted the new view until every member had it.
    rounds: u32,
    /// Members holding the new view after each round.
    curve: Vec<usize>,
    steady: Bytes3,
    steady_rounds: u64,
    spreading: Bytes3,
}

const WARMUP_ROUNDS: u32 = 10;
const STEADY_FROM: u32 = 5;
const MAX_ROUNDS: u32 = 200;

/// One seeded run of `n` members that all know each other and share `v1`: warm-up rounds
/// (heartbeats only), then the claimant adopts `v2` and rounds run until all hold it.
/// Every round each member, in a random order, gossips once with a uniformly random peer
/// (the staggered timers of real members), and simulated time advances by one interval.
async fn gossip_run(n: usize, seed: u64, v1: &ClusterView, v2: &ClusterView) -> Result<SeedRun> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let metrics = Metrics::new();
    let states: Vec<MemberState> = (0..n).map(|i| member_state(i, &mut rng)).collect();
    let mut members: Vec<Arc<Membership>> = Vec::with_capacity(n);
    for (i, st) in states.iter().enumerate() {
        let id = member_id(i);
        let mut config = NodeConfig::for_local(&id, 0, 0, std::env::temp_dir());
        config.advertise_peer = st.peer_addr.clone();
        config.advertise = st.http_addr.clone();
        config.rng_seed = seed.wrapping_mul(1_000_003).wrapping_add(i as u64 + 1);
        let env = Env::production(config.rng_seed);
        // Connects lazily: constructing it opens nothing.
        let rpc = RpcClient::new(
            env.clone(),
            st.id.clone(),
            config.cluster_secrets(),
            Duration::from_secs(1),
            config.request_timeout,
            metrics.clone(),
        );
        members.push(Membership::new(
            config,
            env,
            rpc,
            metrics.clone(),
            st.clone(),
            Some(v1.clone()),
        ));
    }
    // Everyone starts knowing everyone (an established cluster).
    for m in &members {
        m.handle_push(GossipPush {
            entries: states.clone(),
            view: None,
        });
    }

    let interval = Duration::from_secs(1);
    let mut order: Vec<usize> = (0..n).collect();
    let mut round = |rng: &mut ChaCha8Rng, acc: &mut Bytes3| {
        order.shuffle(rng);
        for &a in &order {
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let bytes = members[a].gossip_with(&members[b]);
            acc.digest += bytes.digest;
            acc.delta += bytes.delta;
            acc.push += bytes.push;
            acc.exchanges += 1;
        }
    };

    let mut steady = Bytes3::default();
    let mut scratch = Bytes3::default();
    for r in 0..WARMUP_ROUNDS {
        if r >= STEADY_FROM {
            round(&mut rng, &mut steady);
        } else {
            round(&mut rng, &mut scratch);
        }
        tokio::time::advance(interval).await;
    }
    let steady_rounds = u64::from(WARMUP_ROUNDS - STEADY_FROM);

    anyhow::ensure!(members[0].offer_view(v2.clone()), "claimant refused v2");
    let have = |members: &[Arc<Membership>]| {
        members
            .iter()
            .filter(|m| m.view().is_some_and(|v| v.version == v2.version))
            .count()
    };
    let mut spreading = Bytes3::default();
    let mut curve = Vec::new();
    let mut rounds = 0;
    while rounds < MAX_ROUNDS {
        round(&mut rng, &mut spreading);
        tokio::time::advance(interval).await;
        rounds += 1;
        let k = have(&members);
        curve.push(k);
        if k == n {
            break;
        }
    }
    Ok(SeedRun {
        rounds,
        curve,
        steady,
        steady_rounds,
        spreading,
    })
}

/// Reference model, not node code: synchronous push-pull rounds (every member contacts one
/// uniformly random peer at once, and a contact informs both sides if either side was
/// informed at the start of the round). Returns rounds until all `n` are informed.
fn synchronous_push_pull(n: usize, seed: u64) -> u32 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut informed = vec![false; n];
    informed[0] = true;
    let mut count = 1;
    let mut rounds = 0;
    while count < n {
        let before = informed.clone();
        for a in 0..n {
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            if before[a] || before[b] {
                for x in [a, b] {
                    if !informed[x] {
                        informed[x] = true;
                        count += 1;
                    }
                }
            }
        }
        rounds += 1;
    }
    rounds
}

fn gossip(sizes: &[u64], seeds: u64) -> Result<()> {
    println!("## 1. Gossip: rounds until a new cluster view reaches every member\n");
    println!(
        "Real `Membership` code (`gossip_with` = `gossip_round` without the transport); every \
         round each member, in random order, gossips once with a uniformly random peer; \
         {seeds} seeds per size; the change is a leave planned by the claimant (view with base + target ring).\n"
    );
    println!(
        "| members n | Q | log2 n | rounds mean | rounds min | rounds max | synchronous model mean (max) | view bytes | members with the view after each round (seed 1) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|---:|---|");
    let mut bytes_rows = Vec::new();
    for &n in sizes {
        let n = n as usize;
        let (v1, v2) = views(n)?;
        let view_bytes = postcard::to_stdvec(&v2).map(|b| b.len()).unwrap_or(0);
        let v1_bytes = postcard::to_stdvec(&v1).map(|b| b.len()).unwrap_or(0);
        let mut rounds = Vec::new();
        let mut curve0 = Vec::new();
        let mut steady = Bytes3::default();
        let mut steady_rounds = 0;
        let mut spreading = Bytes3::default();
        let mut spreading_rounds = 0u64;
        let started = Instant::now();
        for seed in 1..=seeds {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()?;
            let run = rt.block_on(gossip_run(n, seed, &v1, &v2))?;
            rounds.push(run.rounds);
            if seed == 1 {
                curve0 = run.curve.clone();
            }
            for (acc, add) in [(&mut steady, run.steady), (&mut spreading, run.spreading)] {
                acc.digest += add.digest;
                acc.delta += add.delta;
                acc.push += add.push;
                acc.exchanges += add.exchanges;
            }
            steady_rounds += run.steady_rounds;
            spreading_rounds += u64::from(run.rounds);
        }
        let mean = rounds.iter().map(|&r| f64::from(r)).sum::<f64>() / rounds.len() as f64;
        let model: Vec<u32> = (1..=200).map(|s| synchronous_push_pull(n, s)).collect();
        println!(
            "| {n} | {} | {:.2} | {mean:.1} | {} | {} | {:.1} ({}) | {view_bytes} | {} |",
            v2.settings.partitions,
            (n as f64).log2(),
            rounds.iter().min().copied().unwrap_or(0),
            rounds.iter().max().copied().unwrap_or(0),
            model.iter().map(|&r| f64::from(r)).sum::<f64>() / model.len() as f64,
            model.iter().max().copied().unwrap_or(0),
            curve0
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        );
        eprintln!(
            "  gossip n = {n}: {:.1} s for {seeds} seeds (view v1 {v1_bytes} B, v2 {view_bytes} B)",
            started.elapsed().as_secs_f64()
        );
        bytes_rows.push((n, steady, steady_rounds, spreading, spreading_rounds));
    }

    println!("\n### Gossip bytes (postcard-encoded message bodies)\n");
    println!(
        "Per member per round = all bytes of the round / n (each member starts one exchange \
         and answers one on average, so it sends and receives about this much each). \
         Steady state: heartbeats only (rounds {STEADY_FROM}..{WARMUP_ROUNDS} of the warm-up); \
         spreading: the rounds while the new view travels.\n"
    );
    println!(
        "| n | phase | digest B / exchange | delta B / exchange | push B / exchange | per member per round | whole cluster per round |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for (n, steady, sr, spreading, pr) in bytes_rows {
        for (phase, b, rounds) in [("steady", steady, sr), ("spreading", spreading, pr)] {
            let per_ex = |x: u64| x as f64 / b.exchanges.max(1) as f64;
            let per_member_round = b.total() as f64 / (n as f64 * rounds.max(1) as f64);
            println!(
                "| {n} | {phase} | {:.0} | {:.0} | {:.0} | {} | {} |",
                per_ex(b.digest),
                per_ex(b.delta),
                per_ex(b.push),
                human(per_member_round),
                human(per_member_round * n as f64),
            );
        }
    }
    println!();
    Ok(())
}

fn human(bytes: f64) -> String {
    if bytes >= 1e6 {
        format!("{:.2} MB", bytes / 1e6)
    } else if bytes >= 1e3 {
        format!("{:.1} kB", bytes / 1e3)
    } else {
        format!("{bytes:.0} B")
    }
}

// =======================================================================================
// 2. Ring planning at scale
// =======================================================================================

fn counts_min_max(ring: &Ring) -> (u32, u32) {
    let counts = ring.ownership_counts();
    let min = counts.iter().map(|c| c.1).min().unwrap_or(0);
    let max = counts.iter().map(|c| c.1).max().unwrap_or(0);
    (min, max)
}

fn planning(n: usize, qs: &[u64]) -> Result<()> {
    println!("## 2. Ring planning with {n} members (real planner, N = 3)\n");
    println!(
        "| Q | plan | time (ms) | partitions per member min / max | spacing violations (N = 3) | moved | moved / Q | optimum | moved / optimum |"
    );
    println!("|---:|---|---:|---|---:|---:|---:|---|---:|");
    let members = ring_members(n);
    for &q in qs {
        let q = q as u32;
        let t = Instant::now();
        let ring = planner::plan_initial(&members, q, &PlanConfig { n: 3, seed: 1 })?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let (lo, hi) = counts_min_max(&ring);
        println!(
            "| {q} | initial, {n} members | {ms:.0} | {lo} / {hi} | {} | – | – | – | – |",
            ring.spacing_violations(3)
        );
        eprintln!("  plan_initial n = {n}, Q = {q}: {ms:.0} ms");
        for seed in 1..=3u64 {
            let joiner = RingMember {
                id: MemberId::new(member_id(n - 1 + seed as usize * 1000)),
                weight: 1,
            };
            let t = Instant::now();
            let plan = planner::plan_join(&ring, joiner, &PlanConfig { n: 3, seed })?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let (lo, hi) = counts_min_max(&plan.ring);
            let moved = plan.moves.len();
            let ideal = f64::from(q) / (n as f64 + 1.0);
            println!(
                "| {q} | join {n} → {} (seed {seed}) | {ms:.0} | {lo} / {hi} | {} | {moved} | {:.4} % | Q/(n+1) = {ideal:.2} ({:.4} %); balance forces {} | {:.3} |",
                n + 1,
                plan.spacing_violations,
                100.0 * moved as f64 / f64::from(q),
                100.0 / (n as f64 + 1.0),
                plan.balance_moves,
                moved as f64 / plan.balance_moves.max(1) as f64,
            );
            eprintln!("  plan_join n = {n}, Q = {q}, seed {seed}: {ms:.0} ms");
        }
        for seed in 1..=3u64 {
            let leaver = MemberId::new(member_id((seed as usize * 331) % n));
            let share = ring.partitions_of(&leaver).len();
            let t = Instant::now();
            let plan = planner::plan_leave(&ring, &leaver, &PlanConfig { n: 3, seed })?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let (lo, hi) = counts_min_max(&plan.ring);
            let moved = plan.moves.len();
            println!(
                "| {q} | leave {n} → {} ({leaver}) | {ms:.0} | {lo} / {hi} | {} | {moved} | {:.4} % | the leaver's {share} ({:.4} %) | {:.3} |",
                n - 1,
                plan.spacing_violations,
                100.0 * moved as f64 / f64::from(q),
                100.0 * share as f64 / f64::from(q),
                moved as f64 / share.max(1) as f64,
            );
            eprintln!("  plan_leave n = {n}, Q = {q}, seed {seed}: {ms:.0} ms");
        }
    }
    println!();
    Ok(())
}

// =======================================================================================
// 3. Load balancing: random tokens (strategy 1) vs equal partitions (strategy 3)
// =======================================================================================

const LB_MEMBERS: usize = 30;
const LB_N: usize = 3;
const LB_KEYS: usize = 1_000_000;
/// Popularities: zipf with these exponents (key `i` has rank `i + 1`), then uniform.
const ZIPF_S: [f64; 2] = [1.0, 0.8];
const POPS: usize = ZIPF_S.len() + 1;

struct Workload {
    hashes: Vec<u64>,
    /// Request probability of each key under each popularity.
    prob: [Vec<f64>; POPS],
}

fn zipf(s: f64) -> Vec<f64> {
    let raw: Vec<f64> = (0..LB_KEYS)
        .map(|i| 1.0 / ((i + 1) as f64).powf(s))
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.into_iter().map(|x| x / sum).collect()
}

fn workload() -> Workload {
    let hashes: Vec<u64> = (0..LB_KEYS)
        .map(|i| key_hash(format!("user{i:08}").as_bytes()))
        .collect();
    Workload {
        hashes,
        prob: [
            zipf(ZIPF_S[0]),
            zipf(ZIPF_S[1]),
            vec![1.0 / LB_KEYS as f64; LB_KEYS],
        ],
    }
}

/// Efficiency (mean / max) of (replica load, coordinator load) per popularity.
#[derive(Clone, Copy, Default)]
struct Eff {
    replica: [f64; POPS],
    coord: [f64; POPS],
}

fn efficiency(loads: &[f64]) -> f64 {
    let max = loads.iter().copied().fold(0.0, f64::max);
    let mean = loads.iter().sum::<f64>() / loads.len() as f64;
    if max > 0.0 { mean / max } else { 0.0 }
}

/// Loads when `prefs(hash)` gives a key's replicas (coordinator first).
fn measure(w: &Workload, prefs: impl Fn(u64) -> [u16; LB_N]) -> Eff {
    let mut replica = vec![[0.0; POPS]; LB_MEMBERS];
    let mut coord = vec![[0.0; POPS]; LB_MEMBERS];
    for (i, &h) in w.hashes.iter().enumerate() {
        let p = prefs(h);
        for (j, &m) in p.iter().enumerate() {
            let m = usize::from(m);
            for k in 0..POPS {
                replica[m][k] += w.prob[k][i];
                if j == 0 {
                    coord[m][k] += w.prob[k][i];
                }
            }
        }
    }
    let mut e = Eff::default();
    for k in 0..POPS {
        e.replica[k] = efficiency(&replica.iter().map(|l| l[k]).collect::<Vec<_>>());
        e.coord[k] = efficiency(&coord.iter().map(|l| l[k]).collect::<Vec<_>>());
    }
    e
}

/// Strategy 1: each member takes `t` random tokens; a key belongs to the first `N`
/// distinct members met clockwise from its hash.
fn random_tokens(w: &Workload, t: usize, seed: u64) -> Eff {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tokens: Vec<(u64, u16)> = (0..LB_MEMBERS)
        .flat_map(|m| (0..t).map(move |_| m as u16))
        .map(|m| (rng.next_u64(), m))
        .collect();
    tokens.sort_unstable();
    // Preference list starting at each token.
    let prefs: Vec<[u16; LB_N]> = (0..tokens.len())
        .map(|start| {
            let mut out = [0u16; LB_N];
            let mut k = 0;
            let mut j = start;
            while k < LB_N {
                let m = tokens[j % tokens.len()].1;
                if !out[..k].contains(&m) {
                    out[k] = m;
                    k += 1;
                }
                j += 1;
            }
            out
        })
        .collect();
    measure(w, |h| {
        let i = tokens.partition_point(|&(tok, _)| tok < h);
        prefs[if i == tokens.len() { 0 } else { i }]
    })
}

/// Strategy 3: `Q` equal partitions placed by the planner.
fn partitions(w: &Workload, ring: &Ring) -> Eff {
    let index: BTreeMap<&MemberId, u16> = ring
        .members()
        .iter()
        .enumerate()
        .map(|(i, m)| (&m.id, i as u16))
        .collect();
    let q = ring.partition_count();
    let prefs: Vec<[u16; LB_N]> = (0..q)
        .map(|p| {
            let mut out = [0u16; LB_N];
            for (k, id) in ring.primaries(p, LB_N).iter().enumerate() {
                out[k] = index.get(id).copied().unwrap_or(0);
            }
            out
        })
        .collect();
    measure(w, |h| prefs[partition_of_hash(h, q) as usize])
}

/// The ring grown one join at a time from one member, as a real cluster is.
fn grown_ring(q: u32, seed: u64) -> Result<Ring> {
    let members = ring_members(LB_MEMBERS);
    let mut ring = planner::plan_initial(&members[..1], q, &PlanConfig { n: LB_N, seed })?;
    for (k, m) in members.iter().enumerate().skip(1) {
        ring = planner::plan_join(
            &ring,
            m.clone(),
            &PlanConfig {
                n: LB_N,
                seed: seed.wrapping_mul(100).wrapping_add(k as u64),
            },
        )
        .context("join")?
        .ring;
    }
    Ok(ring)
}

struct Agg {
    sum: Eff,
    min: Eff,
    runs: u32,
}

impl Agg {
    fn new() -> Agg {
        Agg {
            sum: Eff::default(),
            min: Eff {
                replica: [1.0; POPS],
                coord: [1.0; POPS],
            },
            runs: 0,
        }
    }
    fn add(&mut self, e: Eff) {
        for k in 0..POPS {
            self.sum.replica[k] += e.replica[k];
            self.sum.coord[k] += e.coord[k];
            self.min.replica[k] = self.min.replica[k].min(e.replica[k]);
            self.min.coord[k] = self.min.coord[k].min(e.coord[k]);
        }
        self.runs += 1;
    }
    fn cells(&self) -> String {
        let r = f64::from(self.runs.max(1));
        let mut cells = Vec::new();
        for k in 0..POPS {
            for (sum, min) in [
                (self.sum.replica[k], self.min.replica[k]),
                (self.sum.coord[k], self.min.coord[k]),
            ] {
                cells.push(format!("{:.3} ({:.3})", sum / r, min));
            }
        }
        cells.join(" | ")
    }
}

fn load_balancing(seeds: u64) -> Result<()> {
    println!(
        "## 3. Load-balancing efficiency (Dynamo §6.2): {LB_MEMBERS} members, N = {LB_N}, {LB_KEYS} keys\n"
    );
    let w = workload();
    let top = w.prob[0].first().copied().unwrap_or(0.0);
    let top08 = w.prob[1].first().copied().unwrap_or(0.0);
    println!(
        "Efficiency = mean load / max load over members (1 = perfect). Replica load: the \
         popularity of the keys a member replicates (N replicas each); coordinator load: of \
         the keys it is first replica of. Zipf s = 1 over {LB_KEYS} keys (the hottest \
         key alone draws {:.2} % of requests), zipf s = 0.8 (hottest {:.2} %) and uniform, \
         to separate placement from hot keys. Mean over {seeds} seeds, \
         worst seed in brackets. Metadata: what every member must know to route, 8-byte \
         token + 2-byte member index per token (strategy 1) vs a 2-byte member index per \
         partition (strategy 3; postcard size of our `Ring` in brackets).\n",
        100.0 * top,
        100.0 * top08
    );
    // The hottest key alone puts `top` on its coordinator, whatever the placement.
    let mean_coord = 1.0 / LB_MEMBERS as f64;
    println!(
        "Under this zipf no placement can give a coordinator efficiency above {:.3} (mean \
         coordinator load {:.2} % against the hottest key's {:.2} % on one member); replica \
         loads have no such cap (mean {:.0} % per member).\n",
        mean_coord / top.max(mean_coord),
        100.0 * mean_coord,
        100.0 * top,
        100.0 * LB_N as f64 / LB_MEMBERS as f64,
    );
    println!(
        "| strategy | tokens or partitions | metadata | zipf 1 replica | zipf 1 coordinator | zipf 0.8 replica | zipf 0.8 coordinator | uniform replica | uniform coordinator |"
    );
    println!("|---|---:|---|---|---|---|---|---|---|");
    for t in [1usize, 4, 16, 64, 128] {
        let mut agg = Agg::new();
        for seed in 1..=seeds {
            agg.add(random_tokens(&w, t, seed));
        }
        let tokens = LB_MEMBERS * t;
        println!(
            "| 1: {t} random tokens per member | {tokens} tokens | {} | {} |",
            human((tokens * 10) as f64),
            agg.cells()
        );
    }
    let members = ring_members(LB_MEMBERS);
    for q in [64u32, 256, 1024, 4096] {
        let mut agg = Agg::new();
        let mut ring_bytes = 0;
        for seed in 1..=seeds {
            let ring = planner::plan_initial(&members, q, &PlanConfig { n: LB_N, seed })?;
            ring_bytes = postcard::to_stdvec(&ring).map(|b| b.len()).unwrap_or(0);
            agg.add(partitions(&w, &ring));
        }
        println!(
            "| 3: Q = {q}, `plan_initial` | {q} partitions | {} ({}) | {} |",
            human(f64::from(q) * 2.0),
            human(ring_bytes as f64),
            agg.cells()
        );
        let grown_seeds = seeds.min(3);
        let mut agg = Agg::new();
        let t = Instant::now();
        for seed in 1..=grown_seeds {
            let ring = grown_ring(q, seed)?;
            agg.add(partitions(&w, &ring));
        }
        eprintln!(
            "  grown rings Q = {q}: {:.1} s for {grown_seeds} seeds",
            t.elapsed().as_secs_f64()
        );
        println!(
            "| 3: Q = {q}, grown 1 → {LB_MEMBERS} by `plan_join` ({grown_seeds} seeds) | {q} partitions | {} ({}) | {} |",
            human(f64::from(q) * 2.0),
            human(ring_bytes as f64),
            agg.cells()
        );
    }
    println!();
    Ok(())
}
