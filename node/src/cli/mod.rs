//! The `dynamo` command line: `node` runs a member, `dev` a local cluster, and the client
//! verbs talk to a member's HTTP API.
//!
//! Exit codes scripts can rely on (also in `dynamo --help` and docs/cli.md): see
//! [`EXIT_CODES_HELP`].

pub mod client;
pub mod config;
mod dev;
mod output;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use http::StatusCode;

use crate::clock::ConflictMode;
use crate::config::{
    ClusterSettings, FailureDetector, Limits, NodeConfig, ReadFanout, Secret, validate_member_id,
};
use crate::env::Env;
use crate::node::Node;
use crate::storage::{Durability, FjallEngine};
use client::{HttpClient, Reply};

/// `println!` that returns the error instead of panicking on it: when the reader closes
/// the pipe early (`dynamo ring | head -1`), the command ends quietly (see
/// [`is_broken_pipe`]).
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)
    };
}

/// Whether the command failed only because its output's reader went away, which is how a
/// reader says it has read enough: `main` then exits 0 without a message.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub const EXIT_ERROR: i32 = 1;
/// Given by clap for bad usage (an unknown flag, a missing argument).
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_NOT_FOUND: i32 = 3;
pub const EXIT_UNAVAILABLE: i32 = 4;
pub const EXIT_REFUSED: i32 = 5;
pub const EXIT_AUTH: i32 = 6;
pub const EXIT_SIBLINGS: i32 = 7;

/// The exit codes, as `dynamo --help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  error (anything not below)
  2  bad usage (unknown flag, missing argument)
  3  key not found
  4  unavailable: quorum not reached, member unreachable, not ready, or timed out
  5  refused: conflict or bad request (4xx other than 401/403/404)
  6  authentication failed (missing or wrong token)
  7  `get` found concurrent values (siblings); all are printed

Client verbs find their member through --endpoint, else DYNAMO_ENDPOINT, else the client
config `dynamo dev` writes ($XDG_CONFIG_HOME/dynamo/client.json), else 127.0.0.1:8080.";

