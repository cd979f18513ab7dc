//! The operator's metrics and its `/metrics`, `/healthz` and `/readyz`
//! endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub errors: IntCounterVec,
    /// Reconciles that failed (the Kubernetes API, a waiting deletion), by kind and error.
    pub failures: IntCounterVec,
    pub duration: HistogramVec,
    pub leader: IntGauge,
    /// Admission reviews, by kind and verdict.
    pub admission: IntCounterVec,
    families: Vec<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("portcullis_operator_reconciles_total", "Reconciliations, by kind."),
            &["kind"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "portcullis_operator_reconcile_errors_total",
                "Reconciliations not ending Ready, by kind and reason.",
            ),
            &["kind", "reason"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "portcullis_operator_reconcile_failures_total",
                "Reconciliations that failed and were retried, by kind and error.",
            ),
            &["kind", "error"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_operator_reconcile_duration_seconds",
                "Time per reconciliation, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "portcullis_operator_leader",
            "1 while this replica holds the lease and reconciles.",
        )
        .expect("valid metric");
        let admission = IntCounterVec::new(
            Opts::new(
                "portcullis_operator_admission_reviews_total",
                "Admission reviews answered, by kind and verdict (admitted, refused, skipped, unvalidated_refused, unvalidated_admitted).",
            ),
            &["kind", "verdict"],
        )
        .expect("valid metric");
        let mut families = Vec::new();
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(leader.clone()),
            Box::new(admission.clone()),
        ] {
            families.extend(c.desc().iter().map(|d| d.fq_name.clone()));
            let _ = registry.register(c);
        }
        Metrics {
            families,
            registry,
            reconciles,
            errors,
            failures,
            duration,
            leader,
            admission,
        }
    }

    /// The name of every metric family `/metrics` can show, including
    /// those with no series yet: what dashboards and alert rules may use.
    pub fn families(&self) -> &[String] {
        &self.families
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serves the endpoints until the process ends. `/readyz` answers 200 once
/// `ready` is set (the API server and the CRDs were reachable).
pub async fn serve(addr: SocketAddr, metrics: Metrics, ready: Arc<AtomicBool>) -> std::io::Result<SocketAddr> {
    use axum::http::StatusCode;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(move || async move { metrics.render() }))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || async move {
                if ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(local)
}
