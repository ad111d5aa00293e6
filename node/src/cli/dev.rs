//! `dynamo dev`: a local cluster of real member processes on loopback.
//!
//! Member `i` (from 0) listens for HTTP on `base_port + i` and for peers on
//! `base_port + 100 + i`, keeps its data in `<data-dir>/node-i` and logs to
//! `<data-dir>/node-i.log`. The first member bootstraps the cluster, the others join it;
//! the command waits until every member sees the same settled ring with all of them, prints
//! the endpoints, and on Ctrl-C stops them all cleanly (SIGTERM, then waits). Re-running it
//! with the same data directory restarts the same cluster with its data.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::client::HttpClient;
use crate::storage::Durability;

pub const DEV_TOKEN: &str = "dev-cluster-token-change-me";

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Number of members.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// First HTTP port; peers listen on base-port + 100 + i.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// Where members keep their data and logs.
    #[arg(long, default_value = "./dynamo-dev-data")]
    pub data_dir: PathBuf,
    #[arg(long, default_value_t = 256)]
    pub partitions: u32,
    #[arg(long, default_value = "fsync")]
    pub durability: Durability,
    /// Seconds to wait for the cluster to settle.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
    /// Worker threads of each member [default: the CPUs divided among the members, at
    /// least one]. The members share this machine; a runtime per member with a thread per
    /// CPU would put several threads on every CPU, and their wake-ups and work stealing
    /// cost about a fifth of the throughput on two CPUs (docs/benchmarks.md).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub member_worker_threads: Option<u16>,
    /// Extra flags passed to every member (e.g. "--gossip-interval-ms=200").
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
}

struct Member {
    index: u16,
    http: String,
    child: Child,
}

