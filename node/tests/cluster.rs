//! Real processes on loopback: replication, failures, conflicts, membership.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Options, start_routed_workload, start_workload, verify_ledger};

async fn acked_writes_survive(members: usize) {
    let cluster = Cluster::start(members, Options::default()).await;
    let endpoints: Vec<String> = (0..members).map(|i| cluster.members[i].http()).collect();
    let (ledger, _, handles) = start_workload(endpoints, 4, 100, "k");
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(
        ledger.acked.lock().len(),
        400,
        "every write succeeds while all members are up ({} failed)",
        ledger.failed.lock()
    );
    for via in 0..members {
        let bad = verify_ledger(&cluster, via, &ledger).await;
        assert!(bad.is_empty(), "read through m{via}: {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_read_back_every_acknowledged_write() {
    acked_writes_survive(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_members_read_back_every_acknowledged_write() {
    acked_writes_survive(5).await;
}

/// The primaries of `key`, in preference order, from the ring JSON of the admin API.
fn primaries_of(ring: &serde_json::Value, key: &str) -> Vec<String> {
    let owners: Vec<String> = ring["owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap().to_string())
        .collect();
    let n = ring["settings"]["n"].as_u64().unwrap() as usize;
    let q = owners.len() as u32;
    let p = dynamo::ring::partition_of_hash(dynamo::ring::key_hash(key.as_bytes()), q) as usize;
    let mut walk: Vec<String> = Vec::new();
    for step in 0..owners.len() {
        let o = &owners[(p + step) % owners.len()];
        if !walk.contains(o) {
            walk.push(o.clone());
        }
        if walk.len() == n {
            break;
        }
    }
    walk
}

/// Keys (of `keys`) that member `id` replicates according to the ring JSON of the admin API.
fn keys_replicated_by(
    ring: &serde_json::Value,
    id: &str,
    keys: impl Iterator<Item = String>,
) -> usize {
    keys.filter(|k| primaries_of(ring, k).iter().any(|m| m == id))
        .count()
}

/// kill -9 one member of four during a write stream: writes keep succeeding, fallbacks
/// hold hints for it, and after a restart the hints are delivered (the queues drain to
/// zero) and the member holds every key it replicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_member_gets_its_writes_by_hinted_handoff() {
    // Anti-entropy is pushed far out so that only hinted handoff can refill m3.
    let opts = Options {
        extra: vec!["--anti-entropy-interval-s=3600".into()],
        ..Default::default()
    };
    let mut cluster = Cluster::start(4, opts).await;
    let endpoints: Vec<String> = (0..3).map(|i| cluster.members[i].http()).collect();
    let (ledger, stop, handles) = start_workload(endpoints.clone(), 3, 100_000, "during");
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill9(3);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    let failed = *ledger.failed.lock();
    assert!(
        ledger.acked.lock().len() > 100,
        "writes kept succeeding ({failed} failed)"
    );
    cluster
        .wait_for("m3 seen down", Duration::from_secs(15), || async {
            cluster.sees_alive(0, 3).await == Some(false)
        })
        .await;
    // Once the failure is detected every write succeeds.
    let (after, _, h2) = start_workload(endpoints, 3, 50, "after");
    for h in h2 {
        h.await.unwrap();
    }
    assert_eq!(
        *after.failed.lock(),
        0,
        "writes with one member down must all succeed"
    );
    let mut pending = 0.0;
    for i in 0..3 {
        pending += cluster.metric(i, "dynamo_hints_pending").await;
    }
    cluster
        .wait_for(
            "hints counted as pending",
            Duration::from_secs(5),
            || async {
                let mut p = 0.0;
                for i in 0..3 {
                    p += cluster.metric(i, "dynamo_hints_pending").await;
                }
                p > 0.0
            },
        )
        .await;
    eprintln!("hints pending before restart: {pending}");

    cluster.restart(3).await;
    cluster
        .wait_for(
            "hint queues drain to zero",
            Duration::from_secs(60),
            || async {
                let mut p = 0.0;
                for i in 0..3 {
                    p += cluster.metric(i, "dynamo_hints_pending").await;
                }
                p == 0.0
            },
        )
        .await;
    let mut delivered = 0.0;
    for i in 0..3 {
        delivered += cluster.metric(i, "dynamo_hints_delivered_total").await;
    }
    assert!(delivered > 0.0);
    let ring = cluster.ring(0).await.unwrap();
    let all_keys = ledger
        .acked
        .lock()
        .keys()
        .cloned()
        .chain(after.acked.lock().keys().cloned())
        .collect::<Vec<_>>();
    let expected = keys_replicated_by(&ring, "m3", all_keys.into_iter());
    let held = cluster
        .client(3)
        .admin_get("/v1/cluster/antientropy")
        .await
        .unwrap()
        .json()
        .unwrap()["keys"]
        .as_u64()
        .unwrap() as usize;
    assert!(
        held >= expected,
        "m3 holds {held} keys, expected at least {expected}"
    );
    let bad = verify_ledger(&cluster, 3, &after).await;
    assert!(bad.is_empty(), "{bad:?}");
}

/// Two clients write with the same stale context: both values come back as siblings;
/// writing with the merged context resolves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_become_siblings_and_resolve() {
    let cluster = Cluster::start(3, Options::default()).await;
    let (a, b) = (cluster.app_client(0), cluster.app_client(1));
    let first = a
        .put("shared", Bytes::from_static(b"v0"), None, "")
        .await
        .unwrap();
    let ctx = first.header("x-dynamo-context").unwrap().to_string();
    assert_eq!(
        a.put("shared", Bytes::from_static(b"from-a"), Some(&ctx), "")
            .await
            .unwrap()
            .status
            .as_u16(),
        204
    );
    assert_eq!(
        b.put("shared", Bytes::from_static(b"from-b"), Some(&ctx), "")
            .await
            .unwrap()
            .status
            .as_u16(),
        204
    );
    let read = a.get("shared", "").await.unwrap();
    assert_eq!(read.status.as_u16(), 300, "siblings: {}", read.text());
    let body = read.json().unwrap();
    let mut values: Vec<String> = body["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            use base64::Engine as _;
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(s["value"].as_str().unwrap())
                    .unwrap(),
            )
            .unwrap()
        })
        .collect();
    values.sort();
    assert_eq!(values, vec!["from-a", "from-b"]);
    let merged = body["context"].as_str().unwrap().to_string();
    assert_eq!(
        b.put("shared", Bytes::from_static(b"resolved"), Some(&merged), "")
            .await
            .unwrap()
            .status
            .as_u16(),
        204
    );
    let after = a.get("shared", "").await.unwrap();
    assert_eq!(after.status.as_u16(), 200);
    assert_eq!(after.body, Bytes::from_static(b"resolved"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lww_mode_keeps_the_later_write() {
    let cluster = Cluster::start(
        3,
        Options {
            conflicts: "lww",
            ..Default::default()
        },
    )
    .await;
    let (a, b) = (cluster.app_client(0), cluster.app_client(1));
    assert_eq!(
        a.put("k", Bytes::from_static(b"earlier"), None, "")
            .await
            .unwrap()
            .status
            .as_u16(),
        204
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        b.put("k", Bytes::from_static(b"later"), None, "")
            .await
            .unwrap()
            .status
            .as_u16(),
        204
    );
    let r = a.get("k", "").await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.body, Bytes::from_static(b"later"));
}

/// Riak's sibling explosion: two clients interleave 100 writes each to one key, each with
/// the context of its own previous response. Siblings never exceed 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interleaved_clients_do_not_explode_siblings() {
    let cluster = Cluster::start(3, Options::default()).await;
    let clients = [cluster.app_client(0), cluster.app_client(1)];
    let mut contexts: [Option<String>; 2] = [None, None];
    for round in 0..100 {
        for (i, c) in clients.iter().enumerate() {
            let r = c
                .put(
                    "hot",
                    Bytes::from(format!("c{i}-{round}")),
                    contexts[i].as_deref(),
                    "",
                )
                .await
                .unwrap();
            assert_eq!(r.status.as_u16(), 204, "{}", r.text());
            contexts[i] = r.header("x-dynamo-context").map(str::to_string);
        }
        let read = clients[0].get("hot", "").await.unwrap();
        let siblings = match read.status.as_u16() {
            200 => 1,
            300 => read.json().unwrap()["siblings"].as_array().unwrap().len(),
            s => panic!("unexpected status {s}"),
        };
        assert!(siblings <= 2, "round {round}: {siblings} siblings");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_past_the_sibling_limit_are_refused() {
    let cluster = Cluster::start(
        3,
        Options {
            max_siblings: 3,
            ..Default::default()
        },
    )
    .await;
    let c = cluster.app_client(0);
    for i in 0..3 {
        assert_eq!(
            c.put("busy", Bytes::from(format!("{i}")), None, "")
                .await
                .unwrap()
                .status
                .as_u16(),
            204
        );
    }
    let refused = c
        .put("busy", Bytes::from_static(b"one too many"), None, "")
        .await
        .unwrap();
    assert_eq!(refused.status.as_u16(), 409);
    assert_eq!(refused.json().unwrap()["code"], "too_many_siblings");
    let read = c.get("busy", "").await.unwrap();
    assert_eq!(
        read.json().unwrap()["siblings"].as_array().unwrap().len(),
        3,
        "the refused write left nothing behind"
    );
    let ctx = read.json().unwrap()["context"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        c.put("busy", Bytes::from_static(b"merged"), Some(&ctx), "")
            .await
            .unwrap()
            .status
            .as_u16(),
        204
    );
}

/// A killed member is marked down by every other member within a bound, and up again
/// after it restarts. With a 200 ms gossip interval the phi detector (threshold 8) needs
/// a few seconds of silence; the bound asserted is 15 s each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_member_is_marked_down_then_up() {
    let mut cluster = Cluster::start(4, Options::default()).await;
    cluster.kill9(3);
    let started = Instant::now();
    cluster
        .wait_for("m3 seen down by all", Duration::from_secs(15), || async {
            let mut all = true;
            for i in 0..3 {
                all &= cluster.sees_alive(i, 3).await == Some(false);
            }
            all
        })
        .await;
    let down_after = started.elapsed();
    cluster.restart(3).await;
    let restarted = Instant::now();
    cluster
        .wait_for("m3 seen up by all", Duration::from_secs(15), || async {
            let mut all = true;
            for i in 0..3 {
                all &= cluster.sees_alive(i, 3).await == Some(true);
            }
            all
        })
        .await;
    eprintln!(
        "marked down after {down_after:?}, up again {:?} after restart",
        restarted.elapsed()
    );
    let m = cluster.members_view(0).await.unwrap();
    let generation = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "m3")
        .unwrap()["generation"]
        .as_u64()
        .unwrap();
    assert!(generation >= 2, "a restart bumps the generation");
}

/// A member started with another cluster secret is refused, logged and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_without_the_secret_is_refused() {
    let mut cluster = Cluster::start(3, Options::default()).await;
    let i = cluster.new_member();
    cluster.members[i].token = "some-other-secret-0000".into();
    cluster.start_member(i);
    cluster
        .wait_for("refusals counted", Duration::from_secs(20), || async {
            cluster.metric(0, "dynamo_rpc_auth_failures_total").await > 0.0
        })
        .await;
    let join = cluster
        .client(0)
        .admin_post(
            "/v1/cluster/join",
            serde_json::json!({ "member": cluster.members[i].id }),
        )
        .await
        .unwrap();
    assert_eq!(
        join.status.as_u16(),
        400,
        "an unauthenticated member never becomes known: {}",
        join.text()
    );
    let log = std::fs::read_to_string(cluster.members[0].log()).unwrap();
    assert!(
        log.contains("refused peer connection"),
        "the refusal is logged"
    );
    assert!(
        !log.contains("some-other-secret"),
        "secrets never appear in logs"
    );
}

/// A read asks R replicas (the coordinator itself and one peer), not all N; a peer that
/// stops answering without being known down costs a read the speculative wait, after
/// which the third replica is asked and the read still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_reads_ask_r_replicas_and_another_when_one_stalls() {
    let opts = Options {
        // Long enough that a healthy read on a busy machine rarely speculates, shorter
        // than the harness's 500 ms replica timeout, so a stalled peer is replaced by
        // speculation rather than by its timeout.
        extra: vec!["--speculative-read-ms=300".into()],
        ..Default::default()
    };
    let cluster = Cluster::start(3, opts).await;
    let c = cluster.app_client(0);
    let keys: Vec<String> = (0..30).map(|i| format!("fanout-{i}")).collect();
    for k in &keys {
        let put = c.put(k, Bytes::from(k.clone()), None, "").await.unwrap();
        assert_eq!(put.status.as_u16(), 204, "{}", put.text());
    }
    let peer_reads = || async {
        cluster
            .metric_where(1, "dynamo_replica_requests_total", "op=\"read\"")
            .await
            + cluster
                .metric_where(2, "dynamo_replica_requests_total", "op=\"read\"")
                .await
    };
    let extra = |reason: &'static str| {
        let label = format!("reason=\"{reason}\"");
        let cluster = &cluster;
        async move {
            cluster
                .metric_where(0, "dynamo_read_extra_replicas_total", &label)
                .await
        }
    };
    let (reads_before, slow_before, failed_before) = (
        peer_reads().await,
        extra("slow").await,
        extra("failed").await,
    );
    for k in &keys {
        let got = c.get(k, "").await.unwrap();
        assert_eq!(got.status.as_u16(), 200, "{}", got.text());
        assert_eq!(got.body, Bytes::from(k.clone()));
    }
    let asked_beyond_r = extra("slow").await - slow_before + extra("failed").await - failed_before;
    // With N = 3 and 3 members m0 holds every key: each read asks m0 and one peer, plus
    // one more peer for every read that speculated (asking all N would read 60 here).
    assert_eq!(peer_reads().await - reads_before, 30.0 + asked_beyond_r);
    assert!(asked_beyond_r < 30.0, "every read speculated");

    // m2 stops answering but keeps its connections: until the failure detector notices,
    // reads that pick m2 as their peer wait the speculative 300 ms and then ask m1.
    cluster.signal(2, "STOP");
    let slow_before = extra("slow").await;
    for k in &keys {
        let got = c.get(k, "").await.unwrap();
        assert_eq!(got.status.as_u16(), 200, "{k}: {}", got.text());
        assert_eq!(got.body, Bytes::from(k.clone()));
    }
    cluster.signal(2, "CONT");
    assert!(
        extra("slow").await > slow_before,
        "no read asked m1 after m2 stalled"
    );
}

