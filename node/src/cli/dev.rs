//! `dynamo dev`: a local cluster of real member processes on loopback, to try things in.
//!
//! Member `i` (from 0) listens for HTTP on `host:base_port + i` and for peers on
//! `host:base_port + 100 + i`, keeps its data in `<data-dir>/node-i`, logs to
//! `<data-dir>/node-i.log` and has its process id in `<data-dir>/node-i.pid` while it runs.
//! The first member bootstraps the cluster, the others join it; the command reports each
//! member as it comes up, waits until every member sees the same settled ring with all of
//! them, writes the client config (see [`super::config`]) and prints the endpoints.
//!
//! Then it supervises: a member that exits is reported with how it ended (exit code or
//! signal) and the others keep serving; nothing is restarted by itself. Another shell
//! kills, stops, pauses, resumes and starts members through the supervisor's control
//! socket `<data-dir>/dev.sock` (`dynamo dev kill node-2`). Ctrl-C (or SIGTERM) stops every
//! member cleanly. Re-running it with the same data directory restarts the same cluster
//! with its data.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::client::HttpClient;
use super::config::{ClientConfig, default_path};
use crate::storage::Durability;

pub const DEV_TOKEN: &str = "dev-cluster-token-change-me";

const DEFAULT_DATA_DIR: &str = "./dynamo-dev-data";

/// The control socket's name in the data directory.
const CONTROL_SOCKET: &str = "dev.sock";

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevArgs {
    /// Act on one member of a running dev cluster (from another shell).
    #[command(subcommand)]
    pub action: Option<DevAction>,
    /// Number of members.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// First HTTP port; peers listen on base-port + 100 + i.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// Loopback address the members listen on (any 127.x.y.z: dev clusters on different
    /// addresses can share ports).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::Ipv4Addr,
    /// Where members keep their data, logs and pid files.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Partitions Q of the cluster (a power of two).
    #[arg(long, default_value_t = 256)]
    pub partitions: u32,
    /// Durability of every member: `fsync` or `periodic` (see `dynamo node --help`).
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
    /// Do not write the client config file (then pass --endpoint and --token, or export
    /// the printed DYNAMO_ENDPOINT and DYNAMO_TOKEN).
    #[arg(long)]
    pub no_client_config: bool,
}

#[derive(Subcommand, Debug, Clone)]
pub enum DevAction {
    /// Kill one member at once (SIGKILL), as a crash would; the others keep serving.
    Kill(MemberArgs),
    /// Stop one member cleanly (SIGTERM) and wait until it has exited.
    Stop(MemberArgs),
    /// Freeze one member (SIGSTOP): its connections stay open but it answers nothing.
    Pause(MemberArgs),
    /// Continue a paused member (SIGCONT).
    Resume(MemberArgs),
    /// Start a member that is not running, with its data, and wait until it answers.
    Start(MemberArgs),
}

#[derive(Args, Debug, Clone)]
pub struct MemberArgs {
    /// The member: `node-2` (or `2`).
    pub member: String,
    /// The running cluster's data directory [default: the one `dynamo dev` recorded in the
    /// client config, else ./dynamo-dev-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds `start` waits for the member to answer.
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
}

impl DevAction {
    fn parts(&self) -> (&'static str, &MemberArgs) {
        match self {
            DevAction::Kill(a) => ("kill", a),
            DevAction::Stop(a) => ("stop", a),
            DevAction::Pause(a) => ("pause", a),
            DevAction::Resume(a) => ("resume", a),
            DevAction::Start(a) => ("start", a),
        }
    }
}

/// One line from the supervisor to a member command.
#[derive(Debug, Serialize, Deserialize)]
struct ControlReply {
    ok: bool,
    message: String,
    /// The member's HTTP address, for `start` to wait on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<String>,
}

struct Member {
    index: u16,
    http: String,
    /// `None` while the member is not running.
    child: Option<Child>,
    paused: bool,
}

