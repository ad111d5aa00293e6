//! Runs simulated clusters: `dynamo-sim --seed 42` replays one seed; `dynamo-sim --seeds
//! 10000` runs that many seeds (from `--start`), stopping at the first failure or after
//! `--max-minutes`. `--grow` runs [`Scenario::grow_under_load`] instead of random faults.

use std::time::{Duration, Instant};

use clap::Parser;
use dynamo::sim::{Scenario, run};

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
            Scenario::from_seed(seed)
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
