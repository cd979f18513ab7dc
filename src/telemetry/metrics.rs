//! The server's metrics: one [`Metrics`] per server, owned by it and
//! passed to what counts into it (two replicas in one process count apart),
//! each in its own registry that `/metrics` renders.
//!
//! Labels stay low-cardinality: service, method, code, decision, reason,
//! job and result; never a subject or resource. The one tenant label is the
//! top-level tenant (`acme` for `acme/eng/platform`), for the first
//! [`MAX_TENANT_LABELS`] seen; later ones count as `_other`, so a SaaS
//! with 100k tenants adds at most that many series.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::store::StoreMetrics;

pub struct Metrics {
    pub registry: Registry,
    /// Store transactions and their retries.
    pub store: StoreMetrics,
    pub grpc_handled: IntCounterVec,
    pub grpc_seconds: HistogramVec,
    pub decisions: IntCounterVec,
    pub index_revision: IntGauge,
    pub store_revision: IntGauge,
    pub index_lag: IntGauge,
    pub leader: IntGauge,
    pub leader_epoch: IntGauge,
    /// 1 while health reports SERVING (index loaded and current).
    pub serving: IntGauge,
    pub job_runs: IntCounterVec,
    pub job_seconds: HistogramVec,
    pub index_divergence: IntCounter,
    pub index_corrupt: IntCounter,
    pub index_quarantined: IntGauge,
    pub config_reloads: IntCounterVec,
    pub pool_rejected: IntCounterVec,
    /// Refused calls counted but not written to the audit trail (queue full).
    pub audit_refusals_dropped: IntCounter,
    /// Decision log entries dropped because the writer's queue was full.
    pub decision_log_dropped: IntCounter,
    pub checks_offloaded: IntCounter,
    pub tenant_usage: IntGaugeVec,
    pub tenants_over_limit: IntGauge,
    /// Checks by top-level tenant and decision ([`Metrics::tenant_decision`]).
    tenant_decisions: IntCounterVec,
    tenant_labels: RwLock<HashSet<Box<str>>>,
    /// Every metric family's name, including those with no series yet.
    families: Vec<String>,
}

/// Distinct top-level tenants given their own label value.
pub const MAX_TENANT_LABELS: usize = 100;

/// The label value of tenants past [`MAX_TENANT_LABELS`].
pub const OTHER_TENANTS: &str = "_other";

