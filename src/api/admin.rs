//! AdminService: writes and reads of tenants, vaults, roles, bindings and
//! memberships, through the repository.

use std::sync::Arc;

use portcullis_proto::v1 as pb;
use portcullis_proto::v1::admin_service_server::AdminService;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::confine::TenantFields;
use super::convert::*;
use super::{AppState, auth, tenant_field};
use crate::engine::ids::{Subject, TenantId, Violations};
use crate::engine::model::{Binding, Membership, Role};
use crate::error::ServiceError;
use crate::repo::{Confinement, IMPORT_CHUNK, parse_expected, token};

const SVC: &str = "portcullis.v1.AdminService";

pub struct AdminApi {
    pub state: Arc<AppState>,
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, Status> {
    v.ok_or_else(|| Status::from(ServiceError::invalid(field, "is required")))
}

fn conv<T>(r: Conv<T>) -> Result<T, Status> {
    r.map_err(Status::from)
}

/// Parses a (tenant, vault) pair of a request; the vault may be empty.
fn scope_fields(tenant: &str, vault: &str) -> Result<(TenantId, Option<crate::engine::VaultName>), Status> {
    let mut v = Violations::new();
    let t = tenant_id(&mut v, "tenant", tenant);
    let vn = opt_vault(&mut v, "vault", vault);
    match (t, vn) {
        (Some(t), Some(vn)) => Ok((t, vn)),
        _ => Err(Status::from(v)),
    }
}

impl AdminApi {
    async fn after_write(&self, revision: u64) {
        self.state.settle(revision).await;
    }

    /// A write counts against the tenant's (and its ancestors')
    /// `max_writes_per_second`.
    fn write_rate(&self, tenant: &str) -> Result<(), Status> {
        match self.state.index() {
            Ok(index) => super::rate(index, tenant, crate::ratelimit::Kind::Writes, 1),
            Err(_) => Ok(()),
        }
    }
}

/// What a confined key may do to the tenants of its subtrees (`None` for
/// an unconfined key).
fn confinement(caller: &auth::Caller, tenant: &str) -> Option<Confinement> {
    caller.is_confined().then(|| Confinement {
        key: caller.name.to_string(),
        roots: caller
            .roots_of(tenant)
            .filter_map(|r| TenantId::parse(r).ok())
            .collect(),
    })
}

type Res<T> = Result<Response<T>, Status>;

/// A vault named by a request's `tenant` and `field`, both checked at once.
fn vault_ref(tenant: &str, field: &str, name: &str) -> Result<(TenantId, crate::engine::VaultName), Status> {
    let mut v = Violations::new();
    let t = tenant_id(&mut v, "tenant", tenant);
    let n = vault_name(&mut v, field, name);
    match (t, n) {
        (Some(t), Some(n)) => Ok((t, n)),
        _ => Err(Status::from(v)),
    }
}

/// The repository's violations of an object, named by their path in the
/// request (`limits.max_vaults` is the request's `tenant.limits.max_vaults`).
fn under(object: &'static str) -> impl Fn(ServiceError) -> Status {
    move |e| match e {
        ServiceError::Invalid(mut v) => {
            for f in &mut v.0 {
                f.field = format!("{object}.{}", f.field);
            }
            Status::from(ServiceError::Invalid(v))
        }
        other => Status::from(other),
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn apply_tenant(&self, request: Request<pb::ApplyTenantRequest>) -> Res<pb::ApplyTenantResponse> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "ApplyTenant", who, async {
            let caller = auth::caller(&request)?;
            let actor = super::audit::actor(&request, &caller, "ApplyTenant")?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let t = conv(tenant_from(&required(r.tenant, "tenant")?, "tenant"))?;
            caller.require_tenant(t.id.as_str())?;
            self.write_rate(t.id.as_str())?;
            let expected = parse_expected(&r.expected_revision)?;
            let conf = confinement(&caller, t.id.as_str());
            let a = self
                .state
                .repo
                .call(move |repo| repo.apply_tenant(&actor, t, expected, conf.as_ref()))
                .await
                .map_err(under("tenant"))?;
            self.after_write(a.revision).await;
            Ok(Response::new(pb::ApplyTenantResponse {
                tenant: Some(tenant_to(&a.object, a.revision, None)),
                revision: token(a.revision),
                changed: a.changed,
            }))
        })
        .await
    }

