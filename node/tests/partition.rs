//! Real processes under real faults: three `dynamo node` members (N=3, R=2, W=2), each in a
//! network namespace this test creates, joined by veth pairs to a bridge in a namespace of
//! its own, with addresses in a /24 that exists only inside those namespaces. The test's
//! HTTP clients run on runtime threads moved into the bridge's namespace, so nothing the
//! test sends leaves the namespaces it created.
//!
//! Two Jepsen-style workloads run through the HTTP API while a member is killed with `-9`
//! and restarted, another is frozen (SIGSTOP) and thawed, and finally a real partition
//! (nftables drop rules inside the minority member's namespace) cuts one member off from
//! the other two:
//! * **set**: unique keys, each written once; every acknowledged key reads back at R=2;
//! * **list append**: read a key, union the elements of its siblings, append a unique
//!   element, write back with the read's context; every acknowledged element is in the
//!   final read, and no read ever shows an element nobody tried to append.
//!
//! The partition must show writes acknowledged by the majority while a replica of every
//! key is cut off, with hints kept for it (`dynamo_hints_pending`, `hintsHeld`), no write
//! acknowledged by the isolated member, and the hints delivered after the heal (pending
//! back to 0 everywhere).
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); scripts/setup.sh installs both.
//! Without them it says why and passes, unless `CI=true` or `DYNAMO_REQUIRE_ROOT_TESTS=1`
//! (set by scripts/test.sh as root) make that a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::{Cluster, Options};
use dynamo::cli::client::{HttpClient, Reply};
use parking_lot::Mutex;

const MEMBERS: usize = 3;
/// The member that is frozen and later partitioned off (the minority).
const MINORITY: usize = 2;
/// The member killed with `-9` and restarted.
const KILLED: usize = 1;
const SET_WRITERS: usize = 2;
const SET_WRITES_PER_WRITER: usize = 3_000;
const APPENDERS: usize = 3;
const APPENDS_PER_CLIENT: usize = 1_000;
const APPEND_KEYS: usize = 4;
/// Pause between one client's requests, so two cores shared with builds keep up.
const PACE: Duration = Duration::from_millis(15);
/// The workload stops by itself after this, whatever the fault schedule did.
const WORKLOAD_LIMIT: Duration = Duration::from_secs(120);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const NFT_TABLE: &str = "dynamo_partition";

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root to create network namespaces".into());
    }
    for (tool, arg, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        let found = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "needs `{tool}` (package {package}; scripts/setup.sh installs it)"
            ));
        }
    }
    None
}

