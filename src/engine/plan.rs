//! Planning a change without writing it: the objects as they are, and the
//! access a batch of changes would grant and revoke.
//!
//! The plan never touches the live engine's state. For the vaults a change
//! can affect it builds two scratch engines holding exactly what those
//! vaults' decisions depend on (their tenant lineage's tenants, roles,
//! bindings and memberships, and the vault's own), one as it is and one
//! with the changes applied, and compares every subject's effective
//! statements in each. Work is proportional to the affected lineages, not
//! to the installation.

use std::collections::BTreeSet;

use super::Engine;
use super::ids::{Subject, TenantId, VaultName};
use super::model::*;
use super::view::EffectiveStatement;

/// One subject whose effective statements in one vault change.
#[derive(Debug, Clone)]
pub struct AccessDelta {
    pub tenant: TenantId,
    pub vault: VaultName,
    pub subject: String,
    pub gained: Vec<EffectiveStatement>,
    pub lost: Vec<EffectiveStatement>,
}

/// Whether two effective statements are the same as GetEffectivePermissions
/// reports them.
fn same(a: &EffectiveStatement, b: &EffectiveStatement) -> bool {
    a.index == b.index
        && a.active == b.active
        && a.principal == b.principal
        && a.group_path == b.group_path
        && a.role == b.role
        && a.role_path == b.role_path
        && a.defined_in == b.defined_in
        && a.statement == b.statement
        && (std::sync::Arc::ptr_eq(&a.binding, &b.binding) || *a.binding == *b.binding)
}

/// The statements of `xs` that `ys` does not hold. Bucketed by binding,
/// statement and principal, so comparing is linear; written here rather
/// than hashing whole statements, which formatting-based keys made the
/// plan's cost.
fn missing_from(xs: Vec<EffectiveStatement>, ys: &[EffectiveStatement]) -> Vec<EffectiveStatement> {
    let mut buckets: std::collections::HashMap<(&str, u32, &str), Vec<&EffectiveStatement>> = Default::default();
    for y in ys {
        buckets
            .entry((y.binding.id.as_str(), y.index, y.principal.as_str()))
            .or_default()
            .push(y);
    }
    xs.into_iter()
        .filter(|x| {
            !buckets
                .get(&(x.binding.id.as_str(), x.index, x.principal.as_str()))
                .is_some_and(|c| c.iter().any(|y| same(x, y)))
        })
        .collect()
}

impl Engine {
    /// The stored tenant, if the engine holds it.
    pub fn tenant_record(&self, id: &TenantId) -> Option<Tenant> {
        self.catalog().tenants.get(id).and_then(|n| n.tenant.clone())
    }

    /// The stored vault, if the engine holds it.
    pub fn vault_record(&self, t: &TenantId, v: &VaultName) -> Option<Vault> {
        let cat = self.catalog();
        let key = VaultKey {
            tenant: t.clone(),
            vault: v.clone(),
        };
        cat.vaults.get(&key).map(|n| n.handle.load().vault().clone())
    }

