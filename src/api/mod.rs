//! The gRPC services: thin adapters from portcullis.v1 to the engine, the
//! repository and the live index. Each handler validates its request,
//! checks the caller's tenancy, does its work, and maps errors once
//! (`status`).

pub mod admin;
pub mod audit;
pub mod auth;
pub mod confine;
pub mod convert;
pub mod diagnostics;
pub mod peer;
pub mod permission;
pub mod plan;
pub mod status;
pub mod watch;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tonic::{Code, Status};

use crate::error::{Result, ServiceError};
use crate::index::LiveIndex;
use crate::pool::Pool;
use crate::repo::{Repo, parse_token};
use crate::telemetry::Metrics;
use portcullis_proto::v1 as pb;

/// What every service shares.
pub struct AppState {
    index: OnceLock<Arc<LiveIndex>>,
    pub repo: Arc<Repo>,
    pub store_id: String,
    /// The longest a request waits for the index to catch up to a token.
    pub consistency_wait: Duration,
    pub leader: Arc<LeaderStatus>,
    /// The job runs this replica made as leader, newest last.
    pub job_log: crate::jobs::JobLog,
    /// Becomes true when the server starts shutting down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Expensive reads run here, bounded (see [`crate::pool`]).
    pub expensive: Pool,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// Refused admin and audit calls, on their way to the audit trail.
    pub refusals: audit::RefusalLog,
    pub decisions: crate::decisions::DecisionLog,
}

pub use crate::lease::LeaderStatus;

impl AppState {
    pub fn new(
        repo: Arc<Repo>,
        store_id: String,
        consistency_wait: Duration,
        leader: Arc<LeaderStatus>,
        shutdown: tokio::sync::watch::Receiver<bool>,
        expensive: Pool,
        decisions: crate::decisions::DecisionLog,
    ) -> AppState {
        let metrics = repo.metrics().clone();
        let refusals = audit::RefusalLog::start(repo.clone(), metrics.audit_refusals_dropped.clone());
        AppState {
            index: OnceLock::new(),
            repo,
            store_id,
            consistency_wait,
            leader,
            job_log: Default::default(),
            shutdown,
            expensive,
            metrics,
            refusals,
            decisions,
        }
    }

    /// Runs expensive work on the bounded expensive pool.
    pub async fn expensive<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.expensive.run(f).await
    }

    pub fn set_index(&self, index: Arc<LiveIndex>) {
        let _ = self.index.set(index);
    }

    pub fn index(&self) -> std::result::Result<&Arc<LiveIndex>, Status> {
        self.index.get().ok_or_else(|| ServiceError::IndexLoading.into())
    }

    /// Applies a consistency requirement; returns the revision the answer
    /// will be at least as fresh as.
    pub async fn consistency(&self, index: &LiveIndex, c: Option<&pb::Consistency>) -> Result<u64> {
        use pb::consistency::Requirement;
        match c.and_then(|c| c.requirement.as_ref()) {
            None | Some(Requirement::MinimizeLatency(_)) => Ok(index.revision()),
            Some(Requirement::AtLeastAsFresh(t)) => {
                let rev = parse_token("consistency.at_least_as_fresh", t)?;
                if rev > index.revision() {
                    // A token the store has not reached was never issued by
                    // it: refuse at once instead of waiting it out.
                    let current = self.repo.call(|r| r.current_version()).await?;
                    if rev > current {
                        return Err(ServiceError::RevisionAhead {
                            field: "consistency.at_least_as_fresh",
                            token: t.clone(),
                            current: crate::repo::token(current),
                        });
                    }
                }
                index.wait_for(rev, self.consistency_wait).await
            }
            Some(Requirement::FullyConsistent(_)) => {
                let rev = self.repo.call(|r| r.current_version()).await?;
                index.wait_for(rev, self.consistency_wait).await
            }
        }
    }

    /// After a write, give the local index a moment to apply it, so a
    /// following check on this replica sees it even without a token.
    pub async fn settle(&self, revision: u64) {
        if let Some(index) = self.index.get() {
            let _ = index.wait_for(revision, Duration::from_secs(1)).await;
        }
    }
}

impl AppState {
    /// Times an RPC and counts its code.
    pub async fn observed<T>(
        &self,
        service: &'static str,
        method: &'static str,
        fut: impl Future<Output = std::result::Result<T, Status>>,
    ) -> std::result::Result<T, Status> {
        let timer = self.metrics.rpc(service, method);
        let r = fut.await;
        timer.finish(match &r {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        });
        r
    }
}

/// Takes `n` tokens of `kind` from the tenant's (and its ancestors')
/// rate limits; RESOURCE_EXHAUSTED with `RetryInfo` when one is spent.
pub fn rate(index: &LiveIndex, tenant: &str, kind: crate::ratelimit::Kind, n: u32) -> std::result::Result<(), Status> {
    index.limits.take(tenant, kind, n).map_err(|r| {
        ServiceError::RateLimited {
            limit: r.kind.field().to_string(),
            subject: format!("tenant {}", r.tenant),
            per_second: r.per_second,
            retry_after: r.retry_after,
        }
        .into()
    })
}

/// FAILED_PRECONDITION, reason WRONG_SHARD, unless this replica's shard
/// serves `tenant`: its index holds nothing of the others.
pub fn served(index: &LiveIndex, tenant: &str) -> std::result::Result<(), Status> {
    let tenants = index.tenants();
    if tenants.serves(tenant) {
        return Ok(());
    }
    Err(ServiceError::WrongShard {
        tenant: tenant.to_string(),
        patterns: tenants.to_string(),
    }
    .into())
}

/// Validates a tenant id field before anything else looks at it.
pub fn tenant_field(field: &str, s: &str) -> std::result::Result<(), Status> {
    crate::engine::ids::check_tenant_id(s).map_err(|rule| Status::from(ServiceError::invalid(field, rule)))
}

pub(crate) fn load(o: &AtomicU64) -> u64 {
    o.load(Ordering::Relaxed)
}
