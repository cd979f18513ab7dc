//! Write-time validation of objects: everything that can be checked on the
//! object alone (identifiers inside it, patterns, CEL conditions, bounds).
//! Rules that need other objects (a parent tenant exists, an inherits cycle,
//! tenant limits) are checked by the writer with the catalog or the store.

use super::condition::Condition;
use super::ids::*;
use super::model::*;

pub const MAX_STATEMENTS: usize = 256;
pub const MAX_PATTERNS: usize = 256;
pub const MAX_INHERITS: usize = 32;
pub const MAX_LABELS: usize = 64;
pub const MAX_DISPLAY_NAME: usize = 256;
pub const MAX_DESCRIPTION: usize = 4096;

fn labels(v: &mut Violations, field: &str, labels: &Labels) {
    if labels.len() > MAX_LABELS {
        v.push(field, format!("at most {MAX_LABELS} labels"));
    }
    for (k, val) in labels {
        v.check(format!("{field}[{k:?}]"), check_label_key(k));
        v.check(format!("{field}[{k:?}]"), check_label_value(val));
    }
}

fn condition(v: &mut Violations, field: &str, src: &Option<String>) {
    if let Some(src) = src
        && let Err(e) = Condition::compile(src)
    {
        v.push(field, format!("CEL condition does not compile at {e}"));
    }
}

fn patterns(v: &mut Violations, field: &str, list: &[String], action: bool, required: bool) {
    if required && list.is_empty() {
        v.push(field, "must list at least one pattern");
    }
    if list.len() > MAX_PATTERNS {
        v.push(field, format!("at most {MAX_PATTERNS} patterns"));
    }
    for (i, p) in list.iter().enumerate() {
        let r = if action {
            check_action_pattern(p)
        } else {
            check_resource_pattern(p)
        };
        v.check(format!("{field}[{i}]"), r);
    }
}

pub fn statements(v: &mut Violations, field: &str, list: &[Statement]) {
    if list.len() > MAX_STATEMENTS {
        v.push(field, format!("at most {MAX_STATEMENTS} statements"));
    }
    for (i, s) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if let Some(sid) = &s.sid {
            v.check(format!("{f}.sid"), check_sid(sid));
        }
        patterns(v, &format!("{f}.actions"), &s.actions, true, true);
        patterns(v, &format!("{f}.resources"), &s.resources, false, false);
        condition(v, &format!("{f}.condition"), &s.condition);
    }
}

pub fn tenant(t: &Tenant) -> Result<(), Violations> {
    let mut v = Violations::new();
    v.check("display_name", check_text(&t.display_name, MAX_DISPLAY_NAME));
    if t.limits.audit_retention_days > super::model::MAX_AUDIT_RETENTION_DAYS {
        v.push(
            "limits.audit_retention_days",
            format!("at most {} days", super::model::MAX_AUDIT_RETENTION_DAYS),
        );
    }
    for (field, share) in [
        ("decision_logs.sample_allowed", t.decision_logs.sample_allowed),
        ("decision_logs.sample_denied", t.decision_logs.sample_denied),
    ] {
        if let Some(s) = share {
            v.check(field, super::model::Share::check(s.0));
        }
    }
    labels(&mut v, "labels", &t.labels);
    v.into_result()
}

pub fn vault(x: &Vault) -> Result<(), Violations> {
    let mut v = Violations::new();
    v.check("display_name", check_text(&x.display_name, MAX_DISPLAY_NAME));
    labels(&mut v, "labels", &x.labels);
    v.into_result()
}

pub fn role(r: &Role) -> Result<(), Violations> {
    let mut v = Violations::new();
    v.check("description", check_text(&r.description, MAX_DESCRIPTION));
    statements(&mut v, "statements", &r.statements);
    if r.inherits.len() > MAX_INHERITS {
        v.push("inherits", format!("at most {MAX_INHERITS} roles"));
    }
    if r.statements.is_empty() && r.inherits.is_empty() {
        v.push("statements", "a role needs at least one statement or an inherited role");
    }
    for (i, name) in r.inherits.iter().enumerate() {
        if *name == r.name {
            v.push(format!("inherits[{i}]"), "a role cannot inherit itself");
        }
    }
    labels(&mut v, "labels", &r.labels);
    v.into_result()
}

pub fn binding(b: &Binding) -> Result<(), Violations> {
    let mut v = Violations::new();
    v.check("id", check_binding_id(&b.id));
    if let Grant::Statements(s) = &b.grant {
        if s.is_empty() {
            v.push(
                "statements",
                "an inline grant needs at least one statement (or name a role)",
            );
        }
        statements(&mut v, "statements", s);
    }
    patterns(&mut v, "scope", &b.scope, false, false);
    condition(&mut v, "condition", &b.condition);
    for (field, t) in [("not_before", b.not_before), ("expires_at", b.expires_at)] {
        if let Some(t) = t
            && !t.in_range()
        {
            v.push(field, Timestamp::RANGE_RULE);
        }
    }
    if let (Some(nb), Some(exp)) = (b.not_before, b.expires_at)
        && nb >= exp
    {
        v.push("expires_at", "must be after not_before");
    }
    labels(&mut v, "labels", &b.labels);
    v.into_result()
}

