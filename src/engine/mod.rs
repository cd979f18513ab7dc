//! The authorization engine: the domain model and the in-memory index that
//! answers "may this subject do this action on this resource in this vault?".
//!
//! Plain Rust over the model: no gRPC, Kubernetes or storage types, so it is
//! tested and benchmarked alone and adapted at the edges.
//!
//! # Decision semantics
//! For `Check(tenant, vault, subject, action, resource, context, now)`:
//! 1. An unknown tenant or vault is `NotFound`, never a decision.
//! 2. The tenant or any ancestor suspended: denied, `TENANT_SUSPENDED`.
//! 3. Principals: the subject and every group it belongs to, transitively,
//!    through the memberships visible in the vault (the vault's own, its
//!    tenant's and its ancestors').
//! 4. A binding applies when its subject is a principal, `now` is within
//!    `[not_before, expires_at)`, a scope pattern matches the resource, and
//!    its condition holds.
//! 5. A statement of an applying binding applies when an action pattern
//!    matches the action, a resource pattern matches the resource and its
//!    condition holds.
//! 6. Any applying DENY: denied (`EXPLICIT_DENY`); else any applying ALLOW:
//!    allowed; else denied (`NO_MATCH`).
//! 7. Conditions fail closed: an evaluation error counts as false for ALLOW
//!    and as true for DENY; a binding whose condition errors contributes its
//!    DENY statements only.
//!
//! Role names resolve lexically, from where the binding or role is defined
//! upwards (see `catalog`).
//!
//! # Concurrency
//! One writer applies batches of changes at a revision ([`Engine::apply`]);
//! any number of readers check against immutable per-vault views loaded
//! without locks. A batch becomes visible to readers vault by vault, each
//! vault atomically; the engine's revision moves once every view of the
//! batch is published, so a reader that saw revision `r` sees at least
//! everything up to `r`.

pub mod condition;
pub mod cost;
#[cfg(any(test, feature = "test-util"))]
pub mod dataset;
pub mod ids;
pub mod model;
pub mod pattern;
pub mod plan;
pub mod validate;

mod catalog;
mod compiled;
mod view;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use hashbrown::HashTable;

pub use catalog::VaultHandle;
pub use condition::{Condition, ConditionError, RequestContext};
pub use ids::{FieldViolation, RoleName, Subject, TenantId, VaultName, Violations};
pub use model::*;
pub use view::{
    CheckResult, EffectiveCursor, EffectivePage, EffectiveStatement, EntryOutcome, ExplainEntry, Explanation,
    Possibility, Reason, ResourceFilter, ResourceRule, VaultView, lookup_subjects_in,
};

use catalog::Catalog;
use compiled::hash_str;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("tenant {0:?} not found")]
    TenantNotFound(String),
    #[error("vault {vault:?} not found in tenant {tenant:?}")]
    VaultNotFound { tenant: String, vault: String },
    #[error("{0}")]
    Invalid(Violations),
    /// The vault, or a tenant above it, has a stored record that could not
    /// be read: its decisions cannot be trusted.
    #[error("vault {vault:?} of tenant {tenant:?} is quarantined: {detail}")]
    Quarantined {
        tenant: String,
        vault: String,
        detail: String,
    },
}

/// Scopes with records that could not be read, each with the objects that
/// are bad in it (`binding poison`) and why. A scope leaves quarantine when
/// its last bad object is overwritten or deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quarantine {
    pub scopes: std::collections::BTreeMap<Scope, std::collections::BTreeMap<String, String>>,
}

impl Quarantine {
    /// The quarantined scope a check in `tenant`/`vault` depends on: the
    /// vault itself, or the tenant level of the tenant or an ancestor.
    fn covering(&self, tenant: &str, vault: &str) -> Option<(&Scope, &str)> {
        self.scopes.iter().find_map(|(scope, bad)| {
            let hit = match &scope.vault {
                Some(v) => v.as_str() == vault && scope.tenant.as_str() == tenant,
                None => ids::is_tenant_within(tenant, scope.tenant.as_str()),
            };
            hit.then(|| {
                (
                    scope,
                    bad.values().next().map(String::as_str).unwrap_or("unreadable record"),
                )
            })
        })
    }
}