/// The exit code for an error that ended a command: unreachable members and timeouts are
/// [`EXIT_UNAVAILABLE`], everything else [`EXIT_ERROR`].
pub fn exit_code_for_error(error: &anyhow::Error) -> i32 {
    let unreachable = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<client::ClientError>(),
            Some(client::ClientError::Unreachable { .. } | client::ClientError::Timeout)
        )
    });
    if unreachable {
        EXIT_UNAVAILABLE
    } else {
        EXIT_ERROR
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "dynamo",
    version,
    about = "A Dynamo-style distributed key-value store.",
    after_help = EXIT_CODES_HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Worker threads the async runtime should start, when the command names a number.
    pub fn worker_threads(&self) -> Option<usize> {
        match &self.command {
            Command::Node(args) => args.worker_threads.map(usize::from),
            Command::Bench(args) => args.threads.map(usize::from),
            _ => None,
        }
    }

    /// The async runtime for the command. One thread (asked for, or the only CPU the
    /// process may use) gets the current-thread scheduler: the multi-thread one with one
    /// worker still hands every task woken by an I/O event through its shared queue and
    /// wakes its own driver with an eventfd write, and the current-thread scheduler gave
    /// three members on two CPUs 1.22x the closed-loop throughput (docs/benchmarks.md).
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let only_cpu = || std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
        let mut builder = match self.worker_threads() {
            Some(1) => tokio::runtime::Builder::new_current_thread(),
            Some(threads) => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(threads);
                b
            }
            None if only_cpu() && std::env::var_os("TOKIO_WORKER_THREADS").is_none() => {
                tokio::runtime::Builder::new_current_thread()
            }
            // tokio's default: TOKIO_WORKER_THREADS, else one worker per CPU.
            None => tokio::runtime::Builder::new_multi_thread(),
        };
        builder.enable_all().build()
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one member of a cluster.
    Node(Box<NodeArgs>),
    /// Run a local cluster of real member processes on loopback (Ctrl-C stops it).
    Dev(dev::DevArgs),
    /// Read a key: the value on standard output; concurrent values (siblings) each with
    /// its version, exit code 7.
    Get(GetArgs),
    /// Write a key (value from the argument, --file, or standard input).
    Put(PutArgs),
    /// Delete a key.
    Delete(DeleteArgs),
    /// List the cluster's members as one member sees them.
    Members(AdminArgs),
    /// One line per member: state, liveness, partitions owned, hints and handoffs pending.
    Status(AdminArgs),
    /// Check that a member answers and is ready to serve (exit code 4 when not).
    Ping(PingArgs),
    /// Show the ring: epoch, settings, ownership and balance.
    Ring(AdminArgs),
    /// Add a member to the cluster (it must be running with --seeds pointing at the cluster).
    Join(JoinArgs),
    /// Decommission a member: it hands off its partitions, then leaves.
    Leave(LeaveArgs),
    /// Show ownership transfers in progress.
    Handoffs(AdminArgs),
    /// Load a cluster with a YCSB-style workload and report throughput and latency.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The store to drive: dynamo-rs, or a peer it is compared with (bench/compare.sh).
    #[arg(long, value_enum, default_value = "dynamo")]
    pub target: crate::bench::TargetKind,
    /// Members' addresses, comma-separated (requests are spread over them): HTTP for
    /// dynamo, etcd (its client URL) and nginx, CQL (host:9042) for cassandra.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"
    )]
    pub endpoints: Vec<String>,
    /// Client token, if the cluster requires one.
    #[arg(long, env = "DYNAMO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, value_enum, default_value = "a")]
    pub workload: crate::bench::Workload,
    #[arg(long, value_enum, default_value = "zipfian")]
    pub distribution: crate::bench::Distribution,
    /// Number of records (keys); written once before the run unless --no-load.
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,
    /// Concurrent requests (closed loop), or the bound on outstanding requests (fixed
    /// rate: split evenly among the endpoints, a pool per member; a request due while its
    /// endpoint's are all busy waits, and the wait counts in its latency).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Stop after this many operations even if time remains.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_ops: u64,
    /// Fixed rate in operations per second (open loop); omit for closed loop.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Skip the load phase (the records already exist).
    #[arg(long)]
    pub no_load: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write latency over time to this CSV file: for every 10 ms of scheduled start
    /// times, its Unix time in ms, operations, errors and the slowest operation's µs.
    #[arg(long)]
    pub timeline: Option<PathBuf>,
    /// Label of the target in the report.
    #[arg(long, default_value = "dynamo-rs")]
    pub label: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Threads of the generator's async runtime (default: one per CPU). Fewer take less
    /// CPU from stores sharing the machine, but queue the answers that arrive together
    /// (measured in docs/benchmarks.md).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ReadFanoutArg {
    Quorum,
    All,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum DetectorKind {
    Phi,
    Timeout,
}

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// Member id: stable across restarts (a pod name, a hostname).
    #[arg(long, env = "DYNAMO_ID")]
    pub id: String,
    /// Address the client/admin HTTP API binds.
    #[arg(long, env = "DYNAMO_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Address others use to reach the HTTP API [default: --listen].
    #[arg(long, env = "DYNAMO_ADVERTISE")]
    pub advertise: Option<String>,
    /// Address the internal RPC server binds.
    #[arg(long, env = "DYNAMO_PEER_LISTEN", default_value = "127.0.0.1:7070")]
    pub peer_listen: String,
    /// Address other members use to reach this one [default: --peer-listen].
    #[arg(long, env = "DYNAMO_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// Where the member keeps its data.
    #[arg(long, env = "DYNAMO_DATA_DIR", default_value = "./dynamo-data")]
    pub data_dir: PathBuf,
    /// `fsync`: acknowledge writes once fsynced (group commit). `periodic`: fsync every
    /// --sync-interval-ms (a killed process loses nothing, a lost machine up to one interval).
    #[arg(long, env = "DYNAMO_DURABILITY", default_value = "fsync")]
    pub durability: Durability,
    #[arg(long, env = "DYNAMO_SYNC_INTERVAL_MS", default_value_t = 1000)]
    pub sync_interval_ms: u64,
    /// Block cache of the storage engine, in MiB.
    #[arg(long, env = "DYNAMO_CACHE_MB", default_value_t = 64)]
    pub cache_mb: u64,
    /// Threads that serve requests [default: one per CPU the process may use]. Fewer
    /// than the CPUs when several members share a machine (`dynamo dev` does this).
    #[arg(long, env = "DYNAMO_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Threads that flush memtables and compact tables in the storage engine [default: one
    /// per CPU the process may use, at most four]. Fewer than the CPUs when several members
    /// share a machine (`dynamo dev` does this): each background thread can take a whole CPU
    /// for a flush or a compaction.
    #[arg(long, env = "DYNAMO_ENGINE_THREADS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub engine_threads: Option<u16>,
    /// Peer (RPC) addresses of members to contact first; DNS names allowed.
    #[arg(long, env = "DYNAMO_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// Create a new cluster with this member alone if it is not in one yet.
    #[arg(long, env = "DYNAMO_BOOTSTRAP")]
    pub bootstrap: bool,
    /// The cluster token (authenticates members to each other and admin API calls).
    #[arg(long, env = "DYNAMO_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    /// Read the cluster token from a file (e.g. a mounted Secret).
    #[arg(long, env = "DYNAMO_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,
    /// Further cluster tokens accepted from other members and admin callers, for a token
    /// rotation (comma-separated). See docs/security.md.
    #[arg(
        long,
        env = "DYNAMO_ACCEPT_CLUSTER_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub accept_cluster_tokens: Vec<String>,
    /// Read further accepted cluster tokens from a file, one per line.
    #[arg(long, env = "DYNAMO_ACCEPT_CLUSTER_TOKENS_FILE")]
    pub accept_cluster_tokens_file: Option<PathBuf>,
    /// When set, client API calls need `Authorization: Bearer <token>` with one of these
    /// tokens (comma-separated).
    #[arg(
        long,
        env = "DYNAMO_CLIENT_TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub client_token: Vec<String>,
    /// Read client tokens from a file, one per line.
    #[arg(long, env = "DYNAMO_CLIENT_TOKEN_FILE")]
    pub client_token_file: Option<PathBuf>,
    /// Partitions Q (power of two); used only when this member bootstraps a cluster.
    #[arg(long, env = "DYNAMO_PARTITIONS", default_value_t = 256)]
    pub partitions: u32,
    /// Replicas per key (bootstrap only).
    #[arg(long, env = "DYNAMO_N", default_value_t = 3)]
    pub n: usize,
    /// Default read quorum (bootstrap only).
    #[arg(long, env = "DYNAMO_R", default_value_t = 2)]
    pub r: usize,
    /// Default write quorum (bootstrap only).
    #[arg(long, env = "DYNAMO_W", default_value_t = 2)]
    pub w: usize,
    /// Conflict resolution (bootstrap only): keep `siblings`, or last-write-wins `lww`.
    #[arg(long, env = "DYNAMO_CONFLICTS", default_value = "siblings")]
    pub conflicts: ConflictMode,
    /// Writes that would leave a key with more siblings are refused (bootstrap only).
    #[arg(long, env = "DYNAMO_MAX_SIBLINGS", default_value_t = 100)]
    pub max_siblings: usize,
    #[arg(long, env = "DYNAMO_MAX_KEY_BYTES", default_value_t = 1024)]
    pub max_key_bytes: usize,
    #[arg(long, env = "DYNAMO_MAX_VALUE_BYTES", default_value_t = 1 << 20)]
    pub max_value_bytes: usize,
    /// Client requests processed at once; more get a retryable 503 `overloaded`.
    #[arg(long, env = "DYNAMO_MAX_INFLIGHT_REQUESTS", default_value_t = 1024)]
    pub max_inflight_requests: usize,
    /// Open HTTP connections; more are closed on accept.
    #[arg(long, env = "DYNAMO_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Open peer-port connections (authenticated or not); more are closed on accept.
    #[arg(long, env = "DYNAMO_MAX_PEER_CONNECTIONS", default_value_t = crate::config::DEFAULT_MAX_PEER_CONNECTIONS)]
    pub max_peer_connections: usize,
    /// Open peer-port connections from one source address; more are closed on accept.
    #[arg(long, env = "DYNAMO_MAX_PEER_CONNECTIONS_PER_IP", default_value_t = crate::config::DEFAULT_MAX_PEER_CONNECTIONS_PER_IP)]
    pub max_peer_connections_per_ip: usize,
    /// A peer connection that has not completed its handshake this long after accept is closed.
    #[arg(long, env = "DYNAMO_PEER_HANDSHAKE_TIMEOUT_MS", default_value_t = crate::config::DEFAULT_PEER_HANDSHAKE_TIMEOUT_MS)]
    pub peer_handshake_timeout_ms: u64,
    #[arg(long, env = "DYNAMO_GOSSIP_INTERVAL_MS", default_value_t = 1000)]
    pub gossip_interval_ms: u64,
    /// Failure detector: phi-accrual, or a plain timeout.
    #[arg(
        long,
        env = "DYNAMO_FAILURE_DETECTOR",
        value_enum,
        default_value = "phi"
    )]
    pub failure_detector: DetectorKind,
    #[arg(long, env = "DYNAMO_PHI_THRESHOLD", default_value_t = 8.0)]
    pub phi_threshold: f64,
    /// With `--failure-detector timeout`: silence after which a member is down.
    #[arg(long, env = "DYNAMO_DOWN_AFTER_MS", default_value_t = 5000)]
    pub down_after_ms: u64,
    /// Wait for a replica's answer before fallbacks are asked to stand in for it (its
    /// answer still counts until --request-timeout-ms).
    #[arg(long, env = "DYNAMO_REPLICA_TIMEOUT_MS", default_value_t = 1000)]
    pub replica_timeout_ms: u64,
    #[arg(long, env = "DYNAMO_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// Replicas a read asks at first: `quorum` asks R (this member first) and one more
    /// after a failure or --speculative-read-ms; `all` asks all N and repairs every stale
    /// one from the replies.
    #[arg(long, env = "DYNAMO_READ_FANOUT", value_enum, default_value = "quorum")]
    pub read_fanout: ReadFanoutArg,
    /// With `--read-fanout quorum`: wait for R replies this long before asking another
    /// replica.
    #[arg(long, env = "DYNAMO_SPECULATIVE_READ_MS", default_value_t = crate::config::DEFAULT_SPECULATIVE_READ_MS)]
    pub speculative_read_ms: u64,
    #[arg(long, env = "DYNAMO_HINT_INTERVAL_MS", default_value_t = 1000)]
    pub hint_interval_ms: u64,
    #[arg(long, env = "DYNAMO_ANTI_ENTROPY_INTERVAL_S", default_value_t = 60)]
    pub anti_entropy_interval_s: u64,
    /// Bytes per second for handoff and repair transfers (0 = unthrottled).
    #[arg(long, env = "DYNAMO_TRANSFER_RATE_BYTES", default_value_t = 64 << 20)]
    pub transfer_rate_bytes: u64,
    /// Tombstones older than this and held by every replica are removed.
    #[arg(long, env = "DYNAMO_TOMBSTONE_GRACE_S", default_value_t = 3600)]
    pub tombstone_grace_s: u64,
    #[arg(long, env = "DYNAMO_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// TLS certificate chain (PEM). With --tls-key and --tls-ca, every connection between
    /// members is TLS.
    #[arg(long, env = "DYNAMO_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "DYNAMO_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) that signed the members' certificates.
    #[arg(long, env = "DYNAMO_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// Serve the HTTP API over TLS too (https).
    #[arg(long, env = "DYNAMO_TLS_HTTP", requires = "tls_cert")]
    pub tls_http: bool,
}

