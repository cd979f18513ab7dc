//! PermissionService: checks and lookups against the live index.

use std::sync::Arc;

use portcullis_proto::v1 as pb;
use portcullis_proto::v1::permission_service_server::PermissionService;
use tonic::{Request, Response, Status};

use super::confine::TenantFields;
use super::convert::{context_from, effect_to, effective_to, reason_to, scope_strings};
use super::{AppState, auth, rate, tenant_field};
use crate::decisions::Roll;
use crate::engine::cost::CHECK_BUDGET;
use crate::engine::{
    CheckItem, CheckResult, EffectiveCursor, EntryOutcome, Explanation, PageRequest, Possibility, RequestContext,
    ResourceRule, RoleKey, Timestamp, check_bulk_in, lookup_subjects_in,
};
use crate::error::ServiceError;
use crate::ratelimit::Kind;
use crate::repo::{MAX_PAGE, token};
use crate::telemetry::Metrics;

const SVC: &str = "portcullis.v1.PermissionService";
pub const MAX_BULK: usize = 1000;

pub struct PermissionApi {
    pub state: Arc<AppState>,
}

/// What a decision log entry needs from the request before it is consumed.
struct Asked {
    request_id: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    started: std::time::Instant,
}

impl Asked {
    fn of<T>(r: &Request<T>) -> Asked {
        Asked {
            request_id: r.metadata().get("x-request-id").cloned(),
            started: std::time::Instant::now(),
        }
    }
}

fn role_key(k: &RoleKey) -> String {
    k.to_string()
}

fn explanation_to(e: &Explanation) -> pb::Explanation {
    pb::Explanation {
        reason: reason_to(e.reason),
        suspended_by: e.suspended_by.as_ref().map(|t| t.to_string()).unwrap_or_default(),
        entries: e
            .entries
            .iter()
            .map(|x| {
                let (bt, bv) = scope_strings(&x.binding_scope);
                let (dt, dv) = scope_strings(&x.defined_in);
                let (outcome, message) = match &x.outcome {
                    EntryOutcome::Applied => (pb::EntryOutcome::Applied, String::new()),
                    EntryOutcome::ConditionError(m) => (pb::EntryOutcome::ConditionError, m.clone()),
                };
                pb::ExplainEntry {
                    binding_id: x.binding_id.clone(),
                    binding_tenant: bt,
                    binding_vault: bv,
                    principal: x.principal.clone(),
                    group_path: x.group_path.clone(),
                    role: x
                        .role
                        .as_ref()
                        .map(|r| r.name.to_string())
                        .unwrap_or_else(|| "inline".into()),
                    role_path: x.role_path.iter().map(role_key).collect(),
                    sid: x.sid.clone().unwrap_or_default(),
                    index: x.index,
                    effect: effect_to(x.effect),
                    defined_tenant: dt,
                    defined_vault: dv,
                    outcome: outcome as i32,
                    message,
                    counted: x.counted,
                }
            })
            .collect(),
    }
}

fn check_response(metrics: &Metrics, r: &CheckResult, at: u64) -> pb::CheckPermissionResponse {
    metrics
        .decisions
        .with_label_values(&[if r.allowed { "ALLOWED" } else { "DENIED" }, r.reason.as_str()])
        .inc();
    pb::CheckPermissionResponse {
        decision: if r.allowed {
            pb::Decision::Allowed as i32
        } else {
            pb::Decision::Denied as i32
        },
        reason: reason_to(r.reason),
        checked_at: token(at),
        explanation: r.explanation.as_ref().map(explanation_to),
    }
}

fn rule_to(r: &ResourceRule) -> pb::ResourceRule {
    pb::ResourceRule {
        scope: r.scope_patterns(),
        resources: r.resource_patterns(),
        conditions: r.conditions.clone(),
        binding_id: r.binding_id().to_string(),
        role: r
            .role
            .as_ref()
            .map(|k| k.name.to_string())
            .unwrap_or_else(|| "inline".into()),
        sid: r.sid().unwrap_or_default().to_string(),
        index: r.index(),
    }
}

/// The request context, within its limits, with the inline budget: a check
/// that needs more is re-run on the bounded pool (see [`crate::engine::cost`]).
fn context_of(field: &str, s: &Option<prost_types::Struct>) -> Result<RequestContext, crate::engine::Violations> {
    let ctx = match s {
        Some(s) => RequestContext::new(context_from(field, s)?),
        None => RequestContext::default(),
    };
    Ok(ctx.with_budget(crate::engine::cost::INLINE_BUDGET))
}