impl Metrics {
    /// A fresh set, registered in its own registry.
    pub fn new() -> Arc<Metrics> {
        let grpc_handled = IntCounterVec::new(
            Opts::new("grpc_server_handled_total", "RPCs completed on the server, by code."),
            &["grpc_service", "grpc_method", "grpc_code"],
        )
        .expect("valid metric");
        let grpc_seconds = HistogramVec::new(
            HistogramOpts::new("grpc_server_handling_seconds", "RPC handling time on the server.").buckets(vec![
                0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["grpc_service", "grpc_method"],
        )
        .expect("valid metric");
        let decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_check_decisions_total",
                "Check decisions, by decision and reason.",
            ),
            &["decision", "reason"],
        )
        .expect("valid metric");
        let index_revision = IntGauge::new(
            "portcullis_index_revision",
            "The revision this replica's index has caught up to.",
        )
        .expect("valid metric");
        let store_revision = IntGauge::new(
            "portcullis_store_revision",
            "The latest committed revision this replica knows of.",
        )
        .expect("valid metric");
        let index_lag = IntGauge::new(
            "portcullis_index_revision_lag",
            "Store revision minus index revision: how far this replica's index trails.",
        )
        .expect("valid metric");
        let leader =
            IntGauge::new("portcullis_leader", "1 while this replica holds the leader lease.").expect("valid metric");
        let leader_epoch = IntGauge::new(
            "portcullis_leader_epoch",
            "The fencing epoch of the lease this replica last held.",
        )
        .expect("valid metric");
        let serving = IntGauge::new(
            "portcullis_serving",
            "1 while this replica's health reports SERVING; 0 while loading, behind the store or draining.",
        )
        .expect("valid metric");
        let job_runs = IntCounterVec::new(
            Opts::new("portcullis_job_runs_total", "Background job runs, by job and result."),
            &["job", "result"],
        )
        .expect("valid metric");
        let job_seconds = HistogramVec::new(
            HistogramOpts::new("portcullis_job_duration_seconds", "Background job run time."),
            &["job"],
        )
        .expect("valid metric");
        let index_divergence = IntCounter::new(
            "portcullis_index_divergence_total",
            "Vaults whose live index was found to differ from the store.",
        )
        .expect("valid metric");
        let index_corrupt = IntCounter::new(
            "portcullis_index_corrupt_records_total",
            "Stored records or feed changes the index could not read (their scope is quarantined).",
        )
        .expect("valid metric");
        let index_quarantined = IntGauge::new(
            "portcullis_index_quarantined_scopes",
            "Vaults or tenant levels in quarantine: their checks answer UNAVAILABLE until repaired.",
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_config_reloads_total",
                "Re-reads of the API keys file and the TLS files after they changed, by result.",
            ),
            &["what", "result"],
        )
        .expect("valid metric");
        let pool_rejected = IntCounterVec::new(
            Opts::new(
                "portcullis_pool_rejected_total",
                "Requests refused with RESOURCE_EXHAUSTED because a bounded pool's queue was full, by pool.",
            ),
            &["pool"],
        )
        .expect("valid metric");
        let audit_refusals_dropped = IntCounter::new(
            "portcullis_audit_refusals_dropped_total",
            "Refused admin and audit calls counted but not written to the audit trail because its queue was full.",
        )
        .expect("valid metric");
        let decision_log_dropped = IntCounter::new(
            "portcullis_decision_log_dropped_total",
            "Decision log entries dropped because the writer's queue was full.",
        )
        .expect("valid metric");
        let checks_offloaded = IntCounter::new(
            "portcullis_checks_offloaded_total",
            "Checks whose conditions outgrew the inline budget and were re-run on the expensive pool.",
        )
        .expect("valid metric");
        let tenant_usage = IntGaugeVec::new(
            Opts::new(
                "portcullis_tenant_objects",
                "Objects held across all tenants, by kind (last accounted).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let tenants_over_limit = IntGauge::new(
            "portcullis_tenants_over_limit",
            "Tenants holding more than one of their limits allows.",
        )
        .expect("valid metric");
        let tenant_decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_tenant_check_decisions_total",
                "Check decisions by top-level tenant (the first 100 seen; later ones as _other) and decision.",
            ),
            &["tenant", "decision"],
        )
        .expect("valid metric");
        let mut m = Metrics {
            families: Vec::new(),
            registry: Registry::new(),
            tenant_decisions,
            tenant_labels: RwLock::new(HashSet::new()),
            store: StoreMetrics::default(),
            grpc_handled,
            grpc_seconds,
            decisions,
            index_revision,
            store_revision,
            index_lag,
            leader,
            leader_epoch,
            serving,
            job_runs,
            job_seconds,
            index_divergence,
            index_corrupt,
            index_quarantined,
            config_reloads,
            pool_rejected,
            audit_refusals_dropped,
            decision_log_dropped,
            checks_offloaded,
            tenant_usage,
            tenants_over_limit,
        };
        let mut collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.grpc_handled.clone()),
            Box::new(m.grpc_seconds.clone()),
            Box::new(m.decisions.clone()),
            Box::new(m.index_revision.clone()),
            Box::new(m.store_revision.clone()),
            Box::new(m.index_lag.clone()),
            Box::new(m.leader.clone()),
            Box::new(m.leader_epoch.clone()),
            Box::new(m.serving.clone()),
            Box::new(m.job_runs.clone()),
            Box::new(m.job_seconds.clone()),
            Box::new(m.index_divergence.clone()),
            Box::new(m.index_corrupt.clone()),
            Box::new(m.index_quarantined.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.pool_rejected.clone()),
            Box::new(m.audit_refusals_dropped.clone()),
            Box::new(m.decision_log_dropped.clone()),
            Box::new(m.checks_offloaded.clone()),
            Box::new(m.tenant_usage.clone()),
            Box::new(m.tenants_over_limit.clone()),
            Box::new(m.tenant_decisions.clone()),
        ];
        collectors.extend(m.store.collectors());
        for c in collectors {
            m.families.extend(c.desc().iter().map(|d| d.fq_name.clone()));
            // Registration fails only on a duplicate name, a programming
            // error the tests catch.
            let _ = m.registry.register(c);
        }
        Arc::new(m)
    }

    /// Times one RPC; [`RpcTimer::finish`] counts its outcome.
    pub fn rpc(&self, service: &'static str, method: &'static str) -> RpcTimer<'_> {
        RpcTimer {
            metrics: self,
            service,
            method,
            start: Instant::now(),
        }
    }

    /// The name of every metric family `/metrics` can show (a labelled
    /// family shows only once it has a series): what dashboards and alert
    /// rules may refer to.
    pub fn families(&self) -> &[String] {
        &self.families
    }

    /// Counts a check of `tenant` under its top-level tenant's label.
    pub fn tenant_decision(&self, tenant: &str, allowed: bool) {
        let top = tenant.split('/').next().unwrap_or(tenant);
        let known = self
            .tenant_labels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(top);
        let label = if known {
            top
        } else {
            let mut seen = self.tenant_labels.write().unwrap_or_else(|e| e.into_inner());
            if seen.len() < MAX_TENANT_LABELS {
                seen.insert(top.into());
                top
            } else if seen.contains(top) {
                top
            } else {
                OTHER_TENANTS
            }
        };
        self.tenant_decisions
            .with_label_values(&[label, if allowed { "ALLOWED" } else { "DENIED" }])
            .inc();
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Times one RPC and counts its outcome.
pub struct RpcTimer<'a> {
    metrics: &'a Metrics,
    service: &'static str,
    method: &'static str,
    start: Instant,
}