/// One item of a check: who, what, on what, with which attributes.
#[derive(Debug, Clone, Copy)]
pub struct CheckItem<'a> {
    pub subject: &'a str,
    pub action: &'a str,
    pub resource: &'a str,
    pub context: &'a RequestContext,
}

/// Where a page starts and how long it may be.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<'a> {
    /// The cursor of the previous page, `None` for the first.
    pub after: Option<&'a str>,
    pub limit: usize,
}

/// A scope's roles, bindings and (group, member) pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeContents {
    pub roles: std::collections::BTreeMap<String, Role>,
    pub bindings: std::collections::BTreeMap<String, Binding>,
    pub memberships: BTreeSet<(String, String)>,
}

/// One page of lookup subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectPage {
    /// Sorted by subject; `Conditional` ones depend on conditions.
    pub subjects: Vec<(String, Possibility)>,
    /// Pass back to continue after the last subject; `None` at the end.
    pub next_cursor: Option<String>,
}

struct VaultTable {
    table: HashTable<(TenantId, VaultName, Arc<VaultHandle>)>,
    tenants: BTreeSet<TenantId>,
}

impl VaultTable {
    /// The published table of a catalog's vaults and existing tenants.
    fn of(cat: &Catalog) -> VaultTable {
        let mut table = HashTable::with_capacity(cat.vaults.len());
        for (k, node) in cat.vaults.iter() {
            table.insert_unique(
                vault_hash(k.tenant.as_str(), k.vault.as_str()),
                (k.tenant.clone(), k.vault.clone(), node.handle.clone()),
                |(t, v, _)| vault_hash(t.as_str(), v.as_str()),
            );
        }
        let tenants = cat
            .tenants
            .iter()
            .filter(|(_, n)| n.tenant.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        VaultTable { table, tenants }
    }
}

fn vault_hash(tenant: &str, vault: &str) -> u64 {
    hash_str(tenant) ^ hash_str(vault).rotate_left(17)
}

/// The engine: a writer-side catalog behind a mutex and lock-free views.
pub struct Engine {
    writer: Mutex<Catalog>,
    vaults: ArcSwap<VaultTable>,
    revision: AtomicU64,
    quarantine: ArcSwap<Quarantine>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

impl Engine {
    pub fn new() -> Engine {
        Engine {
            writer: Mutex::new(Catalog::default()),
            vaults: ArcSwap::from_pointee(VaultTable {
                table: HashTable::new(),
                tenants: BTreeSet::new(),
            }),
            revision: AtomicU64::new(0),
            quarantine: ArcSwap::from_pointee(Quarantine::default()),
        }
    }

    /// Puts `object` of `scope` in quarantine: checks that depend on the
    /// scope answer [`EngineError::Quarantined`] until it is repaired.
    pub fn quarantine(&self, scope: Scope, object: String, detail: String) {
        self.quarantine.rcu(|q| {
            let mut q = (**q).clone();
            q.scopes
                .entry(scope.clone())
                .or_default()
                .insert(object.clone(), detail.clone());
            q
        });
    }

    /// The object was written or deleted: it is no longer bad.
    pub fn repaired(&self, scope: &Scope, object: &str) {
        if self.quarantine.load().scopes.is_empty() {
            return;
        }
        self.quarantine.rcu(|q| {
            let mut q = (**q).clone();
            if let Some(bad) = q.scopes.get_mut(scope) {
                bad.remove(object);
                if bad.is_empty() {
                    q.scopes.remove(scope);
                }
            }
            q
        });
    }

    /// The tenants whose limits include a rate, for the rate limiter.
    pub fn rate_limited_tenants(&self) -> Vec<Tenant> {
        self.catalog()
            .tenants
            .values()
            .filter_map(|n| n.tenant.as_ref())
            .filter(|t| t.limits.max_checks_per_second > 0 || t.limits.max_writes_per_second > 0)
            .cloned()
            .collect()
    }

    /// Tenants that set their own decision-log sampling.
    pub fn sampled_tenants(&self) -> Vec<Tenant> {
        self.catalog()
            .tenants
            .values()
            .filter_map(|n| n.tenant.as_ref())
            .filter(|t| !t.decision_logs.is_unset())
            .cloned()
            .collect()
    }

