//! Tenant: a cluster-scoped resource whose name is the tenant id with `/`
//! written as `.`; its parent Tenant must exist first, and it is deleted
//! only after every Tenant, Vault and Role below it.

use std::sync::Arc;
use std::time::Instant;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer};
use portcullis::api::convert;
use portcullis::manifest;
use portcullis_client::{Reason as ServiceReason, pb};

use super::outcome::{Outcome, finish, publish_deleted};
use super::ownership::{claimed_by_other, owner_labels};
use super::{Ctx, Error, FINALIZER, not_found, observe};
use crate::crd::{Role, Tenant, Vault};
use crate::reason::Reason;

pub async fn reconcile_tenant(obj: Arc<Tenant>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let start = Instant::now();
    let api = Api::<Tenant>::all(ctx.client.clone());
    let r = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            finalizer::Event::Apply(t) => apply(&ctx, &t).await,
            finalizer::Event::Cleanup(t) => cleanup(&ctx, &t).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    observe(&ctx, "Tenant", start);
    r
}

async fn apply(ctx: &Ctx, obj: &Tenant) -> Result<Action, Error> {
    let api = Api::<Tenant>::all(ctx.client.clone());
    let name = obj.name_any();
    let id = manifest::tenant_id_of_name(&name);
    let outcome = outcome(ctx, obj).await?;
    finish(ctx, obj, &api, outcome, Some(id)).await
}

/// The tenant this resource declares, or the violations of its name.
pub fn desired(obj: &Tenant) -> Result<portcullis::engine::model::Tenant, portcullis::engine::Violations> {
    manifest::tenant_of(
        &obj.name_any(),
        &manifest::TenantSpec {
            display_name: obj.spec.display_name.clone(),
            suspended: obj.spec.suspended,
            limits: obj.spec.limits.clone(),
            decision_logs: obj.spec.decision_logs,
            allowed_namespaces: Vec::new(),
        },
        &owner_labels(obj),
    )
}

async fn outcome(ctx: &Ctx, obj: &Tenant) -> Result<Outcome, Error> {
    let desired = match desired(obj) {
        Ok(t) => t,
        Err(v) => return Ok(Outcome::invalid(&v)),
    };
    if let Some(parent) = desired.id.parent() {
        let parent_name = manifest::tenant_name_of_id(parent.as_str());
        if Api::<Tenant>::all(ctx.client.clone())
            .get_opt(&parent_name)
            .await?
            .is_none()
        {
            return Ok(Outcome::not_ready(
                Reason::TenantNotFound,
                format!("parent Tenant {parent_name} does not exist"),
            ));
        }
    }
    let existing = match not_found(
        ctx.service
            .get_tenant(pb::GetTenantRequest {
                id: desired.id.to_string(),
            })
            .await,
    ) {
        Ok(e) => e,
        Err(e) => return Ok(Outcome::from_error(&e, "GetTenant")),
    };
    let wanted = convert::tenant_to(&desired, 0, None);
    if let Some(e) = &existing {
        if let Some(other) = claimed_by_other(ctx, obj, &e.labels).await? {
            return Ok(Outcome::not_ready(
                Reason::Conflict,
                format!("tenant {} is managed by {other}", desired.id),
            ));
        }
        let same = e.display_name == wanted.display_name
            && e.status == wanted.status
            && e.limits == wanted.limits
            && e.labels == wanted.labels;
        if same {
            return Ok(Outcome::ready(
                e.revision.clone(),
                false,
                format!("tenant {} is in force", desired.id),
            ));
        }
    }
    match ctx
        .acting_for(obj)
        .apply_tenant(pb::ApplyTenantRequest {
            tenant: Some(wanted),
            expected_revision: String::new(),
        })
        .await
    {
        Ok(r) => Ok(Outcome::ready(
            r.revision,
            r.changed,
            format!("tenant {} applied", desired.id),
        )),
        Err(e) => Ok(Outcome::from_error(&e, "ApplyTenant")),
    }
}

/// The resources in the cluster that depend on the Tenant `name`.
pub fn dependents(name: &str, tenants: &[Tenant], vaults: &[Vault], roles: &[Role]) -> Vec<String> {
    let child_prefix = format!("{name}.");
    let mut out: Vec<String> = tenants
        .iter()
        .filter(|t| t.name_any().starts_with(&child_prefix))
        .map(|t| format!("Tenant {}", t.name_any()))
        .collect();
    out.extend(
        vaults
            .iter()
            .filter(|v| v.spec.tenant == name)
            .map(|v| format!("Vault {}/{}", v.namespace().unwrap_or_default(), v.name_any())),
    );
    out.extend(
        roles
            .iter()
            .filter(|r| r.spec.tenant == name)
            .map(|r| format!("Role {}/{}", r.namespace().unwrap_or_default(), r.name_any())),
    );
    out
}

async fn cleanup(ctx: &Ctx, obj: &Tenant) -> Result<Action, Error> {
    let name = obj.name_any();
    let api = Api::<Tenant>::all(ctx.client.clone());
    let lp = Default::default();
    let tenants = api.list(&lp).await?.items;
    let vaults = Api::<Vault>::all(ctx.client.clone()).list(&lp).await?.items;
    let roles = Api::<Role>::all(ctx.client.clone()).list(&lp).await?.items;
    let mut waiting_for = dependents(&name, &tenants, &vaults, &roles);
    let id = manifest::tenant_id_of_name(&name);
    if !waiting_for.is_empty() {
        let n = waiting_for.len();
        waiting_for.truncate(5);
        let msg = format!("waiting for {n} dependents to be deleted: {}", waiting_for.join(", "));
        let outcome = Outcome::not_ready(Reason::DependentsExist, msg.clone());
        finish(ctx, obj, &api, outcome, Some(id)).await?;
        return Err(Error::Waiting(msg));
    }
    let owned = match not_found(ctx.service.get_tenant(pb::GetTenantRequest { id: id.clone() }).await) {
        Ok(Some(t)) => claimed_by_other(ctx, obj, &t.labels).await?.is_none(),
        Ok(None) => false,
        Err(e) => return Err(Error::Waiting(format!("cannot delete tenant {id}: {}", e.message()))),
    };
    if owned {
        let deleted = ctx
            .acting_for(obj)
            .delete_tenant(pb::DeleteTenantRequest {
                id: id.clone(),
                expected_revision: String::new(),
            })
            .await;
        match deleted {
            Ok(_) => {}
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) if e.reason() == &ServiceReason::DependentsExist => {
                let msg = e.message().to_string();
                let outcome = Outcome::not_ready(Reason::DependentsExist, msg.clone());
                finish(ctx, obj, &api, outcome, Some(id)).await?;
                return Err(Error::Waiting(msg));
            }
            Err(e) => return Err(Error::Waiting(format!("cannot delete tenant {id}: {}", e.message()))),
        }
    }
    publish_deleted(ctx, obj, format!("tenant {id} deleted from Portcullis")).await;
    Ok(Action::await_change())
}