impl Member {
    fn name(&self) -> String {
        format!("node-{}", self.index)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
}

fn member_command(exe: &Path, args: &DevArgs, i: u16) -> Result<Command> {
    let dir = args.data_dir.join(format!("node-{i}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.data_dir.join(format!("node-{i}.log")))?;
    let host = args.host;
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .arg(format!("--id=node-{i}"))
        .arg(format!("--listen={host}:{}", args.base_port + i))
        .arg(format!("--peer-listen={host}:{}", args.base_port + 100 + i))
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
        // Harmless on a restart: a member that belongs to a cluster does not bootstrap.
        cmd.arg("--bootstrap");
    } else {
        cmd.arg(format!("--seeds={host}:{}", args.base_port + 100));
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

/// How a member's process ended, in words.
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        let name = match signal {
            1 => " (SIGHUP)",
            2 => " (SIGINT)",
            3 => " (SIGQUIT)",
            6 => " (SIGABRT)",
            9 => " (SIGKILL)",
            11 => " (SIGSEGV)",
            15 => " (SIGTERM)",
            _ => "",
        };
        format!("was killed by signal {signal}{name}")
    } else {
        match status.code() {
            Some(code) => format!("exited with code {code}"),
            None => format!("ended ({status})"),
        }
    }
}

struct Supervisor {
    args: DevArgs,
    exe: PathBuf,
    members: Vec<Member>,
}

impl Supervisor {
    fn pid_file(&self, i: u16) -> PathBuf {
        self.args.data_dir.join(format!("node-{i}.pid"))
    }

    fn spawn(&mut self, i: u16) -> Result<u32> {
        let child = member_command(&self.exe, &self.args, i)?
            .spawn()
            .with_context(|| format!("starting node-{i}"))?;
        let pid = child.id().unwrap_or(0);
        let pid_file = self.pid_file(i);
        std::fs::write(&pid_file, format!("{pid}\n"))
            .with_context(|| format!("writing {}", pid_file.display()))?;
        if let Some(m) = self.members.get_mut(usize::from(i)) {
            m.child = Some(child);
            m.paused = false;
        }
        Ok(pid)
    }

    /// Notes a member that ended: clears its process and pid file, returns the report.
    fn ended(&mut self, i: usize, status: ExitStatus) -> String {
        let Some(m) = self.members.get_mut(i) else {
            return String::new();
        };
        m.child = None;
        m.paused = false;
        let (name, index) = (m.name(), m.index);
        let _ = std::fs::remove_file(self.pid_file(index));
        format!(
            "{name} {}; the others keep serving (`dynamo dev start {name}` starts it again; log: {}/{name}.log)",
            describe_exit(status),
            self.args.data_dir.display()
        )
    }

    /// Reports every member that ended since the last look.
    fn reap(&mut self) {
        for i in 0..self.members.len() {
            let status = match self.members[i].child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => status,
                _ => continue,
            };
            let report = self.ended(i, status);
            eprintln!("dynamo dev: {report}");
        }
    }

    fn member_index(&self, name: &str) -> Result<usize, String> {
        let number = name.strip_prefix("node-").unwrap_or(name);
        match number.parse::<usize>() {
            Ok(i) if i < self.members.len() => Ok(i),
            _ => Err(format!(
                "no member {name:?}: this cluster has node-0 to node-{}",
                self.members.len().saturating_sub(1)
            )),
        }
    }

    fn signal(&self, i: usize, signal: rustix::process::Signal) -> Result<u32, String> {
        let m = &self.members[i];
        let pid = m
            .pid()
            .ok_or_else(|| format!("{} is not running", m.name()))?;
        let target = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| format!("{} has no valid process id ({pid})", m.name()))?;
        rustix::process::kill_process(target, signal)
            .map_err(|e| format!("signalling {} (pid {pid}): {e}", m.name()))?;
        Ok(pid)
    }

