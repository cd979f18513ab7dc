//! AuditService, and who an admin call acts as ([`actor`]).

use std::sync::Arc;

use portcullis_proto::v1 as pb;
use portcullis_proto::v1::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

use super::AppState;
use super::auth::{self, Caller};
use super::convert::{json_to_value, ts_from, ts_to};
use crate::audit::{Actor, Event, Operation};
use crate::engine::Timestamp;
use crate::engine::ids::{TenantId, Violations};
use crate::error::ServiceError;
use crate::repo::{AuditQuery, RefusedCall, Repo, token};

const SVC: &str = "AuditService";

/// The request metadata naming whom a call acts for.
pub const ON_BEHALF_OF: &str = "x-portcullis-on-behalf-of";
const MAX_ON_BEHALF_OF: usize = 512;

/// Who an admin call acts as, for its audit events: the caller's key, the
/// `x-portcullis-on-behalf-of` metadata (printable, at most 512 bytes, or
/// the call is refused), and the RPC.
pub fn actor<T>(request: &Request<T>, caller: &Caller, rpc: &str) -> Result<Actor, Status> {
    let on_behalf_of = match request.metadata().get(ON_BEHALF_OF) {
        None => None,
        Some(v) => {
            let s = v
                .to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= MAX_ON_BEHALF_OF && s.chars().all(|c| !c.is_control()));
            match s {
                Some(s) => Some(s.to_string()),
                None => {
                    return Err(ServiceError::invalid(
                        ON_BEHALF_OF,
                        format!("must be 1 to {MAX_ON_BEHALF_OF} bytes of printable text"),
                    )
                    .into());
                }
            }
        }
    };
    Ok(Actor::new(caller.name.to_string(), rpc)
        .for_(on_behalf_of)
        .with_certificate(super::peer::subject_of(request)))
}

/// Refused admin and audit calls on their way to the server-wide chain.
///
/// Never on the refused call's path, and never a way to flood the store: a
/// bounded queue feeds one writer task that writes a batch per transaction;
/// when the queue is full a refusal is counted instead
/// (`portcullis_audit_refusals_dropped_total`) and the count is written
/// with the next one recorded.
pub struct RefusalLog {
    tx: tokio::sync::mpsc::Sender<RefusedCall>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    dropped_total: prometheus::IntCounter,
}

const REFUSAL_QUEUE: usize = 1024;
const REFUSAL_BATCH: usize = 200;

impl RefusalLog {
    /// Starts the writer task (on the current runtime).
    pub fn start(repo: Arc<Repo>, dropped_total: prometheus::IntCounter) -> RefusalLog {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<RefusedCall>(REFUSAL_QUEUE);
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let uncounted = dropped.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < REFUSAL_BATCH {
                    match rx.try_recv() {
                        Ok(c) => batch.push(c),
                        Err(_) => break,
                    }
                }
                let n = uncounted.swap(0, std::sync::atomic::Ordering::AcqRel);
                if let Err(e) = repo.call(move |r| r.record_refusals(&batch, n)).await {
                    tracing::warn!(error = %e, "refused calls not recorded in the audit trail");
                }
            }
        });
        RefusalLog {
            tx,
            dropped,
            dropped_total,
        }
    }

    pub fn record(&self, call: RefusedCall) {
        if self.tx.try_send(call).is_err() {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            self.dropped_total.inc();
        }
    }
}

/// Runs an admin or audit handler; a refusal (UNAUTHENTICATED or
/// PERMISSION_DENIED) is recorded in the server-wide chain.
pub async fn refusals_audited<T>(
    state: &AppState,
    service: &'static str,
    method: &'static str,
    who: auth::Who,
    fut: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let r = state.observed(service, method, fut).await;
    if let Err(s) = &r
        && matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
    {
        state.refusals.record(RefusedCall {
            time_micros: Timestamp::now().0,
            actor: who.actor,
            peer: who.peer.map(|p| p.to_string()),
            certificate: who.certificate,
            rpc: method.to_string(),
            code: format!("{:?}", s.code()),
            message: s.message().chars().take(512).collect(),
        });
    }
    r
}

pub struct AuditApi {
    pub state: Arc<AppState>,
}

fn operation_to(o: Operation) -> i32 {
    match o {
        Operation::Create => pb::AuditOperation::Create as i32,
        Operation::Update => pb::AuditOperation::Update as i32,
        Operation::Delete => pb::AuditOperation::Delete as i32,
        Operation::Refused => pb::AuditOperation::Refused as i32,
    }
}

pub fn event_to(e: &Event, revision: u64) -> pb::AuditEvent {
    pb::AuditEvent {
        seq: e.seq,
        revision: token(revision),
        time: Some(ts_to(Timestamp(e.time_micros))),
        actor: e.actor.clone(),
        on_behalf_of: e.on_behalf_of.clone().unwrap_or_default(),
        certificate: e.certificate.clone().unwrap_or_default(),
        rpc: e.rpc.clone(),
        tenant: e.tenant.clone(),
        vault: e.vault.clone().unwrap_or_default(),
        kind: e.kind.clone(),
        name: e.name.clone(),
        operation: operation_to(e.operation),
        before: e.before.as_ref().map(json_to_value),
        after: e.after.as_ref().map(json_to_value),
        prev_hash: e.prev_hash.clone(),
    }
}

