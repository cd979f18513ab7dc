//! The reverse lookups over a view: which resources a subject reaches
//! (lookup resources), which subjects reach a resource (lookup subjects)
//! and every statement reaching a subject (effective permissions, paged).
//! They answer for many bindings at once, so they run on the bounded pool,
//! and what a page of lookup subjects needs is built once per view and
//! kept (see [`SubjectLookups`]), not rebuilt for every page.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use hashbrown::HashMap;

use super::{Mode, Possibility, Query, Tally, VaultView};
use crate::engine::compiled::{CompiledBinding, CompiledStatement, FixedState, Matches, hash_str};
use crate::engine::ids::Subject;
use crate::engine::model::{Effect, RoleKey, Scope, Timestamp};
use crate::engine::{PageRequest, SubjectPage};

impl VaultView {
    /// Lookup resources: what `subject` may do `action` on, as a filter.
    pub fn resource_filter(&self, subject: &str, action: &str, now: Timestamp) -> ResourceFilter {
        let mut f = ResourceFilter {
            suspended: self.suspended_by.is_some(),
            ..Default::default()
        };
        if f.suspended {
            return f;
        }
        let ps = self.principals(subject);
        let ahash = hash_str(action);
        let mut m = Matches::new();
        for p in ps.iter() {
            let Some(data) = p.data else { continue };
            for br in data.bindings.iter() {
                let b = &br.binding;
                if !b.active_at(now) {
                    continue;
                }
                let Some((set, role)) = self.statements(b) else {
                    continue;
                };
                set.matching(action, ahash, &mut m);
                for &i in &m {
                    let s = &set.statements[i as usize];
                    let mut conditions = Vec::new();
                    for c in [b.condition.as_deref(), s.condition.as_ref()].into_iter().flatten() {
                        conditions.push(match c {
                            Ok(c) => c.source().to_string(),
                            Err(e) => e.to_string(),
                        });
                    }
                    let rule = ResourceRule {
                        binding: b.clone(),
                        statement: s.clone(),
                        role: role.and_then(|r| r.key.clone()),
                        conditions,
                    };
                    match (s.effect, rule.conditions.is_empty()) {
                        (Effect::Allow, true) => f.grants.push(rule),
                        (Effect::Allow, false) => f.conditional_grants.push(rule),
                        (Effect::Deny, true) => f.denials.push(rule),
                        (Effect::Deny, false) => f.conditional_denials.push(rule),
                    }
                }
            }
        }
        f
    }

    /// Every subject a check of (`action`, `resource`) could allow, groups
    /// expanded to their members transitively, sorted: the candidates of
    /// lookup subjects, kept for the last few pairs asked so the pages after
    /// the first cost a binary search, not a scan of the vault.
    ///
    /// Validity windows are ignored (a binding counts whether or not it is
    /// active now), so the list holds at any time and each page's
    /// [`possibility`](VaultView::possibility) check, at that page's `now`,
    /// drops whoever does not reach it.
    pub(crate) fn subject_candidates(&self, action: &str, resource: &str) -> Arc<[Subject]> {
        if let Some(hit) = self.lookups.recent(action, resource) {
            return hit;
        }
        let members = self.lookups.members.get_or_init(|| self.members_index());
        let mut seen: hashbrown::HashSet<&Subject, FixedState> =
            hashbrown::HashSet::with_hasher(FixedState::with_seed(3));
        let mut stack: Vec<&Subject> = self.granting_subjects(action, resource);
        while let Some(s) = stack.pop() {
            if seen.insert(s)
                && let Some(ms) = members.get(s.as_str())
            {
                stack.extend(ms.iter());
            }
        }
        let mut out: Vec<Subject> = seen.into_iter().cloned().collect();
        out.sort_unstable();
        let out: Arc<[Subject]> = out.into();
        self.lookups.remember(action, resource, out.clone());
        out
    }

