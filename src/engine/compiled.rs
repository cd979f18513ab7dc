//! Compiled forms of statements, roles and bindings: what the check path
//! reads. Everything here is immutable once built and shared through `Arc`.

use std::hash::BuildHasher;
use std::sync::{Arc, Weak};

use hashbrown::{HashMap, HashTable};
use smallvec::SmallVec;

use super::condition::Condition;
use super::model::{Binding, Effect, RoleKey, Scope, Statement, Timestamp};
use super::pattern::{Pattern, PatternSet};

pub(crate) type FixedState = foldhash::fast::FixedState;
pub(crate) const HASH_SEED: u64 = 0x5eed_c0ff_ee00_0001;

#[inline]
pub(crate) fn hash_str(s: &str) -> u64 {
    FixedState::with_seed(HASH_SEED).hash_one(s)
}

/// A condition as compiled at load time. A condition that no longer compiles
/// (data written by another version, say) is kept as its error so it fails
/// closed at evaluation instead of vanishing.
pub type CompiledCondition = Result<Arc<Condition>, Arc<str>>;

/// Where a statement came from, for explanations and effective permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementOrigin {
    /// The role that defines it; `None` for a binding's inline statement.
    pub role: Option<RoleKey>,
    /// Position in the role's (or binding's) statement list.
    pub index: u32,
    pub sid: Option<Arc<str>>,
}

#[derive(Debug)]
pub struct CompiledStatement {
    pub effect: Effect,
    pub resources: PatternSet,
    pub condition: Option<CompiledCondition>,
    pub origin: StatementOrigin,
    /// Shared: every effective-permissions entry of the statement holds it.
    pub source: Arc<Statement>,
}

/// Statements indexed by action: exact action patterns in a hash table
/// keyed by the action's precomputed hash (hashed once per check), the rest
/// (`*`, prefixes, globs) in a short list.
#[derive(Debug, Default)]
pub struct StatementSet {
    pub statements: Vec<Arc<CompiledStatement>>,
    exact: HashTable<(Box<str>, SmallVec<[u32; 4]>)>,
    wild: Vec<(Pattern, u32)>,
}

/// Statement positions matching one action.
pub type Matches = SmallVec<[u32; 16]>;

impl StatementSet {
    pub fn new(statements: Vec<Arc<CompiledStatement>>) -> StatementSet {
        let mut exact: HashTable<(Box<str>, SmallVec<[u32; 4]>)> = HashTable::new();
        let mut wild = Vec::new();
        for (i, s) in statements.iter().enumerate() {
            let i = i as u32;
            for a in &s.source.actions {
                match Pattern::compile(a) {
                    Pattern::Exact(e) => {
                        let h = hash_str(&e);
                        match exact.find_mut(h, |(k, _)| **k == *e) {
                            Some((_, v)) => {
                                if v.last() != Some(&i) {
                                    v.push(i)
                                }
                            }
                            None => {
                                exact.insert_unique(h, (e, smallvec::smallvec![i]), |(k, _)| hash_str(k));
                            }
                        }
                    }
                    p => wild.push((p, i)),
                }
            }
        }
        StatementSet {
            statements,
            exact,
            wild,
        }
    }

    /// Positions of the statements with an action pattern matching `action`
    /// (whose hash is `hash`), ascending and without repeats.
    #[inline]
    pub fn matching(&self, action: &str, hash: u64, out: &mut Matches) {
        out.clear();
        if let Some((_, v)) = self.exact.find(hash, |(k, _)| &**k == action) {
            out.extend_from_slice(v);
        }
        let before = out.len();
        for (p, i) in &self.wild {
            if p.matches(action) {
                out.push(*i);
            }
        }
        if before > 0 && out.len() > before {
            out.sort_unstable();
            out.dedup();
        } else if out.len() > before + 1 {
            out.dedup();
        }
    }
}

/// A role as a binding sees it: its own statements and those of every role
/// it inherits, transitively, flattened and indexed.
#[derive(Debug)]
pub struct CompiledRole {
    /// The role the name resolved to; `None` when no such role exists (the
    /// binding then grants nothing until one is written).
    pub key: Option<RoleKey>,
    pub set: StatementSet,
    /// For each statement of `set`, the roles from the resolved one to the
    /// one that defines it.
    pub paths: Vec<Arc<[RoleKey]>>,
}

