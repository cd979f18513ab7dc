//! Running a suite: the engine built in process from the suite's
//! documents (validated as the server validates writes), every case
//! checked with its explanation, and the coverage those explanations add
//! up to.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::spec::{Case, Expect, Lookup, Suite, SuiteError};
use crate::api::convert;
use crate::engine::cost::CHECK_BUDGET;
use crate::engine::model::Change;
use crate::engine::{CheckItem, Engine, EngineError, EntryOutcome, Explanation, PageRequest, RequestContext, validate};
use crate::manifest::objects_of;

/// What a role statement or a binding is called in the coverage report.
type Item = String;

/// The statements and bindings a suite's documents declare.
#[derive(Debug, Default)]
pub struct Universe {
    pub statements: BTreeSet<Item>,
    pub bindings: BTreeSet<Item>,
}

fn statement_item(role: &impl std::fmt::Display, sid: Option<&str>, index: u32) -> Item {
    match sid {
        Some(s) => format!("role {role} statement {s}"),
        None => format!("role {role} statement #{index}"),
    }
}

fn binding_item(scope: &impl std::fmt::Display, id: &str) -> Item {
    format!("binding {scope}/{id}")
}

/// The outcome of one case or lookup.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub name: String,
    /// `cases[3]`, `tables[0]`, `lookups[1]`.
    pub at: String,
    pub passed: bool,
    /// What it expected and what it got, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// How the decision was reached: one line per statement that applied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub explanation: Vec<String>,
    /// The statements and bindings that applied (for coverage).
    #[serde(skip)]
    pub applied: BTreeSet<Item>,
}

fn invalid(suite: &Suite, detail: String) -> SuiteError {
    SuiteError {
        file: suite.file.clone(),
        detail,
    }
}

/// Builds the engine the suite's documents describe, refusing what the
/// server would refuse: invalid objects, missing parents, inherits cycles.
pub fn build(suite: &Suite) -> Result<(Engine, Universe), SuiteError> {
    let o = objects_of(&suite.documents).map_err(|e| invalid(suite, e.to_string()))?;
    let tenants: BTreeSet<String> = o.tenants.iter().map(|t| t.id.to_string()).collect();
    let vaults: BTreeSet<(String, String)> = o
        .vaults
        .iter()
        .map(|v| (v.tenant.to_string(), v.name.to_string()))
        .collect();
    let scope_exists = |what: &str, t: &crate::engine::TenantId, v: Option<&crate::engine::VaultName>| {
        if !tenants.contains(t.as_str()) {
            return Err(invalid(suite, format!("{what}: tenant {t} is not declared")));
        }
        if let Some(v) = v
            && !vaults.contains(&(t.to_string(), v.to_string()))
        {
            return Err(invalid(
                suite,
                format!("{what}: vault {v} of tenant {t} is not declared"),
            ));
        }
        Ok(())
    };
    let check =
        |what: String, r: Result<(), crate::engine::Violations>| r.map_err(|v| invalid(suite, format!("{what}: {v}")));
    let mut changes = Vec::new();
    let mut universe = Universe::default();
    for t in &o.tenants {
        check(format!("Tenant {}", t.id), validate::tenant(t))?;
        if let Some(p) = t.id.parent() {
            scope_exists(&format!("Tenant {}", t.id), &p, None)?;
        }
        changes.push(Change::PutTenant(t.clone()));
    }
    for v in &o.vaults {
        check(format!("Vault {}", v.name), validate::vault(v))?;
        scope_exists(&format!("Vault {}", v.name), &v.tenant, None)?;
        changes.push(Change::PutVault(v.clone()));
    }
    for r in &o.roles {
        check(format!("Role {}", r.name), validate::role(r))?;
        scope_exists(&format!("Role {}", r.name), &r.tenant, r.vault.as_ref())?;
        let key = crate::engine::model::RoleKey {
            scope: crate::engine::model::Scope {
                tenant: r.tenant.clone(),
                vault: r.vault.clone(),
            },
            name: r.name.clone(),
        };
        for (i, s) in r.statements.iter().enumerate() {
            universe
                .statements
                .insert(statement_item(&key, s.sid.as_deref(), i as u32));
        }
        changes.push(Change::PutRole(r.clone()));
    }
    for m in &o.memberships {
        check(
            format!("Membership {} in {}", m.member, m.group),
            validate::membership(m),
        )?;
        scope_exists(
            &format!("Membership {} in {}", m.member, m.group),
            &m.tenant,
            m.vault.as_ref(),
        )?;
        changes.push(Change::PutMembership(m.clone()));
    }
    for b in &o.bindings {
        check(format!("Binding {}", b.id), validate::binding(b))?;
        scope_exists(&format!("Binding {}", b.id), &b.tenant, b.vault.as_ref())?;
        let scope = crate::engine::model::Scope {
            tenant: b.tenant.clone(),
            vault: b.vault.clone(),
        };
        universe.bindings.insert(binding_item(&scope, &b.id));
        // A binding's inline statements are covered with the binding.
        changes.push(Change::PutBinding(b.clone()));
    }
    let engine = Engine::new();
    engine.apply(1, &changes);
    for r in &o.roles {
        if let Some(cycle) = engine.inherits_cycle(r) {
            let path: Vec<String> = cycle.iter().map(|k| k.to_string()).collect();
            return Err(invalid(
                suite,
                format!(
                    "Role {}: spec.inherits: inheritance cycle {}",
                    r.name,
                    path.join(" -> ")
                ),
            ));
        }
    }
    Ok((engine, universe))
}

