//! Logs (tracing) and Prometheus metrics, served on their own listener.
//!
//! Labels stay low-cardinality: service, method, code, decision, reason,
//! job and result; never a subject, resource or tenant.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn reg<T: prometheus::core::Collector + Clone + 'static>(m: T) -> T {
    // Registration fails only on a duplicate name, a programming error caught by tests.
    let _ = REGISTRY.register(Box::new(m.clone()));
    m
}

pub static GRPC_HANDLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    reg(IntCounterVec::new(
        Opts::new("grpc_server_handled_total", "RPCs completed on the server, by code."),
        &["grpc_service", "grpc_method", "grpc_code"],
    )
    .expect("valid metric"))
});

pub static GRPC_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    reg(HistogramVec::new(
        HistogramOpts::new("grpc_server_handling_seconds", "RPC handling time on the server.").buckets(vec![
            0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
        &["grpc_service", "grpc_method"],
    )
    .expect("valid metric"))
});

pub static DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    reg(IntCounterVec::new(
        Opts::new(
            "portcullis_check_decisions_total",
            "Check decisions, by decision and reason.",
        ),
        &["decision", "reason"],
    )
    .expect("valid metric"))
});

pub static STORE_TX: LazyLock<IntCounterVec> = LazyLock::new(|| {
    reg(IntCounterVec::new(
        Opts::new("portcullis_store_transactions_total", "Store transactions, by result."),
        &["result"],
    )
    .expect("valid metric"))
});

pub static STORE_RETRIES: LazyLock<IntCounter> = LazyLock::new(|| {
    reg(IntCounter::new(
        "portcullis_store_retries_total",
        "Store transaction attempts retried after a conflict.",
    )
    .expect("valid metric"))
});

pub static INDEX_REVISION: LazyLock<IntGauge> = LazyLock::new(|| {
    reg(IntGauge::new(
        "portcullis_index_revision",
        "The revision this replica's index has caught up to.",
    )
    .expect("valid metric"))
});

pub static STORE_REVISION: LazyLock<IntGauge> = LazyLock::new(|| {
    reg(IntGauge::new(
        "portcullis_store_revision",
        "The latest committed revision this replica knows of.",
    )
    .expect("valid metric"))
});

pub static INDEX_LAG: LazyLock<IntGauge> = LazyLock::new(|| {
    reg(IntGauge::new(
        "portcullis_index_revision_lag",
        "Store revision minus index revision: how far this replica's index trails.",
    )
    .expect("valid metric"))
});

pub static LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    reg(IntGauge::new("portcullis_leader", "1 while this replica holds the leader lease.").expect("valid metric"))
});

pub static LEADER_EPOCH: LazyLock<IntGauge> = LazyLock::new(|| {
    reg(IntGauge::new(
        "portcullis_leader_epoch",
        "The fencing epoch of the lease this replica last held.",
    )
    .expect("valid metric"))
});

pub static JOB_RUNS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    reg(IntCounterVec::new(
        Opts::new("portcullis_job_runs_total", "Background job runs, by job and result."),
        &["job", "result"],
    )
    .expect("valid metric"))
});

pub static JOB_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    reg(HistogramVec::new(
        HistogramOpts::new("portcullis_job_duration_seconds", "Background job run time."),
        &["job"],
    )
    .expect("valid metric"))
});

pub static INDEX_DIVERGENCE: LazyLock<IntCounter> = LazyLock::new(|| {
    reg(IntCounter::new(
        "portcullis_index_divergence_total",
        "Vaults whose live index was found to differ from the store.",
    )
    .expect("valid metric"))
});

pub static INDEX_CORRUPT: LazyLock<IntCounter> = LazyLock::new(|| {
    reg(IntCounter::new(
        "portcullis_index_corrupt_records_total",
        "Stored records or feed changes the index could not read (their scope is quarantined).",
    )
    .expect("valid metric"))
});

pub static INDEX_QUARANTINED: LazyLock<IntGauge> = LazyLock::new(|| {
    reg(IntGauge::new(
        "portcullis_index_quarantined_scopes",
        "Vaults or tenant levels in quarantine: their checks answer UNAVAILABLE until repaired.",
    )
    .expect("valid metric"))
});

pub static CONFIG_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    reg(IntCounterVec::new(
        Opts::new(
            "portcullis_config_reloads_total",
            "Re-reads of the API keys file and the TLS files after they changed, by result.",
        ),
        &["what", "result"],
    )
    .expect("valid metric"))
});

pub static POOL_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    reg(IntCounterVec::new(
        Opts::new(
            "portcullis_pool_rejected_total",
            "Requests refused with RESOURCE_EXHAUSTED because a bounded pool's queue was full, by pool.",
        ),
        &["pool"],
    )
    .expect("valid metric"))
});

pub static CHECKS_OFFLOADED: LazyLock<IntCounter> = LazyLock::new(|| {
    reg(IntCounter::new(
        "portcullis_checks_offloaded_total",
        "Checks whose conditions outgrew the inline budget and were re-run on the expensive pool.",
    )
    .expect("valid metric"))
});

pub static TENANT_USAGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    reg(IntGaugeVec::new(
        Opts::new(
            "portcullis_tenant_objects",
            "Objects held across all tenants, by kind (last accounted).",
        ),
        &["kind"],
    )
    .expect("valid metric"))
});

pub static TENANTS_OVER_LIMIT: LazyLock<IntGauge> = LazyLock::new(|| {
    reg(IntGauge::new(
        "portcullis_tenants_over_limit",
        "Tenants holding more than one of their limits allows.",
    )
    .expect("valid metric"))
});

pub fn store_transaction(result: &str, attempts: u32) {
    STORE_TX.with_label_values(&[result]).inc();
    if attempts > 1 {
        STORE_RETRIES.inc_by(u64::from(attempts - 1));
    }
}

/// Times one RPC and counts its outcome.
pub struct RpcTimer {
    service: &'static str,
    method: &'static str,
    start: Instant,
}

impl RpcTimer {
    pub fn start(service: &'static str, method: &'static str) -> RpcTimer {
        RpcTimer {
            service,
            method,
            start: Instant::now(),
        }
    }
    pub fn finish(self, code: tonic::Code) {
        GRPC_SECONDS
            .with_label_values(&[self.service, self.method])
            .observe(self.start.elapsed().as_secs_f64());
        GRPC_HANDLED
            .with_label_values(&[self.service, self.method, code_name(code)])
            .inc();
    }
}

pub fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The metrics in Prometheus' text format.
pub fn render() -> String {
    // Touch the lazily registered metrics so they appear before first use.
    let _ = (&*GRPC_HANDLED, &*GRPC_SECONDS, &*DECISIONS, &*STORE_TX, &*STORE_RETRIES);
    let _ = (
        &*INDEX_REVISION,
        &*STORE_REVISION,
        &*INDEX_LAG,
        &*LEADER,
        &*LEADER_EPOCH,
    );
    let _ = (
        &*JOB_RUNS,
        &*JOB_SECONDS,
        &*INDEX_DIVERGENCE,
        &*INDEX_CORRUPT,
        &*INDEX_QUARANTINED,
        &*CONFIG_RELOADS,
        &*POOL_REJECTED,
        &*CHECKS_OFFLOADED,
        &*TENANT_USAGE,
        &*TENANTS_OVER_LIMIT,
    );
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Serves `/metrics` until `shutdown` resolves.
pub async fn serve_metrics(
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|| async { ([("content-type", "text/plain; version=0.0.4")], render()) }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok(local)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
