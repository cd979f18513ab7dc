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
use crate::repo::{AuditQuery, token};

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
    Ok(Actor::new(caller.name.to_string(), rpc).for_(on_behalf_of))
}

pub struct AuditApi {
    pub state: Arc<AppState>,
}

fn operation_to(o: Operation) -> i32 {
    match o {
        Operation::Create => pb::AuditOperation::Create as i32,
        Operation::Update => pb::AuditOperation::Update as i32,
        Operation::Delete => pb::AuditOperation::Delete as i32,
    }
}

pub fn event_to(e: &Event, revision: u64) -> pb::AuditEvent {
    pb::AuditEvent {
        seq: e.seq,
        revision: token(revision),
        time: Some(ts_to(Timestamp(e.time_micros))),
        actor: e.actor.clone(),
        on_behalf_of: e.on_behalf_of.clone().unwrap_or_default(),
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
    let tenant = v.check("tenant", TenantId::parse(&r.tenant));
    let operation = match pb::AuditOperation::try_from(r.operation) {
        Ok(pb::AuditOperation::Unspecified) => None,
        Ok(pb::AuditOperation::Create) => Some(Operation::Create),
        Ok(pb::AuditOperation::Update) => Some(Operation::Update),
        Ok(pb::AuditOperation::Delete) => Some(Operation::Delete),
        Err(_) => {
            v.push("operation", format!("unknown operation {}", r.operation));
            None
        }
    };
    if !r.kind.is_empty() && !["tenant", "vault", "role", "binding", "membership"].contains(&r.kind.as_str()) {
        v.push("kind", "must be tenant, vault, role, binding or membership");
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

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        self.state
            .observed(SVC, "ListAuditEvents", async {
                let caller = auth::caller(&request)?;
                let r = request.into_inner();
                let q = query_from(&r)?;
                // A confined key reads its subtrees only: the tenant asked
                // for (and so every descendant) must be inside one.
                caller.require_tenant(q.tenant.as_str())?;
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
        self.state
            .observed(SVC, "VerifyAuditChain", async {
                let caller = auth::caller(&request)?;
                let r = request.into_inner();
                let t =
                    TenantId::parse(&r.tenant).map_err(|rule| Status::from(ServiceError::invalid("tenant", rule)))?;
                caller.require_tenant(t.as_str())?;
                let verified = self.state.repo.call(move |repo| repo.verify_audit(&t)).await?;
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
