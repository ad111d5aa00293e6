//! `dynamo-operator`: runs the DynamoCluster controller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use dynamo_operator::admin::{AddressTemplate, DEFAULT_ADDRESS_TEMPLATE, HttpNodeAdmin};
use dynamo_operator::controller::{self, Context, Timing};
use dynamo_operator::metrics::{self, Health, Metrics};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Kubernetes operator for dynamo-rs clusters (DynamoCluster, dynamo.dev/v1alpha1).
#[derive(Parser, Debug)]
#[command(name = "dynamo-operator", version)]
struct Args {
    /// Address of the operator's own HTTP server (/healthz, /readyz, /metrics).
    #[arg(
        long,
        env = "DYNAMO_OPERATOR_HTTP_ADDR",
        default_value = "0.0.0.0:8081"
    )]
    http_addr: SocketAddr,
    /// Watch only this namespace [default: all namespaces].
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// How to reach a member's HTTP API; {pod}, {service} and {namespace} are replaced.
    #[arg(long, env = "DYNAMO_OPERATOR_MEMBER_URL", default_value = DEFAULT_ADDRESS_TEMPLATE)]
    member_url: String,
    /// Timeout of one admin API call to a member.
    #[arg(long, env = "DYNAMO_OPERATOR_ADMIN_TIMEOUT_MS", default_value_t = 3000)]
    admin_timeout_ms: u64,
    /// Requeue period while a change is in progress.
    #[arg(long, env = "DYNAMO_OPERATOR_BUSY_REQUEUE_S", default_value_t = 5)]
    busy_requeue_s: u64,
    /// Requeue period of a settled cluster.
    #[arg(long, env = "DYNAMO_OPERATOR_IDLE_REQUEUE_S", default_value_t = 60)]
    idle_requeue_s: u64,
    #[arg(
        long,
        env = "DYNAMO_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };

    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let health = Arc::new(Health::default());
    let server = tokio::spawn(metrics::serve(
        args.http_addr,
        metrics.clone(),
        health.clone(),
    ));

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    // As PID 1 in a container the default SIGTERM action does not apply: handle it here
    // too (once the controller runs, kube's shutdown_on_signal does).
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = dynamo_operator::wait_for_crd(&client, Duration::from_secs(5)) => {}
        _ = tokio::signal::ctrl_c() => return Ok(()),
        _ = terminate.recv() => return Ok(()),
        res = server => {
            res.context("HTTP server task")?.context("HTTP server")?;
            return Ok(());
        }
    }
    health.set_ready(true);
    metrics.ready.set(1);

    let admin = Arc::new(HttpNodeAdmin::new(Duration::from_millis(
        args.admin_timeout_ms,
    )));
    let timing = Timing {
        busy: Duration::from_secs(args.busy_requeue_s.max(1)),
        idle: Duration::from_secs(args.idle_requeue_s.max(1)),
        ..Timing::default()
    };
    let ctx = Arc::new(Context::new(
        client,
        admin,
        AddressTemplate::new(args.member_url),
        metrics,
        timing,
    ));
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("<all>"),
        "starting the DynamoCluster controller"
    );
    controller::run(ctx, args.namespace).await;
    tracing::info!("controller stopped");
    Ok(())
}