pub fn membership(m: &Membership) -> Result<(), Violations> {
    let mut v = Violations::new();
    v.check("group", check_group(m.group.as_str()));
    if m.group == m.member {
        v.push("member", "a group cannot be a member of itself");
    }
    v.into_result()
}

/// The inheritance cycle `role` would close, were it stored, as the list of
/// roles from `role` back to itself. `lookup(scope, name)` returns the
/// `inherits` of the role stored under that scope and name, if any; names
/// resolve lexically from the inheriting role's scope (its vault, its
/// tenant, then the ancestors).
///
/// Only cycles through `role` can appear when it is written, so a search
/// from it suffices.
pub fn inherits_cycle<E>(
    role: &Role,
    mut lookup: impl FnMut(&Scope, &RoleName) -> Result<Option<Vec<RoleName>>, E>,
) -> Result<Option<Vec<RoleKey>>, E> {
    let scope = Scope {
        tenant: role.tenant.clone(),
        vault: role.vault.clone(),
    };
    let me = RoleKey {
        scope: scope.clone(),
        name: role.name.clone(),
    };
    let mut resolve = |from: &Scope, name: &RoleName| -> Result<Option<(RoleKey, Vec<RoleName>)>, E> {
        for s in from.resolution_chain() {
            if s == scope && *name == role.name {
                return Ok(Some((me.clone(), role.inherits.clone())));
            }
            if let Some(inh) = lookup(&s, name)? {
                return Ok(Some((
                    RoleKey {
                        scope: s,
                        name: name.clone(),
                    },
                    inh,
                )));
            }
        }
        Ok(None)
    };
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(vec![me.clone()], role.inherits.clone())];
    while let Some((path, inherits)) = stack.pop() {
        let from = path.last().expect("non-empty path").scope.clone();
        for name in inherits {
            let Some((next, next_inherits)) = resolve(&from, &name)? else {
                continue;
            };
            if next == me {
                let mut cycle = path.clone();
                cycle.push(me.clone());
                return Ok(Some(cycle));
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next);
                stack.push((p, next_inherits));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn role_errors_name_fields() {
        let r = Role {
            tenant: t("acme"),
            vault: None,
            name: RoleName::parse("reader").unwrap(),
            description: String::new(),
            statements: vec![
                Statement::allow(&["documents:read"], &["document:*"]),
                Statement::allow(&[], &[]),
                Statement::allow(&["bad action"], &[]).with_condition("subject =="),
                Statement::allow(&["x"], &[]).with_sid("not ok!"),
            ],
            inherits: vec![RoleName::parse("reader").unwrap()],
            labels: Labels::new(),
        };
        let err = role(&r).unwrap_err().to_string();
        assert!(
            err.contains("statements[1].actions: must list at least one pattern"),
            "{err}"
        );
        assert!(
            err.contains("statements[2].actions[0]: must be 1 to 128 characters"),
            "{err}"
        );
        assert!(
            err.contains("statements[2].condition: CEL condition does not compile at line 1"),
            "{err}"
        );
        assert!(err.contains("statements[3].sid"), "{err}");
        assert!(err.contains("inherits[0]: a role cannot inherit itself"), "{err}");
    }

    #[test]
    fn binding_window_and_scope() {
        let mut b = Binding::to_role(
            "b1",
            &t("acme"),
            None,
            &Subject::parse("user:a").unwrap(),
            &RoleName::parse("r").unwrap(),
        );
        assert!(binding(&b).is_ok());
        b.not_before = Some(Timestamp(10));
        b.expires_at = Some(Timestamp(10));
        b.scope = vec!["".into()];
        let err = binding(&b).unwrap_err().to_string();
        assert!(err.contains("expires_at: must be after not_before"), "{err}");
        assert!(err.contains("scope[0]: must be 1 to 1024 printable"), "{err}");
        b.grant = Grant::Statements(vec![]);
        assert!(binding(&b).unwrap_err().to_string().contains("inline grant"));
    }

    #[test]
    fn membership_rules() {
        let m = Membership {
            tenant: t("acme"),
            vault: None,
            group: Subject::parse("user:a").unwrap(),
            member: Subject::parse("user:a").unwrap(),
            source: Source::Api,
        };
        let err = membership(&m).unwrap_err().to_string();
        assert!(err.contains("group: must be a group subject"), "{err}");
        assert!(err.contains("member: a group cannot be a member of itself"), "{err}");
    }
}
