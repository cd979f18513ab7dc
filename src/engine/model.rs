//! The domain model: tenants, vaults, roles, statements, bindings and
//! memberships, as users write them. Compiled forms live in `index`.
//!
//! Objects derive serde so the same shapes serve YAML manifests, stored
//! records and the operator; field names are snake_case in Rust and in the
//! wire formats alike.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::ids::*;

/// Microseconds since the Unix epoch, UTC. Written as RFC 3339 in manifests.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const MIN: Timestamp = Timestamp(i64::MIN);
    pub const MAX: Timestamp = Timestamp(i64::MAX);
    /// 0001-01-01T00:00:00Z, the earliest time an object may hold.
    pub const EARLIEST: Timestamp = Timestamp(-62_135_596_800_000_000);
    /// 9999-12-31T23:59:59.999999Z, the latest time an object may hold:
    /// RFC 3339 (the stored and manifest form) has four-digit years.
    pub const LATEST: Timestamp = Timestamp(253_402_300_799_999_999);
    pub const RANGE_RULE: &'static str = "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z";

    /// Seconds and nanoseconds since the epoch (a protobuf Timestamp),
    /// range-checked: every accepted value round-trips through RFC 3339.
    pub fn from_unix(seconds: i64, nanos: i32) -> Result<Timestamp, String> {
        if !(0..1_000_000_000).contains(&nanos) {
            return Err(format!("nanos must be 0 to 999999999, got {nanos}"));
        }
        let micros = seconds
            .checked_mul(1_000_000)
            .and_then(|m| m.checked_add(i64::from(nanos) / 1000))
            .map(Timestamp)
            .filter(Timestamp::in_range);
        micros.ok_or_else(|| format!("{}, got {seconds} seconds since the epoch", Self::RANGE_RULE))
    }

    pub fn in_range(&self) -> bool {
        (Self::EARLIEST..=Self::LATEST).contains(self)
    }

    pub fn now() -> Timestamp {
        Timestamp(chrono::Utc::now().timestamp_micros())
    }
    pub fn from_secs(secs: i64) -> Timestamp {
        Timestamp(secs.saturating_mul(1_000_000))
    }
    pub fn micros(self) -> i64 {
        self.0
    }
    pub fn to_chrono(self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_micros(self.0).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
    }
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
        let t = chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Timestamp(t.timestamp_micros()))
            .map_err(|e| format!("must be an RFC 3339 timestamp such as 2026-01-31T12:00:00Z ({e})"))?;
        if t.in_range() {
            Ok(t)
        } else {
            Err(format!("{}, got {}", Self::RANGE_RULE, super::ids::quoted(s)))
        }
    }
    pub fn to_rfc3339(self) -> String {
        self.to_chrono().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}
impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TenantStatus {
    #[default]
    Active,
    Suspended,
}

/// Upper bounds on what a tenant and its whole subtree may hold and do;
/// 0 means unlimited. A descendant's own limits apply within its
/// ancestors'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    pub max_vaults: u32,
    pub max_roles: u32,
    pub max_bindings: u32,
    /// Descendant tenants.
    pub max_tenants: u32,
    /// Checks and lookups per second, shared by the subtree, per replica.
    pub max_checks_per_second: u32,
    /// Admin writes per second, shared by the subtree, per replica.
    pub max_writes_per_second: u32,
    /// Days the tenant's audit events are kept; 0 inherits the nearest
    /// ancestor's (400 when none sets it). Not a bound on what the tenant
    /// holds, so not among [`Limits::fields`].
    pub audit_retention_days: u32,
}

/// Audit events are kept this long when no tenant of the lineage says.
pub const DEFAULT_AUDIT_RETENTION_DAYS: u32 = 400;
/// At most a century.
pub const MAX_AUDIT_RETENTION_DAYS: u32 = 36_500;