    /// Everything in quarantine.
    pub fn quarantined(&self) -> Arc<Quarantine> {
        self.quarantine.load_full()
    }

    fn quarantine_check(&self, tenant: &str, vault: &str) -> Result<(), EngineError> {
        let q = self.quarantine.load();
        if q.scopes.is_empty() {
            return Ok(());
        }
        match q.covering(tenant, vault) {
            Some((scope, detail)) => Err(EngineError::Quarantined {
                tenant: tenant.to_string(),
                vault: vault.to_string(),
                detail: format!("{scope}: {detail}"),
            }),
            None => Ok(()),
        }
    }

    /// The revision of the last batch fully applied.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    fn catalog(&self) -> std::sync::MutexGuard<'_, Catalog> {
        // A panic while applying would leave a half-applied batch; the
        // catalog stays usable, and the service reloads from the store when
        // it detects divergence, so poisoning is not propagated.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a batch of committed changes at `revision`. Objects are
    /// expected to be valid; anything that no longer compiles (a condition
    /// written by another version, say) is kept in a fail-closed form.
    pub fn apply(&self, revision: u64, changes: &[Change]) {
        let mut cat = self.catalog();
        let published = cat.apply(changes);
        let tenants_changed = changes
            .iter()
            .any(|c| matches!(c, Change::PutTenant(_) | Change::DeleteTenant { .. }));
        if published.vaults_changed || tenants_changed {
            self.vaults.store(Arc::new(VaultTable::of(&cat)));
        }
        self.revision.fetch_max(revision, Ordering::AcqRel);
    }

    /// A copy-on-write overlay holding what `vaults` depend on, at this
    /// engine's revision: it shares every compiled object with this engine,
    /// and what is applied to it stays in it.
    pub fn overlay(&self, vaults: &[(TenantId, VaultName)]) -> Engine {
        let cat = self.catalog().overlay(vaults);
        let table = VaultTable::of(&cat);
        Engine {
            writer: Mutex::new(cat),
            vaults: ArcSwap::from_pointee(table),
            revision: AtomicU64::new(self.revision()),
            quarantine: ArcSwap::new(self.quarantine.load_full()),
        }
    }

    /// What the index holds for one scope, and the revision it holds it at:
    /// for verifying the index against the store.
    pub fn scope_contents(&self, scope: &Scope) -> (ScopeContents, u64) {
        let cat = self.catalog();
        let mut out = ScopeContents::default();
        if let Some(data) = cat.scopes.get(scope) {
            for (name, e) in &data.roles {
                out.roles.insert(name.to_string(), (*e.role).clone());
            }
            for (id, b) in data.bindings.iter() {
                out.bindings.insert(id.to_string(), b.source.clone());
            }
            for (member, groups) in &data.member_of {
                for g in groups {
                    out.memberships.insert((g.to_string(), member.to_string()));
                }
            }
        }
        (out, self.revision())
    }

    /// The inheritance cycle `role` would close, were it stored, judged
    /// against the index.
    pub fn inherits_cycle(&self, role: &Role) -> Option<Vec<RoleKey>> {
        self.catalog().inherits_cycle(role)
    }

    /// The current view of a vault, for several queries at one revision.
    pub fn view(&self, tenant: &str, vault: &str) -> Result<Arc<VaultView>, EngineError> {
        self.quarantine_check(tenant, vault)?;
        let table = self.vaults.load();
        let found = table.table.find(vault_hash(tenant, vault), |(t, v, _)| {
            t.as_str() == tenant && v.as_str() == vault
        });
        match found {
            Some((_, _, handle)) => {
                let view = handle.load();
                if view.tenant_exists {
                    Ok(view)
                } else {
                    Err(EngineError::TenantNotFound(tenant.to_string()))
                }
            }
            None => {
                let mut v = Violations::new();
                v.check("tenant", ids::check_tenant_id(tenant));
                v.check("vault", ids::check_dns_label(vault));
                if !v.is_empty() {
                    return Err(EngineError::Invalid(v));
                }
                if table.tenants.iter().any(|t| t.as_str() == tenant) {
                    Err(EngineError::VaultNotFound {
                        tenant: tenant.to_string(),
                        vault: vault.to_string(),
                    })
                } else {
                    Err(EngineError::TenantNotFound(tenant.to_string()))
                }
            }
        }
    }