impl CompiledRole {
    /// The roles from the resolved one to the one defining statement `i`.
    pub fn path(&self, i: usize) -> Vec<RoleKey> {
        self.paths.get(i).map(|p| p.to_vec()).unwrap_or_default()
    }

    pub fn missing() -> CompiledRole {
        CompiledRole {
            key: None,
            set: StatementSet::default(),
            paths: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub enum CompiledGrant {
    /// An index into the view's role table, so a role change does not touch
    /// the bindings that use it.
    Role(u32),
    /// Boxed: most bindings name a role, and this keeps every binding small.
    Inline(Box<StatementSet>),
}

#[derive(Debug)]
pub struct CompiledBinding {
    /// The binding as stored, in the same allocation: a million bindings
    /// are a million fewer allocations and pointers.
    pub source: Binding,
    /// Shared by every binding with the same scope ([`PatternCache`]):
    /// bindings over one folder share one compiled set.
    pub resources: Arc<PatternSet>,
    /// Boxed: one binding in twenty has a condition, and every binding
    /// would pay for the unboxed 24 bytes.
    pub condition: Option<Box<CompiledCondition>>,
    pub grant: CompiledGrant,
}

impl CompiledBinding {
    /// Where the binding is defined (from its source, not kept twice).
    pub fn scope(&self) -> Scope {
        Scope {
            tenant: self.source.tenant.clone(),
            vault: self.source.vault.clone(),
        }
    }

    #[inline]
    pub fn active_at(&self, now: Timestamp) -> bool {
        // Read from the source: the check path asks only for the few
        // bindings its prefilter flags as having a window.
        self.source.not_before.is_none_or(|t| t.0 <= now.0) && self.source.expires_at.is_none_or(|t| now.0 < t.0)
    }
}

/// Compiles each distinct condition source once; the cache holds weak
/// references so conditions nobody uses any more are freed.
#[derive(Default)]
pub struct ConditionCache {
    map: HashMap<Arc<str>, Weak<Condition>>,
    high_water: usize,
}

impl ConditionCache {
    pub fn get(&mut self, src: &str) -> CompiledCondition {
        if let Some(c) = self.map.get(src).and_then(Weak::upgrade) {
            return Ok(c);
        }
        match Condition::compile(src) {
            Ok(c) => {
                let c = Arc::new(c);
                if self.map.len() >= self.high_water.max(1024) {
                    self.map.retain(|_, w| w.strong_count() > 0);
                    self.high_water = self.map.len() * 2;
                }
                self.map.insert(Arc::from(src), Arc::downgrade(&c));
                Ok(c)
            }
            Err(e) => Err(Arc::from(format!("condition does not compile: {e}"))),
        }
    }
}

/// Compiles each distinct binding scope (a list of resource patterns) once
/// and shares it; weak references, as in [`ConditionCache`], so scopes no
/// binding uses any more are freed.
#[derive(Default)]
pub struct PatternCache {
    map: HashMap<Vec<String>, Weak<PatternSet>>,
    high_water: usize,
}

impl PatternCache {
    pub fn get(&mut self, patterns: &[String]) -> Arc<PatternSet> {
        if let Some(p) = self.map.get(patterns).and_then(Weak::upgrade) {
            return p;
        }
        let p = Arc::new(PatternSet::compile(patterns, true));
        if self.map.len() >= self.high_water.max(1024) {
            self.map.retain(|_, w| w.strong_count() > 0);
            self.high_water = self.map.len() * 2;
        }
        self.map.insert(patterns.to_vec(), Arc::downgrade(&p));
        p
    }
}

impl CompiledStatement {
    /// Where the statement is written: its role's scope, or for an inline
    /// statement the scope of binding `b` that holds it.
    pub fn defined_in(&self, b: &CompiledBinding) -> Scope {
        self.origin
            .role
            .as_ref()
            .map(|r| r.scope.clone())
            .unwrap_or_else(|| b.scope())
    }
}

pub fn compile_statement(s: &Statement, origin: StatementOrigin, conditions: &mut ConditionCache) -> CompiledStatement {
    CompiledStatement {
        effect: s.effect,
        resources: PatternSet::compile(&s.resources, true),
        condition: s.condition.as_deref().map(|c| conditions.get(c)),
        origin,
        source: Arc::new(s.clone()),
    }
}