#[derive(Args, Debug)]
pub struct Endpoint {
    /// A member's HTTP address (`host:port`, `http://…` or `https://…`) [default: the client
    /// config that `dynamo dev` writes, else 127.0.0.1:8080].
    #[arg(long, short = 'e', env = "DYNAMO_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Bearer token (the cluster token for admin verbs; the client token if one is set)
    /// [default: the client config's token, when its endpoint is used].
    #[arg(long, env = "DYNAMO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Request timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// CA certificate (PEM) to verify an `https://` endpoint.
    #[arg(long, env = "DYNAMO_CA")]
    pub ca: Option<PathBuf>,
    /// The client config file [default: $XDG_CONFIG_HOME/dynamo/client.json, else
    /// ~/.config/dynamo/client.json].
    #[arg(long, env = "DYNAMO_CLIENT_CONFIG")]
    pub client_config: Option<PathBuf>,
}

impl Endpoint {
    /// The endpoint and token after flags, environment and the client config file.
    fn resolve(&self) -> Result<(String, Option<String>)> {
        let file = match self.client_config.clone().or_else(config::default_path) {
            // The file is read only when it could matter.
            Some(path) if self.endpoint.is_none() => config::ClientConfig::load(&path)?,
            _ => config::ClientConfig::default(),
        };
        Ok(config::resolve(
            self.endpoint.as_deref(),
            self.token.as_deref(),
            &file,
        ))
    }

    fn client(&self) -> Result<HttpClient> {
        let (endpoint, token) = self.resolve()?;
        let client = HttpClient::new(&endpoint, token, Duration::from_millis(self.timeout_ms));
        match &self.ca {
            Some(ca) => Ok(client.with_ca(ca)?),
            None => Ok(client),
        }
    }
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The key to read.
    pub key: String,
    #[command(flatten)]
    pub endpoint: Endpoint,
    /// Read quorum for this request (1..=N) [default: the cluster's R].
    #[arg(long)]
    pub r: Option<usize>,
    /// Print the causal context to standard error (to pass to a later put).
    #[arg(long)]
    pub show_context: bool,
    /// `table`: the value as it is (siblings listed with their versions); `json`: the
    /// value(s) with versions and context, base64 when not UTF-8.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: output::OutputFormat,
}

#[derive(Args, Debug)]
pub struct PutArgs {
    pub key: String,
    /// The value; omit to read it from --file or standard input.
    pub value: Option<String>,
    #[arg(long, conflicts_with = "value")]
    pub file: Option<PathBuf>,
    /// Causal context from a previous get: replace exactly the versions that read showed.
    /// Without it (and without --blind) the value replaces whatever the key holds now.
    #[arg(long, conflicts_with = "blind")]
    pub context: Option<String>,
    /// Write beside what the key holds (a new sibling) instead of replacing it.
    #[arg(long)]
    pub blind: bool,
    /// Write quorum for this request (1..=N).
    #[arg(long)]
    pub w: Option<usize>,
    #[command(flatten)]
    pub endpoint: Endpoint,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    pub key: String,
    /// Causal context from a previous get: delete exactly the versions that read showed.
    /// Without it the versions the key holds now are deleted.
    #[arg(long)]
    pub context: Option<String>,
    /// Write quorum for this request (1..=N).
    #[arg(long)]
    pub w: Option<usize>,
    #[command(flatten)]
    pub endpoint: Endpoint,
}