    /// [`possibility`](VaultView::possibility), with each principal's share
    /// kept in `memo` (by its data's address, stable while the view lives):
    /// a page of members of one group weighs that group's bindings once,
    /// not once per member.
    fn possibility_shared(&self, subject: &str, q: &Query<'_>, memo: &mut Memo, m: &mut Matches) -> Possibility {
        if self.suspended_by.is_some() {
            return Possibility::Denied;
        }
        let ps = self.principals(subject);
        let mut total = Tally::default();
        for (pi, p) in ps.iter().enumerate() {
            let Some(data) = p.data else { continue };
            let share = *memo.entry(Arc::as_ptr(data) as usize).or_insert_with(|| {
                let mut t = Tally::default();
                self.tally_principal(&mut t, &ps, pi, q, &Mode::Partial, false, m);
                [t.deny_certain, t.deny_possible, t.allow_certain, t.allow_possible]
            });
            total.deny_certain |= share[0];
            total.deny_possible |= share[1];
            total.allow_certain |= share[2];
            total.allow_possible |= share[3];
            if total.deny_certain {
                break;
            }
        }
        total.possibility()
    }

    /// Every binding's subject whose bindings could grant `action` on
    /// `resource` (conditions and validity windows aside).
    fn granting_subjects(&self, action: &str, resource: &str) -> Vec<&Subject> {
        let ahash = hash_str(action);
        let mut m = Matches::new();
        let mut out = Vec::new();
        for (subject, data) in self.subjects.iter() {
            let grants = data.bindings.iter().any(|br| {
                if !(br.scope.is_any() || (br.scope.may_match(resource) && br.binding.resources.matches(resource))) {
                    return false;
                }
                let Some((set, _)) = self.statements(&br.binding) else {
                    return false;
                };
                set.matching(action, ahash, &mut m);
                m.iter().any(|&i| {
                    let s = &set.statements[i as usize];
                    s.effect == Effect::Allow && s.resources.matches(resource)
                })
            });
            if grants {
                out.push(subject);
            }
        }
        out
    }

    /// Group → direct members, from every membership visible in the view.
    fn members_index(&self) -> HashMap<Subject, Vec<Subject>, FixedState> {
        let mut idx: HashMap<Subject, Vec<Subject>, FixedState> = HashMap::with_hasher(FixedState::with_seed(2));
        for (subject, data) in self.subjects.iter() {
            for e in data.groups.iter() {
                idx.entry(e.group.clone()).or_default().push(subject.clone());
            }
        }
        idx
    }

    /// Every statement that can reach `subject`, with provenance.
    pub fn effective(&self, subject: &str, now: Timestamp) -> Vec<EffectiveStatement> {
        self.effective_where(subject, now, |_| true)
    }

    /// [`effective`](Self::effective) over only the bindings `keep` accepts:
    /// a plan that knows which bindings changed compares only theirs.
    pub fn effective_where(
        &self,
        subject: &str,
        now: Timestamp,
        keep: impl Fn(&CompiledBinding) -> bool,
    ) -> Vec<EffectiveStatement> {
        let ps = self.principals(subject);
        let mut out = Vec::new();
        for (pi, p) in ps.iter().enumerate() {
            let Some(data) = p.data else { continue };
            let group_path = Self::group_path(&ps, pi);
            for br in data.bindings.iter() {
                if keep(&br.binding) {
                    self.push_effective(p.name, &group_path, &br.binding, now, 0, usize::MAX, &mut out);
                }
            }
        }
        out
    }

