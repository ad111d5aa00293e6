//! A damaged data directory: a member killed with kill -9 has random bytes of its data
//! files flipped, and is restarted. It must start, serve, and anti-entropy must restore
//! every key its replicas hold (equal Merkle roots on all three, every acknowledged write
//! readable through it).
//!
//! Seeds: `DYNAMO_CORRUPTION_SEED` (first seed, default 1) and `DYNAMO_CORRUPTION_ROUNDS`
//! (rounds, each with the next seed, default 3).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Cluster, Options, start_workload, verify_ledger};

/// xorshift64*: a small seeded generator, so a failing round can be replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            files_under(&path, out);
        } else if meta.is_file() && meta.len() > 0 {
            out.push(path);
        }
    }
}

/// Flips `per_file` random bytes at random offsets of every non-empty file under `dir`;
/// returns what it touched.
fn flip_bytes(dir: &Path, seed: u64, per_file: usize) -> Vec<String> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files.sort();
    let mut touched = Vec::new();
    for path in files {
        let mut bytes = std::fs::read(&path).unwrap();
        for _ in 0..per_file {
            let at = (rng.next() % bytes.len() as u64) as usize;
            let mask = (rng.next() % 255 + 1) as u8;
            bytes[at] ^= mask;
        }
        std::fs::write(&path, &bytes).unwrap();
        touched.push(format!("{} ({} bytes)", path.display(), bytes.len()));
    }
    touched
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fails today (run 2026-12-07): the restarted member refuses to open its damaged store with `FjallError: InvalidVersion(None)`; the engine-level corruption policy of issue #33 (move the store aside, rejoin empty) is not implemented yet"]
async fn a_member_with_flipped_bytes_in_its_data_files_restarts_and_is_repaired() {
    let first_seed = env_u64("DYNAMO_CORRUPTION_SEED", 1);
    let rounds = env_u64("DYNAMO_CORRUPTION_ROUNDS", 3);
    let opts = Options {
        extra: vec!["--anti-entropy-interval-s=2".into()],
        ..Default::default()
    };
    let mut cluster = Cluster::start(3, opts).await;
    let endpoints: Vec<String> = (0..3).map(|i| cluster.members[i].http()).collect();
    let (ledger, _, handles) = start_workload(endpoints, 4, 250, "flip");
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(
        ledger.acked.lock().len(),
        1000,
        "{:?}",
        ledger.errors.lock()
    );
    cluster
        .wait_for(
            "all replicas have equal Merkle roots before the damage",
            Duration::from_secs(90),
            || async {
                let r0 = cluster.roots(0).await;
                r0 == cluster.roots(1).await && r0 == cluster.roots(2).await && !r0.is_empty()
            },
        )
        .await;

    for seed in first_seed..first_seed + rounds {
        cluster.kill9(2);
        let touched = flip_bytes(&cluster.members[2].dir, seed, 64);
        eprintln!("seed {seed}: flipped 64 bytes in each of {touched:#?}");
        cluster.start_member(2);
        cluster.wait_healthy(2).await;
        cluster
            .wait_for(
                &format!("seed {seed}: all replicas have equal Merkle roots after repair"),
                Duration::from_secs(120),
                || async {
                    let r0 = cluster.roots(0).await;
                    r0 == cluster.roots(1).await && r0 == cluster.roots(2).await
                },
            )
            .await;
        let bad = verify_ledger(&cluster, 2, &ledger).await;
        assert!(bad.is_empty(), "seed {seed}: {bad:?}");
        eprintln!(
            "seed {seed}: repaired; {} corrupt records counted",
            cluster.metric(2, "dynamo_corrupt_records_total").await
        );
    }
}