#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    pub endpoint: Endpoint,
    /// `table` for people, `json` (snake_case keys) for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: output::OutputFormat,
}

#[derive(Args, Debug)]
pub struct PingArgs {
    #[command(flatten)]
    pub endpoint: Endpoint,
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The member to add [default: the member at --endpoint itself].
    pub member: Option<String>,
    /// Relative share of partitions the member should own [default: 1].
    #[arg(long)]
    pub weight: Option<u32>,
    #[command(flatten)]
    pub endpoint: Endpoint,
    /// `table` for people, `json` (snake_case keys) for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: output::OutputFormat,
}

#[derive(Args, Debug)]
pub struct LeaveArgs {
    /// The member to decommission.
    pub member: String,
    #[command(flatten)]
    pub endpoint: Endpoint,
    /// `table` for people, `json` (snake_case keys) for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: output::OutputFormat,
}

/// Runs a parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Node(args) => run_node(*args).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Get(args) => get(args).await,
        Command::Put(args) => put(args).await,
        Command::Delete(args) => delete(args).await,
        Command::Members(args) => members(&args).await,
        Command::Status(args) => status(&args).await,
        Command::Ping(args) => ping(&args.endpoint).await,
        Command::Ring(args) => ring(&args).await,
        Command::Handoffs(args) => handoffs(&args).await,
        Command::Join(args) => {
            let mut body = serde_json::json!({});
            if let Some(m) = &args.member {
                body["member"] = m.clone().into();
            }
            if let Some(w) = args.weight {
                body["weight"] = w.into();
            }
            admin_post(&args.endpoint, "/v1/cluster/join", body, args.output).await
        }
        Command::Leave(args) => {
            admin_post(
                &args.endpoint,
                &format!("/v1/cluster/leave/{}", args.member),
                serde_json::json!({}),
                args.output,
            )
            .await
        }
        Command::Bench(args) => bench(args).await,
    }
}

