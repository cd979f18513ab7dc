//! `portcullis diff` and `apply --dry-run`: manifests as a PlanChanges
//! request, and the plan rendered like `kubectl diff` (each object's change
//! as a line diff of its YAML, then what each subject gains and loses) or
//! as JSON.

use std::fmt::Write as _;

use portcullis_proto::v1 as pb;

use crate::api::convert;
use crate::manifest::{self, Document};

/// The request that plans applying `docs` (upserts, as `apply` writes them).
pub fn request_of(docs: &[Document]) -> Result<pb::PlanChangesRequest, manifest::DocumentError> {
    let o = manifest::objects_of(docs)?;
    Ok(pb::PlanChangesRequest {
        tenants: o.tenants.iter().map(|t| convert::tenant_to(t, 0, None)).collect(),
        vaults: o.vaults.iter().map(|v| convert::vault_to(v, 0)).collect(),
        roles: o.roles.iter().map(|r| convert::role_to(r, 0)).collect(),
        bindings: o.bindings.iter().map(convert::binding_to).collect(),
        memberships: o.memberships.iter().map(convert::membership_to).collect(),
        ..Default::default()
    })
}

/// Whether applying would change anything.
pub fn changes_anything(p: &pb::PlanChangesResponse) -> bool {
    !p.access.is_empty() || p.objects.iter().any(|o| o.action != pb::PlanAction::Unchanged as i32)
}

