//! Between the wire (portcullis.v1 messages) and the engine's model. Every
//! identifier is parsed here; violations carry the field's path.

use portcullis_proto::v1 as pb;

use crate::engine::cost;
use crate::engine::ids::*;
use crate::engine::model::*;
use crate::repo::{Usage, token};

pub type Conv<T> = Result<T, Violations>;

fn path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

pub fn tenant_id(v: &mut Violations, field: &str, s: &str) -> Option<TenantId> {
    v.check(field, TenantId::parse(s))
}
pub fn vault_name(v: &mut Violations, field: &str, s: &str) -> Option<VaultName> {
    v.check(field, VaultName::parse(s))
}
/// An optional vault: empty means tenant-level.
pub fn opt_vault(v: &mut Violations, field: &str, s: &str) -> Option<Option<VaultName>> {
    if s.is_empty() {
        Some(None)
    } else {
        vault_name(v, field, s).map(Some)
    }
}
pub fn role_name(v: &mut Violations, field: &str, s: &str) -> Option<RoleName> {
    v.check(field, RoleName::parse(s))
}
pub fn subject(v: &mut Violations, field: &str, s: &str) -> Option<Subject> {
    v.check(field, Subject::parse(s))
}

/// A protobuf timestamp, range-checked (years 0001 to 9999).
pub fn ts_from(v: &mut Violations, field: &str, t: &prost_types::Timestamp) -> Option<Timestamp> {
    v.check(field, Timestamp::from_unix(t.seconds, t.nanos))
}
pub fn ts_to(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.0.div_euclid(1_000_000),
        nanos: (t.0.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn source_from(v: &mut Violations, field: &str, s: i32) -> Source {
    match pb::Source::try_from(s) {
        Ok(pb::Source::Operator) => Source::Operator,
        Ok(_) => Source::Api,
        Err(_) => {
            v.push(field, format!("unknown source {s}"));
            Source::Api
        }
    }
}
pub fn source_to(s: Source) -> i32 {
    match s {
        Source::Api => pb::Source::Api as i32,
        Source::Operator => pb::Source::Operator as i32,
    }
}
/// A filter or replace source: unspecified means none.
pub fn opt_source(v: &mut Violations, field: &str, s: i32) -> Option<Source> {
    match pb::Source::try_from(s) {
        Ok(pb::Source::Unspecified) => None,
        Ok(pb::Source::Api) => Some(Source::Api),
        Ok(pb::Source::Operator) => Some(Source::Operator),
        Err(_) => {
            v.push(field, format!("unknown source {s}"));
            None
        }
    }
}

pub fn tenant_from(p: &pb::Tenant, prefix: &str) -> Conv<Tenant> {
    let mut v = Violations::new();
    let id = tenant_id(&mut v, &path(prefix, "id"), &p.id);
    let status = match pb::TenantStatus::try_from(p.status) {
        Ok(pb::TenantStatus::Suspended) => TenantStatus::Suspended,
        Ok(_) => TenantStatus::Active,
        Err(_) => {
            v.push(path(prefix, "status"), format!("unknown status {}", p.status));
            TenantStatus::Active
        }
    };
    let limits = p.limits.map(|l| Limits {
        max_vaults: l.max_vaults,
        max_roles: l.max_roles,
        max_bindings: l.max_bindings,
        max_tenants: l.max_tenants,
        max_checks_per_second: l.max_checks_per_second,
        max_writes_per_second: l.max_writes_per_second,
        audit_retention_days: l.audit_retention_days,
    });
    let mut share = |field: &str, x: Option<f64>| x.and_then(|x| v.check(path(prefix, field), Share::check(x)));
    let decision_logs = p
        .decision_logs
        .map(|d| DecisionLogSampling {
            sample_allowed: share("decision_logs.sample_allowed", d.sample_allowed),
            sample_denied: share("decision_logs.sample_denied", d.sample_denied),
        })
        .unwrap_or_default();
    match id {
        Some(id) if v.is_empty() => Ok(Tenant {
            id,
            display_name: p.display_name.clone(),
            status,
            limits: limits.unwrap_or_default(),
            decision_logs,
            labels: p.labels.clone().into_iter().collect(),
        }),
        _ => Err(v),
    }
}

pub fn tenant_to(t: &Tenant, revision: u64, usage: Option<Usage>) -> pb::Tenant {
    pb::Tenant {
        id: t.id.to_string(),
        display_name: t.display_name.clone(),
        status: match t.status {
            TenantStatus::Active => pb::TenantStatus::Active as i32,
            TenantStatus::Suspended => pb::TenantStatus::Suspended as i32,
        },
        limits: Some(pb::Limits {
            max_vaults: t.limits.max_vaults,
            max_roles: t.limits.max_roles,
            max_bindings: t.limits.max_bindings,
            max_tenants: t.limits.max_tenants,
            max_checks_per_second: t.limits.max_checks_per_second,
            max_writes_per_second: t.limits.max_writes_per_second,
            audit_retention_days: t.limits.audit_retention_days,
        }),
        decision_logs: (!t.decision_logs.is_unset()).then_some(pb::DecisionLogSampling {
            sample_allowed: t.decision_logs.sample_allowed.map(|s| s.0),
            sample_denied: t.decision_logs.sample_denied.map(|s| s.0),
        }),
        labels: t.labels.clone().into_iter().collect(),
        revision: if revision > 0 { token(revision) } else { String::new() },
        usage: usage.map(|u| pb::Usage {
            vaults: u.vaults,
            roles: u.roles,
            bindings: u.bindings,
        }),
    }
}

pub fn vault_from(p: &pb::Vault, prefix: &str) -> Conv<Vault> {
    let mut v = Violations::new();
    let tenant = tenant_id(&mut v, &path(prefix, "tenant"), &p.tenant);
    let name = vault_name(&mut v, &path(prefix, "name"), &p.name);
    match (tenant, name) {
        (Some(tenant), Some(name)) => Ok(Vault {
            tenant,
            name,
            display_name: p.display_name.clone(),
            labels: p.labels.clone().into_iter().collect(),
        }),
        _ => Err(v),
    }
}

pub fn vault_to(x: &Vault, revision: u64) -> pb::Vault {
    pb::Vault {
        tenant: x.tenant.to_string(),
        name: x.name.to_string(),
        display_name: x.display_name.clone(),
        labels: x.labels.clone().into_iter().collect(),
        revision: if revision > 0 { token(revision) } else { String::new() },
    }
}

pub fn statement_from(v: &mut Violations, field: &str, p: &pb::Statement) -> Statement {
    let effect = match pb::Effect::try_from(p.effect) {
        Ok(pb::Effect::Allow) => Effect::Allow,
        Ok(pb::Effect::Deny) => Effect::Deny,
        _ => {
            v.push(path(field, "effect"), "must be EFFECT_ALLOW or EFFECT_DENY");
            Effect::Allow
        }
    };
    Statement {
        sid: (!p.sid.is_empty()).then(|| p.sid.clone()),
        effect,
        actions: p.actions.clone(),
        resources: p.resources.clone(),
        condition: (!p.condition.trim().is_empty()).then(|| p.condition.clone()),
    }
}

pub fn statement_to(s: &Statement) -> pb::Statement {
    pb::Statement {
        sid: s.sid.clone().unwrap_or_default(),
        effect: effect_to(s.effect),
        actions: s.actions.clone(),
        resources: s.resources.clone(),
        condition: s.condition.clone().unwrap_or_default(),
    }
}

pub fn effect_to(e: Effect) -> i32 {
    match e {
        Effect::Allow => pb::Effect::Allow as i32,
        Effect::Deny => pb::Effect::Deny as i32,
    }
}

pub fn role_from(p: &pb::Role, prefix: &str) -> Conv<Role> {
    let mut v = Violations::new();
    let tenant = tenant_id(&mut v, &path(prefix, "tenant"), &p.tenant);
    let vault = opt_vault(&mut v, &path(prefix, "vault"), &p.vault);
    let name = role_name(&mut v, &path(prefix, "name"), &p.name);
    let statements: Vec<Statement> = p
        .statements
        .iter()
        .enumerate()
        .map(|(i, s)| statement_from(&mut v, &path(prefix, &format!("statements[{i}]")), s))
        .collect();
    let inherits: Vec<RoleName> = p
        .inherits
        .iter()
        .enumerate()
        .filter_map(|(i, n)| role_name(&mut v, &path(prefix, &format!("inherits[{i}]")), n))
        .collect();
    match (tenant, vault, name) {
        (Some(tenant), Some(vault), Some(name)) if v.is_empty() => Ok(Role {
            tenant,
            vault,
            name,
            description: p.description.clone(),
            statements,
            inherits,
            labels: p.labels.clone().into_iter().collect(),
        }),
        _ => Err(v),
    }
}

pub fn role_to(r: &Role, revision: u64) -> pb::Role {
    pb::Role {
        tenant: r.tenant.to_string(),
        vault: r.vault.as_ref().map(|v| v.to_string()).unwrap_or_default(),
        name: r.name.to_string(),
        description: r.description.clone(),
        statements: r.statements.iter().map(statement_to).collect(),
        inherits: r.inherits.iter().map(|n| n.to_string()).collect(),
        labels: r.labels.clone().into_iter().collect(),
        revision: if revision > 0 { token(revision) } else { String::new() },
    }
}

/// A binding of the request's scope; an empty tenant or vault on the
/// binding means the request's.
pub fn binding_from(p: &pb::Binding, prefix: &str, tenant: &str, vault: &str) -> Conv<Binding> {
    let mut v = Violations::new();
    let t = tenant_id(
        &mut v,
        &path(prefix, "tenant"),
        if p.tenant.is_empty() { tenant } else { &p.tenant },
    );
    let vn = opt_vault(
        &mut v,
        &path(prefix, "vault"),
        if p.vault.is_empty() { vault } else { &p.vault },
    );
    let subj = subject(&mut v, &path(prefix, "subject"), &p.subject);
    let grant = match (p.role.is_empty(), p.statements.is_empty()) {
        (false, true) => role_name(&mut v, &path(prefix, "role"), &p.role).map(Grant::Role),
        (true, false) => Some(Grant::Statements(
            p.statements
                .iter()
                .enumerate()
                .map(|(i, s)| statement_from(&mut v, &path(prefix, &format!("statements[{i}]")), s))
                .collect(),
        )),
        _ => {
            v.push(path(prefix, "role"), "set exactly one of role and statements");
            None
        }
    };
    let source = source_from(&mut v, &path(prefix, "source"), p.source);
    let not_before = p
        .not_before
        .as_ref()
        .and_then(|t| ts_from(&mut v, &path(prefix, "not_before"), t));
    let expires_at = p
        .expires_at
        .as_ref()
        .and_then(|t| ts_from(&mut v, &path(prefix, "expires_at"), t));
    match (t, vn, subj, grant) {
        (Some(tenant), Some(vault), Some(subject), Some(grant)) if v.is_empty() => Ok(Binding {
            id: p.id.clone(),
            tenant,
            vault,
            subject,
            grant,
            scope: p.scope.clone(),
            condition: (!p.condition.trim().is_empty()).then(|| p.condition.clone()),
            not_before,
            expires_at,
            labels: p.labels.clone().into_iter().collect(),
            source,
        }),
        _ => Err(v),
    }
}

pub fn binding_to(b: &Binding) -> pb::Binding {
    let (role, statements) = match &b.grant {
        Grant::Role(r) => (r.to_string(), Vec::new()),
        Grant::Statements(s) => (String::new(), s.iter().map(statement_to).collect()),
    };
    pb::Binding {
        id: b.id.clone(),
        tenant: b.tenant.to_string(),
        vault: b.vault.as_ref().map(|v| v.to_string()).unwrap_or_default(),
        subject: b.subject.to_string(),
        role,
        statements,
        scope: b.scope.clone(),
        condition: b.condition.clone().unwrap_or_default(),
        not_before: b.not_before.map(ts_to),
        expires_at: b.expires_at.map(ts_to),
        labels: b.labels.clone().into_iter().collect(),
        source: source_to(b.source),
    }
}

pub fn membership_from(p: &pb::Membership, prefix: &str, tenant: &str, vault: &str) -> Conv<Membership> {
    let mut v = Violations::new();
    let t = tenant_id(
        &mut v,
        &path(prefix, "tenant"),
        if p.tenant.is_empty() { tenant } else { &p.tenant },
    );
    let vn = opt_vault(
        &mut v,
        &path(prefix, "vault"),
        if p.vault.is_empty() { vault } else { &p.vault },
    );
    let group = v.check(
        path(prefix, "group"),
        check_group(&p.group).and_then(|_| Subject::parse(&p.group)),
    );
    let member = subject(&mut v, &path(prefix, "member"), &p.member);
    let source = source_from(&mut v, &path(prefix, "source"), p.source);
    match (t, vn, group, member) {
        (Some(tenant), Some(vault), Some(group), Some(member)) if v.is_empty() => Ok(Membership {
            tenant,
            vault,
            group,
            member,
            source,
        }),
        _ => Err(v),
    }
}

pub fn membership_to(m: &Membership) -> pb::Membership {
    pb::Membership {
        tenant: m.tenant.to_string(),
        vault: m.vault.as_ref().map(|v| v.to_string()).unwrap_or_default(),
        group: m.group.to_string(),
        member: m.member.to_string(),
        source: source_to(m.source),
    }
}

pub fn change_to(c: &Change) -> pb::Change {
    use pb::change::Change as C;
    let change = match c {
        Change::PutTenant(t) => C::PutTenant(tenant_to(t, 0, None)),
        Change::DeleteTenant { tenant } => C::DeleteTenant(tenant.to_string()),
        Change::PutVault(v) => C::PutVault(vault_to(v, 0)),
        Change::DeleteVault { tenant, vault } => C::DeleteVault(pb::VaultRef {
            tenant: tenant.to_string(),
            name: vault.to_string(),
        }),
        Change::PutRole(r) => C::PutRole(role_to(r, 0)),
        Change::DeleteRole { scope, name } => C::DeleteRole(pb::RoleRef {
            tenant: scope.tenant.to_string(),
            vault: scope.vault.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            name: name.to_string(),
        }),
        Change::PutBinding(b) => C::PutBinding(binding_to(b)),
        Change::DeleteBinding { scope, id } => C::DeleteBinding(pb::BindingRef {
            tenant: scope.tenant.to_string(),
            vault: scope.vault.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            id: id.clone(),
        }),
        Change::PutMembership(m) => C::PutMembership(membership_to(m)),
        Change::DeleteMembership(m) => C::DeleteMembership(membership_to(m)),
    };
    pb::Change { change: Some(change) }
}

/// The largest request context, as encoded on the wire.
pub const MAX_CONTEXT_BYTES: usize = 64 * 1024;
/// Lists and structs nested in a context, at most (the context itself is 1).
pub const MAX_CONTEXT_DEPTH: usize = 8;

/// A request's `context` to JSON, for CEL, within the documented limits:
/// [`MAX_CONTEXT_BYTES`] in all, [`MAX_CONTEXT_DEPTH`] levels, lists and
/// structs of at most [`cost::MAX_CONTEXT_LIST`] entries and strings of at
/// most [`cost::MAX_CONTEXT_STRING`] bytes, so what a condition iterates
/// over is bounded whatever the caller sends. Violations name the path
/// (`context.groups[300]`).
pub fn context_from(field: &str, s: &prost_types::Struct) -> Conv<serde_json::Map<String, serde_json::Value>> {
    let mut v = Violations::new();
    let size = prost::Message::encoded_len(s);
    if size > MAX_CONTEXT_BYTES {
        v.push(
            field,
            format!("must be at most {MAX_CONTEXT_BYTES} bytes encoded, got {size}"),
        );
        return Err(v);
    }
    let out = struct_json(&mut v, field, s, 1);
    v.into_result().map(|_| out)
}

fn struct_json(
    v: &mut Violations,
    path: &str,
    s: &prost_types::Struct,
    depth: usize,
) -> serde_json::Map<String, serde_json::Value> {
    if s.fields.len() > cost::MAX_CONTEXT_LIST {
        v.push(
            path,
            format!("at most {} keys, got {}", cost::MAX_CONTEXT_LIST, s.fields.len()),
        );
        return Default::default();
    }
    s.fields
        .iter()
        .map(|(k, x)| (k.clone(), value_json(v, &format!("{path}.{k}"), x, depth)))
        .collect()
}

fn value_json(v: &mut Violations, path: &str, x: &prost_types::Value, depth: usize) -> serde_json::Value {
    use prost_types::value::Kind;
    let nested = |v: &mut Violations| {
        if depth >= MAX_CONTEXT_DEPTH {
            v.push(
                path,
                format!("lists and structs may nest at most {MAX_CONTEXT_DEPTH} deep"),
            );
            false
        } else {
            true
        }
    };
    match &x.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => {
            if s.len() > cost::MAX_CONTEXT_STRING {
                v.push(
                    path,
                    format!(
                        "strings may be at most {} bytes, got {}",
                        cost::MAX_CONTEXT_STRING,
                        s.len()
                    ),
                );
            }
            serde_json::Value::String(s.clone())
        }
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => {
            if !nested(v) {
                return serde_json::Value::Null;
            }
            serde_json::Value::Object(struct_json(v, path, s, depth + 1))
        }
        Some(Kind::ListValue(l)) => {
            if !nested(v) {
                return serde_json::Value::Null;
            }
            if l.values.len() > cost::MAX_CONTEXT_LIST {
                v.push(
                    path,
                    format!(
                        "lists may hold at most {} values, got {}",
                        cost::MAX_CONTEXT_LIST,
                        l.values.len()
                    ),
                );
                return serde_json::Value::Null;
            }
            serde_json::Value::Array(
                l.values
                    .iter()
                    .enumerate()
                    .map(|(i, x)| value_json(v, &format!("{path}[{i}]"), x, depth + 1))
                    .collect(),
            )
        }
    }
}

pub use portcullis_client::json::{to_struct as json_to_struct, to_value as json_to_value};

pub fn scope_strings(s: &Scope) -> (String, String) {
    (
        s.tenant.to_string(),
        s.vault.as_ref().map(|v| v.to_string()).unwrap_or_default(),
    )
}

pub fn reason_to(r: crate::engine::Reason) -> i32 {
    use crate::engine::Reason;
    (match r {
        Reason::Allowed => pb::Reason::Allowed,
        Reason::ExplicitDeny => pb::Reason::ExplicitDeny,
        Reason::NoMatch => pb::Reason::NoMatch,
        Reason::TenantSuspended => pb::Reason::TenantSuspended,
    }) as i32
}

/// An effective statement as GetEffectivePermissions (and PlanChanges)
/// report it.
pub fn effective_to(e: &crate::engine::EffectiveStatement) -> pb::EffectiveStatement {
    let (bt, bv) = scope_strings(&Scope {
        tenant: e.binding().tenant.clone(),
        vault: e.binding().vault.clone(),
    });
    let (dt, dv) = scope_strings(&e.defined_in);
    pb::EffectiveStatement {
        statement: Some(statement_to(&e.statement)),
        binding_id: e.binding().id.clone(),
        binding_tenant: bt,
        binding_vault: bv,
        binding_scope: e.binding().scope.clone(),
        binding_condition: e.binding().condition.clone().unwrap_or_default(),
        not_before: e.binding().not_before.map(ts_to),
        expires_at: e.binding().expires_at.map(ts_to),
        principal: e.principal.clone(),
        group_path: e.group_path.clone(),
        role: e
            .role
            .as_ref()
            .map(|k| k.name.to_string())
            .unwrap_or_else(|| "inline".into()),
        role_path: e.role_path.iter().map(|k| k.to_string()).collect(),
        defined_tenant: dt,
        defined_vault: dv,
        active: e.active,
        source: source_to(e.binding().source),
    }
}