    /// One page of [`effective`](Self::effective), in the order of
    /// (principal, binding id, binding tenant, vault, statement), from
    /// `after`. The order depends only on names, so a page continues where
    /// the last one ended even when other bindings changed in between.
    ///
    /// A page costs a pass over the subject's bindings, not a sort of them:
    /// a principal's bindings past the cursor are narrowed to the `limit`
    /// smallest (each yields at least one statement) before those are
    /// sorted, so a subject reached by thousands of bindings pages in time
    /// proportional to them plus the page.
    pub fn effective_page(
        &self,
        subject: &str,
        now: Timestamp,
        after: Option<&EffectiveCursor>,
        limit: usize,
    ) -> EffectivePage {
        let limit = limit.max(1);
        let ps = self.principals(subject);
        let mut order: Vec<usize> = (0..ps.len()).filter(|&i| ps[i].data.is_some()).collect();
        order.sort_unstable_by_key(|&i| ps[i].name);
        let mut out = Vec::new();
        let mut entries: Vec<(EffectiveKey<'_>, &Arc<CompiledBinding>)> = Vec::new();
        for pi in order {
            let p = &ps[pi];
            let cursor = match after {
                Some(c) if p.name < c.principal.as_str() => continue,
                Some(c) if p.name == c.principal.as_str() => Some(c),
                _ => None,
            };
            let Some(data) = p.data else { continue };
            entries.clear();
            entries.extend(
                data.bindings
                    .iter()
                    .map(|br| (EffectiveKey::of(&br.binding), &br.binding))
                    .filter(|(k, _)| cursor.is_none_or(|c| *k >= c.key()))
                    // Only bindings that list something (a binding to a
                    // missing role lists nothing), so `room` of them fill
                    // the page.
                    .filter(|(_, b)| self.statements(b).is_some_and(|(set, _)| !set.statements.is_empty())),
            );
            let room = limit - out.len();
            if entries.len() > room {
                entries.select_nth_unstable_by(room, |a, b| a.0.cmp(&b.0));
                entries.truncate(room + 1);
            }
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let group_path = Self::group_path(&ps, pi);
            for (j, (key, b)) in entries.iter().enumerate() {
                // The cursor's own binding continues at its statement; one
                // deleted since is simply passed.
                let skip = match cursor {
                    Some(c) if *key == c.key() => c.skip as usize,
                    _ => 0,
                };
                let pushed = self.push_effective(p.name, &group_path, b, now, skip, limit - out.len(), &mut out);
                if out.len() == limit {
                    let total = self.statements(b).map_or(0, |(set, _)| set.statements.len());
                    let next = if skip + pushed < total {
                        Some(key.cursor(p.name, skip + pushed))
                    } else {
                        match entries.get(j + 1) {
                            Some(e) => Some(e.0.cursor(p.name, 0)),
                            // The principal's last binding: the next page
                            // starts past it (and finds the next principal).
                            None => Some(key.cursor(p.name, total)),
                        }
                    };
                    return EffectivePage { statements: out, next };
                }
            }
        }
        EffectivePage {
            statements: out,
            next: None,
        }
    }

    /// Appends up to `max` of `b`'s statements from the `skip`th, as reaching
    /// `principal` through `group_path`; returns how many.
    #[allow(clippy::too_many_arguments)]
    fn push_effective(
        &self,
        principal: &str,
        group_path: &[String],
        b: &Arc<CompiledBinding>,
        now: Timestamp,
        skip: usize,
        max: usize,
        out: &mut Vec<EffectiveStatement>,
    ) -> usize {
        let Some((set, role)) = self.statements(b) else {
            return 0;
        };
        let before = out.len();
        for (i, s) in set.statements.iter().enumerate().skip(skip).take(max) {
            out.push(EffectiveStatement {
                statement: s.source.clone(),
                compiled: b.clone(),
                principal: principal.to_string(),
                group_path: group_path.to_vec(),
                role: role.and_then(|r| r.key.clone()),
                role_path: role.map(|r| r.path(i)).unwrap_or_default(),
                index: s.origin.index,
                defined_in: s.defined_in(b),
                active: b.active_at(now),
            });
        }
        out.len() - before
    }
}

/// Where a binding sorts among its principal's in an effective-permissions
/// listing: by id first, which nearly always decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EffectiveKey<'a> {
    binding: &'a str,
    tenant: &'a str,
    vault: &'a str,
}