impl RpcTimer<'_> {
    pub fn finish(self, code: tonic::Code) {
        self.metrics
            .grpc_seconds
            .with_label_values(&[self.service, self.method])
            .observe(self.start.elapsed().as_secs_f64());
        self.metrics
            .grpc_handled
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels_are_top_level_and_bounded() {
        let m = Metrics::new();
        m.tenant_decision("acme/eng/platform", true);
        m.tenant_decision("acme", false);
        for i in 0..MAX_TENANT_LABELS + 50 {
            m.tenant_decision(&format!("t{i}/x"), true);
        }
        let text = m.render();
        assert!(text.contains(r#"portcullis_tenant_check_decisions_total{decision="ALLOWED",tenant="acme"} 1"#));
        assert!(text.contains(r#"portcullis_tenant_check_decisions_total{decision="DENIED",tenant="acme"} 1"#));
        assert!(!text.contains("acme/eng"));
        // acme took one of the labels: t0..t98 have theirs, the rest share one.
        assert!(text.contains(r#"tenant="t98""#) && !text.contains(r#"tenant="t99""#));
        assert!(text.contains(r#"portcullis_tenant_check_decisions_total{decision="ALLOWED",tenant="_other"} 51"#));
        let series = text
            .lines()
            .filter(|l| l.starts_with("portcullis_tenant_check_decisions_total{"))
            .count();
        assert_eq!(series, MAX_TENANT_LABELS + 2);
    }

    #[test]
    fn two_servers_count_apart_and_render_their_own() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.leader.set(1);
        a.store.record("committed", 3);
        assert_eq!(b.leader.get(), 0);
        assert!(a.render().contains("portcullis_leader 1"));
        assert!(b.render().contains("portcullis_leader 0"));
        assert!(
            a.render().contains("portcullis_store_retries_total 2"),
            "{}",
            a.render()
        );
    }
}