/// Writes fail (503, never success) when the quorum cannot be met, and report the acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_without_quorum_is_reported_as_failed() {
    let mut cluster = Cluster::start(3, Options::default()).await;
    cluster.kill9(1);
    cluster.kill9(2);
    let c = cluster.app_client(0);
    cluster
        .wait_for(
            "m0 sees both others down",
            Duration::from_secs(20),
            || async {
                cluster.sees_alive(0, 1).await == Some(false)
                    && cluster.sees_alive(0, 2).await == Some(false)
            },
        )
        .await;
    let r = c
        .put("lonely", Bytes::from_static(b"x"), None, "?w=3")
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 503, "{}", r.text());
    let body = r.json().unwrap();
    assert_eq!(body["code"], "unavailable");
    assert_eq!(body["needed"], 3);
    assert!(body["acks"].as_u64().unwrap() < 3);
    let read = c.get("lonely", "?r=3").await.unwrap();
    assert_eq!(read.status.as_u16(), 503);
}

/// With one replica down and no member to stand in for it, a surviving replica that
/// answers after the replica timeout (a disk stall; here SIGSTOP for 1.2 s against the
/// harness's 500 ms) still counts while the request's deadline (3 s) has not passed: the
/// write and the read succeed instead of being refused with one acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_slower_than_the_replica_timeout_still_counts() {
    let mut cluster = Cluster::start(3, Options::default()).await;
    cluster.kill9(1);
    let c = cluster.app_client(0);
    let stall = Duration::from_millis(1200);

    cluster.signal(2, "STOP");
    let write = tokio::spawn({
        let c = c.clone();
        async move {
            c.put("stalled", Bytes::from_static(b"late"), None, "")
                .await
        }
    });
    tokio::time::sleep(stall).await;
    cluster.signal(2, "CONT");
    let put = write.await.unwrap().unwrap();
    assert_eq!(put.status.as_u16(), 204, "{}", put.text());

    cluster.signal(2, "STOP");
    let read = tokio::spawn({
        let c = c.clone();
        async move { c.get("stalled", "").await }
    });
    tokio::time::sleep(stall).await;
    cluster.signal(2, "CONT");
    let got = read.await.unwrap().unwrap();
    assert_eq!(got.status.as_u16(), 200, "{}", got.text());
    assert_eq!(got.body, Bytes::from_static(b"late"));
}

