//! Vault: a namespaced resource declaring a vault of a Tenant with its
//! bindings and memberships. The operator owns the vault's bindings and
//! memberships of source OPERATOR and replaces them as a set; others (the
//! API's, imports') are left alone.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer};
use portcullis::api::convert;
use portcullis::engine::Violations;
use portcullis::engine::ids::VaultName;
use portcullis::engine::model::Source;
use portcullis::manifest;
use portcullis_client::pb;

use super::outcome::{Outcome, finish};
use super::ownership::{claimed_by_other, delete_if_owned, owner_labels};
use super::{Ctx, Error, FINALIZER, attach, namespaced, not_found, observe};
use crate::crd::Vault;
use crate::reason::Reason;

pub async fn reconcile_vault(obj: Arc<Vault>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let start = Instant::now();
    let api = namespaced(&ctx, &*obj);
    let r = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            finalizer::Event::Apply(v) => {
                let outcome = outcome(&ctx, &v).await?;
                finish(&ctx, &*v, &api, outcome, None).await
            }
            finalizer::Event::Cleanup(v) => cleanup(&ctx, &v).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    observe(&ctx, "Vault", start);
    r
}

/// What identifies a binding's content: two bindings with the same key
/// need no write. Labels are compared as a sorted map.
pub fn binding_key(b: &pb::Binding) -> String {
    serde_json::to_string(&(
        &b.id,
        &b.subject,
        &b.role,
        b.statements
            .iter()
            .map(|s| {
                (
                    s.sid.clone(),
                    s.effect,
                    s.actions.clone(),
                    s.resources.clone(),
                    s.condition.clone(),
                )
            })
            .collect::<Vec<_>>(),
        &b.scope,
        &b.condition,
        b.not_before.as_ref().map(|t| (t.seconds, t.nanos)),
        b.expires_at.as_ref().map(|t| (t.seconds, t.nanos)),
        b.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
    ))
    .unwrap_or_default()
}

/// What a Vault declares, as the service's objects.
pub struct Desired {
    pub vault: pb::Vault,
    /// In the order of `spec.bindings`.
    pub bindings: Vec<pb::Binding>,
    /// One per group and member, in the order of `spec.memberships`.
    pub memberships: Vec<pb::Membership>,
    /// For each of `memberships`, its `spec.memberships[i].members[j]`.
    pub member_at: Vec<(usize, usize)>,
}

/// The vault, bindings and memberships a Vault declares, or the spec's
/// violations (all of them, each with its field path).
pub fn desired(obj: &Vault, tenant: &portcullis::engine::ids::TenantId) -> Result<Desired, Violations> {
    let mut viol = Violations::new();
    let labels = owner_labels(obj);
    let spec = manifest::VaultSpec {
        tenant: manifest::tenant_name_of_id(tenant.as_str()),
        display_name: obj.spec.display_name.clone(),
        ..Default::default()
    };
    let vault = manifest::vault_of(&obj.name_any(), &spec, &labels)
        .map_err(|e| viol.extend(e))
        .ok();
    let vault_name = vault.as_ref().map(|v| v.name.clone());
    let mut bindings = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, b) in obj.spec.bindings.iter().enumerate() {
        let field = format!("spec.bindings[{i}]");
        match manifest::binding_of(&field, tenant, vault_name.as_ref(), b, Source::Operator, &labels) {
            Ok(b) => {
                if !ids.insert(b.id.clone()) {
                    viol.push(format!("{field}.id"), format!("{} appears twice", b.id));
                }
                bindings.push(convert::binding_to(&b));
            }
            Err(e) => viol.extend(e),
        }
    }
    let mut memberships = Vec::new();
    let mut member_at = Vec::new();
    for (i, m) in obj.spec.memberships.iter().enumerate() {
        let field = format!("spec.memberships[{i}]");
        match manifest::memberships_of(&field, tenant, vault_name.as_ref(), m, Source::Operator) {
            Ok(ms) => {
                member_at.extend((0..ms.len()).map(|j| (i, j)));
                memberships.extend(ms.iter().map(convert::membership_to));
            }
            Err(e) => viol.extend(e),
        }
    }
    viol.into_result()?;
    Ok(Desired {
        vault: convert::vault_to(&vault.expect("no violations"), 0),
        bindings,
        memberships,
        member_at,
    })
}

/// `upserts[3].subject` in a WriteBindings request is the resource's
/// `spec.bindings[3].subject`.
fn binding_field(f: &str) -> String {
    match f.strip_prefix("upserts") {
        Some(rest) => format!("spec.bindings{rest}"),
        None => f.to_string(),
    }
}

