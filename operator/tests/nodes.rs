//! The operator's state machine driving REAL `dynamo node` processes on loopback: the
//! admin-API contract (bootstrap, join, members, ring, handoffs, leave) as the node really
//! implements it. Kubernetes is played by this test (a "StatefulSet" of processes with data
//! directories as volumes); the plan, the observation and the admin calls are the
//! operator's own code (`plan::plan`, `controller::observe_cluster`,
//! `controller::run_admin_steps`, `HttpNodeAdmin`). Covers bootstrap, joins, 3 -> 5 -> 3 with
//! data checked, a re-added ordinal, and a rolling restart gated on the ring.
//!
//! Runs only with `DYNAMO_NODE_BIN=<path to the dynamo binary>`:
//! `cargo build -p dynamo-node && DYNAMO_NODE_BIN=target/debug/dynamo cargo test -p dynamo-operator --test nodes`

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dynamo_operator::admin::{
    AddressTemplate, AdminError, BootstrapOutcome, Endpoint, HandoffsReport, HttpNodeAdmin,
    MembersReport, NodeAdmin, RingReport,
};
use dynamo_operator::builders::Names;
use dynamo_operator::controller::{observe_cluster, run_admin_steps};
use dynamo_operator::plan::{Action, Observed, PodObs, PvcObs, plan};

const TOKEN: &str = "e2e-cluster-token-0123456789abcdef";

/// Routes a member id to its loopback port (what DNS does in Kubernetes).
struct Loopback {
    inner: HttpNodeAdmin,
    ports: BTreeMap<String, u16>,
}

impl Loopback {
    fn at(&self, e: &Endpoint) -> Endpoint {
        Endpoint {
            member: e.member.clone(),
            base_url: format!("http://127.0.0.1:{}", self.ports[&e.member]),
            https_ca: None,
        }
    }
}

