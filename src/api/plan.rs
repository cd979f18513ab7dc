//! PlanChanges: what a change would do, computed on the live index without
//! writing. Every object of the request is checked as its write would be,
//! and every violation is answered at once (field paths into the request);
//! a valid plan answers each object's change, the access impact
//! ([`crate::engine::plan::access_impact`]) and the probes before and after.

use std::collections::BTreeSet;

use portcullis_proto::v1 as pb;

use super::convert::{
    binding_from, binding_to, context_from, effective_to, membership_from, membership_to, reason_to, role_from,
    role_to, tenant_from, tenant_to, vault_from, vault_to,
};
use crate::engine::cost::CHECK_BUDGET;
use crate::engine::ids::{RoleName, TenantId, VaultName};
use crate::engine::model::*;
use crate::engine::plan::access_impact;
use crate::engine::{CheckItem, Engine, RequestContext, Violations, validate};
use crate::repo::token;

/// Violation fields of `v` under `prefix` (`tenants[0]` + `labels`).
fn under(out: &mut Violations, prefix: &str, v: Violations) {
    for f in v.0 {
        let field = if f.field.starts_with(prefix) {
            f.field
        } else {
            format!("{prefix}.{}", f.field)
        };
        out.push(field, f.rule);
    }
}

/// The request's changes, and every violation they would get.
fn changes_of(base: &Engine, r: &pb::PlanChangesRequest) -> (Vec<Change>, Violations) {
    let mut v = Violations::new();
    let mut changes = Vec::new();
    let mut tenants_after: BTreeSet<TenantId> = BTreeSet::new();
    let mut vaults_after: BTreeSet<(TenantId, VaultName)> = BTreeSet::new();
    for (i, t) in r.tenants.iter().enumerate() {
        let f = format!("tenants[{i}]");
        match tenant_from(t, &f) {
            Ok(t) => {
                if let Err(e) = validate::tenant(&t) {
                    under(&mut v, &f, e);
                }
                tenants_after.insert(t.id.clone());
                changes.push((f, Change::PutTenant(t)));
            }
            Err(e) => under(&mut v, &f, e),
        }
    }
    for (i, x) in r.vaults.iter().enumerate() {
        let f = format!("vaults[{i}]");
        match vault_from(x, &f) {
            Ok(x) => {
                if let Err(e) = validate::vault(&x) {
                    under(&mut v, &f, e);
                }
                vaults_after.insert((x.tenant.clone(), x.name.clone()));
                changes.push((f, Change::PutVault(x)));
            }
            Err(e) => under(&mut v, &f, e),
        }
    }
    for (i, x) in r.roles.iter().enumerate() {
        let f = format!("roles[{i}]");
        match role_from(x, &f) {
            Ok(x) => {
                if let Err(e) = validate::role(&x) {
                    under(&mut v, &f, e);
                }
                changes.push((f, Change::PutRole(x)));
            }
            Err(e) => under(&mut v, &f, e),
        }
    }
    for (i, x) in r.bindings.iter().enumerate() {
        let f = format!("bindings[{i}]");
        match binding_from(x, &f, "", "") {
            Ok(x) => {
                if let Err(e) = validate::binding(&x) {
                    under(&mut v, &f, e);
                }
                changes.push((f, Change::PutBinding(x)));
            }
            Err(e) => under(&mut v, &f, e),
        }
    }
    for (i, x) in r.memberships.iter().enumerate() {
        let f = format!("memberships[{i}]");
        match membership_from(x, &f, "", "") {
            Ok(x) => {
                if let Err(e) = validate::membership(&x) {
                    under(&mut v, &f, e);
                }
                changes.push((f, Change::PutMembership(x)));
            }
            Err(e) => under(&mut v, &f, e),
        }
    }
    let tenant_of = |v: &mut Violations, f: &str, s: &str| v.check(format!("{f}.tenant"), TenantId::parse(s));
    let opt_vault = |v: &mut Violations, f: &str, s: &str| {
        if s.is_empty() {
            Some(None)
        } else {
            v.check(format!("{f}.vault"), VaultName::parse(s)).map(Some)
        }
    };
    for (i, id) in r.delete_tenants.iter().enumerate() {
        let f = format!("delete_tenants[{i}]");
        if let Some(t) = v.check(f.clone(), TenantId::parse(id)) {
            changes.push((f, Change::DeleteTenant { tenant: t }));
        }
    }
    for (i, o) in r.delete_vaults.iter().enumerate() {
        let f = format!("delete_vaults[{i}]");
        let t = tenant_of(&mut v, &f, &o.tenant);
        let n = v.check(format!("{f}.name"), VaultName::parse(&o.name));
        if let (Some(tenant), Some(vault)) = (t, n) {
            changes.push((f, Change::DeleteVault { tenant, vault }));
        }
    }
    for (i, o) in r.delete_roles.iter().enumerate() {
        let f = format!("delete_roles[{i}]");
        let t = tenant_of(&mut v, &f, &o.tenant);
        let vn = opt_vault(&mut v, &f, &o.vault);
        let n = v.check(format!("{f}.name"), RoleName::parse(&o.name));
        if let (Some(tenant), Some(vault), Some(name)) = (t, vn, n) {
            changes.push((
                f,
                Change::DeleteRole {
                    scope: Scope { tenant, vault },
                    name,
                },
            ));
        }
    }
    for (i, o) in r.delete_bindings.iter().enumerate() {
        let f = format!("delete_bindings[{i}]");
        let t = tenant_of(&mut v, &f, &o.tenant);
        let vn = opt_vault(&mut v, &f, &o.vault);
        v.check(format!("{f}.name"), crate::engine::ids::check_binding_id(&o.name));
        if let (Some(tenant), Some(vault)) = (t, vn) {
            changes.push((
                f,
                Change::DeleteBinding {
                    scope: Scope { tenant, vault },
                    id: o.name.clone(),
                },
            ));
        }
    }
    for (i, x) in r.delete_memberships.iter().enumerate() {
        let f = format!("delete_memberships[{i}]");
        match membership_from(x, &f, "", "") {
            Ok(m) => changes.push((f, Change::DeleteMembership(m))),
            Err(e) => under(&mut v, &f, e),
        }
    }
    // What needs other objects: a parent tenant, the scope of each object.
    let deleted_tenants: BTreeSet<TenantId> = changes
        .iter()
        .filter_map(|(_, c)| match c {
            Change::DeleteTenant { tenant } => Some(tenant.clone()),
            _ => None,
        })
        .collect();
    let deleted_vaults: BTreeSet<(TenantId, VaultName)> = changes
        .iter()
        .filter_map(|(_, c)| match c {
            Change::DeleteVault { tenant, vault } => Some((tenant.clone(), vault.clone())),
            _ => None,
        })
        .collect();
    if r.validate_only {
        return (changes.into_iter().map(|(_, c)| c).collect(), v);
    }
    let tenant_exists =
        |t: &TenantId| !deleted_tenants.contains(t) && (tenants_after.contains(t) || base.tenant_record(t).is_some());
    let vault_exists = |t: &TenantId, x: &VaultName| {
        let k = (t.clone(), x.clone());
        !deleted_vaults.contains(&k) && (vaults_after.contains(&k) || base.vault_record(t, x).is_some())
    };
    for (f, c) in &changes {
        match c {
            Change::PutTenant(t) => {
                if let Some(p) = t.id.parent()
                    && !tenant_exists(&p)
                {
                    v.push(format!("{f}.id"), format!("the parent tenant {p} does not exist"));
                }
            }
            Change::DeleteTenant { tenant } => {
                let dependents: Vec<String> = base
                    .vaults_within(tenant)
                    .into_iter()
                    .filter(|(t, x)| !deleted_vaults.contains(&(t.clone(), x.clone())))
                    .map(|(t, x)| format!("vault {x} of {t}"))
                    .collect();
                if !dependents.is_empty() {
                    v.push(
                        f.clone(),
                        format!("tenant {tenant} still has dependents ({})", dependents.join(", ")),
                    );
                }
            }
            Change::PutVault(_) | Change::PutRole(_) | Change::PutBinding(_) | Change::PutMembership(_) => {
                let s = c.scope();
                if !tenant_exists(&s.tenant) {
                    v.push(format!("{f}.tenant"), format!("tenant {} does not exist", s.tenant));
                } else if let Some(x) = &s.vault
                    && !matches!(c, Change::PutVault(_))
                    && !vault_exists(&s.tenant, x)
                {
                    v.push(
                        format!("{f}.vault"),
                        format!("vault {x} does not exist in tenant {}", s.tenant),
                    );
                }
            }
            _ => {}
        }
    }
    (changes.into_iter().map(|(_, c)| c).collect(), v)
}