    /// Waits up to `limit` for member `i` to exit; its report, or why not.
    async fn wait_exit(&mut self, i: usize, limit: Duration) -> Result<String, String> {
        let name = self.members[i].name();
        let Some(child) = self.members[i].child.as_mut() else {
            return Err(format!("{name} is not running"));
        };
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(status)) => Ok(self.ended(i, status)),
            Ok(Err(e)) => Err(format!("waiting for {name}: {e}")),
            Err(_) => Err(format!(
                "{name} did not exit within {} s (`dynamo dev kill {name}` ends it)",
                limit.as_secs()
            )),
        }
    }

    /// Carries out one command from the control socket.
    async fn command(&mut self, line: &str) -> ControlReply {
        use rustix::process::Signal;
        // A member that ended meanwhile is reported before the command acts on it.
        self.reap();
        let mut words = line.split_whitespace();
        let (Some(verb), Some(member), None) = (words.next(), words.next(), words.next()) else {
            return failure(format!("expected `<verb> <member>`, got {line:?}"));
        };
        let i = match self.member_index(member) {
            Ok(i) => i,
            Err(e) => return failure(e),
        };
        let name = self.members[i].name();
        let http = self.members[i].http.clone();
        let result = match verb {
            "kill" => match self.signal(i, Signal::KILL) {
                Ok(_) => self.wait_exit(i, Duration::from_secs(10)).await,
                Err(e) => Err(e),
            },
            "stop" => {
                // A stopped process keeps SIGTERM pending until it continues.
                if self.members[i].paused {
                    let _ = self.signal(i, Signal::CONT);
                }
                match self.signal(i, Signal::TERM) {
                    Ok(_) => self.wait_exit(i, Duration::from_secs(20)).await,
                    Err(e) => Err(e),
                }
            }
            "pause" => self.signal(i, Signal::STOP).map(|pid| {
                self.members[i].paused = true;
                format!(
                    "{name} (pid {pid}) paused (SIGSTOP); `dynamo dev resume {name}` continues it"
                )
            }),
            "resume" => self.signal(i, Signal::CONT).map(|pid| {
                self.members[i].paused = false;
                format!("{name} (pid {pid}) resumed (SIGCONT)")
            }),
            "start" => match self.members[i].pid() {
                Some(pid) => Err(format!("{name} is already running (pid {pid})")),
                None => match u16::try_from(i) {
                    Ok(index) => self
                        .spawn(index)
                        .map(|pid| format!("{name} started (pid {pid}), http://{http}"))
                        .map_err(|e| format!("{e:#}")),
                    Err(_) => Err(format!("no member {i}")),
                },
            },
            other => Err(format!(
                "unknown command {other:?}: kill, stop, pause, resume or start"
            )),
        };
        match result {
            Ok(message) => {
                eprintln!("dynamo dev: {message}");
                ControlReply {
                    ok: true,
                    message,
                    http: (verb == "start").then_some(http),
                }
            }
            Err(message) => failure(message),
        }
    }

    async fn serve_control(&mut self, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(read);
        let reply =
            match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await {
                Ok(Ok(_)) => self.command(line.trim()).await,
                Ok(Err(e)) => failure(format!("reading the command: {e}")),
                Err(_) => failure("no command within 5 s".to_string()),
            };
        let mut body = serde_json::to_vec(&reply).unwrap_or_default();
        body.push(b'\n');
        // The caller may have gone away; nothing to tell it then.
        let _ = write.write_all(&body).await;
    }

    /// Stops every running member cleanly (SIGTERM, then waits; SIGKILL after 10 s).
    async fn stop_all(&mut self) {
        use rustix::process::Signal;
        for i in 0..self.members.len() {
            if self.members[i].paused {
                let _ = self.signal(i, Signal::CONT);
            }
            // SIGTERM lets the member close its store cleanly.
            let _ = self.signal(i, Signal::TERM);
        }
        for i in 0..self.members.len() {
            let Some(child) = self.members[i].child.as_mut() else {
                continue;
            };
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
            self.members[i].child = None;
            let _ = std::fs::remove_file(self.pid_file(self.members[i].index));
        }
    }
}