fn explanation_lines(e: &Explanation) -> (Vec<String>, BTreeSet<Item>) {
    let mut lines = Vec::new();
    let mut applied = BTreeSet::new();
    for x in &e.entries {
        let stmt = x.sid.clone().unwrap_or_else(|| format!("#{}", x.index));
        let via = match x.role_path.last().or(x.role.as_ref()) {
            Some(r) => format!("via role {r} statement"),
            None => "inline statement".to_string(),
        };
        let outcome = match &x.outcome {
            EntryOutcome::Applied => String::new(),
            EntryOutcome::ConditionError(m) => format!(" (condition error: {m})"),
        };
        let effect = format!("{:?}", x.effect).to_uppercase();
        let principal = if x.group_path.len() > 1 {
            format!(" as {}", x.group_path.join(" > "))
        } else {
            String::new()
        };
        lines.push(format!(
            "{effect} binding {}/{}{principal} {via} {stmt}{}{outcome}",
            x.binding_scope,
            x.binding_id,
            if x.counted { "" } else { " (not counted)" }
        ));
        if matches!(x.outcome, EntryOutcome::Applied) {
            applied.insert(binding_item(&x.binding_scope, &x.binding_id));
            if let Some(r) = x.role_path.last().or(x.role.as_ref()) {
                applied.insert(statement_item(r, x.sid.as_deref(), x.index));
            }
        }
    }
    (lines, applied)
}

fn engine_error(suite: &Suite, at: &str, e: EngineError) -> SuiteError {
    let detail = match e {
        EngineError::Invalid(v) => {
            v.0.iter()
                .map(|f| format!("{at}.{}: {}", f.field, f.rule))
                .collect::<Vec<_>>()
                .join("; ")
        }
        EngineError::TenantNotFound(t) => format!("{at}.tenant: tenant {t} is not declared"),
        EngineError::VaultNotFound { tenant, vault } => {
            format!("{at}.vault: vault {vault} of tenant {tenant} is not declared")
        }
        other => format!("{at}: {other}"),
    };
    invalid(suite, detail)
}