impl PermissionApi {
    /// What every query does first after confinement: the tenant is valid and the
    /// index meets the consistency asked for. Returns the index and the
    /// revision the answer is evaluated at.
    async fn begin(
        &self,
        tenant: &str,
        consistency: Option<&pb::Consistency>,
    ) -> Result<(&std::sync::Arc<crate::index::LiveIndex>, u64), Status> {
        // The caller's confinement is checked with every tenant field of the
        // request, first thing in each handler.
        tenant_field("tenant", tenant)?;
        let index = self.state.index()?;
        super::served(index, tenant)?;
        self.state.consistency(index, consistency).await?;
        Ok((index, index.revision()))
    }
}

impl PermissionApi {
    /// Hands a check to the decision log when its roll keeps it, with what
    /// the request owned: nothing is copied or formatted here but the
    /// caller's name (the writer does the rest). A rolled check was
    /// evaluated with its explanation, so the entry names what decided
    /// without evaluating again; the response keeps the explanation only
    /// when it asked for one.
    #[allow(clippy::too_many_arguments)]
    fn log_decision(
        &self,
        roll: Option<Roll>,
        asked: Option<Asked>,
        caller: &str,
        r: pb::CheckPermissionRequest,
        ctx: RequestContext,
        res: &mut CheckResult,
        at: u64,
        now: Timestamp,
    ) {
        let explanation = if r.explain { None } else { res.explanation.take() };
        let (Some(roll), Some(asked)) = (roll, asked) else {
            return;
        };
        if !roll.keeps(res.allowed) {
            return;
        }
        self.state.decisions.log(crate::decisions::Entry {
            time: now,
            request_id: asked.request_id,
            caller: caller.to_string(),
            tenant: r.tenant,
            vault: r.vault,
            subject: r.subject,
            action: r.action,
            resource: r.resource,
            allowed: res.allowed,
            reason: res.reason.as_str(),
            revision: at,
            explanation: explanation.or_else(|| res.explanation.clone()),
            latency_us: asked.started.elapsed().as_micros() as u64,
            context: ctx.into_json(),
        });
    }
}

#[tonic::async_trait]
impl PermissionService for PermissionApi {
    async fn check_permission(
        &self,
        request: Request<pb::CheckPermissionRequest>,
    ) -> Result<Response<pb::CheckPermissionResponse>, Status> {
        self.state
            .observed(SVC, "CheckPermission", async {
                let caller = auth::caller(&request)?;
                caller.require_all(&request.get_ref().tenant_fields())?;
                // One roll, at the tenant's shares, decides whether the
                // decision log may keep this check; only then is anything
                // kept for it, and the check explained (once, in its own
                // evaluation).
                let roll = {
                    let tenant = &request.get_ref().tenant;
                    let index = self.state.index()?;
                    self.state.decisions.roll(|base| index.sampling.of(tenant, base))
                };
                let asked = roll.map(|_| Asked::of(&request));
                let r = request.into_inner();
                let (index, at) = self.begin(&r.tenant, r.consistency.as_ref()).await?;
                rate(index, &r.tenant, Kind::Checks, 1)?;
                let ctx = context_of("context", &r.context)?;
                let now = Timestamp::now();
                let item = CheckItem {
                    subject: &r.subject,
                    action: &r.action,
                    resource: &r.resource,
                    context: &ctx,
                };
                let mut res = index
                    .engine()
                    .check(&r.tenant, &r.vault, &item, now, r.explain || roll.is_some())?;
                if !ctx.budget().exhausted() {
                    self.state.metrics.tenant_decision(&r.tenant, res.allowed);
                    self.log_decision(roll, asked, &caller.name, r, ctx, &mut res, at, now);
                    return Ok(Response::new(check_response(&self.state.metrics, &res, at)));
                }
                // Its conditions need more than the inline budget: again, on the
                // bounded pool, with the full one, so a request thread is never
                // held for long.
                self.state.metrics.checks_offloaded.inc();
                let (index, full) = (index.clone(), ctx.with_budget(CHECK_BUDGET));
                let res = self
                    .state
                    .expensive(move || {
                        let item = CheckItem {
                            subject: &r.subject,
                            action: &r.action,
                            resource: &r.resource,
                            context: &full,
                        };
                        index
                            .engine()
                            .check(&r.tenant, &r.vault, &item, now, r.explain || roll.is_some())
                            .map(|res| (res, r, full))
                    })
                    .await??;
                let (mut res, r, full) = res;
                self.state.metrics.tenant_decision(&r.tenant, res.allowed);
                self.log_decision(roll, asked, &caller.name, r, full, &mut res, at, now);
                Ok(Response::new(check_response(&self.state.metrics, &res, at)))
            })
            .await
    }