/// A restarted member reports ready only once it can reach its peers, so the first write
/// it coordinates after turning ready meets its quorum (a load balancer sends traffic the
/// moment a member is ready). With its peers down it still turns ready after a grace
/// period, so a whole-cluster restart cannot deadlock on readiness.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_member_is_ready_once_it_can_reach_its_peers() {
    let mut cluster = Cluster::start(3, Options::default()).await;
    let ready = |c: dynamo::cli::client::HttpClient| async move {
        c.admin_get("/readyz")
            .await
            .is_ok_and(|r| r.status.as_u16() == 200)
    };
    for round in 0..3 {
        cluster.kill9(1);
        cluster.restart(1).await;
        let c = cluster.client(1);
        cluster
            .wait_for("m1 ready", Duration::from_secs(30), || ready(c.clone()))
            .await;
        let key = format!("right-after-restart-{round}");
        let put = cluster
            .app_client(1)
            .put(&key, Bytes::from_static(b"v"), None, "?w=2")
            .await
            .unwrap();
        assert_eq!(put.status.as_u16(), 204, "round {round}: {}", put.text());
    }

    // Peers down: not ready at first, ready after the grace period (3 s here).
    cluster.stop(1);
    cluster.stop(2);
    cluster.kill9(0);
    let restarted = std::time::Instant::now();
    cluster.restart(0).await;
    let c = cluster.client(0);
    let first = c.admin_get("/readyz").await.unwrap();
    if restarted.elapsed() < Duration::from_millis(2500) {
        assert_eq!(first.status.as_u16(), 503, "{}", first.text());
        assert!(
            first.text().contains("not yet heard of 2 by gossip"),
            "{}",
            first.text()
        );
    } else {
        eprintln!("the machine was too slow to observe readiness before the grace period");
    }
    cluster
        .wait_for(
            "m0 ready without its peers",
            Duration::from_secs(30),
            || ready(c.clone()),
        )
        .await;
}