impl Limits {
    /// The limits as (field name, value), for comparisons and messages.
    pub fn fields(&self) -> [(&'static str, u32); 6] {
        [
            ("max_vaults", self.max_vaults),
            ("max_roles", self.max_roles),
            ("max_bindings", self.max_bindings),
            ("max_tenants", self.max_tenants),
            ("max_checks_per_second", self.max_checks_per_second),
            ("max_writes_per_second", self.max_writes_per_second),
        ]
    }
}

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub status: TenantStatus,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default, skip_serializing_if = "DecisionLogSampling::is_unset")]
    pub decision_logs: DecisionLogSampling,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
}

/// A share of checks, 0 to 1. Validated finite and in range where it
/// enters (the API and manifests), so it is never NaN and can be `Eq`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Share(pub f64);

impl Eq for Share {}

impl Share {
    /// The rule a share is held to, for violations.
    pub fn check(x: f64) -> Result<Share, String> {
        if (0.0..=1.0).contains(&x) {
            Ok(Share(x))
        } else {
            Err(format!("a share from 0 to 1, got {x}"))
        }
    }
}

/// How a tenant's checks are sampled into the server's decision log. An
/// unset share inherits the nearest ancestor's that sets it, then the
/// server's `--decision-log-sample-*` flags. Set only by unconfined keys:
/// the log is the platform's record, not the tenant's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DecisionLogSampling {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_allowed: Option<Share>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_denied: Option<Share>,
}

impl DecisionLogSampling {
    pub fn is_unset(&self) -> bool {
        self.sample_allowed.is_none() && self.sample_denied.is_none()
    }
}

impl Tenant {
    pub fn new(id: TenantId) -> Tenant {
        Tenant {
            id,
            display_name: String::new(),
            status: TenantStatus::Active,
            limits: Limits::default(),
            decision_logs: DecisionLogSampling::default(),
            labels: Labels::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vault {
    pub tenant: TenantId,
    pub name: VaultName,
    #[serde(default)]
    pub display_name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Effect {
    Allow,
    Deny,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Effect::Allow => "ALLOW",
            Effect::Deny => "DENY",
        })
    }
}

/// One IAM-style rule. An empty `resources` list means `*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    pub effect: Effect,
    pub actions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

impl Statement {
    pub fn allow(actions: &[&str], resources: &[&str]) -> Statement {
        Statement {
            sid: None,
            effect: Effect::Allow,
            actions: actions.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            condition: None,
        }
    }
    pub fn deny(actions: &[&str], resources: &[&str]) -> Statement {
        Statement {
            effect: Effect::Deny,
            ..Statement::allow(actions, resources)
        }
    }
    pub fn with_condition(mut self, cel: &str) -> Statement {
        self.condition = Some(cel.to_string());
        self
    }
    pub fn with_sid(mut self, sid: &str) -> Statement {
        self.sid = Some(sid.to_string());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub tenant: TenantId,
    /// `None` for a tenant-scoped role, visible to every vault of the tenant
    /// and of its descendants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultName>,
    pub name: RoleName,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub statements: Vec<Statement>,
    /// Roles whose statements this one includes, resolved from this role's
    /// own scope upwards: its vault, then its tenant, then the ancestors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherits: Vec<RoleName>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
}

/// What a binding grants: a named role, or statements written on the binding
/// itself (a per-subject override).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    Role(RoleName),
    Statements(Vec<Statement>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    #[default]
    Api,
    Operator,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Api => "api",
            Source::Operator => "operator",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub id: String,
    pub tenant: TenantId,
    /// `None` for a tenant-wide binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultName>,
    pub subject: Subject,
    pub grant: Grant,
    /// Resource patterns the binding is limited to; empty means `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default)]
    pub source: Source,
}

impl Binding {
    /// A binding of `subject` to `role` over everything, for tests and examples.
    pub fn to_role(
        id: &str,
        tenant: &TenantId,
        vault: Option<&VaultName>,
        subject: &Subject,
        role: &RoleName,
    ) -> Binding {
        Binding {
            id: id.to_string(),
            tenant: tenant.clone(),
            vault: vault.cloned(),
            subject: subject.clone(),
            grant: Grant::Role(role.clone()),
            scope: Vec::new(),
            condition: None,
            not_before: None,
            expires_at: None,
            labels: Labels::new(),
            source: Source::Api,
        }
    }

