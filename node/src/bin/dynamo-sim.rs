//! Runs simulated clusters: `dynamo-sim --seed 42` replays one seed; `dynamo-sim --seeds
//! 10000` runs that many seeds (from `--start`), stopping at the first failure or after
//! `--max-minutes`. `--grow` runs [`Scenario::grow_under_load`] instead of random faults;
//! `--quorum 5/3/3`, `--workload set|append` and `--lww` pick the variant
//! ([`Scenario::variant`]) that `node/tests/sim.rs` runs.

use std::time::{Duration, Instant};

use clap::Parser;
use dynamo::clock::ConflictMode;
use dynamo::sim::{Scenario, Workload, run};

#[derive(Parser)]
#[command(
    name = "dynamo-sim",
    about = "Deterministic simulation of dynamo-rs clusters under faults."
)]
struct Args {
    /// Replay exactly this seed (prints its faults and outcome).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Number of seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    start: u64,
    /// Stop after this many minutes even if seeds remain.
    #[arg(long, default_value_t = 60)]
    max_minutes: u64,
    /// Instead of faults drawn from the seed: 3 members grow to 5 under load with no
    /// other fault, and every read must see the writes acknowledged before it began.
    #[arg(long)]
    grow: bool,
    /// Replication and quorums as N/R/W.
    #[arg(long, default_value = "3/2/2", value_parser = parse_quorum)]
    quorum: (usize, usize, usize),
    /// What the clients do: registers (puts, deletes, gets), set or append.
    #[arg(long, default_value = "registers", value_parser = parse_workload)]
    workload: Workload,
    /// Last-write-wins instead of siblings (checked with the weaker LWW property).
    #[arg(long)]
    lww: bool,
}

fn parse_quorum(s: &str) -> Result<(usize, usize, usize), String> {
    let parts: Vec<usize> = s
        .split('/')
        .map(|p| p.parse().map_err(|e| format!("{p:?}: {e}")))
        .collect::<Result<_, _>>()?;
    match parts.as_slice() {
        &[n, r, w] if r <= n && w <= n && r > 0 && w > 0 => Ok((n, r, w)),
        _ => Err("expected N/R/W with 1 <= R, W <= N".into()),
    }
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    match s {
        "registers" => Ok(Workload::Registers),
        "set" => Ok(Workload::Set),
        "append" => Ok(Workload::ListAppend),
        other => Err(format!(
            "unknown workload {other:?} (registers, set, append)"
        )),
    }
}

fn main() {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let scenario = |seed| {
        if args.grow {
            Scenario::grow_under_load(seed)
        } else {
            let conflicts = if args.lww {
                ConflictMode::Lww
            } else {
                ConflictMode::Siblings
            };
            Scenario::variant(seed, args.quorum, args.workload, conflicts)
        }
    };
    if let Some(seed) = args.seed {
        let scenario = scenario(seed);
        println!("{scenario:?}");
        match run(&scenario) {
            Ok(report) => {
                for f in &report.faults {
                    println!("fault: {f}");
                }
                println!(
                    "seed {seed}: ok — {} ops, {} acknowledged writes, converged {} ms after healing, {} ms simulated, {} membership change(s) asked again, digest {:016x}",
                    report.ops,
                    report.acknowledged_writes,
                    report.converged_after_ms,
                    report.simulated_ms,
                    report.repeated_changes,
                    report.digest
                );
            }
            Err(failure) => {
                eprintln!("{failure}");
                std::process::exit(1);
            }
        }
        return;
    }
    let started = Instant::now();
    let limit = Duration::from_secs(args.max_minutes * 60);
    let mut passed = 0u64;
    for seed in args.start..args.start + args.seeds {
        if started.elapsed() > limit {
            println!("time limit reached");
            break;
        }
        match run(&scenario(seed)) {
            Ok(report) => {
                passed += 1;
                if passed.is_multiple_of(10) {
                    println!(
                        "{passed} seeds passed ({} ops in the last, {:.0?} elapsed)",
                        report.ops,
                        started.elapsed()
                    );
                }
            }
            Err(failure) => {
                eprintln!("{failure}");
                std::process::exit(1);
            }
        }
    }
    println!("{passed} seeds passed in {:.1?}", started.elapsed());
}