fn query_from(r: &pb::ListAuditEventsRequest) -> Result<AuditQuery, Status> {
    let mut v = Violations::new();
    let tenant = if r.refusals {
        if !r.tenant.is_empty() {
            v.push("tenant", "must be empty when reading the refusals");
        }
        if r.include_descendants {
            v.push("include_descendants", "the refusals have no descendants");
        }
        Some(crate::audit::REFUSALS.to_string())
    } else {
        v.check("tenant", TenantId::parse(&r.tenant)).map(|t| t.to_string())
    };
    let operation = match pb::AuditOperation::try_from(r.operation) {
        Ok(pb::AuditOperation::Unspecified) => None,
        Ok(pb::AuditOperation::Create) => Some(Operation::Create),
        Ok(pb::AuditOperation::Update) => Some(Operation::Update),
        Ok(pb::AuditOperation::Delete) => Some(Operation::Delete),
        Ok(pb::AuditOperation::Refused) => Some(Operation::Refused),
        Err(_) => {
            v.push("operation", format!("unknown operation {}", r.operation));
            None
        }
    };
    if !r.kind.is_empty() && !["tenant", "vault", "role", "binding", "membership", "call"].contains(&r.kind.as_str()) {
        v.push("kind", "must be tenant, vault, role, binding, membership or call");
    }
    if r.vault.len() > 256 || r.actor.len() > 256 {
        v.push(if r.vault.len() > 256 { "vault" } else { "actor" }, "at most 256 bytes");
    }
    let from = r.from_time.as_ref().and_then(|t| ts_from(&mut v, "from_time", t));
    let until = r.until_time.as_ref().and_then(|t| ts_from(&mut v, "until_time", t));
    v.into_result().map_err(|e| Status::from(ServiceError::Invalid(e)))?;
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(AuditQuery {
        tenant: tenant.expect("checked"),
        descendants: r.include_descendants,
        vault: nonempty(&r.vault),
        kind: nonempty(&r.kind),
        actor: nonempty(&r.actor),
        operation,
        from_time: from.map(|t| t.0),
        until_time: until.map(|t| t.0),
        after_seq: (r.after_seq > 0).then_some(r.after_seq),
        newest_first: r.newest_first,
    })
}

fn require_unconfined(caller: &Caller) -> Result<(), Status> {
    if caller.is_confined() {
        return Err(ServiceError::OutsideConfinement {
            key: caller.name.to_string(),
            confined_to: "some tenants".into(),
            field: "refusals".into(),
            tenant: String::new(),
        }
        .into());
    }
    Ok(())
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let who = auth::who(&request);
        refusals_audited(&self.state, SVC, "ListAuditEvents", who, async {
            let caller = auth::caller(&request)?;
            let r = request.into_inner();
            let q = query_from(&r)?;
            // A confined key reads its subtrees only: the tenant asked
            // for (and so every descendant) must be inside one. The
            // refusals span the server: unconfined keys only.
            if r.refusals {
                require_unconfined(&caller)?;
            } else {
                caller.require_tenant(q.tenant.as_str())?;
            }
            let (page_token, size) = (r.page_token.clone(), r.page_size);
            let (events, next) = self
                .state
                .repo
                .call(move |repo| repo.list_audit(&q, &page_token, size))
                .await?;
            Ok(Response::new(pb::ListAuditEventsResponse {
                events: events.iter().map(|(e, rev)| event_to(e, *rev)).collect(),
                next_page_token: next,
            }))
        })
        .await
    }

    async fn verify_audit_chain(
        &self,
        request: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        let who = auth::who(&request);
        refusals_audited(&self.state, SVC, "VerifyAuditChain", who, async {
            let caller = auth::caller(&request)?;
            let r = request.into_inner();
            let chain = if r.refusals {
                if !r.tenant.is_empty() {
                    return Err(ServiceError::invalid("tenant", "must be empty when verifying the refusals").into());
                }
                require_unconfined(&caller)?;
                crate::audit::REFUSALS.to_string()
            } else {
                let t =
                    TenantId::parse(&r.tenant).map_err(|rule| Status::from(ServiceError::invalid("tenant", rule)))?;
                caller.require_tenant(t.as_str())?;
                t.to_string()
            };
            let verified = self.state.repo.call(move |repo| repo.verify_audit(&chain)).await?;
            let (first_bad_seq, problem) = verified.first_bad.clone().unwrap_or_default();
            Ok(Response::new(pb::VerifyAuditChainResponse {
                checked: verified.checked,
                intact: verified.first_bad.is_none(),
                first_bad_seq,
                problem,
            }))
        })
        .await
    }
}