    async fn check_bulk_permissions(
        &self,
        request: Request<pb::CheckBulkPermissionsRequest>,
    ) -> Result<Response<pb::CheckBulkPermissionsResponse>, Status> {
        self.state
            .observed(SVC, "CheckBulkPermissions", async {
                let caller = auth::caller(&request)?;
                caller.require_all(&request.get_ref().tenant_fields())?;
                let r = request.into_inner();
                if r.items.len() > MAX_BULK {
                    return Err(Status::from(ServiceError::invalid(
                        "items",
                        format!("at most {MAX_BULK} items per call, got {}", r.items.len()),
                    )));
                }
                let (index, at) = self.begin(&r.tenant, r.consistency.as_ref()).await?;
                rate(index, &r.tenant, Kind::Checks, r.items.len().max(1) as u32)?;
                let view = index.engine().view(&r.tenant, &r.vault)?;
                let explain = r.explain;
                let tenant = r.tenant.clone();
                // Up to a thousand checks: on the bounded pool, each with its
                // own full budget.
                let results = self
                    .state
                    .expensive(move || {
                        let now = Timestamp::now();
                        r.items
                            .iter()
                            .enumerate()
                            .map(|(i, it)| {
                                let ctx = match context_of(&format!("items[{i}].context"), &it.context) {
                                    Ok(c) => c.with_budget(CHECK_BUDGET),
                                    Err(v) => return Err(v),
                                };
                                let item = CheckItem {
                                    subject: &it.subject,
                                    action: &it.action,
                                    resource: &it.resource,
                                    context: &ctx,
                                };
                                check_bulk_in(&view, std::slice::from_ref(&item), now, explain)
                                    .pop()
                                    .expect("one result per item")
                                    .map_err(|v| v.prefixed(&format!("items[{i}].")))
                            })
                            .collect::<Vec<_>>()
                    })
                    .await?;
                let results = results
                    .into_iter()
                    .map(|res| pb::BulkCheckResult {
                        result: Some(match res {
                            Ok(c) => {
                                self.state.metrics.tenant_decision(&tenant, c.allowed);
                                pb::bulk_check_result::Result::Response(check_response(&self.state.metrics, &c, at))
                            }
                            Err(v) => pb::bulk_check_result::Result::Error(super::status::item_error(&v)),
                        }),
                    })
                    .collect();
                Ok(Response::new(pb::CheckBulkPermissionsResponse {
                    results,
                    checked_at: token(at),
                }))
            })
            .await
    }

    async fn lookup_resources(
        &self,
        request: Request<pb::LookupResourcesRequest>,
    ) -> Result<Response<pb::LookupResourcesResponse>, Status> {
        self.state
            .observed(SVC, "LookupResources", async {
                let caller = auth::caller(&request)?;
                caller.require_all(&request.get_ref().tenant_fields())?;
                let r = request.into_inner();
                let (index, at) = self.begin(&r.tenant, r.consistency.as_ref()).await?;
                rate(index, &r.tenant, Kind::Checks, 1)?;
                let index = index.clone();
                let f = self
                    .state
                    .expensive(move || {
                        index
                            .engine()
                            .lookup_resources(&r.tenant, &r.vault, &r.subject, &r.action, Timestamp::now())
                    })
                    .await??;
                Ok(Response::new(pb::LookupResourcesResponse {
                    grants: f.grants.iter().map(rule_to).collect(),
                    denials: f.denials.iter().map(rule_to).collect(),
                    conditional_grants: f.conditional_grants.iter().map(rule_to).collect(),
                    conditional_denials: f.conditional_denials.iter().map(rule_to).collect(),
                    suspended: f.suspended,
                    checked_at: token(at),
                }))
            })
            .await
    }