async fn outcome(ctx: &Ctx, obj: &Vault) -> Result<Outcome, Error> {
    let name = obj.name_any();
    if let Err(e) = VaultName::parse(&name) {
        return Ok(Outcome::not_ready(Reason::InvalidSpec, format!("metadata.name: {e}")));
    }
    let (_, tid) = match attach(ctx, obj, &obj.spec.tenant).await? {
        Ok(x) => x,
        Err(o) => return Ok(o),
    };
    let Desired {
        vault: wanted,
        bindings,
        memberships,
        ..
    } = match desired(obj, &tid) {
        Ok(d) => d,
        Err(v) => return Ok(Outcome::invalid(&v)),
    };
    let service = &ctx.acting_for(obj);
    let existing = match not_found(
        service
            .get_vault(pb::GetVaultRequest {
                tenant: tid.to_string(),
                name: name.clone(),
            })
            .await,
    ) {
        Ok(e) => e,
        Err(e) => return Ok(Outcome::from_error(&e, "GetVault")),
    };
    let mut changed = false;
    let mut revision = existing.as_ref().map(|e| e.revision.clone()).unwrap_or_default();
    if let Some(e) = &existing
        && let Some(other) = claimed_by_other(ctx, obj, &e.labels).await?
    {
        return Ok(Outcome::not_ready(
            Reason::Conflict,
            format!("vault {name} of tenant {tid} is managed by {other}"),
        ));
    }
    let same = existing
        .as_ref()
        .is_some_and(|e| e.display_name == wanted.display_name && e.labels == wanted.labels);
    if !same {
        match service
            .apply_vault(pb::ApplyVaultRequest {
                vault: Some(wanted),
                expected_revision: String::new(),
            })
            .await
        {
            Ok(r) => {
                changed |= r.changed;
                revision = r.revision;
            }
            Err(e) => return Ok(Outcome::from_error(&e, "ApplyVault")),
        }
    }
    // Bindings: replace the operator's set, unless it already matches.
    let current = match service
        .list_all_bindings(pb::ListBindingsRequest {
            tenant: tid.to_string(),
            vault: name.clone(),
            source: pb::Source::Operator as i32,
            page_size: 1000,
            ..Default::default()
        })
        .await
    {
        Ok(c) => c,
        Err(e) => return Ok(Outcome::from_error(&e, "ListBindings")),
    };
    let have: BTreeSet<String> = current.iter().map(binding_key).collect();
    let want: BTreeSet<String> = bindings.iter().map(binding_key).collect();
    if have != want {
        match service
            .write_bindings(pb::WriteBindingsRequest {
                tenant: tid.to_string(),
                vault: name.clone(),
                upserts: bindings,
                deletes: vec![],
                replace_source: pb::Source::Operator as i32,
            })
            .await
        {
            Ok(r) => {
                revision = r.written_at;
                changed = true;
            }
            Err(e) => return Ok(Outcome::from_error_renaming(&e, "WriteBindings", binding_field)),
        }
    }
    // Memberships, the same way.
    let current = match service
        .list_all_memberships(pb::ListMembershipsRequest {
            tenant: tid.to_string(),
            vault: name.clone(),
            page_size: 1000,
            ..Default::default()
        })
        .await
    {
        Ok(c) => c,
        Err(e) => return Ok(Outcome::from_error(&e, "ListMemberships")),
    };
    let pair = |m: &pb::Membership| (m.group.clone(), m.member.clone());
    let have: BTreeSet<_> = current
        .iter()
        .filter(|m| m.source == pb::Source::Operator as i32)
        .map(pair)
        .collect();
    let want: BTreeSet<_> = memberships.iter().map(pair).collect();
    if have != want {
        match service
            .write_memberships(pb::WriteMembershipsRequest {
                tenant: tid.to_string(),
                vault: name.clone(),
                upserts: memberships,
                deletes: vec![],
                replace_source: pb::Source::Operator as i32,
            })
            .await
        {
            Ok(r) => {
                revision = r.written_at;
                changed = true;
            }
            Err(e) => return Ok(Outcome::from_error(&e, "WriteMemberships")),
        }
    }
    Ok(Outcome::ready(
        revision,
        changed,
        format!(
            "vault {name} of tenant {tid} is in force with {} bindings and {} memberships",
            obj.spec.bindings.len(),
            obj.spec.memberships.iter().map(|m| m.members.len()).sum::<usize>()
        ),
    ))
}

async fn cleanup(ctx: &Ctx, obj: &Vault) -> Result<Action, Error> {
    let name = obj.name_any();
    let tid = manifest::tenant_id_of_name(&obj.spec.tenant);
    let request = pb::GetVaultRequest {
        tenant: tid.clone(),
        name: name.clone(),
    };
    let labels = not_found(ctx.service.get_vault(request).await).map(|v| v.map(|v| v.labels));
    let delete = pb::DeleteVaultRequest {
        tenant: tid.clone(),
        name: name.clone(),
        expected_revision: String::new(),
    };
    let service = ctx.acting_for(obj);
    delete_if_owned(
        ctx,
        obj,
        format!("vault {name} of tenant {tid}"),
        labels,
        || async move { service.delete_vault(delete).await.map(|_| ()) },
    )
    .await
}