fn any(o: pb::any_object::Object) -> Option<pb::AnyObject> {
    Some(pb::AnyObject { object: Some(o) })
}

fn planned(
    kind: &str,
    scope: &Scope,
    name: String,
    before: Option<pb::AnyObject>,
    after: Option<pb::AnyObject>,
) -> pb::PlannedObject {
    let action = match (&before, &after) {
        (None, Some(_)) => pb::PlanAction::Create,
        (Some(_), None) => pb::PlanAction::Delete,
        (Some(b), Some(a)) if b == a => pb::PlanAction::Unchanged,
        (Some(_), Some(_)) => pb::PlanAction::Update,
        (None, None) => pb::PlanAction::Unchanged,
    };
    pb::PlannedObject {
        action: action as i32,
        kind: kind.into(),
        tenant: scope.tenant.to_string(),
        vault: scope.vault.as_ref().map(|x| x.to_string()).unwrap_or_default(),
        name,
        before,
        after,
    }
}

/// Each change as an object before and after.
fn objects(base: &Engine, changes: &[Change]) -> Vec<pb::PlannedObject> {
    use pb::any_object::Object as O;
    let mut out = Vec::new();
    for c in changes {
        let scope = c.scope();
        out.push(match c {
            Change::PutTenant(t) => planned(
                "tenant",
                &scope,
                String::new(),
                base.tenant_record(&t.id)
                    .map(|x| O::Tenant(tenant_to(&x, 0, None)))
                    .and_then(any),
                any(O::Tenant(tenant_to(t, 0, None))),
            ),
            Change::DeleteTenant { tenant } => planned(
                "tenant",
                &scope,
                String::new(),
                base.tenant_record(tenant)
                    .map(|x| O::Tenant(tenant_to(&x, 0, None)))
                    .and_then(any),
                None,
            ),
            Change::PutVault(x) => planned(
                "vault",
                &scope,
                x.name.to_string(),
                base.vault_record(&x.tenant, &x.name)
                    .map(|x| O::Vault(vault_to(&x, 0)))
                    .and_then(any),
                any(O::Vault(vault_to(x, 0))),
            ),
            Change::DeleteVault { tenant, vault } => planned(
                "vault",
                &scope,
                vault.to_string(),
                base.vault_record(tenant, vault)
                    .map(|x| O::Vault(vault_to(&x, 0)))
                    .and_then(any),
                None,
            ),
            Change::PutRole(r) => planned(
                "role",
                &scope,
                r.name.to_string(),
                base.role_record(&scope, r.name.as_str())
                    .map(|x| O::Role(role_to(&x, 0)))
                    .and_then(any),
                any(O::Role(role_to(r, 0))),
            ),
            Change::DeleteRole { name, .. } => planned(
                "role",
                &scope,
                name.to_string(),
                base.role_record(&scope, name.as_str())
                    .map(|x| O::Role(role_to(&x, 0)))
                    .and_then(any),
                None,
            ),
            Change::PutBinding(b) => planned(
                "binding",
                &scope,
                b.id.clone(),
                base.binding_record(&scope, &b.id)
                    .map(|x| O::Binding(binding_to(&x)))
                    .and_then(any),
                any(O::Binding(binding_to(b))),
            ),
            Change::DeleteBinding { id, .. } => planned(
                "binding",
                &scope,
                id.clone(),
                base.binding_record(&scope, id)
                    .map(|x| O::Binding(binding_to(&x)))
                    .and_then(any),
                None,
            ),
            Change::PutMembership(m) | Change::DeleteMembership(m) => {
                let held = base.has_membership(&scope, &m.group, &m.member);
                let obj = any(O::Membership(membership_to(m)));
                let put = matches!(c, Change::PutMembership(_));
                planned(
                    "membership",
                    &scope,
                    format!("{} {}", m.group, m.member),
                    if held { obj.clone() } else { None },
                    if put { obj } else { None },
                )
            }
        });
    }
    out
}