    /// Whether the binding is in force at `now`: `[not_before, expires_at)`.
    pub fn active_at(&self, now: Timestamp) -> bool {
        self.not_before.is_none_or(|t| now >= t) && self.expires_at.is_none_or(|t| now < t)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Membership {
    pub tenant: TenantId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultName>,
    /// A `group:` subject.
    pub group: Subject,
    /// Any subject, other groups included.
    pub member: Subject,
    #[serde(default)]
    pub source: Source,
}

/// Where an object lives: a tenant (tenant-wide) or one of its vaults.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Scope {
    pub tenant: TenantId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultName>,
}

impl Scope {
    pub fn tenant(t: &TenantId) -> Scope {
        Scope {
            tenant: t.clone(),
            vault: None,
        }
    }
    pub fn vault(t: &TenantId, v: &VaultName) -> Scope {
        Scope {
            tenant: t.clone(),
            vault: Some(v.clone()),
        }
    }
    /// The scopes a name is resolved in from here: this scope, then (for a
    /// vault) its tenant, then the tenant's ancestors.
    pub fn resolution_chain(&self) -> Vec<Scope> {
        let mut out = Vec::with_capacity(self.tenant.depth() + 1);
        if self.vault.is_some() {
            out.push(self.clone());
        }
        out.extend(self.tenant.lineage().into_iter().map(|t| Scope::tenant(&t)));
        out
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.vault {
            Some(v) => write!(f, "{}:{}", self.tenant, v),
            None => write!(f, "{}", self.tenant),
        }
    }
}

/// A vault's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VaultKey {
    pub tenant: TenantId,
    pub vault: VaultName,
}

/// A role's address: its scope and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RoleKey {
    pub scope: Scope,
    pub name: RoleName,
}

impl fmt::Display for RoleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.scope, self.name)
    }
}

/// One committed change, as the store's changelog records it and the index
/// applies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Change {
    PutTenant(Tenant),
    DeleteTenant { tenant: TenantId },
    PutVault(Vault),
    DeleteVault { tenant: TenantId, vault: VaultName },
    PutRole(Role),
    DeleteRole { scope: Scope, name: RoleName },
    PutBinding(Binding),
    DeleteBinding { scope: Scope, id: String },
    PutMembership(Membership),
    DeleteMembership(Membership),
}

impl Change {
    /// The object the change writes or deletes, named within its scope as a
    /// record key names it (`binding b-1`, `role reader`, `vault`).
    pub fn object(&self) -> String {
        match self {
            Change::PutTenant(_) | Change::DeleteTenant { .. } => "tenant".into(),
            Change::PutVault(_) | Change::DeleteVault { .. } => "vault".into(),
            Change::PutRole(r) => format!("role {}", r.name),
            Change::DeleteRole { name, .. } => format!("role {name}"),
            Change::PutBinding(b) => format!("binding {}", b.id),
            Change::DeleteBinding { id, .. } => format!("binding {id}"),
            Change::PutMembership(m) | Change::DeleteMembership(m) => format!("membership {} {}", m.group, m.member),
        }
    }

    /// The tenant and vault the change belongs to (the vault is `None` for
    /// tenant-level changes); the changelog is kept per vault by this.
    pub fn scope(&self) -> Scope {
        match self {
            Change::PutTenant(t) => Scope::tenant(&t.id),
            Change::DeleteTenant { tenant } => Scope::tenant(tenant),
            Change::PutVault(v) => Scope::vault(&v.tenant, &v.name),
            Change::DeleteVault { tenant, vault } => Scope::vault(tenant, vault),
            Change::PutRole(r) => Scope {
                tenant: r.tenant.clone(),
                vault: r.vault.clone(),
            },
            Change::DeleteRole { scope, .. } => scope.clone(),
            Change::PutBinding(b) => Scope {
                tenant: b.tenant.clone(),
                vault: b.vault.clone(),
            },
            Change::DeleteBinding { scope, .. } => scope.clone(),
            Change::PutMembership(m) | Change::DeleteMembership(m) => Scope {
                tenant: m.tenant.clone(),
                vault: m.vault.clone(),
            },
        }
    }
}
