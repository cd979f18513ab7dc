//! A vault's compiled view: everything a check in that vault can see, merged
//! from the vault itself, its tenant and the tenant's ancestors, and laid out
//! for the check path.
//!
//! A view is immutable. Writers build the next one from the current one and
//! publish it atomically, so a reader sees one revision or the next, never a
//! mix. Subjects live in a sharded hash map whose shards are shared between
//! successive views; a write copies only the shards it touches.

use std::sync::Arc;

use hashbrown::{HashMap, HashTable};
use smallvec::SmallVec;

use super::compiled::{
    CompiledBinding, CompiledCondition, CompiledGrant, CompiledRole, CompiledStatement, FixedState, Matches,
    StatementSet, hash_str,
};
use super::condition::{RequestContext, Vars, cel_timestamp};
use super::ids::{Subject, TenantId, VaultName};
use super::model::{Effect, RoleKey, Scope, Timestamp, Vault};
use super::pattern::Prefilter;

mod reverse;
pub use reverse::{
    EffectiveCursor, EffectivePage, EffectiveStatement, ResourceFilter, ResourceRule, lookup_subjects_in,
};

/// What one subject contributes to a view: its bindings and the groups it
/// belongs to directly, from every visible scope.
#[derive(Debug)]
pub struct SubjectData {
    pub bindings: Box<[BindingRef]>,
    pub groups: Box<[GroupEdge]>,
    /// The subject's text in this allocation, so a lookup confirms its key
    /// without a separate pointer chase.
    key: SmallVec<[u8; 40]>,
}

impl SubjectData {
    pub fn new(key: &Subject, bindings: Vec<BindingRef>, groups: Vec<GroupEdge>) -> SubjectData {
        SubjectData {
            key: SmallVec::from_slice(key.as_str().as_bytes()),
            bindings: bindings.into(),
            groups: groups.into(),
        }
    }
}

/// A binding as a subject's list holds it: the fields the check path tests
/// first are inline, so scanning a subject's bindings reads one contiguous
/// array and follows a pointer only for bindings that may apply.
/// 32 bytes: the scope prefilter (its flag marks a validity window) and
/// the binding.
#[derive(Debug, Clone)]
pub struct BindingRef {
    pub scope: Prefilter,
    pub binding: Arc<CompiledBinding>,
}

impl BindingRef {
    pub fn new(b: &Arc<CompiledBinding>) -> BindingRef {
        let mut scope = b.resources.prefilter();
        if b.source.not_before.is_some() || b.source.expires_at.is_some() {
            scope = scope.with_flag();
        }
        BindingRef {
            scope,
            binding: b.clone(),
        }
    }

    /// Active at `now` and in scope for `resource`.
    #[inline]
    fn applies_to(&self, now: Timestamp, resource: &str) -> bool {
        (self.scope.is_any() || (self.scope.may_match(resource) && self.binding.resources.matches(resource)))
            && (!self.scope.flag() || self.binding.active_at(now))
    }
}

#[derive(Debug, Clone)]
pub struct GroupEdge {
    pub group: Subject,
    pub hash: u64,
}

impl GroupEdge {
    pub fn new(group: &Subject) -> GroupEdge {
        GroupEdge {
            group: group.clone(),
            hash: hash_str(group.as_str()),
        }
    }
}

/// Entries keep their key's hash so a probe compares words, not strings,
/// until the hash matches.
type Shard = HashTable<(u64, Subject, Arc<SubjectData>)>;

#[derive(Clone)]
pub(crate) struct ShardMap {
    /// Shards in groups of [`GROUP`]: a write copies one shard, its group's
    /// pointer array and the (short) list of groups, not every shard pointer.
    groups: Vec<Arc<Vec<Arc<Shard>>>>,
    shift: u32,
    len: usize,
}

const GROUP_BITS: u32 = 6;
const GROUP: usize = 1 << GROUP_BITS;