#[async_trait]
impl NodeAdmin for Loopback {
    async fn members(&self, at: &Endpoint, token: &str) -> Result<MembersReport, AdminError> {
        self.inner.members(&self.at(at), token).await
    }
    async fn ring(&self, at: &Endpoint, token: &str) -> Result<RingReport, AdminError> {
        self.inner.ring(&self.at(at), token).await
    }
    async fn handoffs(&self, at: &Endpoint, token: &str) -> Result<HandoffsReport, AdminError> {
        self.inner.handoffs(&self.at(at), token).await
    }
    async fn bootstrap(&self, at: &Endpoint, token: &str) -> Result<BootstrapOutcome, AdminError> {
        self.inner.bootstrap(&self.at(at), token).await
    }
    async fn join(&self, at: &Endpoint, token: &str, member: &str) -> Result<(), AdminError> {
        self.inner.join(&self.at(at), token, member).await
    }
    async fn leave(&self, at: &Endpoint, token: &str, member: &str) -> Result<(), AdminError> {
        self.inner.leave(&self.at(at), token, member).await
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    names: Names,
    http: BTreeMap<i32, u16>,
    peer: BTreeMap<i32, u16>,
    procs: BTreeMap<i32, tokio::process::Child>,
    /// "Volumes": data directories, with the operator's holds-data mark.
    volumes: BTreeMap<i32, bool>,
    sts_replicas: i32,
    bootstrapped: bool,
    admin: Arc<Loopback>,
    /// Members running an old "template" (a rolling update is due).
    outdated: BTreeSet<i32>,
    restarts: Vec<i32>,
}

impl Cluster {
    fn new(bin: PathBuf, max: i32) -> Self {
        let dir =
            std::env::temp_dir().join(format!("dynamo-operator-nodes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let names = Names {
            cluster: "db".into(),
            namespace: "test".into(),
        };
        let http: BTreeMap<i32, u16> = (0..max).map(|i| (i, free_port())).collect();
        let peer: BTreeMap<i32, u16> = (0..max).map(|i| (i, free_port())).collect();
        let ports = http.iter().map(|(i, p)| (names.pod(*i), *p)).collect();
        let admin = Arc::new(Loopback {
            inner: HttpNodeAdmin::new(Duration::from_secs(3)),
            ports,
        });
        Cluster {
            bin,
            dir,
            names,
            http,
            peer,
            procs: BTreeMap::new(),
            volumes: BTreeMap::new(),
            sts_replicas: 0,
            bootstrapped: false,
            admin,
            outdated: BTreeSet::new(),
            restarts: Vec::new(),
        }
    }

    fn start(&mut self, i: i32) {
        self.volumes.entry(i).or_insert(false);
        let seeds: Vec<String> = (0..3)
            .map(|s| format!("127.0.0.1:{}", self.peer[&s]))
            .collect();
        let log = std::fs::File::create(self.dir.join(format!("db-{i}.log"))).unwrap();
        let child = tokio::process::Command::new(&self.bin)
            .arg("node")
            .env("DYNAMO_ID", self.names.pod(i))
            .env("DYNAMO_LISTEN", format!("127.0.0.1:{}", self.http[&i]))
            .env("DYNAMO_PEER_LISTEN", format!("127.0.0.1:{}", self.peer[&i]))
            .env("DYNAMO_DATA_DIR", self.dir.join(format!("data-db-{i}")))
            .env("DYNAMO_SEEDS", seeds.join(","))
            .env("DYNAMO_CLUSTER_TOKEN", TOKEN)
            .env("DYNAMO_PARTITIONS", "64")
            .env("DYNAMO_N", "3")
            .env("DYNAMO_R", "2")
            .env("DYNAMO_W", "2")
            .env("DYNAMO_GOSSIP_INTERVAL_MS", "100")
            .env("DYNAMO_FAILURE_DETECTOR", "timeout")
            .env("DYNAMO_DOWN_AFTER_MS", "1500")
            .env("DYNAMO_DURABILITY", "periodic")
            .env("DYNAMO_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start dynamo node");
        self.procs.insert(i, child);
    }

    async fn stop(&mut self, i: i32) {
        if let Some(mut child) = self.procs.remove(&i) {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    fn delete_volume(&mut self, i: i32) {
        let _ = std::fs::remove_dir_all(self.dir.join(format!("data-db-{i}")));
        self.volumes.remove(&i);
    }

    async fn ready(&self, i: i32) -> bool {
        http_get(self.http[&i], "/readyz")
            .await
            .is_some_and(|(code, _)| code == 200)
    }

    /// The StatefulSet controller: processes for ordinals below `sts_replicas`.
    async fn statefulset(&mut self, replicas: i32) {
        assert!(replicas >= 0);
        for i in (replicas..self.sts_replicas).rev() {
            self.stop(i).await;
        }
        self.sts_replicas = replicas;
        for i in 0..replicas {
            if !self.procs.contains_key(&i) {
                self.start(i);
            }
        }
    }

    /// One reconciliation with the operator's own observation, plan and admin steps.
    async fn pass(
        &mut self,
        spec_replicas: i32,
    ) -> (
        dynamo_operator::plan::Plan,
        Option<dynamo_operator::plan::ClusterObs>,
    ) {
        let mut pods = BTreeMap::new();
        for &i in self.procs.keys() {
            pods.insert(
                i,
                PodObs {
                    running: true,
                    ready: self.ready(i).await,
                    terminating: false,
                    updated: !self.outdated.contains(&i),
                    problem: None,
                },
            );
        }
        let (cluster, unclustered, _failures) = observe_cluster(
            self.admin.as_ref(),
            &AddressTemplate::default(),
            &self.names,
            TOKEN,
            &pods,
        )
        .await;
        let observed = Observed {
            spec_replicas,
            n: 3,
            sts_replicas: (self.sts_replicas > 0).then_some(self.sts_replicas),
            pods,
            pvcs: self
                .volumes
                .iter()
                .map(|(&i, &holds_data)| {
                    (
                        i,
                        PvcObs {
                            holds_data,
                            terminating: false,
                            pending_since: None,
                        },
                    )
                })
                .collect(),
            bootstrapped: self.bootstrapped,
            cluster: cluster.clone(),
            unclustered,
        };
        let p = plan(&observed, &self.names);
        // Never shrink below a member that is still in the ring.
        if let Some(c) = &cluster {
            for m in &c.members.members {
                let i = self.names.ordinal_of(&m.id).unwrap();
                if matches!(m.status.as_str(), "up" | "leaving") {
                    assert!(
                        i < p.sts_replicas,
                        "plan shrinks to {} while {} is {}",
                        p.sts_replicas,
                        m.id,
                        m.status
                    );
                }
            }
        }
        self.statefulset(p.sts_replicas).await;
        let (outcome, _done) = run_admin_steps(
            self.admin.as_ref(),
            &AddressTemplate::default(),
            &self.names,
            TOKEN,
            &p,
            cluster.as_ref(),
        )
        .await;
        if outcome.bootstrapped || p.bootstrapped {
            self.bootstrapped = true;
        }
        for step in &p.actions {
            match step {
                Action::MarkHoldsData(i) => {
                    self.volumes.insert(*i, true);
                }
                Action::DeletePvc(i) => {
                    assert!(
                        !self.procs.contains_key(i),
                        "volume of a running member deleted"
                    );
                    self.delete_volume(*i);
                }
                Action::Recycle(i) => {
                    self.stop(*i).await;
                    self.delete_volume(*i);
                }
                Action::RestartForUpdate(i) => {
                    // Gate: every other member is ready when one restarts.
                    for &j in self.procs.keys() {
                        assert!(
                            j == *i || self.ready(j).await,
                            "db-{i} restarted while db-{j} is not ready"
                        );
                    }
                    self.stop(*i).await;
                    self.start(*i);
                    self.outdated.remove(i);
                    self.restarts.push(*i);
                }
                _ => {}
            }
        }
        (p, cluster)
    }

    /// Passes until the plan has converged (or panics after `timeout`).
    async fn converge(
        &mut self,
        spec_replicas: i32,
        timeout: Duration,
    ) -> dynamo_operator::plan::ClusterObs {
        let deadline = Instant::now() + timeout;
        loop {
            let (p, cluster) = self.pass(spec_replicas).await;
            if p.converged()
                && let Some(c) = cluster
                && (0..spec_replicas).all(|i| c.views.contains_key(&self.names.pod(i)))
            {
                return c;
            }
            if Instant::now() > deadline {
                self.dump();
                panic!("no convergence to {spec_replicas} members within {timeout:?}: {p:#?}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn dump(&self) {
        for i in self.http.keys() {
            let log =
                std::fs::read_to_string(self.dir.join(format!("db-{i}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!(
                "----- db-{i} (last lines, newest first) -----\n{}",
                tail.join("\n")
            );
        }
    }
}

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http(port, "GET", path, "").await
}

async fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .ok()?
    .ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf))
        .await
        .ok()?
        .ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_state_machine_drives_real_nodes() {
    let Ok(bin) = std::env::var("DYNAMO_NODE_BIN") else {
        eprintln!("skipped: set DYNAMO_NODE_BIN to the dynamo binary (cargo build -p dynamo-node)");
        return;
    };
    let mut c = Cluster::new(PathBuf::from(bin), 5);

    // Create: pods start, ordinal 0 is bootstrapped, the others join.
    let ring = c.converge(3, Duration::from_secs(60)).await;
    assert_eq!(
        ring.members
            .members
            .iter()
            .filter(|m| m.status == "up")
            .count(),
        3
    );
    assert!(
        c.volumes.values().all(|&d| d),
        "every member's volume is marked once it is up"
    );
    eprintln!(
        "ok: 3 members bootstrapped and joined, ring epoch {:?}",
        ring.ring.as_ref().map(|r| r.epoch)
    );

    // Data the scale changes must not lose.
    for k in 0..60 {
        let (code, body) = http(
            c.http[&0],
            "PUT",
            &format!("/v1/kv/key-{k}"),
            &format!("value-{k}"),
        )
        .await
        .unwrap();
        assert!(code / 100 == 2, "put key-{k}: {code} {body}");
    }

    // Scale up to 5: two more join, handoffs finish.
    let ring = c.converge(5, Duration::from_secs(90)).await;
    assert_eq!(
        ring.members
            .members
            .iter()
            .filter(|m| m.status == "up")
            .count(),
        5
    );
    assert!(ring.settled());
    eprintln!(
        "ok: scaled up to 5, balance {:?}",
        ring.ring.as_ref().map(|r| r.balance)
    );

    // Scale down to 3: 4 and 3 leave, hand off, then their processes and volumes go.
    let ring = c.converge(3, Duration::from_secs(120)).await;
    assert_eq!(c.sts_replicas, 3);
    assert_eq!(c.procs.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(
        c.volumes.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([0, 1, 2])
    );
    for id in ["db-3", "db-4"] {
        assert_eq!(
            ring.members.get(id).map(|m| m.status.as_str()),
            Some("removed"),
            "{id}"
        );
    }
    eprintln!("ok: scaled down to 3 after handoffs; removed members' volumes deleted");

    // Every key survived.
    for k in 0..60 {
        let (code, body) = http(c.http[&1], "GET", &format!("/v1/kv/key-{k}"), "")
            .await
            .unwrap();
        assert_eq!(code, 200, "get key-{k}: {body}");
        assert!(body.contains(&format!("value-{k}")), "key-{k}: {body}");
    }
    eprintln!("ok: all 60 keys readable after 3 -> 5 -> 3");

    // Re-adding ordinal 3: it was removed, its volume is new and empty: it joins again.
    let ring = c.converge(4, Duration::from_secs(90)).await;
    assert_eq!(
        ring.members.get("db-3").map(|m| m.status.as_str()),
        Some("up")
    );
    eprintln!("ok: re-added db-3 joined on a fresh volume");

    // Rolling update: one member at a time, each after the ring sees the previous one back.
    c.outdated = (0..4).collect();
    c.converge(4, Duration::from_secs(120)).await;
    assert_eq!(c.restarts, vec![3, 2, 1, 0]);
    for k in 0..60 {
        let (code, body) = http(c.http[&0], "GET", &format!("/v1/kv/key-{k}"), "")
            .await
            .unwrap();
        assert!(
            code == 200 && body.contains(&format!("value-{k}")),
            "key-{k} after the rollout: {code} {body}"
        );
    }
    eprintln!("ok: rolling restart 3, 2, 1, 0 one at a time; all keys readable");

    for i in c.procs.keys().copied().collect::<Vec<_>>() {
        c.stop(i).await;
    }
    let _ = std::fs::remove_dir_all(&c.dir);
}

/// Writes a CA and a certificate for `names`, signed by it; returns (ca, cert, key) PEM.
fn test_certificates(names: &[&str]) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// `spec.peerTls.https`: the operator's admin client reaches a real member over HTTPS,
/// verifying it against the cluster's CA and host name, and refuses a member whose
/// certificate another CA signed or that does not name the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_client_verifies_members_over_https() {
    let Ok(bin) = std::env::var("DYNAMO_NODE_BIN") else {
        eprintln!("skipped: set DYNAMO_NODE_BIN to the dynamo binary (cargo build -p dynamo-node)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("dynamo-operator-https-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = test_certificates(&["localhost"]);
    let (other_ca, _, _) = test_certificates(&["localhost"]);
    for (file, pem) in [("ca.crt", &ca), ("tls.crt", &cert), ("tls.key", &key)] {
        std::fs::write(dir.join(file), pem).unwrap();
    }
    let (http_port, peer_port) = (free_port(), free_port());
    let log = std::fs::File::create(dir.join("db-0.log")).unwrap();
    let mut member = tokio::process::Command::new(&bin)
        .arg("node")
        .env("DYNAMO_ID", "db-0")
        .env("DYNAMO_LISTEN", format!("127.0.0.1:{http_port}"))
        .env("DYNAMO_PEER_LISTEN", format!("127.0.0.1:{peer_port}"))
        .env("DYNAMO_DATA_DIR", dir.join("data"))
        .env("DYNAMO_CLUSTER_TOKEN", TOKEN)
        .env("DYNAMO_PARTITIONS", "16")
        .env("DYNAMO_N", "1")
        .env("DYNAMO_R", "1")
        .env("DYNAMO_W", "1")
        .env("DYNAMO_TLS_CERT", dir.join("tls.crt"))
        .env("DYNAMO_TLS_KEY", dir.join("tls.key"))
        .env("DYNAMO_TLS_CA", dir.join("ca.crt"))
        .env("DYNAMO_TLS_HTTP", "true")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start dynamo node");

    let admin = HttpNodeAdmin::new(Duration::from_secs(3));
    let template = AddressTemplate::new(format!("http://localhost:{http_port}"));
    let at = template
        .with_https(Arc::from(ca.as_bytes()))
        .endpoint("db-0", "db-peers", "test");
    assert!(
        at.base_url.starts_with("https://localhost:"),
        "{}",
        at.base_url
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        match admin.members(&at, TOKEN).await {
            Ok(report) => break report,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the member: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                let log = std::fs::read_to_string(dir.join("db-0.log")).unwrap_or_default();
                panic!("member not reachable over HTTPS: {e}\n{log}");
            }
        }
    };
    assert!(!before.has_cluster());
    assert_eq!(
        admin.bootstrap(&at, TOKEN).await.unwrap(),
        BootstrapOutcome::Created
    );
    assert!(admin.members(&at, TOKEN).await.unwrap().has_cluster());
    assert!(admin.ring(&at, TOKEN).await.unwrap().epoch > 0);

    // Another CA: the member's certificate is not trusted.
    let untrusted = template
        .with_https(Arc::from(other_ca.as_bytes()))
        .endpoint("db-0", "db-peers", "test");
    let err = admin.members(&untrusted, TOKEN).await.unwrap_err();
    eprintln!("another CA, refused as expected: {err}");
    assert!(matches!(err, AdminError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // The right CA, but a host name the certificate does not carry.
    let wrong_name = AddressTemplate::new(format!("http://127.0.0.1:{http_port}"))
        .with_https(Arc::from(ca.as_bytes()))
        .endpoint("db-0", "db-peers", "test");
    let err = admin.members(&wrong_name, TOKEN).await.unwrap_err();
    eprintln!("host name not in the certificate, refused as expected: {err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // Plain HTTP is not served on the HTTPS port.
    let plain = template.endpoint("db-0", "db-peers", "test");
    assert!(admin.members(&plain, TOKEN).await.is_err());

    let _ = member.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
