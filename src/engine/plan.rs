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

use std::collections::{BTreeSet, HashMap, HashSet};

use super::Engine;
use super::compiled::CompiledBinding;
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
        && (std::ptr::eq(a.binding(), b.binding()) || a.binding() == b.binding())
}

/// The statements of `xs` that `ys` does not hold. Bucketed by binding,
/// statement and principal, so comparing is linear; written here rather
/// than hashing whole statements, which formatting-based keys made the
/// plan's cost.
fn missing_from(xs: &[EffectiveStatement], ys: &[EffectiveStatement]) -> Vec<EffectiveStatement> {
    let mut buckets: std::collections::HashMap<(&str, u32, &str), Vec<&EffectiveStatement>> = Default::default();
    for y in ys {
        buckets
            .entry((y.binding().id.as_str(), y.index, y.principal.as_str()))
            .or_default()
            .push(y);
    }
    xs.iter()
        .filter(|x| {
            !buckets
                .get(&(x.binding().id.as_str(), x.index, x.principal.as_str()))
                .is_some_and(|c| c.iter().any(|y| same(x, y)))
        })
        .cloned()
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
        cat.scopes.get(scope)?.bindings.get(id).map(|b| b.source.clone())
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

    /// A scratch engine holding what `vaults` depend on, with `changes`
    /// applied on top: a copy-on-write overlay of this one.
    pub fn fork(&self, vaults: &[(TenantId, VaultName)], changes: &[Change]) -> Engine {
        let e = self.overlay(vaults);
        if !changes.is_empty() {
            e.apply(self.revision() + 1, changes);
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
    fn members_of(&self, t: &TenantId, v: &VaultName) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = Default::default();
        let mut scopes: Vec<Scope> = t.lineage().iter().map(Scope::tenant).collect();
        scopes.push(Scope::vault(t, v));
        let cat = self.catalog();
        for s in &scopes {
            for (g, m) in cat.members_in(s) {
                out.entry(g.to_string()).or_default().push(m.to_string());
            }
        }
        out
    }
}

/// A binding's identity: its tenant, vault and id.
type BindingKey = (TenantId, Option<VaultName>, String);

fn key_of(b: &Binding) -> BindingKey {
    (b.tenant.clone(), b.vault.clone(), b.id.clone())
}

/// Who a batch of changes can reach in one vault, and how far.
enum Reach {
    /// Tenants or vaults change: every subject, every statement compared.
    Everything,
    /// Bindings, roles and memberships change. Below a changed membership a
    /// subject's principals change, so every statement is compared
    /// (`full`); elsewhere only the statements of the bindings whose grant
    /// changed can differ (`through`, with those `bindings`).
    Some {
        full: BTreeSet<String>,
        through: BTreeSet<String>,
        bindings: HashSet<BindingKey>,
    },
}

/// `seeds` and everyone below them through groups, before or after.
fn below(seeds: Vec<String>, maps: [&HashMap<String, Vec<String>>; 2]) -> BTreeSet<String> {
    let mut seeds = seeds;
    let mut out = BTreeSet::new();
    while let Some(s) = seeds.pop() {
        if out.insert(s.clone()) {
            for m in maps {
                if let Some(ms) = m.get(&s) {
                    seeds.extend(ms.iter().cloned());
                }
            }
        }
    }
    out
}

fn reach(before: &Engine, after: &Engine, changes: &[Change], t: &TenantId, v: &VaultName) -> Reach {
    let mut member_seeds = Vec::new();
    let mut bindings: HashSet<BindingKey> = HashSet::new();
    let mut roles_change = false;
    for c in changes {
        match c {
            Change::PutBinding(b) => {
                bindings.insert(key_of(b));
            }
            Change::DeleteBinding { scope, id } => {
                bindings.insert((scope.tenant.clone(), scope.vault.clone(), id.clone()));
            }
            Change::PutMembership(m) | Change::DeleteMembership(m) => member_seeds.push(m.member.to_string()),
            Change::PutRole(_) | Change::DeleteRole { .. } => roles_change = true,
            Change::PutTenant(_) | Change::DeleteTenant { .. } | Change::PutVault(_) | Change::DeleteVault { .. } => {
                return Reach::Everything;
            }
        }
    }
    let mut scopes: Vec<Scope> = t.lineage().iter().map(Scope::tenant).collect();
    scopes.push(Scope::vault(t, v));
    let mut binding_seeds = Vec::new();
    for (bt, bvn, id) in &bindings {
        let scope = Scope {
            tenant: bt.clone(),
            vault: bvn.clone(),
        };
        if scopes.contains(&scope) {
            for e in [before, after] {
                binding_seeds.extend(e.binding_record(&scope, id).map(|b| b.subject.to_string()));
            }
        }
    }
    if roles_change {
        // Which unchanged bindings now grant something else: a changed role,
        // one inheriting it, or a name that resolves elsewhere.
        let (bv, av) = (
            before.view(t.as_str(), v.as_str()).ok(),
            after.view(t.as_str(), v.as_str()).ok(),
        );
        let (bc, ac) = (before.catalog(), after.catalog());
        for s in &scopes {
            let Some(olds) = bc.bindings_in(s) else { continue };
            let news = ac.bindings_in(s);
            for (id, old) in olds.iter() {
                let key = (s.tenant.clone(), s.vault.clone(), id.to_string());
                if bindings.contains(&key) {
                    continue;
                }
                let same = match (&bv, &av, news.and_then(|m| m.get(id))) {
                    (Some(bv), Some(av), Some(new)) => bv.same_grant(old, av, new),
                    _ => false,
                };
                if !same {
                    binding_seeds.push(old.source.subject.to_string());
                    bindings.insert(key);
                }
            }
        }
    }
    let (mb, ma) = (before.members_of(t, v), after.members_of(t, v));
    let full = below(member_seeds, [&mb, &ma]);
    let through = below(binding_seeds, [&mb, &ma])
        .into_iter()
        .filter(|s| !full.contains(s))
        .collect();
    Reach::Some {
        full,
        through,
        bindings,
    }
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
        let (full, through, bindings) = match reach(&before, &after, changes, t, v) {
            Reach::Everything => {
                let mut all = before.subjects_of(t, v);
                all.extend(after.subjects_of(t, v));
                (all, BTreeSet::new(), HashSet::new())
            }
            Reach::Some {
                full,
                through,
                bindings,
            } => (full, through, bindings),
        };
        let (bv, av) = (
            before.view(t.as_str(), v.as_str()).ok(),
            after.view(t.as_str(), v.as_str()).ok(),
        );
        // Borrowed keys, so the filter allocates nothing per binding.
        let keys: HashSet<(&str, &str, &str)> = bindings
            .iter()
            .map(|(t, v, id)| (t.as_str(), v.as_ref().map_or("", |v| v.as_str()), id.as_str()))
            .collect();
        let keep = |c: &CompiledBinding| {
            let b = &c.source;
            keys.contains(&(
                b.tenant.as_str(),
                b.vault.as_ref().map_or("", |v| v.as_str()),
                b.id.as_str(),
            ))
        };
        let mut subjects: Vec<(&String, bool)> = full
            .iter()
            .map(|s| (s, true))
            .chain(through.iter().map(|s| (s, false)))
            .collect();
        subjects.sort();
        for (s, all) in subjects {
            let effective = |view: &Option<std::sync::Arc<super::view::VaultView>>| match view {
                Some(view) if all => view.effective(s, now),
                Some(view) => view.effective_where(s, now, keep),
                None => Vec::new(),
            };
            let (b, a) = (effective(&bv), effective(&av));
            let gained = missing_from(&a, &b);
            let lost = missing_from(&b, &a);
            if !gained.is_empty() || !lost.is_empty() {
                out.push(AccessDelta {
                    tenant: t.clone(),
                    vault: v.clone(),
                    subject: s.clone(),
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