impl ShardMap {
    pub fn with_capacity(n: usize) -> ShardMap {
        let shards = (n / 256).clamp(1, 4096).next_power_of_two();
        let per = n / shards + 1;
        let groups = shards.div_ceil(GROUP);
        ShardMap {
            groups: (0..groups)
                .map(|g| {
                    let here = (shards - g * GROUP).min(GROUP);
                    Arc::new((0..here).map(|_| Arc::new(HashTable::with_capacity(per))).collect())
                })
                .collect(),
            shift: shards.trailing_zeros(),
            len: 0,
        }
    }

    fn shard_count(&self) -> usize {
        1 << self.shift
    }

    #[inline]
    fn shard_of(&self, hash: u64) -> (usize, usize) {
        let i = if self.shift == 0 {
            0
        } else {
            ((hash >> 32) as usize) & ((1 << self.shift) - 1)
        };
        (i >> GROUP_BITS, i & (GROUP - 1))
    }

    #[inline]
    pub fn get(&self, key: &str, hash: u64) -> Option<&Arc<SubjectData>> {
        let (g, i) = self.shard_of(hash);
        self.groups[g][i]
            .find(hash, |(h, _, v)| *h == hash && v.key.as_slice() == key.as_bytes())
            .map(|(_, _, v)| v)
    }

    pub fn set(&mut self, key: &Subject, value: Option<Arc<SubjectData>>) {
        let hash = hash_str(key.as_str());
        let (g, i) = self.shard_of(hash);
        let group = Arc::make_mut(&mut self.groups[g]);
        let shard = Arc::make_mut(&mut group[i]);
        let hasher = |(h, _, _): &(u64, Subject, Arc<SubjectData>)| *h;
        match (shard.find_entry(hash, |(h, k, _)| *h == hash && k == key), value) {
            (Ok(mut e), Some(v)) => e.get_mut().2 = v,
            (Ok(e), None) => {
                e.remove();
                self.len -= 1;
            }
            (Err(_), Some(v)) => {
                shard.insert_unique(hash, (hash, key.clone(), v), hasher);
                self.len += 1;
            }
            (Err(_), None) => {}
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the map has outgrown its shard count enough that copying a
    /// shard on write would get slow.
    pub fn needs_reshard(&self) -> bool {
        self.len / self.shard_count() > 4096 && self.shard_count() < 4096
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Subject, &Arc<SubjectData>)> {
        self.groups
            .iter()
            .flat_map(|g| g.iter())
            .flat_map(|s| s.iter().map(|(_, k, v)| (k, v)))
    }
}

/// Why a check was decided the way it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Allowed,
    ExplicitDeny,
    NoMatch,
    TenantSuspended,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "ALLOWED",
            Reason::ExplicitDeny => "EXPLICIT_DENY",
            Reason::NoMatch => "NO_MATCH",
            Reason::TenantSuspended => "TENANT_SUSPENDED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// The statement applied and counted toward the decision.
    Applied,
    /// A condition (the binding's or the statement's) failed to evaluate.
    /// A DENY counts anyway, an ALLOW does not: conditions fail closed.
    ConditionError(String),
}

/// One statement that applied to a request (or would have, but for a
/// condition error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainEntry {
    pub binding_id: String,
    /// Where the binding is defined.
    pub binding_scope: Scope,
    /// The subject the binding names: the caller or one of its groups.
    pub principal: String,
    /// From the caller to `principal` through nested groups.
    pub group_path: Vec<String>,
    /// `None` for the binding's inline statements.
    pub role: Option<RoleKey>,
    /// The roles from the bound one to the one defining the statement.
    pub role_path: Vec<RoleKey>,
    pub sid: Option<String>,
    pub index: u32,
    pub effect: Effect,
    /// Where the statement is defined: its role's scope, or the binding's.
    pub defined_in: Scope,
    pub outcome: EntryOutcome,
    pub counted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub reason: Reason,
    pub suspended_by: Option<TenantId>,
    pub entries: Vec<ExplainEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub allowed: bool,
    pub reason: Reason,
    pub explanation: Option<Explanation>,
}

