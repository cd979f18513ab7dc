//! Logs (tracing), OpenTelemetry traces ([`traces`], off by default) and
//! the server's Prometheus metrics ([`Metrics`]), served on their own
//! listener.

mod metrics;
pub mod traces;

use std::net::SocketAddr;
use std::sync::Arc;

pub use metrics::{Metrics, RpcTimer, code_name};

/// Serves `/metrics` until `shutdown` resolves.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
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

/// Installs the global subscriber: logs to stderr, filtered by `RUST_LOG`
/// (default `info`), and, with an OTLP endpoint, spans to it (at `info`
/// whatever `RUST_LOG` says). Keep the returned [`traces::Traces`] alive
/// while serving: dropping it flushes the last spans. Needs a Tokio runtime
/// when `otlp` is set. A second call installs nothing.
pub fn init(format: LogFormat, otlp: Option<&str>) -> Result<Option<traces::Traces>, traces::TraceError> {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, Registry};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let logs = tracing_subscriber::registry().with(fmt.with_filter(filter));
    match otlp {
        Some(endpoint) => {
            let (traces, layer) = traces::Traces::start(endpoint)?;
            let _ = logs.with(layer.with_filter(LevelFilter::INFO)).try_init();
            Ok(Some(traces))
        }
        None => {
            let _ = logs.try_init();
            Ok(None)
        }
    }
}

/// [`init`] without traces: logs only.
pub fn init_logging(format: LogFormat) {
    let _ = init(format, None);
}