fn member_command(exe: &Path, args: &DevArgs, i: u16) -> Result<Command> {
    let dir = args.data_dir.join(format!("node-{i}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.data_dir.join(format!("node-{i}.log")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .arg(format!("--id=node-{i}"))
        .arg(format!("--listen=127.0.0.1:{}", args.base_port + i))
        .arg(format!(
            "--peer-listen=127.0.0.1:{}",
            args.base_port + 100 + i
        ))
        .arg(format!("--data-dir={}", dir.display()))
        .arg(format!("--cluster-token={DEV_TOKEN}"))
        .arg(format!("--partitions={}", args.partitions))
        .arg(format!(
            "--durability={}",
            match args.durability {
                Durability::Fsync => "fsync",
                Durability::Periodic => "periodic",
            }
        ))
        .args(&args.node_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    // A count given to every member by --node-arg wins (each flag may be given once).
    if !args
        .node_args
        .iter()
        .any(|a| a.starts_with("--worker-threads"))
    {
        cmd.arg(format!("--worker-threads={}", member_worker_threads(args)));
    }
    if !args
        .node_args
        .iter()
        .any(|a| a.starts_with("--engine-threads"))
    {
        cmd.arg(format!("--engine-threads={}", cpu_share(args.nodes)));
    }
    if i == 0 {
        cmd.arg("--bootstrap");
    } else {
        cmd.arg(format!("--seeds=127.0.0.1:{}", args.base_port + 100));
    }
    Ok(cmd)
}

/// Threads per member: the ones asked for, or this machine's CPUs shared among the members.
fn member_worker_threads(args: &DevArgs) -> u16 {
    args.member_worker_threads
        .unwrap_or_else(|| cpu_share(args.nodes))
}

/// This machine's CPUs shared among `nodes` members, at least one each. Each member's
/// storage engine gets this many flush and compaction threads too: with fjall's one per
/// CPU, one member flushing and compacting at once took every CPU of the machine, and the
/// other members' requests queued for up to 100 ms (docs/benchmarks.md).
fn cpu_share(nodes: u16) -> u16 {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let per_member = cpus / usize::from(nodes.max(1));
    u16::try_from(per_member.max(1)).unwrap_or(u16::MAX)
}

pub async fn run(args: DevArgs) -> Result<i32> {
    if args.nodes == 0 || args.nodes > 99 {
        bail!("--nodes must be between 1 and 99");
    }
    std::fs::create_dir_all(&args.data_dir)?;
    let exe = std::env::current_exe().context("locating the dynamo executable")?;
    let mut members = Vec::new();
    for i in 0..args.nodes {
        let child = member_command(&exe, &args, i)?
            .spawn()
            .context("starting a member")?;
        members.push(Member {
            index: i,
            http: format!("127.0.0.1:{}", args.base_port + i),
            child,
        });
    }
    let result = tokio::select! {
        r = settle(&args, &mut members) => r,
        _ = super::wait_for_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    match result {
        Ok(()) => {
            println!(
                "dynamo dev: {} members up (data and logs in {})",
                members.len(),
                args.data_dir.display()
            );
            for m in &members {
                println!("  node-{}  http://{}", m.index, m.http);
            }
            println!("admin token: {DEV_TOKEN}");
            println!(
                "try: curl -X PUT --data-binary hello http://{}/v1/kv/greeting",
                members[0].http
            );
            println!("     curl http://{}/v1/kv/greeting", members[0].http);
            println!("Ctrl-C stops the cluster.");
            let code = tokio::select! {
                _ = super::wait_for_signal() => 0,
                i = watch_children(&mut members) => {
                    eprintln!("member node-{i} exited; stopping the cluster (see {}/node-{i}.log)", args.data_dir.display());
                    1
                }
            };
            stop_all(&mut members).await;
            Ok(code)
        }
        Err(e) => {
            stop_all(&mut members).await;
            Err(e)
        }
    }
}

async fn watch_children(members: &mut [Member]) -> u16 {
    loop {
        for m in members.iter_mut() {
            if let Ok(Some(_)) = m.child.try_wait() {
                return m.index;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for every member to answer, joins them, and waits for one settled ring.
async fn settle(args: &DevArgs, members: &mut [Member]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let clients: Vec<HttpClient> = members
        .iter()
        .map(|m| HttpClient::new(&m.http, Some(DEV_TOKEN.to_string()), Duration::from_secs(5)))
        .collect();
    for (i, c) in clients.iter().enumerate() {
        bar.set_message(format!("waiting for node-{i} to start"));
        loop {
            if let Some(m) = members.get_mut(i)
                && let Ok(Some(status)) = m.child.try_wait()
            {
                bar.finish_and_clear();
                bail!(
                    "node-{i} exited with {status}; see {}/node-{i}.log",
                    args.data_dir.display()
                );
            }
            if c.admin_get("/healthz")
                .await
                .is_ok_and(|r| r.status.is_success())
            {
                break;
            }
            if Instant::now() > deadline {
                bar.finish_and_clear();
                bail!(
                    "node-{i} did not start in time; see {}/node-{i}.log",
                    args.data_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Join every other member through the first (it forwards to the claimant). A member not
    // yet known by gossip is refused; retry until it is.
    for i in 1..clients.len() {
        bar.set_message(format!("joining node-{i}"));
        loop {
            let reply = clients[0]
                .admin_post(
                    "/v1/cluster/join",
                    serde_json::json!({ "member": format!("node-{i}") }),
                )
                .await;
            if reply.as_ref().is_ok_and(|r| r.status.is_success()) {
                break;
            }
            if Instant::now() > deadline {
                bar.finish_and_clear();
                let why = reply.map(|r| r.text()).unwrap_or_else(|e| e.to_string());
                bail!("node-{i} could not join: {why}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    bar.set_message("waiting for the members to agree on the ring");
    loop {
        if agreed(&clients).await {
            bar.finish_and_clear();
            return Ok(());
        }
        if Instant::now() > deadline {
            bar.finish_and_clear();
            bail!(
                "the members did not agree on a settled ring within {} s",
                args.timeout_s
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every member reports the same epoch, no move in flight, and all members in the ring.
pub async fn agreed(clients: &[HttpClient]) -> bool {
    let mut epoch = None;
    for c in clients {
        let Ok(reply) = c.admin_get("/v1/cluster/ring").await else {
            return false;
        };
        let Some(json) = reply.json() else {
            return false;
        };
        if json["inTransition"].as_bool() != Some(false)
            || json["members"].as_array().map(Vec::len) != Some(clients.len())
        {
            return false;
        }
        let e = json["epoch"].as_u64();
        if epoch.is_some() && epoch != e {
            return false;
        }
        epoch = e;
    }
    true
}

async fn stop_all(members: &mut [Member]) {
    for m in members.iter() {
        if let Some(pid) = m.child.id() {
            // SIGTERM lets the member close its store cleanly.
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }
    for m in members.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(10), m.child.wait())
            .await
            .is_err()
        {
            let _ = m.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
    use super::*;

    fn dev_args(argv: &[&str]) -> DevArgs {
        let argv = ["dynamo", "dev"].iter().chain(argv);
        match Cli::try_parse_from(argv).map(|cli| cli.command) {
            Ok(Command::Dev(args)) => args,
            other => panic!("not dev arguments: {other:?}"),
        }
    }

    #[test]
    fn members_share_the_cpus_and_get_at_least_one_thread() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let three = member_worker_threads(&dev_args(&["--nodes", "3"]));
        assert_eq!(usize::from(three), (cpus / 3).max(1));
        let ninety_nine = member_worker_threads(&dev_args(&["--nodes", "99"]));
        assert_eq!(usize::from(ninety_nine), (cpus / 99).max(1));
        let asked = dev_args(&["--nodes", "3", "--member-worker-threads", "4"]);
        assert_eq!(member_worker_threads(&asked), 4);
    }

    /// The member's flags that start with `flag`, for `dynamo dev` given `extra`.
    fn member_flags(flag: &str, extra: &[&str]) -> Result<Vec<String>> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().display().to_string();
        let mut argv = vec!["--member-worker-threads", "2", "--data-dir", &data_dir];
        argv.extend_from_slice(extra);
        let cmd = member_command(Path::new("dynamo"), &dev_args(&argv), 1)?;
        Ok(cmd
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .filter(|a| a.starts_with(flag))
            .collect())
    }

    #[test]
    fn a_member_is_started_with_its_share_of_threads() -> Result<()> {
        assert_eq!(
            member_flags("--worker-threads", &[])?,
            ["--worker-threads=2"]
        );
        // Given to every member by --node-arg, the count is passed once, as given.
        assert_eq!(
            member_flags("--worker-threads", &["--node-arg=--worker-threads=3"])?,
            ["--worker-threads=3"]
        );
        Ok(())
    }

    #[test]
    fn a_member_is_started_with_its_share_of_engine_threads() -> Result<()> {
        // `member_flags` asks for two request threads per member: those do not change the
        // engine's share.
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        for nodes in ["1", "3", "99"] {
            let share = (cpus / nodes.parse::<usize>()?).max(1);
            assert_eq!(
                member_flags("--engine-threads", &["--nodes", nodes])?,
                [format!("--engine-threads={share}")],
                "{nodes} members on {cpus} CPUs"
            );
        }
        assert_eq!(
            member_flags("--engine-threads", &["--node-arg=--engine-threads=2"])?,
            ["--engine-threads=2"]
        );
        Ok(())
    }

    #[test]
    fn zero_worker_threads_is_refused() {
        let zero = Cli::try_parse_from(["dynamo", "dev", "--member-worker-threads", "0"]);
        assert!(zero.is_err());
        let node =
            |n: &str| Cli::try_parse_from(["dynamo", "node", "--id", "a", "--worker-threads", n]);
        assert!(node("0").is_err());
        assert_eq!(
            node("3").map(|cli| cli.worker_threads()).ok(),
            Some(Some(3))
        );
        let default = Cli::try_parse_from(["dynamo", "node", "--id", "a"]);
        assert_eq!(default.map(|cli| cli.worker_threads()).ok(), Some(None));
    }

    #[test]
    fn a_member_takes_its_engine_threads_from_the_flag_and_refuses_zero() {
        let engine_threads = |argv: &[&str]| {
            let argv = [
                "dynamo",
                "node",
                "--id",
                "a",
                "--cluster-token",
                "a-token-of-sixteen-chars",
            ]
            .iter()
            .chain(argv);
            match Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(Command::Node(args)) => super::super::node_config(&args)
                    .map(|c| c.engine_threads.map(usize::from))
                    .map_err(|e| e.to_string()),
                Ok(other) => panic!("not node arguments: {other:?}"),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(engine_threads(&["--engine-threads", "2"]), Ok(Some(2)));
        assert_eq!(engine_threads(&[]), Ok(None), "the engine's own count");
        for bad in ["0", "65", "many"] {
            let refused = engine_threads(&["--engine-threads", bad]);
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|e| e.contains("--engine-threads")),
                "{bad}: {refused:?}"
            );
        }
    }
}