    /// The stored role `name` of `scope`, if the engine holds it.
    pub fn role_record(&self, scope: &Scope, name: &str) -> Option<Role> {
        let cat = self.catalog();
        let data = cat.scopes.get(scope)?;
        data.roles
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, e)| (*e.role).clone())
    }

    /// The stored binding `id` of `scope`, if the engine holds it.
    pub fn binding_record(&self, scope: &Scope, id: &str) -> Option<Binding> {
        let cat = self.catalog();
        cat.scopes.get(scope)?.bindings.get(id).map(|b| (*b.source).clone())
    }

    /// Whether `member` is a direct member of `group` in `scope`.
    pub fn has_membership(&self, scope: &Scope, group: &Subject, member: &Subject) -> bool {
        let cat = self.catalog();
        cat.scopes
            .get(scope)
            .and_then(|d| d.member_of.get(member))
            .is_some_and(|gs| gs.contains(group))
    }

    /// Every vault of `t` and of the tenants below it.
    pub fn vaults_within(&self, t: &TenantId) -> Vec<(TenantId, VaultName)> {
        let cat = self.catalog();
        cat.vaults
            .keys()
            .filter(|k| k.tenant.is_within(t))
            .map(|k| (k.tenant.clone(), k.vault.clone()))
            .collect()
    }

    /// The objects `vaults` depend on, as changes that recreate them.
    fn lineage_changes(&self, vaults: &[(TenantId, VaultName)]) -> Vec<Change> {
        let mut tenants = BTreeSet::new();
        let mut scopes = BTreeSet::new();
        for (t, v) in vaults {
            for a in t.lineage() {
                tenants.insert(a.clone());
                scopes.insert(Scope::tenant(&a));
            }
            scopes.insert(Scope::vault(t, v));
        }
        let mut out = Vec::new();
        // Parents first, so each tenant's chain is complete when it is applied.
        let mut tenants: Vec<TenantId> = tenants.into_iter().collect();
        tenants.sort_by_key(|t| t.depth());
        for t in &tenants {
            if let Some(rec) = self.tenant_record(t) {
                out.push(Change::PutTenant(rec));
            }
        }
        for (t, v) in vaults {
            if let Some(rec) = self.vault_record(t, v) {
                out.push(Change::PutVault(rec));
            }
        }
        for scope in &scopes {
            let (c, _) = self.scope_contents(scope);
            out.extend(c.roles.into_values().map(Change::PutRole));
            out.extend(c.bindings.into_values().map(Change::PutBinding));
            for (group, member) in c.memberships {
                let (Ok(group), Ok(member)) = (Subject::parse(&group), Subject::parse(&member)) else {
                    continue;
                };
                out.push(Change::PutMembership(Membership {
                    tenant: scope.tenant.clone(),
                    vault: scope.vault.clone(),
                    group,
                    member,
                    source: Source::Api,
                }));
            }
        }
        out
    }

    /// A scratch engine holding what `vaults` depend on, with `changes`
    /// applied on top.
    pub fn fork(&self, vaults: &[(TenantId, VaultName)], changes: &[Change]) -> Engine {
        let e = Engine::new();
        e.apply(1, &self.lineage_changes(vaults));
        if !changes.is_empty() {
            e.apply(2, changes);
        }
        e
    }

    /// The subjects that appear in what `vault` depends on: those bound and
    /// those in a membership, as group or member.
    fn subjects_of(&self, t: &TenantId, v: &VaultName) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut scopes: Vec<Scope> = t.lineage().iter().map(Scope::tenant).collect();
        scopes.push(Scope::vault(t, v));
        for s in &scopes {
            let (c, _) = self.scope_contents(s);
            out.extend(c.bindings.values().map(|b| b.subject.to_string()));
            for (g, m) in c.memberships {
                out.insert(g);
                out.insert(m);
            }
        }
        out
    }
}

/// The vaults a batch of changes can affect: a vault-level change its vault;
/// a tenant-level change (a tenant, or its roles, bindings, memberships)
/// every vault of the tenant and below, before and after.
pub fn affected_vaults(base: &Engine, changes: &[Change]) -> Vec<(TenantId, VaultName)> {
    let mut out = BTreeSet::new();
    let mut tenant_wide = BTreeSet::new();
    for c in changes {
        let scope = c.scope();
        match (&scope.vault, c) {
            (_, Change::PutVault(v)) => {
                out.insert((v.tenant.clone(), v.name.clone()));
            }
            (Some(v), _) => {
                out.insert((scope.tenant.clone(), v.clone()));
            }
            (None, _) => {
                tenant_wide.insert(scope.tenant.clone());
            }
        }
    }
    for t in &tenant_wide {
        out.extend(base.vaults_within(t));
        for c in changes {
            if let Change::PutVault(v) = c
                && v.tenant.is_within(t)
            {
                out.insert((v.tenant.clone(), v.name.clone()));
            }
        }
    }
    out.into_iter().collect()
}