impl<'a> EffectiveKey<'a> {
    fn of(b: &'a CompiledBinding) -> EffectiveKey<'a> {
        EffectiveKey {
            binding: &b.source.id,
            tenant: b.source.tenant.as_str(),
            vault: b.source.vault.as_ref().map_or("", |v| v.as_str()),
        }
    }

    fn cursor(&self, principal: &str, skip: usize) -> EffectiveCursor {
        EffectiveCursor {
            principal: principal.to_string(),
            binding: self.binding.to_string(),
            tenant: self.tenant.to_string(),
            vault: self.vault.to_string(),
            skip: skip as u32,
        }
    }
}

/// Where the next page of effective permissions starts: a principal and
/// one of its bindings by sort key, and how many of that binding's
/// statements were already listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveCursor {
    principal: String,
    binding: String,
    tenant: String,
    vault: String,
    skip: u32,
}

impl EffectiveCursor {
    fn key(&self) -> EffectiveKey<'_> {
        EffectiveKey {
            binding: &self.binding,
            tenant: &self.tenant,
            vault: &self.vault,
        }
    }

    /// The cursor as text: its fields joined by NUL, which no identifier
    /// may contain.
    pub fn encode(&self) -> String {
        format!(
            "{}\0{}\0{}\0{}\0{}",
            self.principal, self.binding, self.tenant, self.vault, self.skip
        )
    }

    /// `None` for text [`encode`](Self::encode) did not produce.
    pub fn decode(s: &str) -> Option<EffectiveCursor> {
        let mut it = s.split('\0');
        let c = EffectiveCursor {
            principal: it.next()?.to_string(),
            binding: it.next()?.to_string(),
            tenant: it.next()?.to_string(),
            vault: it.next()?.to_string(),
            skip: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(c)
    }
}

/// A page of effective permissions.
#[derive(Debug, Clone)]
pub struct EffectivePage {
    pub statements: Vec<EffectiveStatement>,
    /// Pass back for the next page; `None` on the last.
    pub next: Option<EffectiveCursor>,
}

/// One (binding, statement) pair of a resource filter. A resource matches
/// when it is in the binding's scope and the statement's resources.
#[derive(Debug, Clone)]
pub struct ResourceRule {
    binding: Arc<CompiledBinding>,
    statement: Arc<CompiledStatement>,
    pub role: Option<RoleKey>,
    /// The conditions that must hold, the binding's first.
    pub conditions: Vec<String>,
}

impl ResourceRule {
    pub fn matches(&self, resource: &str) -> bool {
        self.binding.resources.matches(resource) && self.statement.resources.matches(resource)
    }
    /// The binding's scope as written, `*` for none.
    pub fn scope_patterns(&self) -> Vec<String> {
        as_written(&self.binding.source.scope)
    }
    /// The statement's resources as written, `*` for none.
    pub fn resource_patterns(&self) -> Vec<String> {
        as_written(&self.statement.source.resources)
    }
    pub fn binding_id(&self) -> &str {
        &self.binding.source.id
    }
    pub fn binding_scope(&self) -> Scope {
        self.binding.scope()
    }
    pub fn sid(&self) -> Option<&str> {
        self.statement.origin.sid.as_deref()
    }
    pub fn index(&self) -> u32 {
        self.statement.origin.index
    }
}

/// Patterns as their author wrote them (an empty list means `*`): copied,
/// not rebuilt from the compiled set, as a lookup lists thousands.
fn as_written(patterns: &[String]) -> Vec<String> {
    if patterns.is_empty() {
        vec!["*".to_string()]
    } else {
        patterns.to_vec()
    }
}

/// The answer of lookup resources: a resource is allowed when it matches a
/// grant and no denial (conditional rules aside).
#[derive(Debug, Clone, Default)]
pub struct ResourceFilter {
    pub suspended: bool,
    pub grants: Vec<ResourceRule>,
    pub denials: Vec<ResourceRule>,
    pub conditional_grants: Vec<ResourceRule>,
    pub conditional_denials: Vec<ResourceRule>,
}