    async fn lookup_subjects(
        &self,
        request: Request<pb::LookupSubjectsRequest>,
    ) -> Result<Response<pb::LookupSubjectsResponse>, Status> {
        self.state
            .observed(SVC, "LookupSubjects", async {
                let caller = auth::caller(&request)?;
                caller.require_all(&request.get_ref().tenant_fields())?;
                let r = request.into_inner();
                let mut v = crate::engine::Violations::new();
                v.check("action", crate::engine::ids::check_action(&r.action));
                v.check("resource", crate::engine::ids::check_resource(&r.resource));
                let after = match page_cursor(&r.page_token) {
                    Ok(after) => after,
                    Err(rule) => {
                        v.push("page_token", rule);
                        None
                    }
                };
                v.into_result()?;
                let limit = page_limit(r.page_size, LOOKUP_SUBJECTS_PAGE);
                let (index, at) = self.begin(&r.tenant, r.consistency.as_ref()).await?;
                rate(index, &r.tenant, Kind::Checks, 1)?;
                let view = index.engine().view(&r.tenant, &r.vault)?;
                let (action, resource) = (r.action.clone(), r.resource.clone());
                let page = self
                    .state
                    .expensive(move || {
                        lookup_subjects_in(
                            &view,
                            &action,
                            &resource,
                            Timestamp::now(),
                            PageRequest {
                                after: after.as_deref(),
                                limit,
                            },
                        )
                    })
                    .await?;
                Ok(Response::new(pb::LookupSubjectsResponse {
                    subjects: page
                        .subjects
                        .into_iter()
                        .map(|(s, p)| pb::LookedUpSubject {
                            subject: s,
                            conditional: p == Possibility::Conditional,
                        })
                        .collect(),
                    next_page_token: page.next_cursor.map(hex::encode).unwrap_or_default(),
                    checked_at: token(at),
                }))
            })
            .await
    }

    async fn get_effective_permissions(
        &self,
        request: Request<pb::GetEffectivePermissionsRequest>,
    ) -> Result<Response<pb::GetEffectivePermissionsResponse>, Status> {
        self.state
            .observed(SVC, "GetEffectivePermissions", async {
                let caller = auth::caller(&request)?;
                caller.require_all(&request.get_ref().tenant_fields())?;
                let r = request.into_inner();
                let after = match page_cursor(&r.page_token) {
                    Ok(None) => None,
                    Ok(Some(text)) if let Some(c) = EffectiveCursor::decode(&text) => Some(c),
                    _ => {
                        let mut v = crate::engine::Violations::new();
                        v.push("page_token", PAGE_TOKEN_RULE);
                        return Err(v.into());
                    }
                };
                let limit = page_limit(r.page_size, MAX_PAGE);
                let (index, at) = self.begin(&r.tenant, r.consistency.as_ref()).await?;
                rate(index, &r.tenant, Kind::Checks, 1)?;
                let (index, tenant, vault, subject) =
                    (index.clone(), r.tenant.clone(), r.vault.clone(), r.subject.clone());
                let page = self
                    .state
                    .expensive(move || {
                        index.engine().effective_page(
                            &tenant,
                            &vault,
                            &subject,
                            Timestamp::now(),
                            after.as_ref(),
                            limit,
                        )
                    })
                    .await??;
                Ok(Response::new(pb::GetEffectivePermissionsResponse {
                    statements: page.statements.iter().map(effective_to).collect(),
                    checked_at: token(at),
                    next_page_token: page.next.map(|c| hex::encode(c.encode())).unwrap_or_default(),
                }))
            })
            .await
    }
}

/// LookupSubjects' page when the caller names none: its subjects are
/// short, and most callers want the first few.
const LOOKUP_SUBJECTS_PAGE: usize = 100;

const PAGE_TOKEN_RULE: &str = "must be a page token returned by the previous page";

/// A requested page size: 0 means `default`, and none exceeds [`MAX_PAGE`].
fn page_limit(requested: u32, default: usize) -> usize {
    match requested as usize {
        0 => default,
        n => n.min(MAX_PAGE),
    }
}

/// The engine's cursor text in a page token (hex, so any bytes the
/// cursor holds survive transport); `None` for the first page.
fn page_cursor(token: &str) -> Result<Option<String>, &'static str> {
    if token.is_empty() {
        return Ok(None);
    }
    hex::decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(Some)
        .ok_or(PAGE_TOKEN_RULE)
}