    /// Validates the request fields of one check item.
    pub fn validate_item(item: &CheckItem<'_>) -> Result<(), Violations> {
        let mut v = Violations::new();
        v.check("subject", ids::check_subject(item.subject));
        v.check("action", ids::check_action(item.action));
        v.check("resource", ids::check_resource(item.resource));
        v.into_result()
    }

    pub fn check(
        &self,
        tenant: &str,
        vault: &str,
        item: &CheckItem<'_>,
        now: Timestamp,
        explain: bool,
    ) -> Result<CheckResult, EngineError> {
        Self::validate_item(item).map_err(EngineError::Invalid)?;
        // The hot path borrows the published view (no reference count
        // traffic shared between threads); errors take the slow path.
        let table = self.vaults.load();
        if let Some((_, _, handle)) = table.table.find(vault_hash(tenant, vault), |(t, v, _)| {
            t.as_str() == tenant && v.as_str() == vault
        }) {
            let view = handle.view.load();
            if view.tenant_exists {
                self.quarantine_check(tenant, vault)?;
                return Ok(view.check(item.subject, item.action, item.resource, item.context, now, explain));
            }
        }
        let view = self.view(tenant, vault)?;
        Ok(view.check(item.subject, item.action, item.resource, item.context, now, explain))
    }

    /// Checks many items against one snapshot of the vault; each item is
    /// answered or rejected on its own.
    pub fn check_bulk(
        &self,
        tenant: &str,
        vault: &str,
        items: &[CheckItem<'_>],
        now: Timestamp,
        explain: bool,
    ) -> Result<Vec<Result<CheckResult, Violations>>, EngineError> {
        let view = self.view(tenant, vault)?;
        Ok(check_bulk_in(&view, items, now, explain))
    }

    pub fn lookup_resources(
        &self,
        tenant: &str,
        vault: &str,
        subject: &str,
        action: &str,
        now: Timestamp,
    ) -> Result<ResourceFilter, EngineError> {
        let mut v = Violations::new();
        v.check("subject", ids::check_subject(subject));
        v.check("action", ids::check_action(action));
        v.into_result().map_err(EngineError::Invalid)?;
        Ok(self.view(tenant, vault)?.resource_filter(subject, action, now))
    }

    pub fn lookup_subjects(
        &self,
        tenant: &str,
        vault: &str,
        action: &str,
        resource: &str,
        now: Timestamp,
        page: PageRequest<'_>,
    ) -> Result<SubjectPage, EngineError> {
        let mut v = Violations::new();
        v.check("action", ids::check_action(action));
        v.check("resource", ids::check_resource(resource));
        v.into_result().map_err(EngineError::Invalid)?;
        let view = self.view(tenant, vault)?;
        Ok(lookup_subjects_in(&view, action, resource, now, page))
    }

    pub fn effective_permissions(
        &self,
        tenant: &str,
        vault: &str,
        subject: &str,
        now: Timestamp,
    ) -> Result<Vec<EffectiveStatement>, EngineError> {
        let mut v = Violations::new();
        v.check("subject", ids::check_subject(subject));
        v.into_result().map_err(EngineError::Invalid)?;
        Ok(self.view(tenant, vault)?.effective(subject, now))
    }

    /// A page of [`effective_permissions`](Self::effective_permissions).
    pub fn effective_page(
        &self,
        tenant: &str,
        vault: &str,
        subject: &str,
        now: Timestamp,
        after: Option<&EffectiveCursor>,
        limit: usize,
    ) -> Result<EffectivePage, EngineError> {
        let mut v = Violations::new();
        v.check("subject", ids::check_subject(subject));
        v.into_result().map_err(EngineError::Invalid)?;
        Ok(self.view(tenant, vault)?.effective_page(subject, now, after, limit))
    }
}

pub fn check_bulk_in(
    view: &VaultView,
    items: &[CheckItem<'_>],
    now: Timestamp,
    explain: bool,
) -> Vec<Result<CheckResult, Violations>> {
    items
        .iter()
        .map(|item| {
            Engine::validate_item(item)?;
            Ok(view.check(item.subject, item.action, item.resource, item.context, now, explain))
        })
        .collect()
}

#[cfg(test)]
mod tests;