impl Engine {
    /// group → direct members, over what `vault` depends on.
    fn members_of(&self, t: &TenantId, v: &VaultName) -> std::collections::HashMap<String, Vec<String>> {
        let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
        let mut scopes: Vec<Scope> = t.lineage().iter().map(Scope::tenant).collect();
        scopes.push(Scope::vault(t, v));
        for s in &scopes {
            for (g, m) in self.scope_contents(s).0.memberships {
                out.entry(g).or_default().push(m);
            }
        }
        out
    }
}

/// The subjects whose effective statements a batch of binding and
/// membership changes can touch: a changed binding's subject, a changed
/// membership's member, and everyone below them through groups, before or
/// after. `None` when the batch changes roles, tenants or vaults, which can
/// touch every subject.
fn touched_subjects(
    before: &Engine,
    after: &Engine,
    changes: &[Change],
    t: &TenantId,
    v: &VaultName,
) -> Option<BTreeSet<String>> {
    let mut seeds = Vec::new();
    for c in changes {
        match c {
            Change::PutBinding(b) => {
                // The binding it replaces may name another subject.
                let scope = Scope {
                    tenant: b.tenant.clone(),
                    vault: b.vault.clone(),
                };
                seeds.extend(before.binding_record(&scope, &b.id).map(|old| old.subject.to_string()));
                seeds.push(b.subject.to_string());
            }
            Change::DeleteBinding { scope, id } => {
                seeds.extend(before.binding_record(scope, id).map(|b| b.subject.to_string()));
            }
            Change::PutMembership(m) | Change::DeleteMembership(m) => seeds.push(m.member.to_string()),
            _ => return None,
        }
    }
    let (mb, ma) = (before.members_of(t, v), after.members_of(t, v));
    let mut out = BTreeSet::new();
    while let Some(s) = seeds.pop() {
        if out.insert(s.clone()) {
            for m in [&mb, &ma] {
                if let Some(ms) = m.get(&s) {
                    seeds.extend(ms.iter().cloned());
                }
            }
        }
    }
    Some(out)
}

/// A plan's result: the access impact, and the scratch engines before and
/// after (holding the affected vaults and the extra ones asked for), for
/// the probes.
pub struct Impact {
    pub deltas: Vec<AccessDelta>,
    pub before: Engine,
    pub after: Engine,
}

/// Every subject whose effective statements in an affected vault change,
/// with what it gains and loses, at `now`. The engines also hold `extra`
/// vaults (those the caller will check in).
pub fn access_impact(base: &Engine, changes: &[Change], extra: &[(TenantId, VaultName)], now: Timestamp) -> Impact {
    let vaults = affected_vaults(base, changes);
    let mut held = vaults.clone();
    held.extend(extra.iter().filter(|x| !vaults.contains(x)).cloned());
    let before = base.fork(&held, &[]);
    let after = base.fork(&held, changes);
    let mut out = Vec::new();
    for (t, v) in &vaults {
        let subjects = match touched_subjects(&before, &after, changes, t, v) {
            Some(s) => s,
            None => {
                let mut all = before.subjects_of(t, v);
                all.extend(after.subjects_of(t, v));
                all
            }
        };
        for s in subjects {
            let b = before
                .effective_permissions(t.as_str(), v.as_str(), &s, now)
                .unwrap_or_default();
            let a = after
                .effective_permissions(t.as_str(), v.as_str(), &s, now)
                .unwrap_or_default();
            let gained = missing_from(a.clone(), &b);
            let lost = missing_from(b, &a);
            if !gained.is_empty() || !lost.is_empty() {
                out.push(AccessDelta {
                    tenant: t.clone(),
                    vault: v.clone(),
                    subject: s,
                    gained,
                    lost,
                });
            }
        }
    }
    Impact {
        deltas: out,
        before,
        after,
    }
}