    async fn get_tenant(&self, request: Request<pb::GetTenantRequest>) -> Res<pb::Tenant> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "GetTenant", who, async {
            let caller = auth::caller(&request)?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            tenant_field("id", &r.id)?;
            caller.require_tenant(&r.id)?;
            let id = TenantId::parse(&r.id).map_err(|e| Status::from(ServiceError::invalid("id", e)))?;
            let (t, rev, usage) = self.state.repo.call(move |repo| repo.get_tenant(&id)).await?;
            Ok(Response::new(tenant_to(&t, rev, Some(usage))))
        })
        .await
    }

    async fn list_tenants(&self, request: Request<pb::ListTenantsRequest>) -> Res<pb::ListTenantsResponse> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "ListTenants", who, async {
            let caller = auth::caller(&request)?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let under = if r.under.is_empty() {
                match caller.confined_to() {
                    [] => None,
                    [one] => Some(one.clone()),
                    many => {
                        return Err(ServiceError::UnderRequired {
                            key: caller.name.to_string(),
                            confined_to: many.join(", "),
                        }
                        .into());
                    }
                }
            } else {
                tenant_field("under", &r.under)?;
                caller.require_tenant(&r.under)?;
                Some(r.under.clone())
            };
            let under = under
                .map(|u| TenantId::parse(&u).map_err(|e| Status::from(ServiceError::invalid("under", e))))
                .transpose()?;
            let (items, next) = self
                .state
                .repo
                .call(move |repo| repo.list_tenants(under.as_ref(), &r.page_token, r.page_size))
                .await?;
            Ok(Response::new(pb::ListTenantsResponse {
                tenants: items.iter().map(|(t, rev)| tenant_to(t, *rev, None)).collect(),
                next_page_token: next,
            }))
        })
        .await
    }

    async fn delete_tenant(&self, request: Request<pb::DeleteTenantRequest>) -> Res<pb::DeleteResponse> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "DeleteTenant", who, async {
            let caller = auth::caller(&request)?;
            let actor = super::audit::actor(&request, &caller, "DeleteTenant")?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            tenant_field("id", &r.id)?;
            caller.require_tenant(&r.id)?;
            let id = TenantId::parse(&r.id).map_err(|e| Status::from(ServiceError::invalid("id", e)))?;
            self.write_rate(id.as_str())?;
            let expected = parse_expected(&r.expected_revision)?;
            let conf = confinement(&caller, id.as_str());
            let rev = self
                .state
                .repo
                .call(move |repo| repo.delete_tenant(&actor, &id, expected, conf.as_ref()))
                .await?;
            self.after_write(rev).await;
            Ok(Response::new(pb::DeleteResponse { revision: token(rev) }))
        })
        .await
    }

    async fn apply_vault(&self, request: Request<pb::ApplyVaultRequest>) -> Res<pb::ApplyVaultResponse> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "ApplyVault", who, async {
            let caller = auth::caller(&request)?;
            let actor = super::audit::actor(&request, &caller, "ApplyVault")?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let v = conv(vault_from(&required(r.vault, "vault")?, "vault"))?;
            caller.require_tenant(v.tenant.as_str())?;
            self.write_rate(v.tenant.as_str())?;
            let expected = parse_expected(&r.expected_revision)?;
            let a = self
                .state
                .repo
                .call(move |repo| repo.apply_vault(&actor, v, expected))
                .await
                .map_err(under("vault"))?;
            self.after_write(a.revision).await;
            Ok(Response::new(pb::ApplyVaultResponse {
                vault: Some(vault_to(&a.object, a.revision)),
                revision: token(a.revision),
                changed: a.changed,
            }))
        })
        .await
    }

    async fn get_vault(&self, request: Request<pb::GetVaultRequest>) -> Res<pb::Vault> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "GetVault", who, async {
            let caller = auth::caller(&request)?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let (t, n) = vault_ref(&r.tenant, "name", &r.name)?;
            caller.require_tenant(t.as_str())?;
            let (vault, rev) = self.state.repo.call(move |repo| repo.get_vault(&t, &n)).await?;
            Ok(Response::new(vault_to(&vault, rev)))
        })
        .await
    }

    async fn list_vaults(&self, request: Request<pb::ListVaultsRequest>) -> Res<pb::ListVaultsResponse> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "ListVaults", who, async {
            let caller = auth::caller(&request)?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            tenant_field("tenant", &r.tenant)?;
            caller.require_tenant(&r.tenant)?;
            let t = TenantId::parse(&r.tenant).map_err(|e| Status::from(ServiceError::invalid("tenant", e)))?;
            let (items, next) = self
                .state
                .repo
                .call(move |repo| repo.list_vaults(&t, &r.page_token, r.page_size))
                .await?;
            Ok(Response::new(pb::ListVaultsResponse {
                vaults: items.iter().map(|(v, rev)| vault_to(v, *rev)).collect(),
                next_page_token: next,
            }))
        })
        .await
    }

    async fn delete_vault(&self, request: Request<pb::DeleteVaultRequest>) -> Res<pb::DeleteResponse> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "DeleteVault", who, async {
            let caller = auth::caller(&request)?;
            let actor = super::audit::actor(&request, &caller, "DeleteVault")?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let (t, n) = vault_ref(&r.tenant, "name", &r.name)?;
            caller.require_tenant(t.as_str())?;
            self.write_rate(t.as_str())?;
            let expected = parse_expected(&r.expected_revision)?;
            let rev = self
                .state
                .repo
                .call(move |repo| repo.delete_vault(&actor, &t, &n, expected))
                .await?;
            self.after_write(rev).await;
            Ok(Response::new(pb::DeleteResponse { revision: token(rev) }))
        })
        .await
    }

    async fn apply_role(&self, request: Request<pb::ApplyRoleRequest>) -> Res<pb::ApplyRoleResponse> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "ApplyRole", who, async {
            let caller = auth::caller(&request)?;
            let actor = super::audit::actor(&request, &caller, "ApplyRole")?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let role = conv(role_from(&required(r.role, "role")?, "role"))?;
            caller.require_tenant(role.tenant.as_str())?;
            self.write_rate(role.tenant.as_str())?;
            let expected = parse_expected(&r.expected_revision)?;
            let a = self
                .state
                .repo
                .call(move |repo| repo.apply_role(&actor, role, expected))
                .await
                .map_err(under("role"))?;
            self.after_write(a.revision).await;
            Ok(Response::new(pb::ApplyRoleResponse {
                role: Some(role_to(&a.object, a.revision)),
                revision: token(a.revision),
                changed: a.changed,
            }))
        })
        .await
    }

    async fn get_role(&self, request: Request<pb::GetRoleRequest>) -> Res<pb::Role> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "GetRole", who, async {
            let caller = auth::caller(&request)?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let (t, vn) = scope_fields(&r.tenant, &r.vault)?;
            let name =
                crate::engine::RoleName::parse(&r.name).map_err(|e| Status::from(ServiceError::invalid("name", e)))?;
            caller.require_tenant(t.as_str())?;
            let (role, rev) = self
                .state
                .repo
                .call(move |repo| repo.get_role(&t, vn.as_ref(), &name))
                .await?;
            Ok(Response::new(role_to(&role, rev)))
        })
        .await
    }

    async fn list_roles(&self, request: Request<pb::ListRolesRequest>) -> Res<pb::ListRolesResponse> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "ListRoles", who, async {
            let caller = auth::caller(&request)?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let (t, vn) = scope_fields(&r.tenant, &r.vault)?;
            caller.require_tenant(t.as_str())?;
            let (items, next) = self
                .state
                .repo
                .call(move |repo| repo.list_roles(&t, vn.as_ref(), &r.page_token, r.page_size))
                .await?;
            Ok(Response::new(pb::ListRolesResponse {
                roles: items.iter().map(|(x, rev)| role_to(x, *rev)).collect(),
                next_page_token: next,
            }))
        })
        .await
    }

    async fn delete_role(&self, request: Request<pb::DeleteRoleRequest>) -> Res<pb::DeleteResponse> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "DeleteRole", who, async {
            let caller = auth::caller(&request)?;
            let actor = super::audit::actor(&request, &caller, "DeleteRole")?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let (t, vn) = scope_fields(&r.tenant, &r.vault)?;
            let name =
                crate::engine::RoleName::parse(&r.name).map_err(|e| Status::from(ServiceError::invalid("name", e)))?;
            caller.require_tenant(t.as_str())?;
            self.write_rate(t.as_str())?;
            let expected = parse_expected(&r.expected_revision)?;
            let rev = self
                .state
                .repo
                .call(move |repo| repo.delete_role(&actor, &t, vn.as_ref(), &name, expected))
                .await?;
            self.after_write(rev).await;
            Ok(Response::new(pb::DeleteResponse { revision: token(rev) }))
        })
        .await
    }

    async fn write_bindings(&self, request: Request<pb::WriteBindingsRequest>) -> Res<pb::WriteResponse> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "WriteBindings", who, async {
            let caller = auth::caller(&request)?;
            let actor = super::audit::actor(&request, &caller, "WriteBindings")?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let (t, vn) = scope_fields(&r.tenant, &r.vault)?;
            caller.require_tenant(t.as_str())?;
            self.write_rate(t.as_str())?;
            let mut v = Violations::new();
            let mut upserts: Vec<Binding> = Vec::with_capacity(r.upserts.len());
            for (i, b) in r.upserts.iter().enumerate() {
                match binding_from(b, &format!("upserts[{i}]"), &r.tenant, &r.vault) {
                    Ok(b) => upserts.push(b),
                    Err(e) => v.extend(e),
                }
            }
            let replace = opt_source(&mut v, "replace_source", r.replace_source);
            v.into_result()?;
            let deletes = r.deletes;
            let ((up, del), rev) = self
                .state
                .repo
                .call(move |repo| repo.write_bindings(&actor, &t, vn.as_ref(), &upserts, &deletes, replace))
                .await?;
            self.after_write(rev).await;
            Ok(Response::new(pb::WriteResponse {
                written_at: token(rev),
                upserted: up,
                deleted: del,
            }))
        })
        .await
    }

    async fn list_bindings(&self, request: Request<pb::ListBindingsRequest>) -> Res<pb::ListBindingsResponse> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "ListBindings", who, async {
            let caller = auth::caller(&request)?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let (t, vn) = scope_fields(&r.tenant, &r.vault)?;
            caller.require_tenant(t.as_str())?;
            let mut v = Violations::new();
            let subj = if r.subject.is_empty() {
                None
            } else {
                subject(&mut v, "subject", &r.subject)
            };
            let source = opt_source(&mut v, "source", r.source);
            v.into_result()?;
            let (items, next) = self
                .state
                .repo
                .call(move |repo| {
                    repo.list_bindings(&t, vn.as_ref(), subj.as_ref(), source, &r.page_token, r.page_size)
                })
                .await?;
            Ok(Response::new(pb::ListBindingsResponse {
                bindings: items.iter().map(binding_to).collect(),
                next_page_token: next,
            }))
        })
        .await
    }

    async fn write_memberships(&self, request: Request<pb::WriteMembershipsRequest>) -> Res<pb::WriteResponse> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "WriteMemberships", who, async {
            let caller = auth::caller(&request)?;
            let actor = super::audit::actor(&request, &caller, "WriteMemberships")?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let (t, vn) = scope_fields(&r.tenant, &r.vault)?;
            caller.require_tenant(t.as_str())?;
            self.write_rate(t.as_str())?;
            let mut v = Violations::new();
            let mut conv_list = |field: &str, list: &[pb::Membership]| -> Vec<Membership> {
                let mut out = Vec::with_capacity(list.len());
                for (i, m) in list.iter().enumerate() {
                    match membership_from(m, &format!("{field}[{i}]"), &r.tenant, &r.vault) {
                        Ok(m) => out.push(m),
                        Err(e) => v.extend(e),
                    }
                }
                out
            };
            let upserts = conv_list("upserts", &r.upserts);
            let deletes = conv_list("deletes", &r.deletes);
            let replace = opt_source(&mut v, "replace_source", r.replace_source);
            v.into_result()?;
            let ((up, del), rev) = self
                .state
                .repo
                .call(move |repo| repo.write_memberships(&actor, &t, vn.as_ref(), &upserts, &deletes, replace))
                .await?;
            self.after_write(rev).await;
            Ok(Response::new(pb::WriteResponse {
                written_at: token(rev),
                upserted: up,
                deleted: del,
            }))
        })
        .await
    }

    async fn list_memberships(&self, request: Request<pb::ListMembershipsRequest>) -> Res<pb::ListMembershipsResponse> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "ListMemberships", who, async {
            let caller = auth::caller(&request)?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let (t, vn) = scope_fields(&r.tenant, &r.vault)?;
            caller.require_tenant(t.as_str())?;
            let mut v = Violations::new();
            let group: Option<Subject> = if r.group.is_empty() {
                None
            } else {
                subject(&mut v, "group", &r.group)
            };
            let member = if r.member.is_empty() {
                None
            } else {
                subject(&mut v, "member", &r.member)
            };
            v.into_result()?;
            let (items, next) = self
                .state
                .repo
                .call(move |repo| {
                    repo.list_memberships(
                        &t,
                        vn.as_ref(),
                        group.as_ref(),
                        member.as_ref(),
                        &r.page_token,
                        r.page_size,
                    )
                })
                .await?;
            Ok(Response::new(pb::ListMembershipsResponse {
                memberships: items.iter().map(membership_to).collect(),
                next_page_token: next,
            }))
        })
        .await
    }

    async fn import_vault(&self, request: Request<Streaming<pb::ImportVaultRequest>>) -> Res<pb::ImportVaultResponse> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "ImportVault", who, async {
            let caller = auth::caller(&request)?;
            let actor = super::audit::actor(&request, &caller, "ImportVault")?;
            let mut stream = request.into_inner();
            let mut scope: Option<(String, String)> = None;
            let mut roles: Vec<Role> = Vec::new();
            let mut bindings: Vec<Binding> = Vec::new();
            let mut memberships: Vec<Membership> = Vec::new();
            let (mut n_roles, mut n_bindings, mut n_members) = (0u32, 0u32, 0u32);
            let mut last_rev = 0u64;
            let mut i = 0usize;
            loop {
                let msg = stream.next().await;
                let done = msg.is_none();
                if let Some(msg) = msg {
                    let m = msg?;
                    // Every nested tenant is confined like the stream's own,
                    // before any of the message is used.
                    caller.require_all(&super::confine::import_fields(i, &m))?;
                    if scope.is_none() {
                        let (t, vn) = scope_fields(&m.tenant, &m.vault)?;
                        if vn.is_none() {
                            return Err(Status::from(ServiceError::invalid(
                                "vault",
                                "the first message must name the vault",
                            )));
                        }
                        caller.require_tenant(t.as_str())?;
                        self.write_rate(t.as_str())?;
                        scope = Some((m.tenant.clone(), m.vault.clone()));
                    } else if let Some((t, v)) = &scope
                        && ((!m.tenant.is_empty() && m.tenant != *t) || (!m.vault.is_empty() && m.vault != *v))
                    {
                        return Err(Status::from(ServiceError::invalid(
                            format!("items[{i}].vault"),
                            "an import targets one vault; every message must name the first message's vault or none",
                        )));
                    }
                    let (t, v) = scope.clone().expect("scope set");
                    let field = format!("items[{i}]");
                    match m.item {
                        Some(pb::import_vault_request::Item::Role(mut r)) => {
                            // A role of an import belongs to the imported
                            // vault: naming another tenant or vault (even the
                            // tenant level) is an error, never a write there.
                            let mut v2 = Violations::new();
                            if !r.tenant.is_empty() && r.tenant != t {
                                v2.push(format!("{field}.role.tenant"), "must be the import's tenant, or empty");
                            }
                            if !r.vault.is_empty() && r.vault != v {
                                v2.push(format!("{field}.role.vault"), "must be the import's vault, or empty");
                            }
                            v2.into_result()?;
                            r.tenant = t.clone();
                            r.vault = v.clone();
                            roles.push(conv(role_from(&r, &format!("{field}.role")))?);
                        }
                        Some(pb::import_vault_request::Item::Binding(b)) => {
                            bindings.push(conv(binding_from(&b, &format!("{field}.binding"), &t, &v))?);
                        }
                        Some(pb::import_vault_request::Item::Membership(mm)) => {
                            memberships.push(conv(membership_from(&mm, &format!("{field}.membership"), &t, &v))?);
                        }
                        None => {}
                    }
                    i += 1;
                }
                let Some((t, v)) = scope.clone() else {
                    return Err(Status::from(ServiceError::invalid(
                        "tenant",
                        "the import stream was empty",
                    )));
                };
                let flush = done || roles.len() + bindings.len() + memberships.len() >= IMPORT_CHUNK;
                if flush {
                    let (tid, vn) = scope_fields(&t, &v)?;
                    let (rs, bs, ms) = (
                        std::mem::take(&mut roles),
                        std::mem::take(&mut bindings),
                        std::mem::take(&mut memberships),
                    );
                    let (nr, nb, nm) = (rs.len() as u32, bs.len() as u32, ms.len() as u32);
                    let actor = actor.clone();
                    let rev = self
                        .state
                        .repo
                        .call(move |repo| {
                            let mut rev = 0;
                            for r in rs {
                                rev = rev.max(repo.apply_role(&actor, r, None)?.revision);
                            }
                            if !bs.is_empty() {
                                rev = rev.max(repo.write_bindings(&actor, &tid, vn.as_ref(), &bs, &[], None)?.1);
                            }
                            if !ms.is_empty() {
                                rev = rev.max(repo.write_memberships(&actor, &tid, vn.as_ref(), &ms, &[], None)?.1);
                            }
                            Ok(rev)
                        })
                        .await?;
                    last_rev = last_rev.max(rev);
                    n_roles += nr;
                    n_bindings += nb;
                    n_members += nm;
                }
                if done {
                    break;
                }
            }
            self.after_write(last_rev).await;
            Ok(Response::new(pb::ImportVaultResponse {
                roles: n_roles,
                bindings: n_bindings,
                memberships: n_members,
                written_at: if last_rev > 0 { token(last_rev) } else { String::new() },
            }))
        })
        .await
    }

    async fn plan_changes(&self, request: Request<pb::PlanChangesRequest>) -> Res<pb::PlanChangesResponse> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "PlanChanges", who, async {
            let caller = auth::caller(&request)?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let index = self.state.index()?.clone();
            // A plan is computed on this shard's index: every tenant it
            // names must be served here. Validation alone reads no index,
            // so the webhook may ask any shard.
            if !request.get_ref().validate_only {
                for (_, tenant) in request.get_ref().tenant_fields() {
                    if !tenant.is_empty() {
                        super::served(&index, tenant)?;
                    }
                }
            }
            let r = request.into_inner();
            // Planning can touch whole lineages: the bounded pool.
            let plan = self
                .state
                .expensive(move || super::plan::plan(&index.engine(), &r, crate::engine::Timestamp::now()))
                .await?;
            Ok(Response::new(plan))
        })
        .await
    }

    type ExportVaultStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ExportVaultResponse, Status>> + Send + 'static>>;

    async fn export_vault(&self, request: Request<pb::ExportVaultRequest>) -> Res<Self::ExportVaultStream> {
        let who = auth::who(&request);
        super::audit::refusals_audited(&self.state, SVC, "ExportVault", who, async {
            let caller = auth::caller(&request)?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let (t, n) = vault_ref(&r.tenant, "vault", &r.vault)?;
            caller.require_tenant(t.as_str())?;
            let (export, rev) = self.state.repo.call(move |repo| repo.export_vault(&t, &n)).await?;
            let revision = token(rev);
            use pb::export_vault_response::Item;
            let mut items = vec![Item::Vault(vault_to(&export.vault, 0))];
            items.extend(export.roles.iter().map(|x| Item::Role(role_to(x, 0))));
            items.extend(export.bindings.iter().map(|b| Item::Binding(binding_to(b))));
            items.extend(export.memberships.iter().map(|m| Item::Membership(membership_to(m))));
            let stream = tokio_stream::iter(items.into_iter().map(move |item| {
                Ok(pb::ExportVaultResponse {
                    item: Some(item),
                    revision: revision.clone(),
                })
            }));
            Ok(Response::new(Box::pin(stream) as Self::ExportVaultStream))
        })
        .await
    }
}