fn failure(message: String) -> ControlReply {
    ControlReply {
        ok: false,
        message,
        http: None,
    }
}

/// Binds the control socket, refusing when a dev cluster already runs on this directory.
async fn control_socket(data_dir: &Path) -> Result<UnixListener> {
    let path = data_dir.join(CONTROL_SOCKET);
    if UnixStream::connect(&path).await.is_ok() {
        bail!(
            "a dev cluster already runs with the data directory {}",
            data_dir.display()
        );
    }
    // Left by a supervisor that did not end cleanly.
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))
}

pub async fn run(mut args: DevArgs) -> Result<i32> {
    if let Some(action) = args.action.take() {
        return member_action(action).await;
    }
    if args.nodes == 0 || args.nodes > 99 {
        bail!("--nodes must be between 1 and 99");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    // Absolute, so the client config leads member commands from any directory to it.
    args.data_dir = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let listener = control_socket(&args.data_dir).await?;
    let exe = std::env::current_exe().context("locating the dynamo executable")?;
    let members = (0..args.nodes)
        .map(|i| Member {
            index: i,
            http: format!("{}:{}", args.host, args.base_port + i),
            child: None,
            paused: false,
        })
        .collect();
    let mut sup = Supervisor { args, exe, members };
    let stop = super::wait_for_signal();
    tokio::pin!(stop);
    let started = async {
        for i in 0..sup.args.nodes {
            sup.spawn(i)?;
        }
        settle(&sup.args, &mut sup.members).await
    };
    let result = tokio::select! {
        r = started => r,
        _ = &mut stop => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = result {
        sup.stop_all().await;
        let _ = std::fs::remove_file(sup.args.data_dir.join(CONTROL_SOCKET));
        return Err(e);
    }
    let first = format!("http://{}", sup.members[0].http);
    let config_note = if sup.args.no_client_config {
        None
    } else {
        Some(write_client_config(&first, &sup.args.data_dir)?)
    };
    print_summary(&sup, &first, config_note.as_deref())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    sup.serve_control(stream).await;
                }
            }
            _ = tick.tick() => sup.reap(),
        }
    }
    eprintln!("dynamo dev: stopping the cluster");
    sup.stop_all().await;
    let _ = std::fs::remove_file(sup.args.data_dir.join(CONTROL_SOCKET));
    Ok(0)
}

/// Records the dev cluster in the client config; returns where.
fn write_client_config(endpoint: &str, data_dir: &Path) -> Result<PathBuf> {
    let path = default_path().context(
        "no place for the client config (set HOME, XDG_CONFIG_HOME or DYNAMO_CLIENT_CONFIG, or pass --no-client-config)",
    )?;
    ClientConfig {
        endpoint: Some(endpoint.to_string()),
        token: Some(DEV_TOKEN.to_string()),
        dev_data_dir: Some(data_dir.to_path_buf()),
    }
    .save(&path)?;
    Ok(path)
}

fn print_summary(sup: &Supervisor, first: &str, config: Option<&Path>) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "dynamo dev: {} members up (data, logs and pid files in {})",
        sup.members.len(),
        sup.args.data_dir.display()
    )?;
    for m in &sup.members {
        writeln!(
            out,
            "  {}  http://{}  pid {}",
            m.name(),
            m.http,
            m.pid().unwrap_or(0)
        )?;
    }
    match config {
        Some(path) => writeln!(
            out,
            "client config written to {}: `dynamo get greeting` needs no flags",
            path.display()
        )?,
        None => writeln!(out, "no client config written (--no-client-config)")?,
    }
    writeln!(out, "for other shells and tools:")?;
    writeln!(
        out,
        "export DYNAMO_ENDPOINT={first} DYNAMO_TOKEN={DEV_TOKEN}"
    )?;
    writeln!(out, "try: dynamo put greeting hello && dynamo get greeting")?;
    writeln!(
        out,
        "break it from another shell: dynamo dev kill|stop|pause|resume|start node-1"
    )?;
    writeln!(out, "Ctrl-C stops the cluster.")?;
    out.flush()?;
    Ok(())
}