/// CI (and scripts/test.sh as root) must run this test, not skip it.
fn must_run() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var_os("DYNAMO_REQUIRE_ROOT_TESTS").is_some()
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("{program}: writing its input: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces, bridge and veth pairs of one run; Drop removes them all (also when the
/// test fails), after killing whatever still runs inside them (only this test's members
/// can: nobody else knows the random names).
struct TestNet {
    prefix: String,
    /// Third octet of the test's 10.213.x.0/24.
    subnet: u8,
    namespaces: Vec<String>,
}

impl TestNet {
    fn create(members: usize) -> Result<TestNet, String> {
        let tag: u32 = rand::random();
        let mut net = TestNet {
            prefix: format!("dyn-{tag:08x}"),
            subnet: (tag >> 24) as u8,
            namespaces: Vec::new(),
        };
        let bridge_ns = net.bridge_ns();
        net.add_namespace(&bridge_ns)?;
        run("ip", &["-n", &bridge_ns, "link", "set", "lo", "up"], None)?;
        run(
            "ip",
            &["-n", &bridge_ns, "link", "add", "br0", "type", "bridge"],
            None,
        )?;
        run(
            "ip",
            &[
                "-n",
                &bridge_ns,
                "addr",
                "add",
                &format!("{}/24", net.client_ip()),
                "dev",
                "br0",
            ],
            None,
        )?;
        run("ip", &["-n", &bridge_ns, "link", "set", "br0", "up"], None)?;
        for i in 0..members {
            let ns = net.member_ns(i);
            net.add_namespace(&ns)?;
            let port = format!("v{}", i + 1);
            run(
                "ip",
                &[
                    "-n", &bridge_ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
                None,
            )?;
            run(
                "ip",
                &["-n", &bridge_ns, "link", "set", &port, "master", "br0"],
                None,
            )?;
            run("ip", &["-n", &bridge_ns, "link", "set", &port, "up"], None)?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"], None)?;
            run(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", net.member_ip(i)),
                    "dev",
                    "eth0",
                ],
                None,
            )?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"], None)?;
        }
        Ok(net)
    }

    fn add_namespace(&mut self, name: &str) -> Result<(), String> {
        run("ip", &["netns", "add", name], None)?;
        self.namespaces.push(name.to_string());
        Ok(())
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// `dyn-<tag>-1` for member 0, and so on.
    fn member_ns(&self, i: usize) -> String {
        format!("{}-{}", self.prefix, i + 1)
    }

    fn member_ip(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.subnet, i + 1)
    }

    fn client_ip(&self) -> String {
        format!("10.213.{}.254", self.subnet)
    }

    /// Cuts member `i` off from every other member (packets dropped silently both ways,
    /// as on a broken link); the test's clients still reach it.
    fn isolate(&self, i: usize, members: usize) -> Result<(), String> {
        let peers: Vec<String> = (0..members)
            .filter(|&j| j != i)
            .map(|j| self.member_ip(j))
            .collect();
        let peers = peers.join(", ");
        let rules = format!(
            "table inet {NFT_TABLE} {{\n\
             \x20 chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {peers} }} drop; }}\n\
             \x20 chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {peers} }} drop; }}\n\
             }}\n"
        );
        run(
            "ip",
            &["netns", "exec", &self.member_ns(i), "nft", "-f", "-"],
            Some(&rules),
        )
        .map(|_| ())
    }

    fn heal(&self, i: usize) -> Result<(), String> {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.member_ns(i),
                "nft",
                "delete",
                "table",
                "inet",
                NFT_TABLE,
            ],
            None,
        )
        .map(|_| ())
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Ok(pids) = run("ip", &["netns", "pids", ns], None) {
                for pid in pids.split_whitespace() {
                    let _ = run("kill", &["-KILL", pid], None);
                }
            }
            // Deleting a namespace deletes the veth ends inside it, and with them their
            // peers in the bridge's namespace.
            if let Err(e) = run("ip", &["netns", "del", ns], None) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// One request's outcome, for judging what happened during the partition.
#[derive(Clone, Copy)]
struct Outcome {
    member: usize,
    write: bool,
    acked: bool,
    started: Instant,
    finished: Instant,
}

/// An acknowledged write of the set workload.
#[derive(Clone)]
struct SetWrite {
    value: String,
    started: Instant,
}

#[derive(Default)]
struct History {
    /// The fault under way, for the refusal summary.
    phase: Mutex<&'static str>,
    outcomes: Mutex<Vec<Outcome>>,
    /// Set workload: acknowledged key → its write.
    set_acked: Mutex<BTreeMap<String, SetWrite>>,
    /// Append workload: every element a client tried to append (acknowledged or not).
    attempted: Mutex<BTreeSet<String>>,
    /// Append workload: key → elements whose write was acknowledged.
    append_acked: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Reads that showed an element nobody tried to append.
    bad_reads: Mutex<Vec<String>>,
    /// Refused requests per phase, in the order of the phases: how many, and the first few.
    refusals: Mutex<Vec<(&'static str, usize, Vec<String>)>>,
}

impl History {
    fn record(&self, member: usize, write: bool, acked: bool, started: Instant) {
        self.outcomes.lock().push(Outcome {
            member,
            write,
            acked,
            started,
            finished: Instant::now(),
        });
    }

    fn note_refusal(&self, what: String) {
        let phase = *self.phase.lock();
        let mut refusals = self.refusals.lock();
        if refusals.last().is_none_or(|(last, _, _)| *last != phase) {
            refusals.push((phase, 0, Vec::new()));
        }
        if let Some((_, count, examples)) = refusals.last_mut() {
            *count += 1;
            if examples.len() < 3 {
                examples.push(what);
            }
        }
    }

    fn enter(&self, phase: &'static str) {
        eprintln!("phase: {phase}");
        *self.phase.lock() = phase;
    }
}

fn describe(reply: &Result<Reply, dynamo::cli::client::ClientError>) -> String {
    match reply {
        Ok(r) => {
            let body = r.text();
            format!(
                "{} {}",
                r.status,
                body.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        }
        Err(e) => e.to_string(),
    }
}

/// The elements of a list value: space-separated.
fn elements(value: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(value)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The union of the elements of every sibling a read returned, and its context (opaque);
/// `None` for a failed read.
fn read_list(reply: &Reply) -> Option<(BTreeSet<String>, Option<String>)> {
    let context = reply.header("x-dynamo-context").map(str::to_string);
    match reply.status.as_u16() {
        200 => Some((elements(&reply.body).into_iter().collect(), context)),
        300 => {
            let body = reply.json()?;
            let mut union = BTreeSet::new();
            for sibling in body["siblings"].as_array()? {
                let value = base64::engine::general_purpose::STANDARD
                    .decode(sibling["value"].as_str()?)
                    .ok()?;
                union.extend(elements(&value));
            }
            Some((union, context))
        }
        404 => Some((BTreeSet::new(), context)),
        _ => None,
    }
}

fn clients(endpoints: &[String]) -> Vec<HttpClient> {
    endpoints
        .iter()
        .map(|e| HttpClient::new(e, None, REQUEST_TIMEOUT))
        .collect()
}

async fn set_writer(
    w: usize,
    endpoints: Vec<String>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) {
    let clients = clients(&endpoints);
    for i in 0..SET_WRITES_PER_WRITER {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        let member = (w + i) % clients.len();
        let (key, value) = (format!("set-{w}-{i}"), format!("v-{w}-{i}"));
        let started = Instant::now();
        let reply = clients[member]
            .put(&key, Bytes::from(value.clone()), None, "")
            .await;
        let acked = reply.as_ref().is_ok_and(|r| r.status.as_u16() == 204);
        history.record(member, true, acked, started);
        if acked {
            history
                .set_acked
                .lock()
                .insert(key, SetWrite { value, started });
        } else {
            history.note_refusal(format!("put {key} via m{member}: {}", describe(&reply)));
        }
        tokio::time::sleep(PACE).await;
    }
}

async fn appender(
    c: usize,
    endpoints: Vec<String>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) {
    let clients = clients(&endpoints);
    for op in 0..APPENDS_PER_CLIENT {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        let key = format!("list-{}", (op * 7 + c) % APPEND_KEYS);
        let member = (c + op) % clients.len();
        let client = &clients[member];
        let started = Instant::now();
        let reply = client.get(&key, "").await;
        let read = reply.as_ref().ok().and_then(read_list);
        history.record(member, false, read.is_some(), started);
        let Some((mut union, context)) = read else {
            history.note_refusal(format!("get {key} via m{member}: {}", describe(&reply)));
            tokio::time::sleep(PACE).await;
            continue;
        };
        {
            let attempted = history.attempted.lock();
            let unknown: Vec<&String> = union.iter().filter(|e| !attempted.contains(*e)).collect();
            if !unknown.is_empty() {
                history.bad_reads.lock().push(format!(
                    "get {key} via m{member} returned elements nobody appended: {unknown:?}"
                ));
            }
        }
        let element = format!("e{c}.{op}");
        history.attempted.lock().insert(element.clone());
        union.insert(element.clone());
        let value = union.into_iter().collect::<Vec<_>>().join(" ");
        let started = Instant::now();
        let reply = client
            .put(&key, Bytes::from(value), context.as_deref(), "")
            .await;
        let acked = reply.as_ref().is_ok_and(|r| r.status.as_u16() == 204);
        history.record(member, true, acked, started);
        if acked {
            history
                .append_acked
                .lock()
                .entry(key)
                .or_default()
                .insert(element);
        } else {
            history.note_refusal(format!(
                "append to {key} via m{member}: {}",
                describe(&reply)
            ));
        }
        tokio::time::sleep(PACE).await;
    }
}

async fn metric_sum(cluster: &Cluster, members: &[usize], name: &str) -> f64 {
    let mut sum = 0.0;
    for &i in members {
        sum += cluster.metric(i, name).await;
    }
    sum
}

/// Hints member `holder` keeps for member `target`, from its `/v1/cluster/members`.
async fn hints_held_for(cluster: &Cluster, holder: usize, target: usize) -> u64 {
    cluster
        .members_view(holder)
        .await
        .and_then(|v| v["hintsHeld"][cluster.members[target].id.as_str()].as_u64())
        .unwrap_or(0)
}

async fn wait_ready(cluster: &Cluster, i: usize) {
    let c = cluster.client(i);
    cluster
        .wait_for(&format!("m{i} ready"), Duration::from_secs(30), || async {
            c.admin_get("/readyz")
                .await
                .is_ok_and(|r| r.status.as_u16() == 200)
        })
        .await;
}

async fn wait_no_hints(cluster: &Cluster, what: &str) {
    let all: Vec<usize> = (0..MEMBERS).collect();
    cluster
        .wait_for(what, Duration::from_secs(60), || async {
            metric_sum(cluster, &all, "dynamo_hints_pending").await == 0.0
        })
        .await;
}

/// Everything that runs on the threads inside the bridge's namespace.
async fn faults_under_load(net: Arc<TestNet>, ns_inode: u64) {
    // Every socket below must be created inside the test's namespace: check that this
    // thread is there before the first one.
    let here = std::fs::read_link("/proc/thread-self/ns/net").expect("reading own netns");
    assert_eq!(
        here.to_string_lossy(),
        format!("net:[{ns_inode}]"),
        "the client runtime is not inside the test's network namespace"
    );
    let test_started = Instant::now();

    let mut cluster = Cluster::spawn(
        0,
        Options {
            // Only hinted handoff (and read repair) may bring a member back up to date:
            // anti-entropy would hide undelivered hints.
            extra: vec!["--anti-entropy-interval-s=3600".into()],
            ..Options::default()
        },
    );
    for i in 0..MEMBERS {
        let m = cluster.new_member();
        cluster.members[m].ip = net.member_ip(i);
        cluster.members[m].launcher = ["ip", "netns", "exec"]
            .into_iter()
            .map(str::to_string)
            .chain([net.member_ns(i)])
            .collect();
    }
    for i in 0..MEMBERS {
        cluster.start_member(i);
    }
    cluster.wait_healthy_all().await;
    for i in 1..MEMBERS {
        cluster.join(i).await;
    }
    cluster.wait_settled(MEMBERS, Duration::from_secs(60)).await;
    for i in 0..MEMBERS {
        wait_ready(&cluster, i).await;
    }
    eprintln!(
        "cluster of {MEMBERS} up in {:.1} s",
        test_started.elapsed().as_secs_f64()
    );

    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.http()).collect();
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + WORKLOAD_LIMIT;
    let mut tasks = Vec::new();
    for w in 0..SET_WRITERS {
        tasks.push(tokio::spawn(set_writer(
            w,
            endpoints.clone(),
            history.clone(),
            stop.clone(),
            deadline,
        )));
    }
    for c in 0..APPENDERS {
        tasks.push(tokio::spawn(appender(
            c,
            endpoints.clone(),
            history.clone(),
            stop.clone(),
            deadline,
        )));
    }
    history.enter("healthy");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // kill -9 and restart with the same disk.
    history.enter("kill -9 m1 and restart");
    cluster.kill9(KILLED);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.restart(KILLED).await;
    wait_ready(&cluster, KILLED).await;
    eprintln!("m{KILLED} restarted and ready");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Freeze and thaw.
    history.enter("SIGSTOP m2, SIGCONT after 3 s");
    cluster.signal(MINORITY, "STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.signal(MINORITY, "CONT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    history.enter("healthy again");

    // Partition: first let the earlier faults' hints drain, so that the hints counted
    // below are the partition's.
    wait_no_hints(&cluster, "hints of the earlier faults delivered").await;
    let majority: Vec<usize> = (0..MEMBERS).filter(|&i| i != MINORITY).collect();
    let stored_before = metric_sum(&cluster, &majority, "dynamo_hints_stored_total").await;
    let delivered_before = metric_sum(&cluster, &majority, "dynamo_hints_delivered_total").await;
    history.enter("partition: m2 cut off from m0 and m1 (nft drops in its namespace)");
    net.isolate(MINORITY, MEMBERS)
        .expect("installing the partition");
    let partition_started = Instant::now();
    cluster
        .wait_for(
            "the majority sees the minority down and keeps hints for it",
            Duration::from_secs(30),
            || async {
                let mut held = 0;
                for &i in &majority {
                    if cluster.sees_alive(i, MINORITY).await != Some(false) {
                        return false;
                    }
                    held += hints_held_for(&cluster, i, MINORITY).await;
                }
                held > 0
            },
        )
        .await;
    // Writes go on for a while with the minority known to be down.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pending_in_partition = metric_sum(&cluster, &majority, "dynamo_hints_pending").await;
    let mut held_for_minority = 0;
    for &i in &majority {
        held_for_minority += hints_held_for(&cluster, i, MINORITY).await;
    }
    let stored_in_partition =
        metric_sum(&cluster, &majority, "dynamo_hints_stored_total").await - stored_before;
    let partition_ended = Instant::now();
    net.heal(MINORITY).expect("healing the partition");
    history.enter("partition healed");
    eprintln!(
        "partition healed after {:.1} s; the majority held {held_for_minority} hints for m{MINORITY} \
         ({pending_in_partition} pending, {stored_in_partition} stored meanwhile)",
        partition_ended
            .duration_since(partition_started)
            .as_secs_f64()
    );
    cluster
        .wait_for(
            "every member sees every other alive after the heal",
            Duration::from_secs(30),
            || async {
                for i in 0..MEMBERS {
                    for j in 0..MEMBERS {
                        if i != j && cluster.sees_alive(i, j).await != Some(true) {
                            return false;
                        }
                    }
                }
                true
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("a workload task panicked");
    }
    wait_no_hints(&cluster, "every hint delivered after the heal").await;
    let delivered =
        metric_sum(&cluster, &majority, "dynamo_hints_delivered_total").await - delivered_before;

    // The set keys acknowledged during the partition reached the isolated member by hinted
    // handoff: anti-entropy is off, and nobody has read these keys yet (no read repair).
    // Read at R=1 through that member, which asks itself first.
    let set = history.set_acked.lock().clone();
    let written_in_partition: Vec<(&String, &SetWrite)> = set
        .iter()
        .filter(|(_, w)| w.started >= partition_started && w.started <= partition_ended)
        .collect();
    let on_minority = cluster.app_client(MINORITY);
    let mut not_handed_off = Vec::new();
    for (key, write) in &written_in_partition {
        let reply = on_minority.get(key, "?r=1").await;
        match &reply {
            Ok(r) if r.status.as_u16() == 200 && r.body == write.value.as_bytes() => {}
            _ => not_handed_off.push(format!("{key}: {}", describe(&reply))),
        }
    }

    // What the partition showed.
    let outcomes = history.outcomes.lock().clone();
    let within_partition =
        |o: &&Outcome| o.write && o.started >= partition_started && o.finished <= partition_ended;
    let majority_acked = outcomes
        .iter()
        .filter(within_partition)
        .filter(|o| o.member != MINORITY && o.acked)
        .count();
    let minority_tried = outcomes
        .iter()
        .filter(within_partition)
        .filter(|o| o.member == MINORITY)
        .count();
    let minority_acked = outcomes
        .iter()
        .filter(within_partition)
        .filter(|o| o.member == MINORITY && o.acked)
        .count();
    let writes = outcomes.iter().filter(|o| o.write).count();
    let acked = outcomes.iter().filter(|o| o.write && o.acked).count();
    eprintln!(
        "workload: {writes} writes, {acked} acknowledged; in the partition: {majority_acked} \
         acknowledged by the majority, {minority_acked} of {minority_tried} through the minority; \
         {delivered} hints delivered after the heal; {} of {} set keys written in the partition \
         found on m2 at R=1",
        written_in_partition.len() - not_handed_off.len(),
        written_in_partition.len()
    );
    for (phase, count, examples) in history.refusals.lock().iter() {
        eprintln!(
            "  {count} requests refused or failed in phase '{phase}' (allowed: never acknowledged), e.g."
        );
        for e in examples {
            eprintln!("    {e}");
        }
    }
    assert!(
        majority_acked > 0,
        "no write was acknowledged by the majority during the partition"
    );
    assert!(
        held_for_minority > 0 && pending_in_partition > 0.0 && stored_in_partition > 0.0,
        "the majority kept no hints for the partitioned member"
    );
    assert!(
        minority_tried > 0,
        "no write went through the isolated member"
    );
    assert_eq!(
        minority_acked, 0,
        "the isolated member acknowledged writes it could not have replicated to W=2"
    );
    assert!(delivered > 0.0, "no hint was delivered after the heal");
    assert!(
        !written_in_partition.is_empty() && not_handed_off.is_empty(),
        "of {} set keys acknowledged during the partition, the isolated member lacks {:?}",
        written_in_partition.len(),
        &not_handed_off[..not_handed_off.len().min(20)]
    );

    // Nothing acknowledged is lost: the set, at R=2 through every member in turn.
    assert!(
        set.len() > 100,
        "too few set writes acknowledged: {}",
        set.len()
    );
    let mut lost = Vec::new();
    let clients = clients(&endpoints);
    for (n, (key, write)) in set.iter().enumerate() {
        let reply = clients[n % MEMBERS].get(key, "?r=2").await;
        match &reply {
            Ok(r) if r.status.as_u16() == 200 && r.body == write.value.as_bytes() => {}
            _ => lost.push(format!("{key}: {}", describe(&reply))),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged set keys lost or wrong: {:?}",
        lost.len(),
        set.len(),
        &lost[..lost.len().min(20)]
    );

    // The list appends: every acknowledged element is in the final read's union, and no
    // read (during the run or now) showed an element nobody tried to append.
    let appended = history.append_acked.lock().clone();
    let acked_elements: usize = appended.values().map(BTreeSet::len).sum();
    assert!(
        acked_elements > 50,
        "too few appends acknowledged: {acked_elements}"
    );
    let attempted = history.attempted.lock().clone();
    for (k, (key, elements)) in appended.iter().enumerate() {
        let reply = clients[k % MEMBERS].get(key, "?r=2").await;
        let Some((union, _)) = reply.as_ref().ok().and_then(read_list) else {
            panic!("final read of {key}: {}", describe(&reply));
        };
        let missing: Vec<&String> = elements.difference(&union).collect();
        assert!(
            missing.is_empty(),
            "{key}: {} of {} acknowledged elements lost: {missing:?}",
            missing.len(),
            elements.len()
        );
        let unknown: Vec<&String> = union.difference(&attempted).collect();
        assert!(
            unknown.is_empty(),
            "{key}: elements nobody appended: {unknown:?}"
        );
    }
    let bad_reads = history.bad_reads.lock().clone();
    assert!(bad_reads.is_empty(), "{bad_reads:?}");
    eprintln!(
        "checked: {} set keys and {acked_elements} appended elements on {} keys, none lost; {:.1} s in all",
        set.len(),
        appended.len(),
        test_started.elapsed().as_secs_f64()
    );
}

#[test]
fn partitions_kills_and_pauses_lose_no_acknowledged_write() {
    if let Some(reason) = missing_prerequisite() {
        assert!(
            !must_run(),
            "the partition test must run here (CI=true or DYNAMO_REQUIRE_ROOT_TESTS set) but {reason}"
        );
        eprintln!("skipped: {reason}");
        return;
    }
    let net = match TestNet::create(MEMBERS) {
        Ok(net) => Arc::new(net),
        Err(e) => panic!("setting up the test's network namespaces: {e}"),
    };
    eprintln!(
        "namespaces {}-{{br,1..{MEMBERS}}}, members at {} .. {}, clients at {}",
        net.prefix,
        net.member_ip(0),
        net.member_ip(MEMBERS - 1),
        net.client_ip()
    );
    let ns_path = format!("/run/netns/{}", net.bridge_ns());
    let ns_file = Arc::new(std::fs::File::open(&ns_path).expect("opening the bridge's netns"));
    let ns_inode = ns_file.metadata().expect("netns file").ino();
    let entered = Arc::new(AtomicBool::new(true));
    let runtime = {
        let (ns_file, entered) = (ns_file.clone(), entered.clone());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(3)
            .enable_all()
            .thread_name("partition")
            // Every thread of the runtime (workers and blocking ones) lives in the bridge's
            // namespace, so every socket the clients open is there.
            .on_thread_start(move || {
                if let Err(e) = rustix::thread::move_into_link_name_space(
                    ns_file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                ) {
                    eprintln!("entering the test's namespace: {e}");
                    entered.store(false, Ordering::SeqCst);
                }
            })
            .build()
            .expect("tokio runtime")
    };
    assert!(
        entered.load(Ordering::SeqCst),
        "a runtime thread could not enter the test's network namespace"
    );
    // The body runs as a task, on a runtime thread: block_on's own future would run on
    // this thread, which stays in the host's namespace.
    let result = runtime.block_on(runtime.spawn(faults_under_load(net.clone(), ns_inode)));
    runtime.shutdown_timeout(Duration::from_secs(10));
    assert!(
        entered.load(Ordering::SeqCst),
        "a runtime thread could not enter the test's network namespace"
    );
    if let Err(e) = result {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the test's task did not finish: {e}"),
        }
    }
    drop(net);
}