/// A three-way outcome for lookups that cannot evaluate conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Possibility {
    Allowed,
    Conditional,
    Denied,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tri {
    True,
    False,
    Unknown,
    Error,
}

enum Mode<'a> {
    /// Evaluate conditions; the CEL variables are built on first use.
    Full {
        subject: &'a str,
        action: &'a str,
        resource: &'a str,
        context: &'a RequestContext,
        now: Timestamp,
        vars: std::cell::OnceCell<Vars<'a>>,
    },
    Partial,
}

#[derive(Default)]
struct Tally {
    deny_certain: bool,
    deny_possible: bool,
    allow_certain: bool,
    allow_possible: bool,
    entries: Vec<ExplainEntry>,
}

impl Tally {
    /// What a partial (conditions unknown) tally allows.
    fn possibility(&self) -> Possibility {
        if self.deny_certain {
            Possibility::Denied
        } else if self.allow_certain && !self.deny_possible {
            Possibility::Allowed
        } else if self.allow_certain || self.allow_possible {
            Possibility::Conditional
        } else {
            Possibility::Denied
        }
    }
}

/// The request a tally answers, hashed once.
#[derive(Clone, Copy)]
struct Query<'a> {
    action: &'a str,
    ahash: u64,
    resource: &'a str,
    now: Timestamp,
}

struct Principal<'v> {
    name: &'v str,
    hash: u64,
    parent: u32,
    data: Option<&'v Arc<SubjectData>>,
}

pub struct VaultView {
    pub(crate) vault: Arc<Vault>,
    pub(crate) chain: Arc<[TenantId]>,
    pub(crate) tenant_exists: bool,
    pub(crate) suspended_by: Option<TenantId>,
    pub(crate) subjects: ShardMap,
    pub(crate) roles: Arc<HashMap<u32, Arc<CompiledRole>, FixedState>>,
    /// Built by lookup subjects on first use; never copied to the next view.
    pub(crate) lookups: reverse::SubjectLookups,
}

impl Clone for VaultView {
    fn clone(&self) -> Self {
        VaultView {
            vault: self.vault.clone(),
            chain: self.chain.clone(),
            tenant_exists: self.tenant_exists,
            suspended_by: self.suspended_by.clone(),
            subjects: self.subjects.clone(),
            roles: self.roles.clone(),
            lookups: Default::default(),
        }
    }
}

const NO_PARENT: u32 = u32::MAX;

impl VaultView {
    pub fn tenant(&self) -> &TenantId {
        &self.vault.tenant
    }
    pub fn name(&self) -> &VaultName {
        &self.vault.name
    }
    pub fn vault(&self) -> &Vault {
        &self.vault
    }
    pub fn suspended_by(&self) -> Option<&TenantId> {
        self.suspended_by.as_ref()
    }
    pub fn subject_count(&self) -> usize {
        self.subjects.len()
    }

