//! Model objects as manifest documents: what `export` writes and
//! `get -o yaml|json` prints, in the shape `apply -f` reads back.

use crate::engine::{Binding, Membership, Role, Tenant, TenantStatus, Vault};

use super::{
    API_VERSION, BindingDocSpec, DecisionLogsSpec, Document, LimitsSpec, MembershipDocSpec, MembershipSpec, Metadata,
    RoleSpec, TenantSpec, VaultSpec, binding_spec, statement_spec, tenant_name_of_id,
};

fn metadata(name: &str, labels: &crate::engine::Labels) -> Metadata {
    Metadata {
        name: name.to_string(),
        namespace: None,
        labels: labels.clone(),
    }
}

pub fn tenant_doc(t: &Tenant) -> Document {
    let l = &t.limits;
    let d = &t.decision_logs;
    Document::Tenant {
        api_version: API_VERSION.into(),
        metadata: metadata(&tenant_name_of_id(t.id.as_str()), &t.labels),
        spec: TenantSpec {
            display_name: t.display_name.clone(),
            suspended: t.status == TenantStatus::Suspended,
            limits: LimitsSpec {
                max_vaults: l.max_vaults,
                max_roles: l.max_roles,
                max_bindings: l.max_bindings,
                max_tenants: l.max_tenants,
                max_checks_per_second: l.max_checks_per_second,
                max_writes_per_second: l.max_writes_per_second,
                audit_retention_days: l.audit_retention_days,
            },
            decision_logs: (d.sample_allowed.is_some() || d.sample_denied.is_some()).then(|| DecisionLogsSpec {
                sample_allowed: d.sample_allowed.map(|s| s.0),
                sample_denied: d.sample_denied.map(|s| s.0),
            }),
            allowed_namespaces: Vec::new(),
        },
    }
}

/// A vault alone: its bindings and memberships are their own documents.
pub fn vault_doc(v: &Vault) -> Document {
    Document::Vault {
        api_version: API_VERSION.into(),
        metadata: metadata(v.name.as_str(), &v.labels),
        spec: VaultSpec {
            tenant: tenant_name_of_id(v.tenant.as_str()),
            display_name: v.display_name.clone(),
            ..Default::default()
        },
    }
}

pub fn role_doc(r: &Role) -> Document {
    Document::Role {
        api_version: API_VERSION.into(),
        metadata: metadata(r.name.as_str(), &r.labels),
        spec: RoleSpec {
            tenant: tenant_name_of_id(r.tenant.as_str()),
            vault: r.vault.as_ref().map(|v| v.to_string()),
            description: r.description.clone(),
            statements: r.statements.iter().map(statement_spec).collect(),
            inherits: r.inherits.iter().map(|n| n.to_string()).collect(),
        },
    }
}

pub fn binding_doc(b: &Binding) -> Document {
    Document::Binding {
        api_version: API_VERSION.into(),
        metadata: metadata("", &b.labels),
        spec: BindingDocSpec {
            tenant: tenant_name_of_id(b.tenant.as_str()),
            vault: b.vault.as_ref().map(|v| v.to_string()),
            binding: binding_spec(b),
        },
    }
}

pub fn membership_doc(m: &Membership) -> Document {
    Document::Membership {
        api_version: API_VERSION.into(),
        metadata: Metadata::default(),
        spec: MembershipDocSpec {
            tenant: tenant_name_of_id(m.tenant.as_str()),
            vault: m.vault.as_ref().map(|v| v.to_string()),
            membership: MembershipSpec {
                group: m.group.to_string(),
                members: vec![m.member.to_string()],
            },
        },
    }
}