async fn bench(args: BenchArgs) -> Result<i32> {
    use crate::bench::{Target, TargetKind, Workload};
    use indicatif::{ProgressBar, ProgressStyle};
    let target: Arc<dyn Target> = match args.target {
        TargetKind::Dynamo => {
            crate::bench::DynamoTarget::new(&args.endpoints, &args.label, args.token.clone())?
        }
        TargetKind::Etcd => crate::bench::EtcdTarget::new(&args.endpoints, &args.label)?,
        TargetKind::Nginx => {
            if args.workload != Workload::C {
                bail!("nginx serves a static file: only --workload c");
            }
            crate::bench::NginxTarget::new(&args.endpoints, &args.label)?
        }
        #[cfg(feature = "cassandra")]
        TargetKind::Cassandra => {
            crate::bench::CassandraTarget::connect(&args.endpoints, &args.label).await?
        }
        #[cfg(not(feature = "cassandra"))]
        TargetKind::Cassandra => {
            bail!("this build has no Cassandra client: build with --features cassandra")
        }
    };
    // nginx has nothing to load: every key is the same static file.
    if !args.no_load && args.target != TargetKind::Nginx {
        let bar = ProgressBar::new(args.records);
        bar.set_style(
            ProgressStyle::with_template("loading {bar:40} {pos}/{len} records ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let b = bar.clone();
        let took = crate::bench::load(
            target.clone(),
            args.records,
            args.value_size,
            args.concurrency,
            move |n| b.set_position(n),
        )
        .await?;
        bar.finish_and_clear();
        eprintln!(
            "loaded {} records in {:.1} s",
            args.records,
            took.as_secs_f64()
        );
    }
    let config = crate::bench::Config {
        workload: args.workload,
        distribution: args.distribution,
        records: args.records,
        value_size: args.value_size,
        concurrency: args.concurrency,
        duration: Duration::from_secs(args.duration_s),
        max_ops: args.max_ops,
        rate: args.rate,
        seed: args.seed,
    };
    let bar = ProgressBar::new(args.duration_s);
    bar.set_style(
        ProgressStyle::with_template("running {bar:40} {pos}/{len} s  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let b = bar.clone();
    let report = crate::bench::run(target, config, move |n| {
        if n % 256 == 0 {
            b.set_position(started.elapsed().as_secs());
            b.set_message(format!("{n} ops"));
        }
    })
    .await;
    bar.finish_and_clear();
    write!(
        std::io::stdout(),
        "{}",
        crate::bench::table(std::slice::from_ref(&report))
    )?;
    out!(
        "reads: {} (p50 {:.3} ms, p99 {:.3} ms)   updates: {} (p50 {:.3} ms, p99 {:.3} ms)",
        report.read.count,
        report.read.p50_us as f64 / 1000.0,
        report.read.p99_us as f64 / 1000.0,
        report.update.count,
        report.update.p50_us as f64 / 1000.0,
        report.update.p99_us as f64 / 1000.0
    )?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.timeline {
        std::fs::write(path, crate::bench::timeline_csv(&report.timeline))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.ops > 0 && report.errors * 100 <= report.ops {
        0
    } else {
        EXIT_ERROR
    })
}

fn read_secret(
    value: Option<String>,
    file: Option<&PathBuf>,
    what: &str,
) -> Result<Option<String>> {
    match (value, file) {
        (Some(v), _) => Ok(Some(v)),
        (None, Some(path)) => {
            let s = std::fs::read_to_string(path)
                .with_context(|| format!("reading the {what} from {}", path.display()))?;
            Ok(Some(s.trim().to_string()))
        }
        (None, None) => Ok(None),
    }
}

/// Tokens from a flag list plus a file with one per line.
fn read_secret_list(values: &[String], file: Option<&PathBuf>, what: &str) -> Result<Vec<Secret>> {
    let mut out: Vec<Secret> = values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(Secret::new)
        .collect();
    if let Some(path) = file {
        let s = std::fs::read_to_string(path)
            .with_context(|| format!("reading the {what} from {}", path.display()))?;
        out.extend(
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(Secret::new),
        );
    }
    Ok(out)
}

/// Builds a member's configuration from its flags.
pub fn node_config(args: &NodeArgs) -> Result<NodeConfig> {
    let id = validate_member_id(&args.id)?;
    let cluster_token = read_secret(args.cluster_token.clone(), args.cluster_token_file.as_ref(), "cluster token")?
        .context("a cluster token is required: --cluster-token, --cluster-token-file or DYNAMO_CLUSTER_TOKEN")?;
    let accepted_cluster_tokens = read_secret_list(
        &args.accept_cluster_tokens,
        args.accept_cluster_tokens_file.as_ref(),
        "accepted cluster tokens",
    )?;
    let client_tokens = read_secret_list(
        &args.client_token,
        args.client_token_file.as_ref(),
        "client tokens",
    )?;
    let failure_detector = match args.failure_detector {
        DetectorKind::Phi => FailureDetector::PhiAccrual {
            threshold: args.phi_threshold,
            min_std_dev: Duration::from_millis(args.gossip_interval_ms / 2),
            max_silence: Duration::from_millis(args.gossip_interval_ms * 30),
        },
        DetectorKind::Timeout => FailureDetector::Timeout {
            after: Duration::from_millis(args.down_after_ms),
        },
    };
    let config = NodeConfig {
        id,
        listen: args.listen.clone(),
        advertise: args
            .advertise
            .clone()
            .unwrap_or_else(|| args.listen.clone()),
        peer_listen: args.peer_listen.clone(),
        advertise_peer: args
            .advertise_peer
            .clone()
            .unwrap_or_else(|| args.peer_listen.clone()),
        data_dir: args.data_dir.clone(),
        durability: args.durability,
        sync_interval: Duration::from_millis(args.sync_interval_ms),
        cache_bytes: args.cache_mb << 20,
        engine_threads: args
            .engine_threads
            .and_then(|n| std::num::NonZeroUsize::new(usize::from(n))),
        seeds: args
            .seeds
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        bootstrap: args.bootstrap,
        cluster_token: Secret::new(cluster_token),
        accepted_cluster_tokens,
        client_tokens,
        settings: ClusterSettings {
            partitions: args.partitions,
            n: args.n,
            r: args.r,
            w: args.w,
            conflicts: args.conflicts,
            max_siblings: args.max_siblings,
        },
        limits: Limits {
            max_key_bytes: args.max_key_bytes,
            max_value_bytes: args.max_value_bytes,
            max_inflight_requests: args.max_inflight_requests.max(1),
            max_connections: args.max_connections.max(1),
        },
        peer_limits: crate::config::PeerLimits {
            max_connections: args.max_peer_connections.max(1),
            max_connections_per_ip: args.max_peer_connections_per_ip.max(1),
            handshake_timeout: Duration::from_millis(args.peer_handshake_timeout_ms.max(100)),
        },
        gossip_interval: Duration::from_millis(args.gossip_interval_ms.max(10)),
        failure_detector,
        replica_timeout: Duration::from_millis(args.replica_timeout_ms),
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        read_fanout: match args.read_fanout {
            ReadFanoutArg::All => ReadFanout::All,
            ReadFanoutArg::Quorum => ReadFanout::Quorum {
                speculate_after: Duration::from_millis(args.speculative_read_ms),
            },
        },
        hint_interval: Duration::from_millis(args.hint_interval_ms.max(10)),
        anti_entropy_interval: Duration::from_secs(args.anti_entropy_interval_s.max(1)),
        transfer_rate_bytes: args.transfer_rate_bytes,
        tombstone_grace: Duration::from_secs(args.tombstone_grace_s),
        rng_seed: 0,
        tls: match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(crate::rpc::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
                http: args.tls_http,
            }),
            _ => None,
        },
    };
    config.validate()?;
    Ok(config)
}

/// The log filter without `RUST_LOG`: this member's info lines, the storage engine's
/// (fjall, lsm-tree) only from warn on: their info lines (every flush, compaction and
/// journal rotation) drowned the member's own.
pub const DEFAULT_LOG_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

/// Standard error that drops a line it cannot write instead of failing.
///
/// When the log's destination is full (stderr redirected to a file on the data disk),
/// tracing reports the failed write with `eprintln!`, which panics when it fails too; the
/// storage engine logs while holding its locks, so that panic poisoned them and the member
/// aborted (seen in `disk.rs`). A member that cannot log must keep serving.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn run_node(args: NodeArgs) -> Result<i32> {
    init_logging(args.log_format);
    let config = node_config(&args)?;
    // Before the data directory is created or opened: a member that cannot serve should
    // leave no empty data directory behind. (The member binds for real after opening its
    // data; this only finds a port that is already taken.)
    for (what, addr) in [("HTTP", &config.listen), ("peer", &config.peer_listen)] {
        if let Err(e) = std::net::TcpListener::bind(addr.as_str()) {
            bail!("cannot listen for {what} on {addr}: {e} (is another member running there?)");
        }
    }
    let engine = FjallEngine::open_with_threads(
        &config.data_dir,
        config.cache_bytes,
        config.engine_threads,
    )
    .map_err(|e| match e {
        // fjall's lock on its directory: another process has it open.
        crate::storage::StorageError::Engine(message) if message.ends_with("Locked") => {
            anyhow::anyhow!(
                "data directory {} is in use by another process (a member already runs with it)",
                config.data_dir.display()
            )
        }
        other => {
            anyhow::Error::new(other).context(format!("opening {}", config.data_dir.display()))
        }
    })?;
    let node = Node::start(config, Env::production(0), Arc::new(engine)).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(0)
}

/// Waits for SIGTERM (Kubernetes, `docker stop`) or Ctrl-C.
pub async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Maps an HTTP reply to an exit code, printing the error for failures.
fn exit_code(reply: &Reply) -> i32 {
    let code = match reply.status {
        s if s.is_success() => 0,
        StatusCode::MULTIPLE_CHOICES => 0,
        StatusCode::NOT_FOUND => EXIT_NOT_FOUND,
        StatusCode::SERVICE_UNAVAILABLE => EXIT_UNAVAILABLE,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => EXIT_AUTH,
        s if s.is_client_error() => EXIT_REFUSED,
        _ => EXIT_ERROR,
    };
    if code != 0 {
        let message = reply
            .json()
            .and_then(|j| {
                j.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| reply.text());
        eprintln!("error ({}): {}", reply.status, message.trim());
    }
    code
}

fn quorum_query(name: &str, v: Option<usize>) -> String {
    v.map(|v| format!("?{name}={v}")).unwrap_or_default()
}

async fn get(args: GetArgs) -> Result<i32> {
    use output::{OutputFormat, readable_value};
    let reply = args
        .endpoint
        .client()?
        .get(&args.key, &quorum_query("r", args.r))
        .await?;
    if args.show_context
        && let Some(ctx) = reply.header("x-dynamo-context")
    {
        eprintln!("context: {ctx}");
    }
    let context = reply.header("x-dynamo-context").unwrap_or_default();
    match (reply.status, args.output) {
        (StatusCode::OK, OutputFormat::Table) => {
            std::io::stdout().write_all(&reply.body)?;
            Ok(0)
        }
        (StatusCode::OK, OutputFormat::Json) => {
            let (encoding, value) = readable_value(&reply.body);
            let body = serde_json::json!({
                "key": args.key,
                "context": context,
                "versions": reply.header("x-dynamo-versions").unwrap_or_default(),
                "siblings": [{ "value": value, "encoding": encoding }],
            });
            out!("{}", serde_json::to_string_pretty(&body)?)?;
            Ok(0)
        }
        (StatusCode::MULTIPLE_CHOICES, format) => {
            let Some(json) = reply.json() else {
                bail!("the member answered 300 with a body that is not JSON")
            };
            let mut siblings = Vec::new();
            for s in json["siblings"].as_array().into_iter().flatten() {
                let raw = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    s["value"].as_str().unwrap_or_default(),
                )
                .context("a sibling's value is not base64")?;
                let (encoding, value) = readable_value(&raw);
                siblings.push(serde_json::json!({
                    "value": value,
                    "encoding": encoding,
                    "version": s["version"],
                    "timestamp_ms": s["timestamp_ms"],
                }));
            }
            let tombstones = json["tombstones"].clone();
            match format {
                OutputFormat::Json => {
                    let body = serde_json::json!({
                        "key": args.key,
                        "context": json["context"],
                        "siblings": siblings,
                        "tombstones": tombstones,
                    });
                    out!("{}", serde_json::to_string_pretty(&body)?)?;
                }
                OutputFormat::Table => {
                    out!(
                        "{} has {} concurrent values (siblings); a put with this context replaces them all:",
                        args.key,
                        siblings.len()
                    )?;
                    out!("context: {}", json["context"].as_str().unwrap_or_default())?;
                    for (i, s) in siblings.iter().enumerate() {
                        let marked = if s["encoding"] == "base64" {
                            " (not UTF-8, base64)"
                        } else {
                            ""
                        };
                        out!(
                            "--- sibling {} of {}: version {}, timestamp_ms {}{marked}",
                            i + 1,
                            siblings.len(),
                            output::cell(&s["version"]),
                            output::cell(&s["timestamp_ms"]),
                        )?;
                        out!("{}", s["value"].as_str().unwrap_or_default())?;
                    }
                    for t in tombstones.as_array().into_iter().flatten() {
                        out!("--- deleted concurrently: version {}", output::cell(t))?;
                    }
                }
            }
            Ok(EXIT_SIBLINGS)
        }
        _ => Ok(exit_code(&reply)),
    }
}

async fn put(args: PutArgs) -> Result<i32> {
    let value = match (&args.value, &args.file) {
        (Some(v), _) => Bytes::from(v.clone()),
        (None, Some(f)) => {
            Bytes::from(std::fs::read(f).with_context(|| format!("reading {}", f.display()))?)
        }
        (None, None) => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            Bytes::from(buf)
        }
    };
    // Without a context a put replaces what the key holds now (the server reads it first),
    // as people expect of `put`; --blind keeps the old value beside the new one.
    let mut query: Vec<String> = args.w.map(|w| format!("w={w}")).into_iter().collect();
    if args.context.is_none() && !args.blind {
        query.push("overwrite=true".into());
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    let reply = args
        .endpoint
        .client()?
        .put(&args.key, value, args.context.as_deref(), &query)
        .await?;
    report_write(&reply)
}

async fn delete(args: DeleteArgs) -> Result<i32> {
    let reply = args
        .endpoint
        .client()?
        .delete(
            &args.key,
            args.context.as_deref(),
            &quorum_query("w", args.w),
        )
        .await?;
    report_write(&reply)
}

fn report_write(reply: &Reply) -> Result<i32> {
    if reply.status.is_success() {
        let acks = reply.header("x-dynamo-acks").unwrap_or("?");
        match reply.header("x-dynamo-replaced") {
            Some(n) => out!("ok (replaced {n} version(s); acknowledged by {acks} replicas)")?,
            None => out!("ok (acknowledged by {acks} replicas)")?,
        }
        if let Some(ctx) = reply.header("x-dynamo-context") {
            out!("context: {ctx}")?;
        }
        return Ok(0);
    }
    Ok(exit_code(reply))
}

/// Fields of admin answers that are maps keyed by member or partition: their keys are data
/// and keep their spelling in `-o json`.
const DATA_MAPS: &[&str] = &["hintsHeld", "pendingByMember", "roots"];

/// An admin GET's JSON, or the exit code of its failure (already reported).
async fn admin_json(client: &HttpClient, path: &str) -> Result<Result<serde_json::Value, i32>> {
    let reply = client.admin_get(path).await?;
    if !reply.status.is_success() {
        return Ok(Err(exit_code(&reply)));
    }
    match reply.json() {
        Some(json) => Ok(Ok(json)),
        None => bail!("the member answered {path} with something that is not JSON"),
    }
}

fn print_json(json: serde_json::Value) -> Result<i32> {
    let snake = output::snake_keys(json, DATA_MAPS);
    out!("{}", serde_json::to_string_pretty(&snake)?)?;
    Ok(0)
}

async fn members(args: &AdminArgs) -> Result<i32> {
    let json = match admin_json(&args.endpoint.client()?, "/v1/cluster/members").await? {
        Ok(json) => json,
        Err(code) => return Ok(code),
    };
    if args.output == output::OutputFormat::Json {
        return print_json(json);
    }
    let observer = output::cell(&json["member"]);
    out!(
        "as {observer} sees them (claimant {}, view version {})",
        output::cell(&json["claimant"]),
        output::cell(&json["viewVersion"])
    )?;
    let rows: Vec<Vec<String>> = json["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let id = m["id"].as_str().unwrap_or_default();
            vec![
                id.to_string(),
                output::cell(&m["status"]),
                output::cell(&m["alive"]),
                output::cell(&m["httpAddr"]),
                output::cell(&m["peerAddr"]),
                output::cell(&m["weight"]),
                output::cell(&m["partitionsOwned"]),
                output::cell(&m["pullsPending"]),
                json["hintsHeld"]
                    .get(id)
                    .map_or_else(|| "0".to_string(), output::cell),
            ]
        })
        .collect();
    let hints_header = format!("HINTS AT {observer}");
    write!(
        std::io::stdout(),
        "{}",
        output::table(
            &[
                "ID",
                "STATUS",
                "ALIVE",
                "HTTP",
                "PEER",
                "WEIGHT",
                "PARTITIONS",
                "PULLS PENDING",
                hints_header.as_str(),
            ],
            &rows
        )
    )?;
    Ok(0)
}