    /// The subject and every group it belongs to, transitively, breadth
    /// first. Cycles are harmless: each group is visited once.
    fn principals<'v>(&'v self, subject: &'v str) -> SmallVec<[Principal<'v>; 8]> {
        let mut ps: SmallVec<[Principal<'v>; 8]> = SmallVec::new();
        ps.push(Principal {
            name: subject,
            hash: hash_str(subject),
            parent: NO_PARENT,
            data: None,
        });
        let mut seen: Option<hashbrown::HashSet<&'v str, FixedState>> = None;
        let mut i = 0;
        while i < ps.len() {
            let data = self.subjects.get(ps[i].name, ps[i].hash);
            ps[i].data = data;
            if let Some(d) = data {
                for edge in d.groups.iter() {
                    let g = edge.group.as_str();
                    let known = match &mut seen {
                        Some(set) => !set.insert(g),
                        None => {
                            let k = ps.iter().any(|p| p.hash == edge.hash && p.name == g);
                            if !k && ps.len() >= 32 {
                                let mut set = hashbrown::HashSet::with_hasher(FixedState::with_seed(1));
                                set.extend(ps.iter().map(|p| p.name));
                                set.insert(g);
                                seen = Some(set);
                            }
                            k
                        }
                    };
                    if !known {
                        ps.push(Principal {
                            name: g,
                            hash: edge.hash,
                            parent: i as u32,
                            data: None,
                        });
                    }
                }
            }
            i += 1;
        }
        ps
    }

    fn group_path(ps: &[Principal<'_>], mut i: usize) -> Vec<String> {
        let mut path = vec![ps[i].name.to_string()];
        while ps[i].parent != NO_PARENT {
            i = ps[i].parent as usize;
            path.push(ps[i].name.to_string());
        }
        path.reverse();
        path
    }

    #[inline]
    fn statements<'v>(&'v self, b: &'v CompiledBinding) -> Option<(&'v StatementSet, Option<&'v CompiledRole>)> {
        match &b.grant {
            CompiledGrant::Role(slot) => self.roles.get(slot).map(|r| (&r.set, Some(&**r))),
            CompiledGrant::Inline(set) => Some((set, None)),
        }
    }

    /// Evaluates a condition; the error text is kept only when explaining.
    fn eval_condition(mode: &Mode<'_>, c: Option<&CompiledCondition>, err: Option<&mut Option<String>>) -> Tri {
        match c {
            None => Tri::True,
            Some(Err(msg)) => {
                if let Some(err) = err {
                    *err = Some(msg.to_string());
                }
                Tri::Error
            }
            Some(Ok(cond)) => match mode {
                Mode::Partial => Tri::Unknown,
                Mode::Full {
                    subject,
                    action,
                    resource,
                    context,
                    now,
                    vars,
                } => match cond.eval(vars.get_or_init(|| Vars {
                    subject,
                    action,
                    resource,
                    context,
                    now: cel_timestamp(*now),
                })) {
                    Ok(true) => Tri::True,
                    Ok(false) => Tri::False,
                    Err(e) => {
                        if let Some(err) = err {
                            *err = Some(e);
                        }
                        Tri::Error
                    }
                },
            },
        }
    }

    fn evaluate(
        &self,
        subject: &str,
        action: &str,
        resource: &str,
        now: Timestamp,
        mode: &Mode<'_>,
        explain: bool,
    ) -> Tally {
        let mut tally = Tally::default();
        let ps = self.principals(subject);
        let ahash = hash_str(action);
        let mut m = Matches::new();
        for pi in 0..ps.len() {
            let q = Query {
                action,
                ahash,
                resource,
                now,
            };
            if self.tally_principal(&mut tally, &ps, pi, &q, mode, explain, &mut m) {
                return tally;
            }
        }
        tally
    }

    /// Folds principal `ps[pi]`'s bindings into `tally`; true when a certain
    /// denial settles the check (when not explaining). Principals fold
    /// independently, which lets lookup subjects reuse a group's share.
    // Inlined so the check path's loop compiles as it did before the split.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn tally_principal(
        &self,
        tally: &mut Tally,
        ps: &[Principal<'_>],
        pi: usize,
        q: &Query<'_>,
        mode: &Mode<'_>,
        explain: bool,
        m: &mut Matches,
    ) -> bool {
        let Query {
            action,
            ahash,
            resource,
            now,
        } = *q;
        let p = &ps[pi];
        let Some(data) = p.data else { return false };
        for br in data.bindings.iter() {
            if !br.applies_to(now, resource) {
                continue;
            }
            let b = &*br.binding;
            let Some((set, role)) = self.statements(b) else {
                continue;
            };
            set.matching(action, ahash, m);
            if m.is_empty() {
                continue;
            }
            let mut bcond: Option<Tri> = None;
            let mut berr: Option<String> = None;
            for &i in m.iter() {
                let s: &CompiledStatement = &set.statements[i as usize];
                if !s.resources.matches(resource) {
                    continue;
                }
                let bc = *bcond.get_or_insert_with(|| {
                    Self::eval_condition(mode, b.condition.as_deref(), explain.then_some(&mut berr))
                });
                if bc == Tri::False {
                    break;
                }
                let mut serr = None;
                let sc = Self::eval_condition(mode, s.condition.as_ref(), explain.then_some(&mut serr));
                if sc == Tri::False {
                    continue;
                }
                let unknown = bc == Tri::Unknown || sc == Tri::Unknown;
                let errored = bc == Tri::Error || sc == Tri::Error;
                let counted = match s.effect {
                    Effect::Deny => {
                        if unknown {
                            tally.deny_possible = true;
                        } else {
                            tally.deny_certain = true;
                        }
                        true
                    }
                    Effect::Allow => {
                        if errored {
                            false
                        } else if unknown {
                            tally.allow_possible = true;
                            true
                        } else {
                            tally.allow_certain = true;
                            true
                        }
                    }
                };
                if explain {
                    let error = berr.clone().or(serr);
                    let role_path = role.map(|r| r.path(i as usize)).unwrap_or_default();
                    tally.entries.push(ExplainEntry {
                        binding_id: b.source.id.clone(),
                        binding_scope: b.scope(),
                        principal: p.name.to_string(),
                        group_path: Self::group_path(ps, pi),
                        role: role.and_then(|r| r.key.clone()),
                        role_path,
                        sid: s.origin.sid.as_deref().map(str::to_string),
                        index: s.origin.index,
                        effect: s.effect,
                        defined_in: s.defined_in(b),
                        outcome: match error {
                            Some(e) if errored => EntryOutcome::ConditionError(e),
                            _ => EntryOutcome::Applied,
                        },
                        counted,
                    });
                } else if tally.deny_certain {
                    return true;
                }
            }
        }
        false
    }

    /// Decides one request. The caller has validated the inputs.
    pub fn check(
        &self,
        subject: &str,
        action: &str,
        resource: &str,
        context: &RequestContext,
        now: Timestamp,
        explain: bool,
    ) -> CheckResult {
        if let Some(t) = &self.suspended_by {
            return CheckResult {
                allowed: false,
                reason: Reason::TenantSuspended,
                explanation: explain.then(|| Explanation {
                    reason: Reason::TenantSuspended,
                    suspended_by: Some(t.clone()),
                    entries: Vec::new(),
                }),
            };
        }
        let mode = Mode::Full {
            subject,
            action,
            resource,
            context,
            now,
            vars: std::cell::OnceCell::new(),
        };
        let tally = self.evaluate(subject, action, resource, now, &mode, explain);
        let reason = if tally.deny_certain {
            Reason::ExplicitDeny
        } else if tally.allow_certain {
            Reason::Allowed
        } else {
            Reason::NoMatch
        };
        CheckResult {
            allowed: reason == Reason::Allowed,
            reason,
            explanation: explain.then_some(Explanation {
                reason,
                suspended_by: None,
                entries: tally.entries,
            }),
        }
    }

    /// Decides a request without evaluating conditions: `Conditional` when
    /// the answer depends on them.
    pub fn possibility(&self, subject: &str, action: &str, resource: &str, now: Timestamp) -> Possibility {
        if self.suspended_by.is_some() {
            return Possibility::Denied;
        }
        self.evaluate(subject, action, resource, now, &Mode::Partial, false)
            .possibility()
    }
}

impl VaultView {
    /// Whether `b` grants the same statements here as `other` does in
    /// `there` (the same role resolved, with the same statements and role
    /// paths), whoever holds it: a role change reaches exactly the bindings
    /// for which this is false.
    pub(crate) fn same_grant(&self, b: &CompiledBinding, there: &VaultView, other: &CompiledBinding) -> bool {
        match (self.statements(b), there.statements(other)) {
            (None, None) => true,
            (Some((s1, r1)), Some((s2, r2))) => {
                r1.map(|r| (&r.key, &r.paths)) == r2.map(|r| (&r.key, &r.paths))
                    && s1.statements.len() == s2.statements.len()
                    && s1.statements.iter().zip(s2.statements.iter()).all(|(a, b)| {
                        a.source == b.source && a.origin.index == b.origin.index && a.origin.role == b.origin.role
                    })
            }
            _ => false,
        }
    }
}