impl ResourceFilter {
    /// The filter's verdict for `resource`, `Conditional` when a conditional
    /// rule could change it.
    pub fn evaluate(&self, resource: &str) -> Possibility {
        if self.suspended || self.denials.iter().any(|r| r.matches(resource)) {
            return Possibility::Denied;
        }
        let granted = self.grants.iter().any(|r| r.matches(resource));
        let cond_deny = self.conditional_denials.iter().any(|r| r.matches(resource));
        let cond_grant = self.conditional_grants.iter().any(|r| r.matches(resource));
        match (granted, cond_deny, cond_grant) {
            (true, false, _) => Possibility::Allowed,
            (true, true, _) | (false, _, true) => Possibility::Conditional,
            _ => Possibility::Denied,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EffectiveStatement {
    pub statement: Arc<crate::engine::model::Statement>,
    compiled: Arc<CompiledBinding>,
    pub principal: String,
    pub group_path: Vec<String>,
    pub role: Option<RoleKey>,
    pub role_path: Vec<RoleKey>,
    pub index: u32,
    pub defined_in: Scope,
    /// Whether the binding is within its validity window now.
    pub active: bool,
}

impl EffectiveStatement {
    /// The binding that grants the statement.
    pub fn binding(&self) -> &crate::engine::model::Binding {
        &self.compiled.source
    }
}

/// A principal's share of a partial tally (deny certain, deny possible,
/// allow certain, allow possible), by the address of its data.
type Memo = HashMap<usize, [bool; 4], FixedState>;

/// What lookup subjects keeps with a view, built on first use: the groups'
/// members, and the candidates of the last [`RECENT`] (action, resource)
/// pairs. A view is immutable, so nothing here goes stale; the next view
/// (after any write) starts empty.
#[derive(Default)]
pub(crate) struct SubjectLookups {
    members: OnceLock<HashMap<Subject, Vec<Subject>, FixedState>>,
    recent: Mutex<VecDeque<Recent>>,
}

struct Recent {
    action: Box<str>,
    resource: Box<str>,
    candidates: Arc<[Subject]>,
}

/// Enough for the callers paging at once through one view; each entry
/// holds one reference per candidate.
const RECENT: usize = 8;

impl SubjectLookups {
    fn recent(&self, action: &str, resource: &str) -> Option<Arc<[Subject]>> {
        // The lock covers a scan of eight entries, never a computation.
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .iter()
            .find(|r| &*r.action == action && &*r.resource == resource)
            .map(|r| r.candidates.clone())
    }

    fn remember(&self, action: &str, resource: &str, candidates: Arc<[Subject]>) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(Recent {
            action: action.into(),
            resource: resource.into(),
            candidates,
        });
    }
}

impl std::fmt::Debug for SubjectLookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectLookups").finish_non_exhaustive()
    }
}

/// Lookup subjects over one view: every subject for which a check of
/// (`action`, `resource`) is allowed or depends on conditions, groups expanded
/// to their members transitively, in subject order from after `after`.
pub fn lookup_subjects_in(
    view: &VaultView,
    action: &str,
    resource: &str,
    now: Timestamp,
    page: PageRequest<'_>,
) -> SubjectPage {
    let (after, limit) = (page.after, page.limit.max(1));
    if view.suspended_by().is_some() {
        return SubjectPage {
            subjects: Vec::new(),
            next_cursor: None,
        };
    }
    let candidates = view.subject_candidates(action, resource);
    let start = after.map_or(0, |a| candidates.partition_point(|s| s.as_str() <= a));
    let mut subjects: Vec<(String, Possibility)> = Vec::new();
    let q = Query {
        action,
        ahash: hash_str(action),
        resource,
        now,
    };
    let (mut memo, mut m) = (Memo::with_hasher(FixedState::with_seed(4)), Matches::new());
    for s in &candidates[start..] {
        let p = view.possibility_shared(s.as_str(), &q, &mut memo, &mut m);
        if p == Possibility::Denied {
            continue;
        }
        if subjects.len() == limit {
            let last = &subjects.last().expect("limit >= 1").0;
            return SubjectPage {
                next_cursor: Some(last.clone()),
                subjects,
            };
        }
        subjects.push((s.to_string(), p));
    }
    SubjectPage {
        subjects,
        next_cursor: None,
    }
}
