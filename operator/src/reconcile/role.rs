//! Role: a namespaced resource declaring a role of a Tenant, or of one of
//! its Vaults (which must be in the same namespace and of the same Tenant).

use std::sync::Arc;
use std::time::Instant;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer};
use portcullis::api::convert;
use portcullis::engine::Violations;
use portcullis::engine::ids::RoleName;
use portcullis::manifest;
use portcullis_client::pb;

use super::outcome::{Outcome, finish};
use super::ownership::{claimed_by_other, delete_if_owned, owner_labels};
use super::{Ctx, Error, FINALIZER, attach, namespaced, not_found, observe};
use crate::crd::{Role, Vault};
use crate::reason::Reason;

pub async fn reconcile_role(obj: Arc<Role>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let start = Instant::now();
    let api = namespaced(&ctx, &*obj);
    let r = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            finalizer::Event::Apply(r) => {
                let outcome = outcome(&ctx, &r).await?;
                finish(&ctx, &*r, &api, outcome, None).await
            }
            finalizer::Event::Cleanup(r) => cleanup(&ctx, &r).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    observe(&ctx, "Role", start);
    r
}

/// The role a Role declares, or every violation of its identifiers (each
/// with its path in the resource).
pub fn desired(obj: &Role) -> Result<pb::Role, Violations> {
    let spec = manifest::RoleSpec {
        tenant: obj.spec.tenant.clone(),
        vault: obj.spec.vault.clone().filter(|v| !v.is_empty()),
        description: obj.spec.description.clone(),
        statements: obj.spec.statements.clone(),
        inherits: obj.spec.inherits.clone(),
    };
    manifest::role_of(&obj.name_any(), &spec, &owner_labels(obj)).map(|r| convert::role_to(&r, 0))
}

/// `role.statements[1].condition` in an ApplyRole request is the
/// resource's `spec.statements[1].condition`.
fn role_field(f: &str) -> String {
    match f.strip_prefix("role.") {
        Some(rest) => format!("spec.{rest}"),
        None => f.to_string(),
    }
}

async fn outcome(ctx: &Ctx, obj: &Role) -> Result<Outcome, Error> {
    let name = obj.name_any();
    if let Err(e) = RoleName::parse(&name) {
        return Ok(Outcome::not_ready(Reason::InvalidSpec, format!("metadata.name: {e}")));
    }
    let (_, tid) = match attach(ctx, obj, &obj.spec.tenant).await? {
        Ok(x) => x,
        Err(o) => return Ok(o),
    };
    let vault = obj.spec.vault.clone().filter(|v| !v.is_empty());
    if let Some(v) = &vault {
        let ns = obj.namespace().unwrap_or_default();
        match Api::<Vault>::namespaced(ctx.client.clone(), &ns).get_opt(v).await? {
            None => {
                return Ok(Outcome::not_ready(
                    Reason::VaultNotFound,
                    format!("Vault {ns}/{v} does not exist"),
                ));
            }
            Some(vo) if vo.spec.tenant != obj.spec.tenant => {
                return Ok(Outcome::not_ready(
                    Reason::InvalidSpec,
                    format!(
                        "spec.vault: Vault {ns}/{v} belongs to Tenant {}, not {}",
                        vo.spec.tenant, obj.spec.tenant
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let wanted = match desired(obj) {
        Ok(r) => r,
        Err(v) => return Ok(Outcome::invalid(&v)),
    };
    let existing = match not_found(
        ctx.service
            .get_role(pb::GetRoleRequest {
                tenant: tid.to_string(),
                vault: vault.clone().unwrap_or_default(),
                name: name.clone(),
            })
            .await,
    ) {
        Ok(e) => e,
        Err(e) => return Ok(Outcome::from_error(&e, "GetRole")),
    };
    if let Some(e) = &existing {
        if let Some(other) = claimed_by_other(ctx, obj, &e.labels).await? {
            return Ok(Outcome::not_ready(
                Reason::Conflict,
                format!("role {name} of tenant {tid} is managed by {other}"),
            ));
        }
        let same = e.description == wanted.description
            && e.statements == wanted.statements
            && e.inherits == wanted.inherits
            && e.labels == wanted.labels;
        if same {
            return Ok(Outcome::ready(
                e.revision.clone(),
                false,
                format!("role {name} is in force"),
            ));
        }
    }
    match ctx
        .acting_for(obj)
        .apply_role(pb::ApplyRoleRequest {
            role: Some(wanted),
            expected_revision: String::new(),
        })
        .await
    {
        Ok(r) => Ok(Outcome::ready(r.revision, r.changed, format!("role {name} applied"))),
        Err(e) => Ok(Outcome::from_error_renaming(&e, "ApplyRole", role_field)),
    }
}

async fn cleanup(ctx: &Ctx, obj: &Role) -> Result<Action, Error> {
    let name = obj.name_any();
    let tid = manifest::tenant_id_of_name(&obj.spec.tenant);
    let vault = obj.spec.vault.clone().unwrap_or_default();
    let request = pb::GetRoleRequest {
        tenant: tid.clone(),
        vault: vault.clone(),
        name: name.clone(),
    };
    let labels = not_found(ctx.service.get_role(request).await).map(|r| r.map(|r| r.labels));
    let delete = pb::DeleteRoleRequest {
        tenant: tid.clone(),
        vault,
        name: name.clone(),
        expected_revision: String::new(),
    };
    let service = ctx.acting_for(obj);
    delete_if_owned(
        ctx,
        obj,
        format!("role {name} of tenant {tid}"),
        labels,
        || async move { service.delete_role(delete).await.map(|_| ()) },
    )
    .await
}