/// The plan, at the base engine's revision.
pub fn plan(base: &Engine, r: &pb::PlanChangesRequest, now: Timestamp) -> pb::PlanChangesResponse {
    let revision = base.revision();
    let (changes, mut v) = changes_of(base, r);
    let mut probes = Vec::new();
    for (i, p) in r.probes.iter().enumerate() {
        let f = format!("probes[{i}]");
        let ctx = match &p.context {
            Some(s) => match context_from(&format!("{f}.context"), s) {
                Ok(j) => RequestContext::new(j),
                Err(e) => {
                    under(&mut v, &f, e);
                    continue;
                }
            },
            None => RequestContext::default(),
        };
        let item_ok = Engine::validate_item(&CheckItem {
            subject: &p.subject,
            action: &p.action,
            resource: &p.resource,
            context: &ctx,
        });
        if let Err(e) = item_ok {
            under(&mut v, &f, e);
            continue;
        }
        probes.push((p.clone(), ctx.with_budget(CHECK_BUDGET)));
    }
    if !v.is_empty() || r.validate_only {
        return pb::PlanChangesResponse {
            base_revision: token(revision),
            violations: super::status::field_violations(&v),
            ..Default::default()
        };
    }
    let objects = objects(base, &changes);
    let probe_vaults: Vec<(TenantId, VaultName)> = probes
        .iter()
        .filter_map(|(p, _)| Some((TenantId::parse(&p.tenant).ok()?, VaultName::parse(&p.vault).ok()?)))
        .collect();
    let impact = access_impact(base, &changes, &probe_vaults, now);
    let decide = |e: &Engine, p: &pb::PlanProbe, ctx: &RequestContext| {
        let item = CheckItem {
            subject: &p.subject,
            action: &p.action,
            resource: &p.resource,
            context: ctx,
        };
        match e.check(&p.tenant, &p.vault, &item, now, false) {
            Ok(r) => (
                if r.allowed {
                    pb::Decision::Allowed
                } else {
                    pb::Decision::Denied
                } as i32,
                reason_to(r.reason),
            ),
            Err(_) => (pb::Decision::Denied as i32, pb::Reason::NoMatch as i32),
        }
    };
    let probes = probes
        .iter()
        .map(|(p, ctx)| {
            let (b, br) = decide(&impact.before, p, ctx);
            let (a, ar) = decide(&impact.after, p, ctx);
            pb::ProbeResult {
                probe: Some(p.clone()),
                before: b,
                before_reason: br,
                after: a,
                after_reason: ar,
            }
        })
        .collect();
    pb::PlanChangesResponse {
        base_revision: token(revision),
        violations: Vec::new(),
        objects,
        access: impact
            .deltas
            .iter()
            .map(|d| pb::AccessChange {
                tenant: d.tenant.to_string(),
                vault: d.vault.to_string(),
                subject: d.subject.clone(),
                gained: d.gained.iter().map(effective_to).collect(),
                lost: d.lost.iter().map(effective_to).collect(),
            })
            .collect(),
        probes,
    }
}