/// Runs one check case.
pub fn run_case(suite: &Suite, engine: &Engine, c: &Case) -> Result<CaseResult, SuiteError> {
    let json = convert::context_from(&format!("{}.context", c.at), &convert::json_to_struct(&c.context))
        .map_err(|v| invalid(suite, v.to_string()))?;
    let ctx = RequestContext::new(json).with_budget(CHECK_BUDGET);
    let item = CheckItem {
        subject: &c.subject,
        action: &c.action,
        resource: &c.resource,
        context: &ctx,
    };
    let r = engine
        .check(&c.tenant, &c.vault, &item, suite.now, true)
        .map_err(|e| engine_error(suite, &c.at, e))?;
    let got = if r.allowed { Expect::Allowed } else { Expect::Denied };
    let (explanation, applied) = r.explanation.as_ref().map(explanation_lines).unwrap_or_default();
    let decision_ok = got == c.expect;
    let reason_ok = c.reason.is_none_or(|want| want == r.reason);
    let failure = (!(decision_ok && reason_ok)).then(|| {
        let want = match c.reason {
            Some(reason) => format!("{} ({})", c.expect.as_str(), reason.as_str()),
            None => c.expect.as_str().to_string(),
        };
        format!("expected {want}, got {} ({})", got.as_str(), r.reason.as_str())
    });
    Ok(CaseResult {
        name: c.name.clone(),
        at: c.at.clone(),
        passed: failure.is_none(),
        failure,
        explanation,
        applied,
    })
}

/// Runs one lookup: its subjects must be exactly those listed.
pub fn run_lookup(suite: &Suite, engine: &Engine, l: &Lookup) -> Result<CaseResult, SuiteError> {
    let mut got = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = engine
            .lookup_subjects(
                &l.tenant,
                &l.vault,
                &l.action,
                &l.resource,
                suite.now,
                PageRequest {
                    after: after.as_deref(),
                    limit: 1000,
                },
            )
            .map_err(|e| engine_error(suite, &l.at, e))?;
        got.extend(page.subjects.into_iter().map(|(s, _)| s));
        match page.next_cursor {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    let want: BTreeSet<String> = l.subjects.iter().cloned().collect();
    let missing: Vec<&String> = want.difference(&got).collect();
    let extra: Vec<&String> = got.difference(&want).collect();
    let failure = (!missing.is_empty() || !extra.is_empty()).then(|| {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("missing {}", join(&missing)));
        }
        if !extra.is_empty() {
            parts.push(format!("unexpected {}", join(&extra)));
        }
        parts.join("; ")
    });
    Ok(CaseResult {
        name: l.name.clone(),
        at: l.at.clone(),
        passed: failure.is_none(),
        failure,
        explanation: Vec::new(),
        applied: BTreeSet::new(),
    })
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// How many cases each statement and binding applied in.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Coverage {
    pub statements: BTreeMap<Item, usize>,
    pub bindings: BTreeMap<Item, usize>,
}

impl Coverage {
    pub fn add_universe(&mut self, u: &Universe) {
        for s in &u.statements {
            self.statements.entry(s.clone()).or_default();
        }
        for b in &u.bindings {
            self.bindings.entry(b.clone()).or_default();
        }
    }

    pub fn add_case(&mut self, r: &CaseResult) {
        for item in &r.applied {
            if let Some(n) = self.statements.get_mut(item).or_else(|| self.bindings.get_mut(item)) {
                *n += 1;
            }
        }
    }

    /// The share of statements and bindings some case exercised, in percent
    /// (100 when there is nothing to cover).
    pub fn percent(&self) -> f64 {
        let all = self.statements.len() + self.bindings.len();
        if all == 0 {
            return 100.0;
        }
        let covered = self
            .statements
            .values()
            .chain(self.bindings.values())
            .filter(|n| **n > 0)
            .count();
        100.0 * covered as f64 / all as f64
    }

    pub fn uncovered(&self) -> Vec<&str> {
        self.statements
            .iter()
            .chain(self.bindings.iter())
            .filter(|(_, n)| **n == 0)
            .map(|(k, _)| k.as_str())
            .collect()
    }
}
