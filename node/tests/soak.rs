//! Soak: three members under more load than they can take, with a member killed (-9) and
//! restarted over and over. Memory stays bounded, the cluster serves normally once the
//! load drops, and every acknowledged write is read back.
//!
//! `DYNAMO_SOAK_SECS` sets the loaded phase (default 40 s, the CI run); the 10-minute run
//! recorded in docs/benchmarks.md is
//! `DYNAMO_SOAK_SECS=600 cargo test -p dynamo-node --test soak -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Options};
use parking_lot::Mutex;

/// Concurrent client connections: far more than the members' in-flight limit below.
const CLIENTS: usize = 96;
const MAX_INFLIGHT_PER_MEMBER: usize = 16;
const VALUE_BYTES: usize = 1024;
/// A member over this resident size means memory grows with load: a failure.
const RSS_LIMIT_BYTES: u64 = 768 << 20;
/// Bounds the load in count as well as time.
const MAX_WRITES: u64 = 2_000_000;

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn value_of(key: &str) -> Bytes {
    let mut v = key.as_bytes().to_vec();
    v.resize(VALUE_BYTES, b'.');
    Bytes::from(v)
}

#[derive(Default)]
struct Counts {
    attempted: AtomicU64,
    acked: AtomicU64,
    overloaded: AtomicU64,
    unavailable: AtomicU64,
    errors: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_with_kills_loses_nothing_and_stays_bounded() {
    let secs: u64 = std::env::var("DYNAMO_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut cluster = Cluster::start(
        3,
        Options {
            extra: vec![format!("--max-inflight-requests={MAX_INFLIGHT_PER_MEMBER}")],
            ..Options::default()
        },
    )
    .await;
    let clients: Vec<_> = (0..3).map(|i| cluster.app_client(i)).collect();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let counts: Arc<Counts> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Which members take requests (a killed one is skipped, as a load balancer would).
    let live: Arc<Mutex<Vec<bool>>> = Arc::new(Mutex::new(vec![true; 3]));

    let mut load = Vec::new();
    for c in 0..CLIENTS {
        let (clients, acked, counts, stop, live) = (
            clients.clone(),
            acked.clone(),
            counts.clone(),
            stop.clone(),
            live.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed)
                && counts.attempted.fetch_add(1, Ordering::Relaxed) < MAX_WRITES
            {
                seq += 1;
                let key = format!("c{c}-{seq}");
                let target = {
                    let live = live.lock();
                    let up: Vec<usize> = (0..3).filter(|&i| live[i]).collect();
                    up[(c + seq as usize) % up.len()]
                };
                match clients[target].put(&key, value_of(&key), None, "").await {
                    Ok(r) if r.status.as_u16() == 204 => {
                        counts.acked.fetch_add(1, Ordering::Relaxed);
                        acked.lock().push(key);
                    }
                    Ok(r) if r.status.as_u16() == 503 => {
                        let overloaded = r.json().is_some_and(|b| b["code"] == "overloaded");
                        if overloaded {
                            counts.overloaded.fetch_add(1, Ordering::Relaxed);
                        } else {
                            counts.unavailable.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    _ => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }

    // Kill -9 one member every 10 s in turn, restart it 3 s later; sample memory each second.
    let mut peak_rss: BTreeMap<usize, u64> = BTreeMap::new();
    let started = Instant::now();
    let mut kills = 0;
    let mut next_kill = Duration::from_secs(5);
    while started.elapsed() < Duration::from_secs(secs) {
        for (i, m) in cluster.members.iter().enumerate() {
            if let Some(rss) = m.child.as_ref().and_then(|c| rss_bytes(c.id())) {
                let peak = peak_rss.entry(i).or_default();
                *peak = (*peak).max(rss);
                assert!(
                    rss < RSS_LIMIT_BYTES,
                    "m{i} grew to {} MiB under load",
                    rss >> 20
                );
            }
        }
        if started.elapsed() >= next_kill && secs >= 15 {
            let victim = kills % 3;
            live.lock()[victim] = false;
            cluster.kill9(victim);
            kills += 1;
            tokio::time::sleep(Duration::from_secs(3)).await;
            cluster.restart(victim).await;
            live.lock()[victim] = true;
            next_kill = started.elapsed() + Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let loaded_for = started.elapsed();

    // Load has dropped: the cluster serves single requests normally again.
    cluster.wait_settled(3, Duration::from_secs(60)).await;
    for (i, c) in clients.iter().enumerate() {
        let key = format!("after-load-{i}");
        cluster
            .wait_for(
                &format!("m{i} to take writes again"),
                Duration::from_secs(30),
                || async {
                    c.put(&key, value_of(&key), None, "")
                        .await
                        .is_ok_and(|r| r.status.as_u16() == 204)
                },
            )
            .await;
    }

    // Every acknowledged write is there (R = 2), whichever member is asked.
    let acked = Arc::new(acked.lock().clone());
    let mut checkers = Vec::new();
    const CHECKERS: usize = 16;
    for t in 0..CHECKERS {
        let (acked, clients) = (acked.clone(), clients.clone());
        checkers.push(tokio::spawn(async move {
            let mut missing = Vec::new();
            for (n, key) in acked.iter().enumerate().skip(t).step_by(CHECKERS) {
                let r = clients[n % 3].get(key, "").await.unwrap();
                if r.status.as_u16() != 200 || r.body != value_of(key) {
                    missing.push((key.clone(), r.status.as_u16()));
                }
            }
            missing
        }));
    }
    let mut missing = Vec::new();
    for checker in checkers {
        missing.extend(checker.await.unwrap());
    }
    let c = &counts;
    println!(
        "soak: {:.0} s loaded, {} clients, {} kills; writes attempted {}, acknowledged {} ({:.0}/s), \
         shed as overloaded {}, unavailable {}, other errors {}; peak RSS per member (MiB): {:?}",
        loaded_for.as_secs_f64(),
        CLIENTS,
        kills,
        c.attempted.load(Ordering::Relaxed).min(MAX_WRITES),
        c.acked.load(Ordering::Relaxed),
        c.acked.load(Ordering::Relaxed) as f64 / loaded_for.as_secs_f64(),
        c.overloaded.load(Ordering::Relaxed),
        c.unavailable.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        peak_rss.values().map(|b| b >> 20).collect::<Vec<_>>(),
    );
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes not read back, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(!acked.is_empty(), "no write was acknowledged");
    assert!(
        c.overloaded.load(Ordering::Relaxed) > 0,
        "the load never exceeded capacity, so this did not test overload"
    );
}