/// A rolling restart as the operator does it (SIGTERM one member, start it again, wait
/// until it is ready and every member sees it alive, next) keeps both quorums: with N=3
/// and W=2 no write may be refused while clients keep writing. Clients reach the members
/// as through a Service: every ready member, and the stopping one until it has exited
/// (its endpoint is removed while it shuts down), which then gives transport errors, not
/// refusals by the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_refuses_no_write() {
    let mut cluster = Cluster::start(3, Options::default()).await;
    let endpoints = cluster.members.iter().map(|m| m.http()).collect();
    let routable = Arc::new(parking_lot::Mutex::new(vec![true; 3]));
    let (ledger, stop, handles) =
        start_routed_workload(endpoints, routable.clone(), 6, 20_000, "roll");
    let ready = |c: dynamo::cli::client::HttpClient| async move {
        c.admin_get("/readyz")
            .await
            .is_ok_and(|r| r.status.as_u16() == 200)
    };
    for round in 0..2 {
        for i in (0..3).rev() {
            let before = ledger.acked.lock().len();
            cluster
                .wait_for(
                    "the workload to make progress",
                    Duration::from_secs(30),
                    || {
                        let ledger = ledger.clone();
                        async move { ledger.acked.lock().len() >= before + 50 }
                    },
                )
                .await;
            cluster.stop(i);
            routable.lock()[i] = false;
            cluster.start_member(i);
            let c = cluster.client(i);
            cluster
                .wait_for(
                    &format!("m{i} ready (round {round})"),
                    Duration::from_secs(30),
                    || ready(c.clone()),
                )
                .await;
            routable.lock()[i] = true;
            for observer in 0..3 {
                let c = &cluster;
                c.wait_for(
                    &format!("m{observer} to see m{i} alive (round {round})"),
                    Duration::from_secs(30),
                    || async move { c.sees_alive(observer, i).await == Some(true) },
                )
                .await;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    let refused = ledger.unavailable.lock().clone();
    let acked = ledger.acked.lock().len();
    assert!(
        refused.is_empty(),
        "{} of {} writes refused during the rolling restart: {:#?}",
        refused.len(),
        acked + refused.len(),
        &refused[..refused.len().min(10)]
    );
    assert!(
        acked > 300,
        "the workload made too little progress: {acked}"
    );
    let bad = verify_ledger(&cluster, 0, &ledger).await;
    assert!(
        bad.is_empty(),
        "{} acknowledged writes lost: {bad:?}",
        bad.len()
    );
}

/// A member that does not replicate a key forwards the write to a primary. When that
/// primary goes silent (SIGSTOP) after the request was sent, the write may or may not be
/// applied there: the client is told so (503), and the write is not coordinated a second
/// time elsewhere, which would store one client write as two versions (seen as two
/// identical siblings once the stalled primary resumes and applies its copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_write_whose_outcome_is_unknown_is_not_written_twice() {
    let cluster = Cluster::start(4, Options::default()).await;
    cluster.wait_settled(4, Duration::from_secs(30)).await;
    let ring = cluster.ring(0).await.unwrap();
    let key = (0..10_000)
        .map(|i| format!("fwd-{i}"))
        .find(|k| !primaries_of(&ring, k).iter().any(|m| m == "m0"))
        .expect("a key that m0 does not replicate");
    let first: usize = primaries_of(&ring, &key)[0][1..].parse().unwrap();
    let c = cluster.app_client(0);

    cluster.signal(first, "STOP");
    let put = c
        .put(&key, Bytes::from_static(b"once"), None, "")
        .await
        .unwrap();
    cluster.signal(first, "CONT");

    // The stalled primary applies the write it had received; replication and read repair
    // spread it. Every replica must then hold exactly one version of it.
    let mut versions = 0;
    for _ in 0..50 {
        let got = c.get(&key, "?r=3").await.unwrap();
        versions = match got.status.as_u16() {
            200 => 1,
            300 => got.json().unwrap()["siblings"].as_array().unwrap().len(),
            _ => 0,
        };
        if versions > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = c.get(&key, "?r=3").await.unwrap();
    assert_eq!(
        got.status.as_u16(),
        200,
        "one client write, one version (first read saw {versions}): {}",
        got.text()
    );
    assert_eq!(got.body, Bytes::from_static(b"once"));
    assert_eq!(
        put.status.as_u16(),
        503,
        "the forwarded write's outcome is unknown: {}",
        put.text()
    );
    assert!(
        put.text().contains("may have been applied"),
        "{}",
        put.text()
    );
}