/// `dynamo status`: the member list of one member, with each member's own count of the
/// hints it holds (asked of it; `?` when it does not answer).
async fn status(args: &AdminArgs) -> Result<i32> {
    let client = args.endpoint.client()?;
    let json = match admin_json(&client, "/v1/cluster/members").await? {
        Ok(json) => json,
        Err(code) => return Ok(code),
    };
    let scheme = if client.endpoint().starts_with("https://") {
        "https"
    } else {
        "http"
    };
    let (_, token) = args.endpoint.resolve()?;
    let mut lines = Vec::new();
    for m in json["members"].as_array().into_iter().flatten() {
        let http = m["httpAddr"].as_str().unwrap_or_default();
        let mut member_client = HttpClient::new(
            &format!("{scheme}://{http}"),
            token.clone(),
            Duration::from_millis(args.endpoint.timeout_ms.min(3000)),
        );
        if let Some(ca) = &args.endpoint.ca {
            member_client = member_client.with_ca(ca)?;
        }
        // A member that is down does not answer; its hints are unknown, not zero.
        let hints = match m["alive"].as_bool() {
            Some(true) => member_client
                .admin_get("/v1/cluster/members")
                .await
                .ok()
                .filter(|r| r.status.is_success())
                .and_then(|r| r.json())
                .and_then(|j| {
                    j["hintsHeld"].as_object().map(|h| {
                        h.values()
                            .filter_map(serde_json::Value::as_u64)
                            .sum::<u64>()
                    })
                }),
            _ => None,
        };
        lines.push(serde_json::json!({
            "id": m["id"],
            "state": m["status"],
            "alive": m["alive"],
            "partitions_owned": m["partitionsOwned"],
            "hints_pending": hints,
            "handoffs_pending": m["pullsPending"],
            "http_addr": m["httpAddr"],
        }));
    }
    if args.output == output::OutputFormat::Json {
        return print_json(serde_json::json!({ "members": lines }));
    }
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            vec![
                output::cell(&l["id"]),
                output::cell(&l["state"]),
                output::cell(&l["alive"]),
                output::cell(&l["partitions_owned"]),
                if l["hints_pending"].is_null() {
                    "?".to_string()
                } else {
                    output::cell(&l["hints_pending"])
                },
                output::cell(&l["handoffs_pending"]),
                output::cell(&l["http_addr"]),
            ]
        })
        .collect();
    write!(
        std::io::stdout(),
        "{}",
        output::table(
            &[
                "ID",
                "STATE",
                "ALIVE",
                "PARTITIONS",
                "HINTS PENDING",
                "HANDOFFS PENDING",
                "HTTP",
            ],
            &rows
        )
    )?;
    Ok(0)
}

