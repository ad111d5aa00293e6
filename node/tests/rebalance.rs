//! Membership changes and repair with real processes, under a concurrent write workload.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Cluster, Options, start_workload, verify_ledger};

async fn check_ring_balanced_and_spaced(cluster: &Cluster, members: usize) {
    let ring = cluster.ring(0).await.unwrap();
    let counts: Vec<u64> = ring["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["partitions"].as_u64().unwrap())
        .collect();
    assert_eq!(counts.len(), members);
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(max - min <= 1, "balanced within one partition: {counts:?}");
    if ring["spacingFeasible"] == true {
        assert_eq!(ring["spacingViolations"], 0, "spacing rule holds");
    }
}

async fn handoffs_pending(cluster: &Cluster, i: usize) -> Option<u64> {
    let r = cluster
        .client(i)
        .admin_get("/v1/cluster/handoffs")
        .await
        .ok()?
        .json()?;
    Some(r["pending"].as_u64()? + u64::from(r["inTransition"] == true))
}

/// Grow 3 → 5 and shrink 5 → 3 with `leave`, writing all the while: every acknowledged
/// write is readable at the end, the ring is balanced and spaced, and nothing is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grow_and_shrink_under_load_loses_nothing() {
    let mut cluster = Cluster::start(
        3,
        Options {
            partitions: 64,
            ..Default::default()
        },
    )
    .await;
    let endpoints: Vec<String> = (0..3).map(|i| cluster.members[i].http()).collect();
    let (ledger, stop, handles) = start_workload(endpoints, 4, 1_000_000, "grow");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let a = cluster.new_member();
    let b = cluster.new_member();
    cluster.start_member(a);
    cluster.start_member(b);
    cluster.wait_healthy(a).await;
    cluster.wait_healthy(b).await;
    cluster.join(a).await;
    cluster.join(b).await;
    cluster.wait_settled(5, Duration::from_secs(120)).await;
    check_ring_balanced_and_spaced(&cluster, 5).await;

    // Shrink back: the two original members m1 and m2 leave (m0 stays as the seed).
    for leaving in [1, 2] {
        let r = cluster.leave(0, leaving).await;
        assert_eq!(r.status.as_u16(), 202, "{}", r.text());
    }
    let still: Vec<usize> = vec![0, a, b];
    cluster
        .wait_for("m1 and m2 removed", Duration::from_secs(120), || async {
            let Some(v) = cluster.members_view(0).await else {
                return false;
            };
            let removed = |id: &str| {
                v["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["id"] == id && m["status"] == "removed")
            };
            removed("m1") && removed("m2")
        })
        .await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    cluster.kill9(1);
    cluster.kill9(2);
    for &i in &still {
        cluster
            .wait_for("no handoff pending", Duration::from_secs(60), || async {
                handoffs_pending(&cluster, i).await == Some(0)
            })
            .await;
    }
    check_ring_balanced_and_spaced(&cluster, 3).await;
    let acked = ledger.acked.lock().len();
    assert!(
        acked > 200,
        "the workload ran ({acked} acknowledged, {} failed)",
        ledger.failed.lock()
    );
    for &via in &still {
        let bad = verify_ledger(&cluster, via, &ledger).await;
        assert!(
            bad.is_empty(),
            "{} of {acked} acknowledged writes unreadable through m{via}: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
    }
    // A leave that would drop below N is refused.
    let r = cluster.leave(0, a).await;
    assert_eq!(r.status.as_u16(), 409, "{}", r.text());
}

/// Wipe one member's disk and restart it: anti-entropy refills it, without any read
/// touching the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_member_is_refilled_by_anti_entropy() {
    let opts = Options {
        extra: vec!["--anti-entropy-interval-s=2".into()],
        ..Default::default()
    };
    let mut cluster = Cluster::start(3, opts).await;
    let endpoints: Vec<String> = (0..3).map(|i| cluster.members[i].http()).collect();
    let (ledger, _, handles) = start_workload(endpoints, 4, 250, "ae");
    for h in handles {
        h.await.unwrap();
    }
    let keys = ledger.acked.lock().len() as u64;
    assert_eq!(keys, 1000);
    // Under load a replica write can time out and leave a hint; let those be delivered
    // first, and count only what happens after the wipe.
    cluster
        .wait_for("no hints pending", Duration::from_secs(60), || async {
            let mut pending = 0.0;
            for i in 0..3 {
                pending += cluster.metric(i, "dynamo_hints_pending").await;
            }
            pending == 0.0
        })
        .await;
    let mut before = Vec::new();
    for i in 0..2 {
        before.push((
            cluster.metric(i, "dynamo_read_repairs_total").await,
            cluster.metric(i, "dynamo_hints_delivered_total").await,
        ));
    }
    // With N = 3 and 3 members every member holds every key.
    cluster.kill9(2);
    cluster.wipe(2);
    cluster.restart(2).await;
    let c = cluster.client(2);
    cluster
        .wait_for(
            "m2 refilled by anti-entropy",
            Duration::from_secs(90),
            || async {
                c.admin_get("/v1/cluster/antientropy")
                    .await
                    .ok()
                    .and_then(|r| r.json())
                    .and_then(|j| j["keys"].as_u64())
                    == Some(keys)
            },
        )
        .await;
    // Nothing else could have refilled it: no read ran, no hint was pending. (m2's own
    // counters restarted at zero with it.)
    let mut repaired = 0.0;
    for i in 0..3 {
        let (repairs, hints) = before.get(i).copied().unwrap_or((0.0, 0.0));
        assert_eq!(
            cluster.metric(i, "dynamo_read_repairs_total").await,
            repairs,
            "m{i}"
        );
        assert_eq!(
            cluster.metric(i, "dynamo_hints_delivered_total").await,
            hints,
            "m{i}"
        );
        repaired += cluster
            .metric(i, "dynamo_antientropy_keys_repaired_total")
            .await;
    }
    eprintln!("m2 refilled: {repaired} keys pulled by anti-entropy (the rest pushed to it)");
    assert!(repaired > 0.0);
    assert_eq!(cluster.roots(2).await, cluster.roots(0).await);
}

/// A member cut off (SIGSTOP) while writes go on, then healed (SIGCONT): its replicas
/// converge to equal Merkle roots.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_member_converges_after_healing() {
    let opts = Options {
        extra: vec!["--anti-entropy-interval-s=2".into()],
        ..Default::default()
    };
    let cluster = Cluster::start(3, opts).await;
    cluster.signal(2, "STOP");
    let endpoints: Vec<String> = (0..2).map(|i| cluster.members[i].http()).collect();
    let (ledger, _, handles) = start_workload(endpoints, 4, 100, "cut");
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(
        ledger.acked.lock().len(),
        400,
        "writes succeed with one member frozen: {:?}",
        ledger.errors.lock()
    );
    cluster.signal(2, "CONT");
    cluster
        .wait_for(
            "all replicas have equal Merkle roots",
            Duration::from_secs(90),
            || async {
                let r0 = cluster.roots(0).await;
                r0 == cluster.roots(1).await && r0 == cluster.roots(2).await && !r0.is_empty()
            },
        )
        .await;
    let bad = verify_ledger(&cluster, 2, &ledger).await;
    assert!(bad.is_empty(), "{bad:?}");
}
