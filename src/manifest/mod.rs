//! Manifests: the Kubernetes-shaped documents `portcullis apply -f`,
//! `import` and `export` read and write, and whose spec types the operator's
//! custom resources reuse. A document is
//!
//! ```yaml
//! apiVersion: portcullis.dev/v1alpha1
//! kind: Tenant | Vault | Role | Binding | Membership
//! metadata: { name: ..., namespace: ... }
//! spec: { ... }
//! ```
//!
//! A Tenant's name is its id with `/` written as `.` (`acme.eng` is tenant
//! `acme/eng`), since Kubernetes names cannot hold `/`.

mod docs;
mod writes;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::ids::*;
use crate::engine::model::*;

pub use docs::{binding_doc, membership_doc, role_doc, tenant_doc, vault_doc};
pub use writes::{DocumentError, Objects, objects_of, vault_of, writes_of};

pub const API_VERSION: &str = "portcullis.dev/v1alpha1";

/// Tenant ids as Kubernetes names: DNS labels joined by `.`.
pub const TENANT_NAME_PATTERN: &str =
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?){0,7}$";
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
pub const ROLE_NAME_PATTERN: &str = r"^[a-z0-9][a-z0-9._-]{0,127}$";
pub const SUBJECT_PATTERN: &str = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?:[^\s]{1,256}$";
pub const GROUP_PATTERN: &str = r"^group:[^\s]{1,256}$";
pub const ACTION_PATTERN: &str = r"^[A-Za-z0-9_.:/*?-]{1,128}$";

/// The tenant id a Tenant object's name stands for.
pub fn tenant_id_of_name(name: &str) -> String {
    name.replace('.', "/")
}

/// The Tenant object name of a tenant id.
pub fn tenant_name_of_id(id: &str) -> String {
    id.replace('/', ".")
}

/// Limits on what a tenant and its whole subtree may hold and do; 0 means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// The most vaults the tenant and its descendants may have together; 0 means unlimited.
    #[serde(default)]
    pub max_vaults: u32,
    /// The most roles (tenant-scoped and in vaults) the tenant and its descendants may have together; 0 means unlimited.
    #[serde(default)]
    pub max_roles: u32,
    /// The most bindings (tenant-wide and in vaults) the tenant and its descendants may have together; 0 means unlimited.
    #[serde(default)]
    pub max_bindings: u32,
    /// The most descendant tenants the tenant may have; 0 means unlimited.
    #[serde(default)]
    pub max_tenants: u32,
    /// Checks and lookups per second in the tenant and its descendants, per replica; 0 means unlimited.
    #[serde(default)]
    pub max_checks_per_second: u32,
    /// Admin writes per second in the tenant and its descendants, per replica; 0 means unlimited.
    #[serde(default)]
    pub max_writes_per_second: u32,
    /// Days the tenant's audit events are kept (at most 36500); 0 inherits the nearest ancestor's, 400 when none sets it.
    #[serde(default)]
    pub audit_retention_days: u32,
}

/// How the tenant's checks are sampled into the server's decision log. An
/// unset share inherits the nearest ancestor Tenant's, then the server's
/// `--decision-log-sample-*` flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionLogsSpec {
    /// The share of allowed checks logged, 0 to 1; unset inherits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_allowed: Option<f64>,
    /// The share of denied checks logged, 0 to 1; unset inherits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_denied: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EffectSpec {
    Allow,
    Deny,
}

/// One IAM-style rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatementSpec {
    /// An optional statement id, shown in explanations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]{1,128}$"))]
    pub sid: Option<String>,
    /// Allow or Deny. Deny wins over any Allow.
    pub effect: EffectSpec,
    /// Action patterns such as `documents:read` or `documents:*`; `*` matches any sequence, `?` one character.
    #[schemars(length(min = 1), inner(regex(pattern = r"^[A-Za-z0-9_.:/*?-]{1,128}$")))]
    pub actions: Vec<String>,
    /// Resource patterns such as `document:reports/*`; empty means every resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 1024)))]
    pub resources: Vec<String>,
    /// A CEL expression over subject, action, resource, context and now that must hold for the statement to apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub condition: Option<String>,
}

