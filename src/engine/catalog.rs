//! The writer's side of the index: the source objects, grouped by scope, and
//! the incremental maintenance of every vault's view.
//!
//! A batch of changes is applied to the catalog first, recording what it
//! touched (subjects per scope, role scopes, tenants, vaults); then only the
//! affected views are updated and published. A tenant-wide change fans out to
//! the views of every vault in the tenant's subtree.
//!
//! Role names in bindings and in `inherits` resolve lexically: from the scope
//! where the binding or role is defined, upwards (vault, tenant, ancestors).
//! A sub-tenant therefore cannot change what a parent's binding grants by
//! defining a role of the same name. Each distinct (scope, name) reference
//! is a "slot" whose flattened role is shared by all bindings using it.

use std::collections::BTreeSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hashbrown::{HashMap, HashSet};

use super::compiled::{
    CompiledBinding, CompiledGrant, CompiledRole, CompiledStatement, ConditionCache, PatternCache, StatementOrigin,
    StatementSet, compile_statement,
};
use super::ids::{RoleName, Subject, TenantId, VaultName};
use super::model::*;
use super::view::{BindingRef, GroupEdge, ShardMap, SubjectData, VaultView};

#[derive(Clone)]
pub(crate) struct RoleEntry {
    pub role: Arc<Role>,
    pub statements: Vec<Arc<CompiledStatement>>,
}

/// A scope's bindings by id. The id is read from each binding rather than
/// kept as a second copy for a key: a million bindings, a million strings
/// fewer.
#[derive(Default, Clone)]
pub(crate) struct BindingsById(hashbrown::HashTable<Arc<CompiledBinding>>);

fn id_hash(id: &str) -> u64 {
    super::compiled::hash_str(id)
}

impl BindingsById {
    pub fn get(&self, id: &str) -> Option<&Arc<CompiledBinding>> {
        self.0.find(id_hash(id), |b| b.source.id == id)
    }