/// `dynamo ping`: is the member up (`/healthz`) and ready (`/readyz`)?
async fn ping(endpoint: &Endpoint) -> Result<i32> {
    let client = endpoint.client()?;
    let started = std::time::Instant::now();
    let health = client.admin_get("/healthz").await?;
    let took = started.elapsed();
    if !health.status.is_success() {
        eprintln!(
            "{} is not healthy ({}): {}",
            client.endpoint(),
            health.status,
            health.text().trim()
        );
        return Ok(EXIT_UNAVAILABLE);
    }
    let ready = client.admin_get("/readyz").await?;
    if ready.status.is_success() {
        out!(
            "{} answers and is ready ({:.1} ms)",
            client.endpoint(),
            took.as_secs_f64() * 1000.0
        )?;
        return Ok(0);
    }
    let reason = ready
        .json()
        .and_then(|j| j["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| ready.text());
    eprintln!(
        "{} answers but is not ready: {}",
        client.endpoint(),
        reason.trim()
    );
    Ok(EXIT_UNAVAILABLE)
}

async fn handoffs(args: &AdminArgs) -> Result<i32> {
    let json = match admin_json(&args.endpoint.client()?, "/v1/cluster/handoffs").await? {
        Ok(json) => json,
        Err(code) => return Ok(code),
    };
    if args.output == output::OutputFormat::Json {
        return print_json(json);
    }
    if json["inTransition"].as_bool() == Some(true) {
        out!(
            "ownership moving from ring epoch {} to {}: {} partitions still to receive",
            output::cell(&json["baseEpoch"]),
            output::cell(&json["epoch"]),
            output::cell(&json["pending"])
        )?;
    } else {
        out!(
            "settled at ring epoch {}: nothing to hand off",
            output::cell(&json["epoch"])
        )?;
    }
    let rows: Vec<Vec<String>> = json["pendingByMember"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(id, n)| vec![id.clone(), output::cell(n)])
        .collect();
    write!(
        std::io::stdout(),
        "{}",
        output::table(&["MEMBER", "PARTITIONS TO RECEIVE"], &rows)
    )?;
    let local = &json["local"];
    let partitions: Vec<&serde_json::Value> = local["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let waiting: Vec<String> = local["awaiting_ack"]
        .as_array()
        .into_iter()
        .flatten()
        .map(output::cell)
        .collect();
    if !waiting.is_empty() {
        out!(
            "this member waits for {} to acknowledge the new ring",
            waiting.join(", ")
        )?;
    }
    let open: Vec<Vec<String>> = partitions
        .iter()
        .filter(|p| p["state"] != "done")
        .map(|p| {
            vec![
                output::cell(&p["partition"]),
                p["from"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(output::cell)
                    .collect::<Vec<_>>()
                    .join(","),
                output::cell(&p["state"]),
                output::cell(&p["keys"]),
                output::cell(&p["bytes"]),
                output::cell(&p["error"]),
            ]
        })
        .collect();
    if !open.is_empty() {
        out!(
            "this member's pulls ({} of {} done):",
            partitions.len() - open.len(),
            partitions.len()
        )?;
        write!(
            std::io::stdout(),
            "{}",
            output::table(
                &["PARTITION", "FROM", "STATE", "KEYS", "BYTES", "ERROR"],
                &open
            )
        )?;
    }
    Ok(0)
}

async fn admin_post(
    endpoint: &Endpoint,
    path: &str,
    body: serde_json::Value,
    format: output::OutputFormat,
) -> Result<i32> {
    let reply = endpoint.client()?.admin_post(path, body).await?;
    if !reply.status.is_success() {
        return Ok(exit_code(&reply));
    }
    let json = reply.json().unwrap_or_default();
    if format == output::OutputFormat::Json {
        return print_json(json);
    }
    let member = output::cell(&json["member"]);
    match json["status"].as_str() {
        Some("accepted") => out!(
            "{member}: join accepted; partitions move to it now (`dynamo handoffs` shows progress)"
        )?,
        Some("leaving") => out!(
            "{member}: leaving; it hands off its partitions, then leaves (`dynamo handoffs` shows progress)"
        )?,
        _ => out!("{}", reply.text())?,
    }
    Ok(0)
}

async fn ring(args: &AdminArgs) -> Result<i32> {
    let json = match admin_json(&args.endpoint.client()?, "/v1/cluster/ring").await? {
        Ok(json) => json,
        Err(code) => return Ok(code),
    };
    if args.output == output::OutputFormat::Json {
        return print_json(json);
    }
    out!(
        "epoch {}  (base {}{})  partitions {}  N/R/W {}/{}/{}  conflicts {}",
        json["epoch"],
        json["baseEpoch"],
        if json["inTransition"].as_bool() == Some(true) {
            ", moving"
        } else {
            ""
        },
        json["settings"]["partitions"],
        json["settings"]["n"],
        json["settings"]["r"],
        json["settings"]["w"],
        json["settings"]["conflicts"].as_str().unwrap_or("?"),
    )?;
    out!(
        "balance {}..{} partitions per member",
        json["balance"][0],
        json["balance"][1],
    )?;
    out!(
        "{}",
        spacing_note(
            json["spacingViolations"].as_u64().unwrap_or(0),
            json["spacingFeasible"].as_bool().unwrap_or(true),
            json["settings"]["n"].as_u64().unwrap_or(0),
        )
    )?;
    let rows: Vec<Vec<String>> = json["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            vec![
                output::cell(&m["id"]),
                output::cell(&m["weight"]),
                output::cell(&m["partitions"]),
            ]
        })
        .collect();
    write!(
        std::io::stdout(),
        "{}",
        output::table(&["MEMBER", "WEIGHT", "PARTITIONS"], &rows)
    )?;
    Ok(0)
}

/// What the count of spacing violations means (docs/ring.md, "When spacing is infeasible").
fn spacing_note(violations: u64, feasible: bool, n: u64) -> String {
    match (violations, feasible) {
        (0, _) => format!("spacing: every {n} consecutive partitions have {n} distinct owners"),
        (v, false) => format!(
            "spacing: {v} windows of {n} consecutive partitions repeat an owner. Expected: with \
             these partitions, members and weights no ring can space them all (e.g. {n} or \
             fewer members). Replicas are unaffected: each key's preference list skips repeats \
             and still reaches min(N, members) distinct members (docs/ring.md)"
        ),
        (v, true) => format!(
            "spacing: {v} windows of {n} consecutive partitions repeat an owner although a \
             spaced ring exists; the next ring change can remove them. Replicas still go to \
             distinct members further along the ring (docs/ring.md)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(argv: &[&str]) -> Option<usize> {
        let cli = Cli::try_parse_from(["dynamo"].iter().chain(argv)).unwrap();
        cli.worker_threads()
    }

    #[test]
    fn the_generator_runs_on_the_threads_asked_for_and_on_every_cpu_by_default() {
        assert_eq!(threads(&["bench", "--rate", "5000"]), None);
        assert_eq!(threads(&["bench"]), None);
        assert_eq!(
            threads(&["bench", "--rate", "5000", "--threads", "1"]),
            Some(1)
        );
        assert_eq!(threads(&["bench", "--threads", "2"]), Some(2));
        let zero = Cli::try_parse_from(["dynamo", "bench", "--threads", "0"]).unwrap_err();
        assert!(zero.to_string().contains("0 is not in 1..=1024"), "{zero}");
        assert_eq!(
            threads(&["node", "--id", "n1", "--worker-threads", "1"]),
            Some(1)
        );
    }

    #[test]
    fn one_thread_runs_the_current_thread_scheduler_and_more_the_multi_thread_one() {
        use tokio::runtime::RuntimeFlavor;
        let flavor = |argv: &[&str]| {
            let cli = Cli::try_parse_from(["dynamo"].iter().chain(argv)).unwrap();
            let runtime = cli.runtime().unwrap();
            // The runtime serves: a spawned task completes on it.
            let spawned = runtime.block_on(async { tokio::spawn(async { 7 }).await });
            assert_eq!(spawned.unwrap(), 7);
            runtime.handle().runtime_flavor()
        };
        let node = |n: &str| flavor(&["node", "--id", "n1", "--worker-threads", n]);
        assert_eq!(node("1"), RuntimeFlavor::CurrentThread);
        assert_eq!(node("2"), RuntimeFlavor::MultiThread);
        let bench = flavor(&["bench", "--threads", "1"]);
        assert_eq!(bench, RuntimeFlavor::CurrentThread);
    }
}