/// An object as YAML lines, in the model's (the manifests') field names.
fn yaml(o: &pb::AnyObject) -> Vec<String> {
    use pb::any_object::Object as O;
    let text = match &o.object {
        Some(O::Tenant(t)) => convert::tenant_from(t, "").ok().map(|x| serde_yaml::to_string(&x)),
        Some(O::Vault(v)) => convert::vault_from(v, "").ok().map(|x| serde_yaml::to_string(&x)),
        Some(O::Role(r)) => convert::role_from(r, "").ok().map(|x| serde_yaml::to_string(&x)),
        Some(O::Binding(b)) => convert::binding_from(b, "", "", "")
            .ok()
            .map(|x| serde_yaml::to_string(&x)),
        Some(O::Membership(m)) => convert::membership_from(m, "", "", "")
            .ok()
            .map(|x| serde_yaml::to_string(&x)),
        None => None,
    };
    text.and_then(Result::ok)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A line diff (longest common subsequence; objects are small).
fn line_diff(a: &[String], b: &[String]) -> Vec<(char, String)> {
    let (n, m) = (a.len(), b.len());
    let mut l = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            l[i][j] = if a[i] == b[j] {
                l[i + 1][j + 1] + 1
            } else {
                l[i + 1][j].max(l[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push((' ', a[i].clone()));
            i += 1;
            j += 1;
        } else if i < n && (j == m || l[i + 1][j] >= l[i][j + 1]) {
            out.push(('-', a[i].clone()));
            i += 1;
        } else {
            out.push(('+', b[j].clone()));
            j += 1;
        }
    }
    out
}

fn scope(tenant: &str, vault: &str) -> String {
    if vault.is_empty() {
        tenant.to_string()
    } else {
        format!("{tenant}:{vault}")
    }
}

fn statement_line(sign: char, subject: &str, e: &pb::EffectiveStatement) -> String {
    let s = e.statement.clone().unwrap_or_default();
    let effect = if s.effect == pb::Effect::Deny as i32 {
        "DENY"
    } else {
        "ALLOW"
    };
    let resources = if s.resources.is_empty() {
        "*".to_string()
    } else {
        s.resources.join(", ")
    };
    let via = if e.role == "inline" {
        String::new()
    } else {
        format!(" (role {})", e.role)
    };
    let through = if e.group_path.len() > 1 {
        format!(" as {}", e.group_path.join(" > "))
    } else {
        String::new()
    };
    let condition = match (s.condition.is_empty(), e.binding_condition.is_empty()) {
        (true, true) => String::new(),
        _ => " if conditions hold".to_string(),
    };
    format!(
        "{sign} {subject} {effect} {} on {resources} via binding {}{via}{through}{condition}",
        s.actions.join(", "),
        e.binding_id
    )
}

/// The plan for people: objects, then access per vault and subject.
pub fn text(p: &pb::PlanChangesResponse) -> String {
    let mut s = String::new();
    if !p.violations.is_empty() {
        for v in &p.violations {
            let _ = writeln!(s, "invalid: {}: {}", v.field, v.description);
        }
        return s;
    }
    for o in &p.objects {
        let action = pb::PlanAction::try_from(o.action).unwrap_or(pb::PlanAction::Unspecified);
        if action == pb::PlanAction::Unchanged {
            continue;
        }
        let word = match action {
            pb::PlanAction::Create => "create",
            pb::PlanAction::Delete => "delete",
            _ => "update",
        };
        let _ = writeln!(s, "{word} {} {} {}", o.kind, scope(&o.tenant, &o.vault), o.name);
        let before = o.before.as_ref().map(yaml).unwrap_or_default();
        let after = o.after.as_ref().map(yaml).unwrap_or_default();
        for (sign, line) in line_diff(&before, &after) {
            let _ = writeln!(s, "  {sign} {line}");
        }
    }
    let mut vault = None;
    for a in &p.access {
        let here = scope(&a.tenant, &a.vault);
        if vault.as_ref() != Some(&here) {
            let _ = writeln!(s, "access in {here}:");
            vault = Some(here);
        }
        for e in &a.gained {
            let _ = writeln!(s, "  {}", statement_line('+', &a.subject, e));
        }
        for e in &a.lost {
            let _ = writeln!(s, "  {}", statement_line('-', &a.subject, e));
        }
    }
    if !changes_anything(p) {
        let _ = writeln!(s, "no changes");
    }
    s
}

/// The plan for programs.
pub fn json(p: &pb::PlanChangesResponse) -> String {
    use serde_json::json;
    let statement = |e: &pb::EffectiveStatement| {
        let st = e.statement.clone().unwrap_or_default();
        json!({
            "effect": if st.effect == pb::Effect::Deny as i32 { "DENY" } else { "ALLOW" },
            "actions": st.actions,
            "resources": st.resources,
            "condition": st.condition,
            "binding": e.binding_id,
            "binding_tenant": e.binding_tenant,
            "binding_vault": e.binding_vault,
            "binding_condition": e.binding_condition,
            "role": e.role,
            "role_path": e.role_path,
            "group_path": e.group_path,
            "active": e.active,
        })
    };
    let v = json!({
        "base_revision": p.base_revision,
        "changes": changes_anything(p),
        "violations": p.violations.iter().map(|v| json!({"field": v.field, "description": v.description})).collect::<Vec<_>>(),
        "objects": p.objects.iter().map(|o| json!({
            "action": pb::PlanAction::try_from(o.action).map(|a| a.as_str_name()).unwrap_or("?"),
            "kind": o.kind,
            "tenant": o.tenant,
            "vault": o.vault,
            "name": o.name,
        })).collect::<Vec<_>>(),
        "access": p.access.iter().map(|a| json!({
            "tenant": a.tenant,
            "vault": a.vault,
            "subject": a.subject,
            "gained": a.gained.iter().map(statement).collect::<Vec<_>>(),
            "lost": a.lost.iter().map(statement).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "probes": p.probes.iter().map(|r| json!({
            "probe": r.probe.as_ref().map(|q| json!({"tenant": q.tenant, "vault": q.vault, "subject": q.subject, "action": q.action, "resource": q.resource})),
            "before": pb::Decision::try_from(r.before).map(|d| d.as_str_name()).unwrap_or("?"),
            "after": pb::Decision::try_from(r.after).map(|d| d.as_str_name()).unwrap_or("?"),
        })).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_diffs_keep_common_lines() {
        let a: Vec<String> = ["id: x", "role: reader", "scope: []"].map(String::from).to_vec();
        let b: Vec<String> = ["id: x", "role: writer", "scope: []"].map(String::from).to_vec();
        let d = line_diff(&a, &b);
        assert_eq!(
            d,
            [
                (' ', "id: x".to_string()),
                ('-', "role: reader".to_string()),
                ('+', "role: writer".to_string()),
                (' ', "scope: []".to_string())
            ]
        );
    }
}