/// A binding of a subject (or group) to a role or to inline statements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindingSpec {
    /// A stable id; derived from the binding's content when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"))]
    pub id: Option<String>,
    /// Who is granted: `type:id`, such as `user:alice` or `group:eng`.
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?:[^\s]{1,256}$"))]
    pub subject: String,
    /// The role granted, resolved from the vault up through its tenant's ancestors. Set exactly one of role and statements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._-]{0,127}$"))]
    pub role: Option<String>,
    /// Statements granted to this subject alone (a per-subject override). Set exactly one of role and statements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statements: Vec<StatementSpec>,
    /// Resource patterns the binding is limited to; empty means every resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 1024)))]
    pub scope: Vec<String>,
    /// A CEL expression that must hold for the binding to apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub condition: Option<String>,
    /// The binding applies from this time on (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// The binding stops applying at this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A group and its direct members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MembershipSpec {
    /// The group: a `group:` subject.
    #[schemars(regex(pattern = r"^group:[^\s]{1,256}$"))]
    pub group: String,
    /// Its members: any subjects, other groups included.
    #[schemars(inner(regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?:[^\s]{1,256}$")))]
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub suspended: bool,
    #[serde(default)]
    pub limits: LimitsSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_logs: Option<DecisionLogsSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VaultSpec {
    pub tenant: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<BindingSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memberships: Vec<MembershipSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleSpec {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub statements: Vec<StatementSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherits: Vec<String>,
}

/// A standalone binding document: a BindingSpec plus its scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingDocSpec {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
    #[serde(flatten)]
    pub binding: BindingSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembershipDocSpec {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
    #[serde(flatten)]
    pub membership: MembershipSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One manifest document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "PascalCase")]
pub enum Document {
    Tenant {
        #[serde(rename = "apiVersion", default)]
        api_version: String,
        metadata: Metadata,
        spec: TenantSpec,
    },
    Vault {
        #[serde(rename = "apiVersion", default)]
        api_version: String,
        metadata: Metadata,
        spec: VaultSpec,
    },
    Role {
        #[serde(rename = "apiVersion", default)]
        api_version: String,
        metadata: Metadata,
        spec: RoleSpec,
    },
    Binding {
        #[serde(rename = "apiVersion", default)]
        api_version: String,
        #[serde(default)]
        metadata: Metadata,
        spec: BindingDocSpec,
    },
    Membership {
        #[serde(rename = "apiVersion", default)]
        api_version: String,
        #[serde(default)]
        metadata: Metadata,
        spec: MembershipDocSpec,
    },
}

/// Parses a multi-document YAML (or JSON) stream.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, String> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(de).map_err(|e| format!("document {}: {e}", i + 1))?;
        if value.is_null() {
            continue;
        }
        // kubectl's `kind: List` (what `get -o json` prints for several
        // objects) holds its documents in `items`.
        if value.get("kind").and_then(|k| k.as_str()) == Some("List") {
            let items = value
                .get("items")
                .and_then(|v| v.as_sequence())
                .cloned()
                .unwrap_or_default();
            for (j, item) in items.into_iter().enumerate() {
                let doc: Document =
                    serde_yaml::from_value(item).map_err(|e| format!("document {} item {j}: {e}", i + 1))?;
                out.push(doc);
            }
            continue;
        }
        let doc: Document = serde_yaml::from_value(value).map_err(|e| format!("document {}: {e}", i + 1))?;
        out.push(doc);
    }
    Ok(out)
}

pub fn to_yaml(docs: &[Document]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("---\n")
}

fn parse_time(v: &mut Violations, field: &str, s: &Option<String>) -> Option<Timestamp> {
    s.as_ref().and_then(|s| v.check(field, Timestamp::parse_rfc3339(s)))
}

pub fn statement_of(s: &StatementSpec) -> Statement {
    Statement {
        sid: s.sid.clone(),
        effect: match s.effect {
            EffectSpec::Allow => Effect::Allow,
            EffectSpec::Deny => Effect::Deny,
        },
        actions: s.actions.clone(),
        resources: s.resources.clone(),
        condition: s.condition.clone().filter(|c| !c.trim().is_empty()),
    }
}

pub fn statement_spec(s: &Statement) -> StatementSpec {
    StatementSpec {
        sid: s.sid.clone(),
        effect: match s.effect {
            Effect::Allow => EffectSpec::Allow,
            Effect::Deny => EffectSpec::Deny,
        },
        actions: s.actions.clone(),
        resources: s.resources.clone(),
        condition: s.condition.clone(),
    }
}