    /// Adds `b`, replacing the binding with its id.
    pub fn insert(&mut self, b: Arc<CompiledBinding>) {
        let h = id_hash(&b.source.id);
        match self
            .0
            .entry(h, |x| x.source.id == b.source.id, |x| id_hash(&x.source.id))
        {
            hashbrown::hash_table::Entry::Occupied(mut o) => *o.get_mut() = b,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(b);
            }
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<Arc<CompiledBinding>> {
        match self.0.find_entry(id_hash(id), |b| b.source.id == id) {
            Ok(o) => Some(o.remove().0),
            Err(_) => None,
        }
    }

    /// (id, binding) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<CompiledBinding>)> {
        self.0.iter().map(|b| (b.source.id.as_str(), b))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The groups one member belongs to directly, sorted: a member is in few
/// groups, and a `BTreeSet`'s first node alone is about 200 bytes, which a
/// hundred thousand members would each pay.
#[derive(Default, Clone, Debug)]
pub(crate) struct Groups(Vec<Subject>);

impl Groups {
    /// Adds `g`; false when it was there.
    pub fn insert(&mut self, g: Subject) -> bool {
        match self.0.binary_search(&g) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, g);
                true
            }
        }
    }

    pub fn remove(&mut self, g: &Subject) -> bool {
        match self.0.binary_search(g) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    pub fn contains(&self, g: &Subject) -> bool {
        self.0.binary_search(g).is_ok()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Subject> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Groups {
    type Item = &'a Subject;
    type IntoIter = std::slice::Iter<'a, Subject>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[derive(Default, Clone)]
pub(crate) struct ScopeData {
    pub roles: HashMap<RoleName, RoleEntry>,
    pub bindings: BindingsById,
    pub by_subject: HashMap<Subject, Vec<Arc<CompiledBinding>>>,
    /// member → the groups it belongs to directly.
    pub member_of: HashMap<Subject, Groups>,
    /// group → its direct members.
    pub members: HashMap<Subject, BTreeSet<Subject>>,
}

impl ScopeData {
    /// `s` as this scope already holds it (one allocation per subject, not
    /// one per record naming it).
    fn shared(&self, s: &Subject) -> Subject {
        self.by_subject
            .get_key_value(s)
            .map(|(k, _)| k)
            .or_else(|| self.member_of.get_key_value(s).map(|(k, _)| k))
            .or_else(|| self.members.get_key_value(s).map(|(k, _)| k))
            .unwrap_or(s)
            .clone()
    }

    fn is_empty(&self) -> bool {
        self.roles.is_empty() && self.bindings.is_empty() && self.member_of.is_empty()
    }
}

#[derive(Default, Clone)]
pub(crate) struct TenantNode {
    pub tenant: Option<Tenant>,
    pub children: BTreeSet<TenantId>,
    pub vaults: BTreeSet<VaultName>,
}

pub(crate) struct VaultNode {
    /// The published view; a write modifies a copy of it (sharing all but
    /// what it changes) and publishes that.
    pub handle: Arc<VaultHandle>,
}

/// The published view of one vault; readers load it without locking.
pub struct VaultHandle {
    pub(crate) view: ArcSwap<VaultView>,
}

impl VaultHandle {
    pub fn load(&self) -> Arc<VaultView> {
        self.view.load_full()
    }
}

#[derive(Clone)]
struct Slot {
    scope: Scope,
    name: RoleName,
    refs: u32,
    role: Arc<CompiledRole>,
}

#[derive(Default, Clone)]
struct Slots {
    by_ref: HashMap<(Scope, RoleName), u32>,
    entries: Vec<Option<Slot>>,
    free: Vec<u32>,
    by_scope: HashMap<Scope, BTreeSet<u32>>,
}

/// A role slot's new content, or its removal.
type SlotUpdate = (u32, Option<Arc<CompiledRole>>);

/// What a batch touched.
#[derive(Default)]
struct Dirty {
    subjects: HashMap<Scope, HashSet<Subject>>,
    role_scopes: HashSet<Scope>,
    new_slots: HashSet<u32>,
    removed_slots: Vec<(Scope, u32)>,
    freed_slots: Vec<u32>,
    tenants: HashSet<TenantId>,
    new_vaults: HashSet<VaultKey>,
    updated_vaults: HashSet<VaultKey>,
    vault_objects: HashMap<VaultKey, Arc<Vault>>,
    removed_vaults: HashSet<VaultKey>,
}

impl Dirty {
    fn subject(&mut self, scope: &Scope, s: &Subject) {
        self.subjects.entry(scope.clone()).or_default().insert(s.clone());
    }
}

/// What `Catalog::apply` changed in the set of published vaults.
pub(crate) struct Published {
    pub vaults_changed: bool,
}

#[derive(Default)]
pub(crate) struct Catalog {
    pub tenants: HashMap<TenantId, TenantNode>,
    pub scopes: HashMap<Scope, ScopeData>,
    pub vaults: HashMap<VaultKey, VaultNode>,
    slots: Slots,
    conditions: ConditionCache,
    patterns: PatternCache,
}

fn vault_key(t: &TenantId, v: &VaultName) -> VaultKey {
    VaultKey {
        tenant: t.clone(),
        vault: v.clone(),
    }
}

fn binding_scope(b: &Binding) -> Scope {
    Scope {
        tenant: b.tenant.clone(),
        vault: b.vault.clone(),
    }
}

impl Catalog {
    /// A catalog holding only what `vaults` depend on: their tenants'
    /// lineages, the scopes of those tenants and of the vaults, and the
    /// vaults' published views. Compiled bindings, roles and views are
    /// shared with this catalog, not rebuilt, and each vault gets its own
    /// handle, so a write to the overlay builds new views from the shared
    /// parts (as any write does) and never reaches this catalog's readers.
    /// Role slots are copied whole: slots of scopes outside the overlay are
    /// never published to its views.
    pub fn overlay(&self, vaults: &[(TenantId, VaultName)]) -> Catalog {
        let mut tenants: HashSet<TenantId> = HashSet::new();
        let mut keys: HashSet<VaultKey> = HashSet::new();
        let mut scopes: HashSet<Scope> = HashSet::new();
        for (t, v) in vaults {
            for a in t.lineage() {
                scopes.insert(Scope::tenant(&a));
                tenants.insert(a);
            }
            scopes.insert(Scope::vault(t, v));
            keys.insert(vault_key(t, v));
        }
        let mut out = Catalog {
            slots: self.slots.clone(),
            ..Default::default()
        };
        for t in &tenants {
            if let Some(n) = self.tenants.get(t) {
                let mut n = n.clone();
                n.children.retain(|c| tenants.contains(c));
                n.vaults.retain(|v| keys.contains(&vault_key(t, v)));
                out.tenants.insert(t.clone(), n);
            }
        }
        for s in scopes {
            if let Some(d) = self.scopes.get(&s) {
                out.scopes.insert(s, d.clone());
            }
        }
        for k in keys {
            if let Some(n) = self.vaults.get(&k) {
                let handle = Arc::new(VaultHandle {
                    view: ArcSwap::new(n.handle.view.load_full()),
                });
                out.vaults.insert(k, VaultNode { handle });
            }
        }
        out
    }

    /// The group → direct members edges of `scope`.
    pub fn members_in(&self, scope: &Scope) -> impl Iterator<Item = (&Subject, &Subject)> {
        self.scopes
            .get(scope)
            .into_iter()
            .flat_map(|d| d.members.iter().flat_map(|(g, ms)| ms.iter().map(move |m| (g, m))))
    }

    /// The compiled bindings of `scope`, by id.
    pub fn bindings_in(&self, scope: &Scope) -> Option<&BindingsById> {
        self.scopes.get(scope).map(|d| &d.bindings)
    }

    pub fn tenant(&self, id: &TenantId) -> Option<&Tenant> {
        self.tenants.get(id).and_then(|n| n.tenant.as_ref())
    }

    /// Applies a batch and publishes the affected views.
    pub fn apply(&mut self, changes: &[Change]) -> Published {
        let mut d = Dirty::default();
        for c in changes {
            self.apply_one(c, &mut d);
        }
        self.trim(&d);
        self.rebuild(d)
    }

    /// A subject's lists grow by doubling while a batch adds to them; once
    /// the batch is done they are trimmed to size (their view entries are
    /// rebuilt from them anyway, so this adds no order of cost).
    fn trim(&mut self, d: &Dirty) {
        for (scope, subjects) in &d.subjects {
            let Some(data) = self.scopes.get_mut(scope) else {
                continue;
            };
            for s in subjects {
                if let Some(v) = data.by_subject.get_mut(s) {
                    v.shrink_to_fit();
                }
                if let Some(g) = data.member_of.get_mut(s) {
                    g.0.shrink_to_fit();
                }
            }
        }
    }

    fn apply_one(&mut self, c: &Change, d: &mut Dirty) {
        match c {
            Change::PutTenant(t) => {
                let node = self.tenants.entry(t.id.clone()).or_default();
                let was = node.tenant.as_ref().map(|x| x.status);
                node.tenant = Some(t.clone());
                if was != Some(t.status) {
                    d.tenants.insert(t.id.clone());
                }
                if let Some(p) = t.id.parent() {
                    self.tenants.entry(p).or_default().children.insert(t.id.clone());
                }
            }
            Change::DeleteTenant { tenant } => {
                if let Some(node) = self.tenants.get_mut(tenant) {
                    node.tenant = None;
                    d.tenants.insert(tenant.clone());
                }
                // Whatever the tenant itself held goes with it.
                let scope = Scope::tenant(tenant);
                if let Some(data) = self.scopes.remove(&scope) {
                    self.drop_scope_data(&scope, data, d);
                }
                self.prune_tenant(tenant);
            }
            Change::PutVault(v) => {
                let key = vault_key(&v.tenant, &v.name);
                match self.vaults.get_mut(&key) {
                    Some(_) => {
                        d.vault_objects.insert(key.clone(), Arc::new(v.clone()));
                        d.updated_vaults.insert(key);
                    }
                    None => {
                        let view = VaultView {
                            vault: Arc::new(v.clone()),
                            chain: v.tenant.lineage().into(),
                            tenant_exists: false,
                            suspended_by: None,
                            subjects: ShardMap::with_capacity(0),
                            roles: Default::default(),
                            lookups: Default::default(),
                        };
                        let handle = Arc::new(VaultHandle {
                            view: ArcSwap::from_pointee(view),
                        });
                        self.vaults.insert(key.clone(), VaultNode { handle });
                        self.tenants
                            .entry(v.tenant.clone())
                            .or_default()
                            .vaults
                            .insert(v.name.clone());
                        d.removed_vaults.remove(&key);
                        d.new_vaults.insert(key);
                    }
                }
            }
            Change::DeleteVault { tenant, vault } => {
                let key = vault_key(tenant, vault);
                if self.vaults.remove(&key).is_some() {
                    if let Some(n) = self.tenants.get_mut(tenant) {
                        n.vaults.remove(vault);
                    }
                    let scope = Scope::vault(tenant, vault);
                    if let Some(data) = self.scopes.remove(&scope) {
                        self.drop_scope_data(&scope, data, d);
                    }
                    d.new_vaults.remove(&key);
                    d.updated_vaults.remove(&key);
                    d.removed_vaults.insert(key);
                    self.prune_tenant(tenant);
                }
            }
            Change::PutRole(r) => {
                let scope = Scope {
                    tenant: r.tenant.clone(),
                    vault: r.vault.clone(),
                };
                let key = RoleKey {
                    scope: scope.clone(),
                    name: r.name.clone(),
                };
                let statements = r
                    .statements
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let origin = StatementOrigin {
                            role: Some(key.clone()),
                            index: i as u32,
                            sid: s.sid.as_deref().map(Arc::from),
                        };
                        Arc::new(compile_statement(s, origin, &mut self.conditions))
                    })
                    .collect();
                self.scopes.entry(scope.clone()).or_default().roles.insert(
                    r.name.clone(),
                    RoleEntry {
                        role: Arc::new(r.clone()),
                        statements,
                    },
                );
                d.role_scopes.insert(scope);
            }
            Change::DeleteRole { scope, name } => {
                if let Some(data) = self.scopes.get_mut(scope)
                    && data.roles.remove(name).is_some()
                {
                    d.role_scopes.insert(scope.clone());
                    self.prune_scope(scope);
                }
            }
            Change::PutBinding(b) => {
                self.remove_binding(&binding_scope(b), &b.id, d);
                let b = self.interned(b);
                let scope = binding_scope(&b);
                let subject = b.subject.clone();
                let compiled = Arc::new(self.compile_binding(b, &scope, d));
                let data = self.scopes.entry(scope.clone()).or_default();
                data.bindings.insert(compiled.clone());
                data.by_subject.entry(subject.clone()).or_default().push(compiled);
                d.subject(&scope, &subject);
            }
            Change::DeleteBinding { scope, id } => {
                self.remove_binding(scope, id, d);
                self.prune_scope(scope);
            }
            Change::PutMembership(m) => {
                let scope = Scope {
                    tenant: m.tenant.clone(),
                    vault: m.vault.clone(),
                };
                let data = self.scopes.entry(scope.clone()).or_default();
                let (member, group) = (data.shared(&m.member), data.shared(&m.group));
                if data.member_of.entry(member.clone()).or_default().insert(group.clone()) {
                    data.members.entry(group).or_default().insert(member.clone());
                    d.subject(&scope, &member);
                }
            }
            Change::DeleteMembership(m) => {
                let scope = Scope {
                    tenant: m.tenant.clone(),
                    vault: m.vault.clone(),
                };
                if let Some(data) = self.scopes.get_mut(&scope) {
                    let removed = match data.member_of.get_mut(&m.member) {
                        Some(gs) => {
                            let r = gs.remove(&m.group);
                            if gs.is_empty() {
                                data.member_of.remove(&m.member);
                            }
                            r
                        }
                        None => false,
                    };
                    if removed {
                        if let Some(ms) = data.members.get_mut(&m.group) {
                            ms.remove(&m.member);
                            if ms.is_empty() {
                                data.members.remove(&m.group);
                            }
                        }
                        d.subject(&scope, &m.member);
                    }
                    self.prune_scope(&scope);
                }
            }
        }
    }

    fn prune_scope(&mut self, scope: &Scope) {
        if self.scopes.get(scope).is_some_and(ScopeData::is_empty) {
            self.scopes.remove(scope);
        }
    }

    fn prune_tenant(&mut self, id: &TenantId) {
        let empty = self
            .tenants
            .get(id)
            .is_some_and(|n| n.tenant.is_none() && n.children.is_empty() && n.vaults.is_empty());
        if empty {
            self.tenants.remove(id);
            if let Some(p) = id.parent() {
                if let Some(pn) = self.tenants.get_mut(&p) {
                    pn.children.remove(id);
                }
                self.prune_tenant(&p);
            }
        }
    }

    fn drop_scope_data(&mut self, scope: &Scope, data: ScopeData, d: &mut Dirty) {
        for (subject, bs) in data.by_subject {
            for b in bs {
                if let CompiledGrant::Role(slot) = b.grant {
                    self.release_slot(slot, d);
                }
            }
            d.subject(scope, &subject);
        }
        for member in data.member_of.keys() {
            d.subject(scope, member);
        }
        if !data.roles.is_empty() {
            d.role_scopes.insert(scope.clone());
        }
    }

    fn remove_binding(&mut self, scope: &Scope, id: &str, d: &mut Dirty) {
        let Some(data) = self.scopes.get_mut(scope) else {
            return;
        };
        let Some(old) = data.bindings.remove(id) else {
            return;
        };
        let subject = old.source.subject.clone();
        if let Some(list) = data.by_subject.get_mut(&subject) {
            list.retain(|b| !Arc::ptr_eq(b, &old));
            if list.is_empty() {
                data.by_subject.remove(&subject);
            }
        }
        d.subject(scope, &subject);
        if let CompiledGrant::Role(slot) = old.grant {
            self.release_slot(slot, d);
        }
    }

    /// `b` sharing the strings the catalog already holds: its scope's
    /// tenant and vault, and its subject's (the role name is shared where
    /// its slot is acquired). Each binding would otherwise carry its own
    /// copy of each, parsed from its record.
    fn interned(&self, b: &Binding) -> Binding {
        let mut b = b.clone();
        let scope = binding_scope(&b);
        if let Some((k, data)) = self.scopes.get_key_value(&scope) {
            b.tenant = k.tenant.clone();
            b.vault = k.vault.clone();
            b.subject = data.shared(&b.subject);
        } else if let Some((t, _)) = self.tenants.get_key_value(&b.tenant) {
            b.tenant = t.clone();
        }
        b
    }

    fn compile_binding(&mut self, mut b: Binding, scope: &Scope, d: &mut Dirty) -> CompiledBinding {
        let grant = match &mut b.grant {
            Grant::Role(name) => {
                let slot = self.acquire_slot(scope, name, d);
                // The slot's copy of the name, found by the lookup above.
                if let Some(Some(s)) = self.slots.entries.get(slot as usize) {
                    *name = s.name.clone();
                }
                CompiledGrant::Role(slot)
            }
            Grant::Statements(stmts) => CompiledGrant::Inline(Box::new(StatementSet::new(
                stmts
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let origin = StatementOrigin {
                            role: None,
                            index: i as u32,
                            sid: s.sid.as_deref().map(Arc::from),
                        };
                        Arc::new(compile_statement(s, origin, &mut self.conditions))
                    })
                    .collect(),
            ))),
        };
        CompiledBinding {
            resources: self.patterns.get(&b.scope),
            condition: b.condition.as_deref().map(|c| Box::new(self.conditions.get(c))),
            grant,
            source: b,
        }
    }

    fn acquire_slot(&mut self, scope: &Scope, name: &RoleName, d: &mut Dirty) -> u32 {
        let key = (scope.clone(), name.clone());
        if let Some(&id) = self.slots.by_ref.get(&key) {
            if let Some(s) = self.slots.entries[id as usize].as_mut() {
                s.refs += 1;
            }
            return id;
        }
        let slot = Slot {
            scope: scope.clone(),
            name: name.clone(),
            refs: 1,
            role: Arc::new(CompiledRole::missing()),
        };
        let id = match self.slots.free.pop() {
            Some(id) => {
                self.slots.entries[id as usize] = Some(slot);
                id
            }
            None => {
                self.slots.entries.push(Some(slot));
                (self.slots.entries.len() - 1) as u32
            }
        };
        self.slots.by_ref.insert(key, id);
        self.slots.by_scope.entry(scope.clone()).or_default().insert(id);
        d.new_slots.insert(id);
        id
    }

    fn release_slot(&mut self, id: u32, d: &mut Dirty) {
        let Some(slot) = self.slots.entries[id as usize].as_mut() else {
            return;
        };
        slot.refs -= 1;
        if slot.refs > 0 {
            return;
        }
        let slot = self.slots.entries[id as usize].take().expect("slot present");
        self.slots.by_ref.remove(&(slot.scope.clone(), slot.name.clone()));
        if let Some(set) = self.slots.by_scope.get_mut(&slot.scope) {
            set.remove(&id);
            if set.is_empty() {
                self.slots.by_scope.remove(&slot.scope);
            }
        }
        // Freed ids are reused only after this batch is published, so a
        // removal and a new slot never share an id within one rebuild.
        d.freed_slots.push(id);
        d.new_slots.remove(&id);
        d.removed_slots.push((slot.scope, id));
    }

    /// The role `name` resolves to from `scope`: the scope itself, then up.
    pub fn resolve_role(&self, scope: &Scope, name: &RoleName) -> Option<(Scope, &RoleEntry)> {
        scope
            .resolution_chain()
            .into_iter()
            .find_map(|s| self.scopes.get(&s).and_then(|d| d.roles.get(name)).map(|e| (s, e)))
    }

    /// Flattens a role with everything it inherits. Cycles (rejected on write,
    /// but tolerated here) end where a role repeats.
    fn flatten(&self, scope: &Scope, name: &RoleName) -> CompiledRole {
        let Some((rs, _)) = self.resolve_role(scope, name) else {
            return CompiledRole::missing();
        };
        let root = RoleKey {
            scope: rs,
            name: name.clone(),
        };
        let mut seen: HashSet<RoleKey> = HashSet::new();
        let mut statements = Vec::new();
        let mut paths = Vec::new();
        let mut stack: Vec<(RoleKey, Arc<[RoleKey]>)> = vec![(root.clone(), Arc::from(vec![root.clone()]))];
        while let Some((key, path)) = stack.pop() {
            if !seen.insert(key.clone()) {
                continue;
            }
            let Some(entry) = self.scopes.get(&key.scope).and_then(|d| d.roles.get(&key.name)) else {
                continue;
            };
            for s in &entry.statements {
                statements.push(s.clone());
                paths.push(path.clone());
            }
            for inh in entry.role.inherits.iter().rev() {
                if let Some((s2, _)) = self.resolve_role(&key.scope, inh) {
                    let k2 = RoleKey {
                        scope: s2,
                        name: inh.clone(),
                    };
                    let mut p2 = path.to_vec();
                    p2.push(k2.clone());
                    stack.push((k2, p2.into()));
                }
            }
        }
        CompiledRole {
            key: Some(root),
            set: StatementSet::new(statements),
            paths,
        }
    }

    /// The inheritance cycle `role` would close, were it stored.
    pub fn inherits_cycle(&self, role: &Role) -> Option<Vec<RoleKey>> {
        let lookup = |scope: &Scope, name: &RoleName| -> Result<Option<Vec<RoleName>>, std::convert::Infallible> {
            Ok(self
                .scopes
                .get(scope)
                .and_then(|d| d.roles.get(name))
                .map(|e| e.role.inherits.clone()))
        };
        match super::validate::inherits_cycle(role, lookup) {
            Ok(c) => c,
            Err(never) => match never {},
        }
    }

    /// Vaults whose views can see `scope`.
    fn views_of(&self, scope: &Scope, out: &mut HashSet<VaultKey>) {
        match &scope.vault {
            Some(v) => {
                let k = vault_key(&scope.tenant, v);
                if self.vaults.contains_key(&k) {
                    out.insert(k);
                }
            }
            None => self.subtree_vaults(&scope.tenant, out),
        }
    }

    fn subtree_vaults(&self, t: &TenantId, out: &mut HashSet<VaultKey>) {
        let mut stack = vec![t.clone()];
        while let Some(t) = stack.pop() {
            if let Some(n) = self.tenants.get(&t) {
                for v in &n.vaults {
                    out.insert(vault_key(&t, v));
                }
                stack.extend(n.children.iter().cloned());
            }
        }
    }

    fn visible_scopes(key: &VaultKey) -> Vec<Scope> {
        Scope::vault(&key.tenant, &key.vault).resolution_chain()
    }

    fn subject_data(&self, visible: &[Scope], s: &Subject) -> Option<Arc<SubjectData>> {
        let mut bindings = Vec::new();
        let mut groups = Vec::new();
        for sc in visible {
            if let Some(data) = self.scopes.get(sc) {
                if let Some(bs) = data.by_subject.get(s) {
                    bindings.extend(bs.iter().map(BindingRef::new));
                }
                if let Some(gs) = data.member_of.get(s) {
                    groups.extend(gs.iter().map(GroupEdge::new));
                }
            }
        }
        if bindings.is_empty() && groups.is_empty() {
            None
        } else {
            Some(Arc::new(SubjectData::new(s, bindings, groups)))
        }
    }

    fn tenant_flags(&self, key: &VaultKey) -> (bool, Option<TenantId>) {
        let exists = self.tenant(&key.tenant).is_some();
        let suspended = key
            .tenant
            .lineage()
            .into_iter()
            .find(|t| self.tenant(t).is_some_and(|t| t.status == TenantStatus::Suspended));
        (exists, suspended)
    }

    fn full_build(&self, key: &VaultKey, view: &mut VaultView) {
        let visible = Self::visible_scopes(key);
        let mut subjects: HashSet<&Subject> = HashSet::new();
        for sc in &visible {
            if let Some(data) = self.scopes.get(sc) {
                subjects.extend(data.by_subject.keys());
                subjects.extend(data.member_of.keys());
            }
        }
        let mut map = ShardMap::with_capacity(subjects.len());
        for s in subjects {
            let data = self.subject_data(&visible, s);
            map.set(s, data);
        }
        view.subjects = map;
        let mut roles: HashMap<u32, Arc<CompiledRole>, _> = HashMap::default();
        for sc in &visible {
            if let Some(ids) = self.slots.by_scope.get(sc) {
                for &id in ids {
                    if let Some(slot) = &self.slots.entries[id as usize] {
                        roles.insert(id, slot.role.clone());
                    }
                }
            }
        }
        view.roles = Arc::new(roles);
        let (exists, suspended) = self.tenant_flags(key);
        view.tenant_exists = exists;
        view.suspended_by = suspended;
    }

    fn rebuild(&mut self, d: Dirty) -> Published {
        // 1. Role slots whose resolution or content may have changed.
        let mut recompute: BTreeSet<u32> = d.new_slots.iter().copied().collect();
        if !d.role_scopes.is_empty() {
            for (scope, ids) in &self.slots.by_scope {
                let chain = scope.resolution_chain();
                if d.role_scopes.iter().any(|rs| chain.contains(rs)) {
                    recompute.extend(ids.iter().copied());
                }
            }
        }
        let mut changed_slots: Vec<(Scope, u32, Option<Arc<CompiledRole>>)> = Vec::new();
        for id in recompute {
            let Some(slot) = &self.slots.entries[id as usize] else {
                continue;
            };
            let role = Arc::new(self.flatten(&slot.scope.clone(), &slot.name.clone()));
            let scope = slot.scope.clone();
            if let Some(slot) = self.slots.entries[id as usize].as_mut() {
                slot.role = role.clone();
            }
            changed_slots.push((scope, id, Some(role)));
        }
        changed_slots.extend(d.removed_slots.into_iter().map(|(s, id)| (s, id, None)));
        self.slots.free.extend(d.freed_slots);

        // 2. Which views each change reaches.
        let mut touched: HashSet<VaultKey> = HashSet::new();
        let mut role_updates: HashMap<VaultKey, Vec<SlotUpdate>> = HashMap::new();
        for (scope, id, role) in &changed_slots {
            let mut vs = HashSet::new();
            self.views_of(scope, &mut vs);
            for v in vs {
                role_updates.entry(v.clone()).or_default().push((*id, role.clone()));
                touched.insert(v);
            }
        }
        let mut subject_updates: HashMap<VaultKey, HashSet<Subject>> = HashMap::new();
        for (scope, subjects) in &d.subjects {
            let mut vs = HashSet::new();
            self.views_of(scope, &mut vs);
            for v in vs {
                subject_updates
                    .entry(v.clone())
                    .or_default()
                    .extend(subjects.iter().cloned());
                touched.insert(v);
            }
        }
        let mut flag_updates: HashSet<VaultKey> = HashSet::new();
        for t in &d.tenants {
            self.subtree_vaults(t, &mut flag_updates);
        }
        touched.extend(flag_updates.iter().cloned());
        touched.extend(d.updated_vaults.iter().cloned());
        touched.extend(d.new_vaults.iter().cloned());

        // 3. Update each touched view once and publish it.
        for key in touched {
            let Some(node) = self.vaults.get(&key) else {
                continue;
            };
            let mut view = (*node.handle.view.load_full()).clone();
            if let Some(v) = d.vault_objects.get(&key) {
                view.vault = v.clone();
            }
            if d.new_vaults.contains(&key) {
                self.full_build(&key, &mut view);
            } else {
                if let Some(updates) = role_updates.get(&key) {
                    let roles = Arc::make_mut(&mut view.roles);
                    for (id, role) in updates {
                        match role {
                            Some(r) => roles.insert(*id, r.clone()),
                            None => roles.remove(id),
                        };
                    }
                }
                if let Some(subjects) = subject_updates.get(&key) {
                    if view.subjects.needs_reshard() || subjects.len() > view.subjects.len().max(1024) / 2 {
                        self.full_build(&key, &mut view);
                    } else {
                        let visible = Self::visible_scopes(&key);
                        for s in subjects {
                            let data = self.subject_data(&visible, s);
                            view.subjects.set(s, data);
                        }
                    }
                }
                if flag_updates.contains(&key) {
                    let (exists, suspended) = self.tenant_flags(&key);
                    view.tenant_exists = exists;
                    view.suspended_by = suspended;
                }
            }
            node.handle.view.store(Arc::new(view));
        }
        Published {
            vaults_changed: !d.new_vaults.is_empty() || !d.removed_vaults.is_empty(),
        }
    }
}