/// `dynamo dev kill node-2` and its siblings: asks the running supervisor.
async fn member_action(action: DevAction) -> Result<i32> {
    let (verb, args) = action.parts();
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => default_path()
            .and_then(|path| ClientConfig::load(&path).ok())
            .and_then(|c| c.dev_data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
    };
    let path = data_dir.join(CONTROL_SOCKET);
    let stream = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "no dev cluster runs with the data directory {} (cannot reach {}); pass --data-dir",
            data_dir.display(),
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{verb} {}\n", args.member).as_bytes())
        .await?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(60),
        BufReader::new(read).read_line(&mut line),
    )
    .await
    .context("the dev supervisor did not answer within 60 s")??;
    let reply: ControlReply = serde_json::from_str(&line)
        .with_context(|| format!("the dev supervisor answered {line:?}"))?;
    if !reply.ok {
        eprintln!("error: {}", reply.message);
        return Ok(super::EXIT_ERROR);
    }
    println!("{}", reply.message);
    if let Some(http) = reply.http {
        let client = HttpClient::new(&http, None, Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
        loop {
            if client
                .admin_get("/healthz")
                .await
                .is_ok_and(|r| r.status.is_success())
            {
                println!("{} is up", args.member);
                return Ok(0);
            }
            if Instant::now() > deadline {
                eprintln!(
                    "error: {} did not answer within {} s; see its log in {}",
                    args.member,
                    args.timeout_s,
                    data_dir.display()
                );
                return Ok(super::EXIT_UNAVAILABLE);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(0)
}

/// Waits for every member to answer, joins them, and waits for one settled ring; reports
/// each step on standard error.
async fn settle(args: &DevArgs, members: &mut [Member]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    // Lines above the spinner; printed even when standard error is not a terminal (the
    // spinner itself is hidden then).
    let say = |line: String| bar.suspend(|| eprintln!("dynamo dev: {line}"));
    let clients: Vec<HttpClient> = members
        .iter()
        .map(|m| HttpClient::new(&m.http, Some(DEV_TOKEN.to_string()), Duration::from_secs(5)))
        .collect();
    for (i, c) in clients.iter().enumerate() {
        bar.set_message(format!("waiting for node-{i} to start"));
        loop {
            if let Some(m) = members.get_mut(i)
                && let Some(child) = m.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bar.finish_and_clear();
                bail!(
                    "node-{i} {}; see {}/node-{i}.log",
                    describe_exit(status),
                    args.data_dir.display()
                );
            }
            if c.admin_get("/healthz")
                .await
                .is_ok_and(|r| r.status.is_success())
            {
                say(format!("node-{i} up at {}", c.endpoint()));
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
                say(format!("node-{i} joined"));
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
            eprintln!("dynamo dev: the members agree on the ring");
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
    fn member_commands_parse_and_do_not_mix_with_the_cluster_flags() {
        let kill = dev_args(&["kill", "node-2", "--data-dir", "/d"]);
        match kill.action {
            Some(DevAction::Kill(m)) => {
                assert_eq!(m.member, "node-2");
                assert_eq!(m.data_dir, Some(PathBuf::from("/d")));
            }
            other => panic!("{other:?}"),
        }
        assert!(dev_args(&["--nodes", "5"]).action.is_none());
        let mixed = Cli::try_parse_from(["dynamo", "dev", "--nodes", "3", "kill", "node-2"]);
        assert!(mixed.is_err(), "cluster flags with a member command");
    }

    #[test]
    fn a_member_ending_is_told_by_its_code_or_signal() {
        use std::os::unix::process::ExitStatusExt;
        // Raw wait statuses: a signal in the low bits, an exit code in the next byte.
        assert_eq!(
            describe_exit(ExitStatus::from_raw(9)),
            "was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(1 << 8)),
            "exited with code 1"
        );
        assert_eq!(describe_exit(ExitStatus::from_raw(0)), "exited with code 0");
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