pub fn tenant_of(name: &str, spec: &TenantSpec, labels: &Labels) -> Result<Tenant, Violations> {
    let mut v = Violations::new();
    let id = v.check("metadata.name", TenantId::parse(&tenant_id_of_name(name)));
    let d = spec.decision_logs.unwrap_or_default();
    let mut share = |field: &str, x: Option<f64>| x.and_then(|x| v.check(field, Share::check(x)));
    let decision_logs = DecisionLogSampling {
        sample_allowed: share("spec.decisionLogs.sampleAllowed", d.sample_allowed),
        sample_denied: share("spec.decisionLogs.sampleDenied", d.sample_denied),
    };
    v.into_result()?;
    Ok(Tenant {
        id: id.expect("checked"),
        display_name: spec.display_name.clone(),
        status: if spec.suspended {
            TenantStatus::Suspended
        } else {
            TenantStatus::Active
        },
        limits: Limits {
            max_vaults: spec.limits.max_vaults,
            max_roles: spec.limits.max_roles,
            max_bindings: spec.limits.max_bindings,
            max_tenants: spec.limits.max_tenants,
            max_checks_per_second: spec.limits.max_checks_per_second,
            max_writes_per_second: spec.limits.max_writes_per_second,
            audit_retention_days: spec.limits.audit_retention_days,
        },
        decision_logs,
        labels: labels.clone(),
    })
}

/// The id a binding spec gets when it names none: stable for the same content.
pub fn derived_binding_id(b: &BindingSpec) -> String {
    let json = serde_json::to_vec(b).unwrap_or_default();
    let digest = Sha256::digest(&json);
    format!("m-{}", &hex::encode(digest)[..20])
}

pub fn binding_of(
    field: &str,
    tenant: &TenantId,
    vault: Option<&VaultName>,
    b: &BindingSpec,
    source: Source,
    labels: &Labels,
) -> Result<Binding, Violations> {
    let mut v = Violations::new();
    let subject = v.check(format!("{field}.subject"), Subject::parse(&b.subject));
    let grant = match (&b.role, b.statements.is_empty()) {
        (Some(r), true) => v.check(format!("{field}.role"), RoleName::parse(r)).map(Grant::Role),
        (None, false) => Some(Grant::Statements(b.statements.iter().map(statement_of).collect())),
        _ => {
            v.push(format!("{field}.role"), "set exactly one of role and statements");
            None
        }
    };
    let not_before = parse_time(&mut v, &format!("{field}.notBefore"), &b.not_before);
    let expires_at = parse_time(&mut v, &format!("{field}.expiresAt"), &b.expires_at);
    let id = b.id.clone().unwrap_or_else(|| derived_binding_id(b));
    match (subject, grant) {
        (Some(subject), Some(grant)) if v.is_empty() => Ok(Binding {
            id,
            tenant: tenant.clone(),
            vault: vault.cloned(),
            subject,
            grant,
            scope: b.scope.clone(),
            condition: b.condition.clone().filter(|c| !c.trim().is_empty()),
            not_before,
            expires_at,
            labels: labels.clone(),
            source,
        }),
        _ => Err(v),
    }
}

pub fn binding_spec(b: &Binding) -> BindingSpec {
    let (role, statements) = match &b.grant {
        Grant::Role(r) => (Some(r.to_string()), Vec::new()),
        Grant::Statements(s) => (None, s.iter().map(statement_spec).collect()),
    };
    BindingSpec {
        id: Some(b.id.clone()),
        subject: b.subject.to_string(),
        role,
        statements,
        scope: b.scope.clone(),
        condition: b.condition.clone(),
        not_before: b.not_before.map(|t| t.to_rfc3339()),
        expires_at: b.expires_at.map(|t| t.to_rfc3339()),
    }
}

pub fn memberships_of(
    field: &str,
    tenant: &TenantId,
    vault: Option<&VaultName>,
    m: &MembershipSpec,
    source: Source,
) -> Result<Vec<Membership>, Violations> {
    let mut v = Violations::new();
    let group = v.check(
        format!("{field}.group"),
        check_group(&m.group).and_then(|_| Subject::parse(&m.group)),
    );
    let members: Vec<Subject> = m
        .members
        .iter()
        .enumerate()
        .filter_map(|(i, s)| v.check(format!("{field}.members[{i}]"), Subject::parse(s)))
        .collect();
    v.into_result()?;
    let group = group.expect("checked");
    Ok(members
        .into_iter()
        .map(|member| Membership {
            tenant: tenant.clone(),
            vault: vault.cloned(),
            group: group.clone(),
            member,
            source,
        })
        .collect())
}

