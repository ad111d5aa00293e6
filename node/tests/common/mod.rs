//! Test harness: clusters of real `dynamo` processes on loopback.
//!
//! Every member gets its own loopback address (`127.a.b.i`, unique per cluster in this
//! process), so clusters of concurrently running tests never collide on ports.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dynamo::cli::client::{HttpClient, Reply};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-cluster-token-0123456789";
pub const HTTP_PORT: u16 = 8080;
pub const PEER_PORT: u16 = 7070;

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

pub struct Member {
    pub index: usize,
    pub id: String,
    pub ip: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub extra: Vec<String>,
    /// Extra environment of the member's process.
    pub env: Vec<(String, String)>,
    pub token: String,
    /// A command the member's binary runs under, such as `ip netns exec <namespace>` (it
    /// execs the binary, so the child's pid is the member's); empty: the binary itself.
    pub launcher: Vec<String>,
}

impl Member {
    pub fn http(&self) -> String {
        format!("{}:{HTTP_PORT}", self.ip)
    }
    pub fn peer(&self) -> String {
        format!("{}:{PEER_PORT}", self.ip)
    }
    pub fn log(&self) -> PathBuf {
        self.dir.with_extension("log")
    }
}

pub struct Options {
    pub partitions: u32,
    pub n: usize,
    pub r: usize,
    pub w: usize,
    pub conflicts: &'static str,
    pub max_siblings: usize,
    pub extra: Vec<String>,
    /// When set, members serve HTTPS and clients verify them with this CA.
    pub https_ca: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            partitions: 64,
            n: 3,
            r: 2,
            w: 2,
            conflicts: "siblings",
            max_siblings: 100,
            extra: Vec::new(),
            https_ca: None,
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    pub opts: Options,
    net: (u32, u32),
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_dynamo")
}

impl Cluster {
    /// Starts `n` members: the first bootstraps, the others join; waits until they agree.
    pub async fn start(n: usize, opts: Options) -> Cluster {
        let c = Cluster::spawn(n, opts);
        c.wait_healthy_all().await;
        for i in 1..n {
            c.join(i).await;
        }
        c.wait_settled(n, Duration::from_secs(60)).await;
        c
    }

    /// Starts the processes without joining them.
    pub fn spawn(n: usize, opts: Options) -> Cluster {
        let k = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let net = (20 + std::process::id() % 200, k % 250);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Cluster {
            dir,
            members: Vec::new(),
            opts,
            net,
        };
        for i in 0..n {
            c.add_member(i);
        }
        for i in 0..n {
            c.start_member(i);
        }
        c
    }

    fn add_member(&mut self, i: usize) {
        let ip = format!("127.{}.{}.{}", self.net.0, self.net.1, i + 1);
        let dir = self.dir.path().join(format!("m{i}"));
        self.members.push(Member {
            index: i,
            id: format!("m{i}"),
            ip,
            dir,
            child: None,
            extra: self.opts.extra.clone(),
            env: Vec::new(),
            token: TOKEN.to_string(),
            launcher: Vec::new(),
        });
    }

    /// Adds a new (not yet started) member and returns its index.
    pub fn new_member(&mut self) -> usize {
        let i = self.members.len();
        self.add_member(i);
        i
    }

