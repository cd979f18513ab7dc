use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// Reconciles Tenant, Role and Vault resources into Portcullis.
#[derive(Debug, Parser)]
#[command(name = "portcullis-operator", version)]
struct Args {
    /// The Portcullis gRPC endpoint.
    #[arg(long, env = "PORTCULLIS_ENDPOINT", default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// File holding the admin API key (a mounted Secret).
    #[arg(long, env = "PORTCULLIS_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Seconds between full re-applies of every object (drift correction).
    #[arg(long, env = "PORTCULLIS_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "PORTCULLIS_LEASE_NAME", default_value = "portcullis-operator")]
    lease_name: String,
    /// Lease duration in seconds: a dead leader is replaced within it.
    #[arg(long, env = "PORTCULLIS_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// This replica's identity in the Lease (defaults to a random id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "PORTCULLIS_OPERATOR_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// Only reconcile objects matching this label selector.
    #[arg(long, env = "PORTCULLIS_LABEL_SELECTOR")]
    label_selector: Option<String>,
    /// Seconds between checks that Portcullis still has its data.
    #[arg(long, env = "PORTCULLIS_DRIFT_POLL_SECONDS", default_value_t = 10)]
    drift_poll_seconds: u64,
    /// Serve the validating admission webhook (HTTPS) on this address.
    #[arg(long, env = "PORTCULLIS_WEBHOOK_LISTEN", requires_all = ["webhook_cert", "webhook_key"])]
    webhook_listen: Option<SocketAddr>,
    /// The webhook's certificate chain (PEM); re-read when it changes.
    #[arg(long, env = "PORTCULLIS_WEBHOOK_CERT")]
    webhook_cert: Option<PathBuf>,
    /// The webhook's private key (PEM).
    #[arg(long, env = "PORTCULLIS_WEBHOOK_KEY")]
    webhook_key: Option<PathBuf>,
    /// What the webhook answers when Portcullis cannot validate: the
    /// ValidatingWebhookConfiguration's failurePolicy.
    #[arg(long, env = "PORTCULLIS_WEBHOOK_FAILURE_POLICY", value_enum, default_value = "fail")]
    webhook_failure_policy: portcullis_operator::admission::FailurePolicy,
    /// Milliseconds Portcullis may take to validate (below the webhook's timeoutSeconds).
    #[arg(long, env = "PORTCULLIS_WEBHOOK_VALIDATE_TIMEOUT_MS", default_value_t = 8000)]
    webhook_validate_timeout_ms: u64,
    /// Log format.
    #[arg(long, env = "PORTCULLIS_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: portcullis::telemetry::LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    portcullis::telemetry::init_logging(args.log_format);
    let token = match &args.api_key_file {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("cannot read the API key file {}", p.display()))?)
        }
        None => None,
    };
    let client = kube::Client::try_default()
        .await
        .context("cannot configure the Kubernetes client")?;
    let opts = portcullis_operator::run::Options {
        endpoint: args.endpoint,
        token: token.map(|t| t.trim().to_string()),
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        lease_duration: Duration::from_secs(args.lease_seconds.max(2)),
        identity: args
            .identity
            .unwrap_or_else(|| format!("portcullis-operator-{}", uuid::Uuid::new_v4())),
        metrics_listen: args.metrics_listen,
        label_selector: args.label_selector,
        drift_poll: Duration::from_secs(args.drift_poll_seconds.max(1)),
        webhook: match (args.webhook_listen, args.webhook_cert, args.webhook_key) {
            (Some(listen), Some(cert), Some(key)) => Some(portcullis_operator::webhook::WebhookOptions {
                listen,
                tls: portcullis::transport::TlsFiles {
                    cert,
                    key,
                    client_ca: None,
                },
                failure_policy: args.webhook_failure_policy,
                validate_timeout: Duration::from_millis(args.webhook_validate_timeout_ms.max(100)),
                reload_interval: Duration::from_secs(10),
            }),
            _ => None,
        },
    };
    let running = portcullis_operator::run::start(client, opts).await?;
    tracing::info!(metrics = %running.metrics_addr, "operator started");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}