pub fn role_of(name: &str, spec: &RoleSpec, labels: &Labels) -> Result<Role, Violations> {
    let mut v = Violations::new();
    let tenant = v.check("spec.tenant", TenantId::parse(&tenant_id_of_name(&spec.tenant)));
    let vault = match &spec.vault {
        Some(x) if !x.is_empty() => v.check("spec.vault", VaultName::parse(x)).map(Some),
        _ => Some(None),
    };
    let name = v.check("metadata.name", RoleName::parse(name));
    let inherits: Vec<RoleName> = spec
        .inherits
        .iter()
        .enumerate()
        .filter_map(|(i, n)| v.check(format!("spec.inherits[{i}]"), RoleName::parse(n)))
        .collect();
    match (tenant, vault, name) {
        (Some(tenant), Some(vault), Some(name)) if v.is_empty() => Ok(Role {
            tenant,
            vault,
            name,
            description: spec.description.clone(),
            statements: spec.statements.iter().map(statement_of).collect(),
            inherits,
            labels: labels.clone(),
        }),
        _ => Err(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_round_trip_and_convert() {
        let text = r#"
apiVersion: portcullis.dev/v1alpha1
kind: Tenant
metadata: { name: acme.eng }
spec: { displayName: Engineering, limits: { maxVaults: 3 }, decisionLogs: { sampleDenied: 0.25 } }
---
kind: Role
metadata: { name: reader }
spec:
  tenant: acme
  statements:
    - effect: Allow
      actions: ["documents:read"]
      resources: ["document:*"]
      condition: "context.mfa == true"
---
kind: Vault
metadata: { name: docs }
spec:
  tenant: acme.eng
  bindings:
    - subject: group:eng
      role: reader
      scope: ["document:eng/*"]
      expiresAt: "2030-01-01T00:00:00Z"
  memberships:
    - group: group:eng
      members: [user:alice, group:sre]
---
kind: Binding
spec: { tenant: acme, subject: user:bob, role: reader }
"#;
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 4);
        let Document::Tenant { metadata, spec, .. } = &docs[0] else {
            panic!()
        };
        let t = tenant_of(&metadata.name, spec, &Labels::new()).unwrap();
        assert_eq!(t.id.as_str(), "acme/eng");
        assert_eq!(t.limits.max_vaults, 3);
        assert_eq!(
            t.decision_logs,
            DecisionLogSampling {
                sample_allowed: None,
                sample_denied: Some(Share(0.25))
            }
        );
        let bad = TenantSpec {
            decision_logs: Some(DecisionLogsSpec {
                sample_allowed: Some(2.0),
                sample_denied: None,
            }),
            ..spec.clone()
        };
        let e = tenant_of(&metadata.name, &bad, &Labels::new()).unwrap_err().to_string();
        assert!(
            e.contains("spec.decisionLogs.sampleAllowed: a share from 0 to 1"),
            "{e}"
        );
        let Document::Role { metadata, spec, .. } = &docs[1] else {
            panic!()
        };
        let r = role_of(&metadata.name, spec, &Labels::new()).unwrap();
        assert_eq!(r.statements[0].condition.as_deref(), Some("context.mfa == true"));
        let Document::Vault { spec, .. } = &docs[2] else {
            panic!()
        };
        let tid = TenantId::parse("acme/eng").unwrap();
        let b = binding_of(
            "spec.bindings[0]",
            &tid,
            None,
            &spec.bindings[0],
            Source::Operator,
            &Labels::new(),
        )
        .unwrap();
        assert!(b.id.starts_with("m-"));
        assert_eq!(b.id, derived_binding_id(&spec.bindings[0]), "stable");
        let ms = memberships_of("spec.memberships[0]", &tid, None, &spec.memberships[0], Source::Api).unwrap();
        assert_eq!(ms.len(), 2);
        let again = parse_documents(&to_yaml(&docs)).unwrap();
        assert_eq!(again, docs);
    }

    #[test]
    fn bad_documents_name_the_field() {
        let e = parse_documents("kind: Nope\nspec: {}\n").unwrap_err();
        assert!(e.contains("document 1"), "{e}");
        let spec = BindingSpec {
            id: None,
            subject: "alice".into(),
            role: None,
            statements: vec![],
            scope: vec![],
            condition: None,
            not_before: Some("yesterday".into()),
            expires_at: None,
        };
        let err = binding_of(
            "spec.bindings[3]",
            &TenantId::parse("a").unwrap(),
            None,
            &spec,
            Source::Api,
            &Labels::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("spec.bindings[3].subject"), "{err}");
        assert!(err.contains("spec.bindings[3].role: set exactly one"), "{err}");
        assert!(err.contains("spec.bindings[3].notBefore: must be an RFC 3339"), "{err}");
    }
}
