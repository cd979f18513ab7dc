//! The custom resources: `Tenant` (cluster-scoped), `Vault` and `Role`
//! (namespaced), group `portcullis.dev`, version `v1alpha1`.
//!
//! Field documentation here becomes `kubectl explain` text. Schemas carry the
//! identifier rules as patterns and bounds only (no CEL rules, so they work
//! on API servers that lack them); what a schema cannot say (tenant depth,
//! CEL conditions) is checked by the operator and the service, and reported
//! as `Ready=False`, reason `InvalidSpec`.

use kube::CustomResource;
use portcullis::manifest::{BindingSpec, DecisionLogsSpec, LimitsSpec, MembershipSpec, StatementSpec};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::reason::Reason;

pub const GROUP: &str = "portcullis.dev";

/// Some API servers (the 1.20 one the tests use among them) read an empty
/// string in a CRD `default`, or in a request, as null and reject it; these
/// fields are left out when empty and default to empty in the operator.
fn no_default(schema: &mut schemars::Schema) {
    schema.remove("default");
}

/// A Portcullis tenant. Its name is the tenant id with `/` written as `.`:
/// the Tenant `acme.eng` is tenant `acme/eng`, whose parent is the Tenant `acme`.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "Tenant",
    doc = "A Portcullis tenant; its name is the tenant id with '/' written as '.'",
    plural = "tenants",
    shortname = "ptenant",
    category = "portcullis",
    status = "TenantStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".status.tenantId"}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspended"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// A human-readable name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256), transform = no_default)]
    pub display_name: String,
    /// A suspended tenant, and every tenant below it, denies every check.
    #[serde(default)]
    pub suspended: bool,
    /// Upper bounds on what the tenant may hold.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// How the tenant's checks, and its descendants', are sampled into the service's decision log; unset shares inherit the parent Tenant's, then the service's flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_logs: Option<DecisionLogsSpec>,
    /// The namespaces whose Vaults and Roles may attach to this tenant; `*` allows every namespace. Empty allows none.
    #[serde(default)]
    #[schemars(inner(regex(pattern = r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")))]
    pub allowed_namespaces: Vec<String>,
}

/// A vault of a tenant: the container checks run in, with its declarative
/// bindings and group memberships. The vault's name in Portcullis is this
/// object's name.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "Vault",
    doc = "A vault of a Portcullis tenant, with its declarative bindings and memberships",
    plural = "vaults",
    shortname = "pvault",
    category = "portcullis",
    namespaced,
    status = "VaultStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenant"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VaultSpec {
    /// The name of the Tenant the vault belongs to (`acme.eng` for tenant `acme/eng`).
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?){0,7}$"))]
    pub tenant: String,
    /// A human-readable name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256), transform = no_default)]
    pub display_name: String,
    /// The vault's declarative bindings. They replace, as a set, whatever this
    /// Vault declared before; bindings written through the API are left alone.
    #[serde(default)]
    #[schemars(length(max = 1000))]
    pub bindings: Vec<BindingSpec>,
    /// Groups and their members, managed the same way as bindings.
    #[serde(default)]
    #[schemars(length(max = 1000))]
    pub memberships: Vec<MembershipSpec>,
}

/// A role: IAM-style statements, optionally inheriting other roles. Without
/// `vault` it is tenant-scoped: visible to every vault of the tenant and of
/// its descendants.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "Role",
    doc = "A Portcullis role: IAM-style statements, optionally inheriting other roles",
    plural = "roles",
    shortname = "prole",
    category = "portcullis",
    namespaced,
    status = "RoleStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenant"}"#,
    printcolumn = r#"{"name":"Vault","type":"string","jsonPath":".spec.vault"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RoleSpec {
    /// The name of the Tenant the role belongs to (`acme.eng` for tenant `acme/eng`).
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?){0,7}$"))]
    pub tenant: String,
    /// A Vault in this namespace to scope the role to; empty for a tenant-scoped role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"))]
    pub vault: Option<String>,
    /// What the role is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 4096), transform = no_default)]
    pub description: String,
    /// The role's statements. Deny wins over any Allow.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub statements: Vec<StatementSpec>,
    /// Roles whose statements this one includes, resolved from this role's vault, then its tenant, then the tenant's ancestors.
    #[serde(default)]
    #[schemars(length(max = 32), inner(regex(pattern = r"^[a-z0-9][a-z0-9._-]{0,127}$")))]
    pub inherits: Vec<String>,
}

/// The `reason` field's documentation: every reason, from [`Reason`]'s docs.
fn reason_doc(schema: &mut schemars::Schema) {
    schema.insert("description".into(), Reason::field_doc().into());
}

/// A condition, following the Kubernetes API conventions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type; `Ready` for these resources.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Why the condition has its status (the list of reasons is generated from the operator's `Reason`).
    #[schemars(transform = reason_doc)]
    pub reason: String,
    /// A human-readable message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(transform = no_default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The observed state of a Tenant, Vault or Role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions; `Ready` says whether the object is in force in Portcullis.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The Portcullis revision token of the last applied write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// For a Tenant: its id in Portcullis (the name with `.` as `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
}

pub type TenantStatus = Status;
pub type VaultStatus = Status;
pub type RoleStatus = Status;

/// The three CRDs, in the order they are written to `crds/`.
pub fn crds() -> Vec<(
    &'static str,
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
)> {
    use kube::CustomResourceExt;
    vec![
        ("tenants", Tenant::crd()),
        ("vaults", Vault::crd()),
        ("roles", Role::crd()),
    ]
}

/// A CRD as the YAML committed in `crds/`.
pub fn crd_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    format!(
        "# Generated by `cargo run -p portcullis-operator --bin crdgen`; do not edit.\n{}",
        serde_yaml::to_string(crd).unwrap_or_default()
    )
}