    pub fn start_member(&mut self, i: usize) {
        let seed = self.members[0].peer();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.log())
            .expect("log file");
        let mut cmd = match m.launcher.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary());
                cmd
            }
            None => Command::new(binary()),
        };
        cmd.arg("node")
            .arg(format!("--id={}", m.id))
            .arg(format!("--listen={}", m.http()))
            .arg(format!("--peer-listen={}", m.peer()))
            .arg(format!("--data-dir={}", m.dir.display()))
            .arg(format!("--cluster-token={}", m.token))
            .arg(format!("--partitions={}", self.opts.partitions))
            .arg(format!("--n={}", self.opts.n))
            .arg(format!("--r={}", self.opts.r))
            .arg(format!("--w={}", self.opts.w))
            .arg(format!("--conflicts={}", self.opts.conflicts))
            .arg(format!("--max-siblings={}", self.opts.max_siblings))
            .arg("--gossip-interval-ms=200")
            .arg("--hint-interval-ms=200")
            .arg("--replica-timeout-ms=500")
            .arg("--request-timeout-ms=3000")
            .args(&m.extra)
            .envs(m.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("DYNAMO_TEST_RUST_LOG").unwrap_or("info,dynamo=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if i == 0 {
            cmd.arg("--bootstrap");
        } else {
            cmd.arg(format!("--seeds={seed}"));
        }
        m.child = Some(cmd.spawn().expect("spawn dynamo"));
    }

    pub fn client(&self, i: usize) -> HttpClient {
        self.http_client(i, Some(TOKEN.to_string()))
    }

    /// A client without the admin token (as applications use the client API).
    pub fn app_client(&self, i: usize) -> HttpClient {
        self.http_client(i, None)
    }

    fn http_client(&self, i: usize, token: Option<String>) -> HttpClient {
        match &self.opts.https_ca {
            Some(ca) => HttpClient::new(
                &format!("https://{}", self.members[i].http()),
                token,
                Duration::from_secs(10),
            )
            .with_ca(ca)
            .expect("CA file"),
            None => HttpClient::new(&self.members[i].http(), token, Duration::from_secs(10)),
        }
    }

    pub fn running(&self) -> Vec<usize> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.index)
            .collect()
    }

    pub async fn wait_healthy_all(&self) {
        for i in self.running() {
            self.wait_healthy(i).await;
        }
    }

    pub async fn wait_healthy(&self, i: usize) {
        let c = self.client(i);
        self.wait_for(&format!("m{i} healthy"), Duration::from_secs(60), || {
            let c = c.clone();
            async move {
                c.admin_get("/healthz")
                    .await
                    .is_ok_and(|r| r.status.is_success())
            }
        })
        .await;
    }

    /// Polls `cond` every 100 ms until true; panics with the members' logs after `timeout`.
    pub async fn wait_for<F, Fut>(&self, what: &str, timeout: Duration, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if cond().await {
                return;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("timed out after {timeout:?} waiting for: {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Prints the last lines of every member's log; with `DYNAMO_TEST_LOG_DIR` set, also
    /// copies the whole logs there (the cluster's directory is deleted with it).
    pub fn dump_logs(&self) {
        // One directory per test: tests in a binary run in parallel and name their
        // members alike, so a shared directory would keep only the last one's logs.
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .replace("::", "-");
        let keep = std::env::var_os("DYNAMO_TEST_LOG_DIR").map(|d| PathBuf::from(d).join(&test));
        for m in &self.members {
            if let Some(dir) = &keep {
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::copy(m.log(), dir.join(format!("{}.log", m.id)));
            }
            let log = std::fs::read_to_string(m.log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("===== {} ({}) last lines =====", m.id, m.ip);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }

    pub async fn join(&self, i: usize) {
        let body = serde_json::json!({ "member": self.members[i].id });
        let c = self.client(0);
        self.wait_for(
            &format!("m{i} accepted as joining"),
            Duration::from_secs(30),
            || {
                let (c, body) = (c.clone(), body.clone());
                async move {
                    c.admin_post("/v1/cluster/join", body)
                        .await
                        .is_ok_and(|r| r.status.is_success())
                }
            },
        )
        .await;
    }

    pub async fn leave(&self, via: usize, i: usize) -> Reply {
        self.client(via)
            .admin_post(
                &format!("/v1/cluster/leave/{}", self.members[i].id),
                serde_json::json!({}),
            )
            .await
            .expect("leave request")
    }

    pub async fn ring(&self, i: usize) -> Option<serde_json::Value> {
        self.client(i)
            .admin_get("/v1/cluster/ring")
            .await
            .ok()
            .and_then(|r| r.json())
    }

    pub async fn members_view(&self, i: usize) -> Option<serde_json::Value> {
        self.client(i)
            .admin_get("/v1/cluster/members")
            .await
            .ok()
            .and_then(|r| r.json())
    }

    /// Every running member sees the same epoch with `n` ring members and nothing moving.
    pub async fn settled(&self, n: usize) -> bool {
        let mut epoch = None;
        for i in self.running() {
            let Some(r) = self.ring(i).await else {
                return false;
            };
            if r["inTransition"] != false || r["members"].as_array().map(Vec::len) != Some(n) {
                return false;
            }
            if epoch.is_some() && epoch != r["epoch"].as_u64() {
                return false;
            }
            epoch = r["epoch"].as_u64();
        }
        true
    }

    pub async fn wait_settled(&self, n: usize, timeout: Duration) {
        self.wait_for(&format!("ring settled with {n} members"), timeout, || {
            self.settled(n)
        })
        .await;
    }

    /// Whether member `observer` sees `target` as alive.
    pub async fn sees_alive(&self, observer: usize, target: usize) -> Option<bool> {
        let v = self.members_view(observer).await?;
        v["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == self.members[target].id.as_str())
            .and_then(|m| m["alive"].as_bool())
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (a clean stop).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, i: usize, sig: &str) {
        if let Some(child) = &self.members[i].child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    pub async fn restart(&mut self, i: usize) {
        self.start_member(i);
        self.wait_healthy(i).await;
    }

    pub fn wipe(&self, i: usize) {
        let _ = std::fs::remove_dir_all(&self.members[i].dir);
    }

    /// A metric's value summed over its label sets, from member `i`'s /metrics.
    pub async fn metric(&self, i: usize, name: &str) -> f64 {
        self.metric_where(i, name, "").await
    }

    /// A metric's value summed over the label sets whose text contains `label` (such as
    /// `op="read"`), from member `i`'s /metrics.
    pub async fn metric_where(&self, i: usize, name: &str, label: &str) -> f64 {
        let Ok(reply) = self.client(i).admin_get("/metrics").await else {
            return f64::NAN;
        };
        reply
            .text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter(|l| l.contains(label))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    /// Merkle roots per partition as member `i` reports them.
    pub async fn roots(&self, i: usize) -> BTreeMap<u32, String> {
        let Ok(reply) = self.client(i).admin_get("/v1/cluster/antientropy").await else {
            return BTreeMap::new();
        };
        let Some(json) = reply.json() else {
            return BTreeMap::new();
        };
        json["roots"].as_object().map_or_else(BTreeMap::new, |o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
                .collect()
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// A record of every acknowledged write (key → last acknowledged value).
#[derive(Clone, Default)]
pub struct Ledger {
    pub acked: Arc<Mutex<BTreeMap<String, String>>>,
    pub failed: Arc<Mutex<u64>>,
    /// Writes the store answered `503 unavailable` (quorum not reached); a subset of
    /// `failed`, which also counts members that could not be reached at all.
    pub unavailable: Arc<Mutex<Vec<String>>>,
    /// The first few failures, for diagnosis.
    pub errors: Arc<Mutex<Vec<String>>>,
}

/// A running workload: its ledger, the flag that stops it, and its writer tasks.
pub type Workload = (
    Ledger,
    Arc<std::sync::atomic::AtomicBool>,
    Vec<JoinHandle<()>>,
);

/// Writes unique keys from `writers` concurrent tasks, round-robin over `endpoints`, for
/// at most `count` writes each or until stopped. Returns the ledger and a stop handle.
pub fn start_workload(
    endpoints: Vec<String>,
    writers: usize,
    count: usize,
    prefix: &str,
) -> Workload {
    let routable = Arc::new(Mutex::new(vec![true; endpoints.len()]));
    start_routed_workload(endpoints, routable, writers, count, prefix)
}

/// [`start_workload`] sending only to the endpoints whose flag in `routable` is set, as a
/// Service routes only to ready pods.
pub fn start_routed_workload(
    endpoints: Vec<String>,
    routable: Arc<Mutex<Vec<bool>>>,
    writers: usize,
    count: usize,
    prefix: &str,
) -> Workload {
    let ledger = Ledger::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut handles = Vec::new();
    for w in 0..writers {
        let (ledger, stop, endpoints, prefix, routable) = (
            ledger.clone(),
            stop.clone(),
            endpoints.clone(),
            prefix.to_string(),
            routable.clone(),
        );
        handles.push(tokio::spawn(async move {
            let clients: Vec<HttpClient> = endpoints
                .iter()
                .map(|e| HttpClient::new(e, None, Duration::from_secs(5)))
                .collect();
            for i in 0..count {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("{prefix}-{w}-{i}");
                let value = format!("v-{w}-{i}");
                let up: Vec<usize> = (0..clients.len()).filter(|&e| routable.lock()[e]).collect();
                if up.is_empty() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let c = &clients[up[(w + i) % up.len()]];
                match c.put(&key, Bytes::from(value.clone()), None, "").await {
                    Ok(r) if r.status.as_u16() == 204 => {
                        ledger.acked.lock().insert(key, value);
                    }
                    other => {
                        *ledger.failed.lock() += 1;
                        if let Ok(r) = &other
                            && r.status.as_u16() == 503
                        {
                            ledger
                                .unavailable
                                .lock()
                                .push(format!("{key}: {}", r.text()));
                        }
                        let mut errors = ledger.errors.lock();
                        if errors.len() < 10 {
                            errors.push(match other {
                                Ok(r) => format!("{key}: {} {}", r.status, r.text()),
                                Err(e) => format!("{key}: {e}"),
                            });
                        }
                    }
                }
            }
        }));
    }
    (ledger, stop, handles)
}

/// Reads every acknowledged key back through member `via`; returns the keys that are
/// missing or hold another value.
pub async fn verify_ledger(cluster: &Cluster, via: usize, ledger: &Ledger) -> Vec<String> {
    let acked = ledger.acked.lock().clone();
    let c = cluster.app_client(via);
    let mut bad = Vec::new();
    for (key, value) in acked {
        match c.get(&key, "").await {
            Ok(r) if r.status.as_u16() == 200 && r.body == value.as_bytes() => {}
            Ok(r) => bad.push(format!("{key}: status {} body {:?}", r.status, r.text())),
            Err(e) => bad.push(format!("{key}: {e}")),
        }
    }
    bad
}
