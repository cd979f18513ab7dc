//! The validating admission webhook's decisions, free of HTTP.
//!
//! A Tenant, Vault or Role being created or updated becomes the objects its
//! reconcile would write, and the service validates them itself
//! (`PlanChanges` with `validate_only`), so `kubectl apply` and the service
//! can never disagree about what is valid. The service's field paths
//! (`roles[0].statements[1].condition`) are renamed to the resource's
//! (`spec.statements[1].condition`). References to objects that do not
//! exist yet are not refused: the same `kubectl apply` may create them, and
//! the reconcile reports them in the status.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::response::{StatusCause, StatusDetails};
use portcullis::api::convert;
use portcullis::engine::Violations;
use portcullis::engine::ids::TenantId;
use portcullis::manifest;
use portcullis_client::pb;
use serde::de::DeserializeOwned;
use tonic::Code;

use crate::crd::{GROUP, Role, Tenant, Vault};
use crate::reconcile::{role, tenant, vault};

/// What the webhook answers when it cannot validate (the service is
/// unreachable or refuses the operator): the same choice as the
/// `ValidatingWebhookConfiguration`'s `failurePolicy`, so a webhook that
/// answers and one that times out behave alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    /// Refuse the change.
    Fail,
    /// Admit the change unvalidated, with a warning.
    Ignore,
}

impl FailurePolicy {
    fn name(self) -> &'static str {
        match self {
            FailurePolicy::Fail => "Fail",
            FailurePolicy::Ignore => "Ignore",
        }
    }
}

/// The three kinds the webhook validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tenant,
    Vault,
    Role,
}

impl Kind {
    fn of(req: &AdmissionRequest<DynamicObject>) -> Option<Kind> {
        if req.kind.group != GROUP {
            return None;
        }
        match req.kind.kind.as_str() {
            "Tenant" => Some(Kind::Tenant),
            "Vault" => Some(Kind::Vault),
            "Role" => Some(Kind::Role),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Tenant => "Tenant",
            Kind::Vault => "Vault",
            Kind::Role => "Role",
        }
    }
}

/// The validation request for one resource, and how to name the service's
/// field paths in the resource.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub request: pb::PlanChangesRequest,
    /// For a Vault: each planned membership's `spec.memberships[i].members[j]`.
    member_at: Vec<(usize, usize)>,
}

fn decode<T: DeserializeOwned>(obj: &DynamicObject) -> Result<T, Violations> {
    serde_json::to_value(obj)
        .and_then(serde_json::from_value)
        .map_err(|e| Violations::single("spec", format!("does not match the schema: {e}")))
}

/// The objects the resource declares, as its reconcile would write them;
/// or the violations found before asking the service (identifiers that do
/// not parse), already named by their paths in the resource.
pub fn candidate(kind: Kind, obj: &DynamicObject) -> Result<Candidate, Violations> {
    let mut request = pb::PlanChangesRequest {
        validate_only: true,
        ..Default::default()
    };
    let mut member_at = Vec::new();
    match kind {
        Kind::Tenant => {
            let t: Tenant = decode(obj)?;
            request.tenants.push(convert::tenant_to(&tenant::desired(&t)?, 0, None));
        }
        Kind::Vault => {
            let v: Vault = decode(obj)?;
            let mut viol = Violations::new();
            let tid = viol.check(
                "spec.tenant",
                TenantId::parse(&manifest::tenant_id_of_name(&v.spec.tenant)),
            );
            viol.into_result()?;
            let d = vault::desired(&v, &tid.expect("checked"))?;
            request.vaults.push(d.vault);
            request.bindings = d.bindings;
            request.memberships = d.memberships;
            member_at = d.member_at;
        }
        Kind::Role => {
            let r: Role = decode(obj)?;
            request.roles.push(role::desired(&r)?);
        }
    }
    Ok(Candidate { request, member_at })
}

/// `not_before` is the resource's `notBefore`.
fn camel(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper = false;
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            _ => {}
        }
        if c == '_' && !in_index {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `roles[0]` is `("roles", Some(0))`.
fn head(segment: &str) -> (&str, Option<usize>) {
    match segment.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
        None => (segment, None),
    }
}

impl Candidate {
    /// The resource's path for a field of the validation request.
    pub fn resource_field(&self, field: &str) -> String {
        let (first, rest) = match field.split_once('.') {
            Some((f, r)) => (f, r),
            None => (field, ""),
        };
        let leaf = rest.split(['.', '[']).next().unwrap_or("");
        let (list, index) = head(first);
        let spec = |rest: &str| {
            if rest.is_empty() {
                "spec".to_string()
            } else {
                format!("spec.{}", camel(rest))
            }
        };
        match (list, leaf) {
            // The name is the resource's; the owner labels come from its metadata.
            (_, "id" | "name") if matches!(list, "tenants" | "vaults" | "roles") => "metadata.name".into(),
            (_, "labels") => "metadata".into(),
            ("vaults" | "roles" | "bindings" | "memberships", "tenant") => "spec.tenant".into(),
            ("bindings" | "memberships", "vault") => "metadata.name".into(),
            ("tenants", "status") => "spec.suspended".into(),
            ("tenants" | "vaults" | "roles", _) => spec(rest),
            ("bindings", _) => match index {
                Some(i) if rest.is_empty() => format!("spec.bindings[{i}]"),
                Some(i) => format!("spec.bindings[{i}].{}", camel(rest)),
                None => "spec.bindings".into(),
            },
            ("memberships", _) => match index.and_then(|k| self.member_at.get(k)) {
                Some((i, j)) if leaf == "member" => format!("spec.memberships[{i}].members[{j}]"),
                Some((i, _)) if leaf == "group" => format!("spec.memberships[{i}].group"),
                Some((i, _)) => format!("spec.memberships[{i}]"),
                None => "spec.memberships".into(),
            },
            _ => field.to_string(),
        }
    }
}

/// Why a resource was refused: every violation, with its path.
fn deny(mut resp: AdmissionResponse, kind: Kind, name: &str, violations: &[(String, String)]) -> AdmissionResponse {
    let message = violations
        .iter()
        .map(|(f, r)| format!("{f}: {r}"))
        .collect::<Vec<_>>()
        .join("; ");
    resp = resp.deny(message);
    resp.result.code = 422;
    resp.result.reason = "Invalid".into();
    resp.result.details = Some(StatusDetails {
        name: name.into(),
        group: GROUP.into(),
        kind: kind.label().into(),
        causes: violations
            .iter()
            .map(|(f, r)| StatusCause {
                reason: "FieldValueInvalid".into(),
                message: r.clone(),
                field: f.clone(),
            })
            .collect(),
        uid: String::new(),
        retry_after_seconds: 0,
    });
    resp
}

/// What the webhook decided, for its metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to validate (a deletion, a status or metadata-only update).
    Skipped,
    Admitted,
    Refused,
    /// The service could not validate; refused by the failure policy.
    UnvalidatedRefused,
    /// The service could not validate; admitted by the failure policy.
    UnvalidatedAdmitted,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Skipped => "skipped",
            Verdict::Admitted => "admitted",
            Verdict::Refused => "refused",
            Verdict::UnvalidatedRefused => "unvalidated_refused",
            Verdict::UnvalidatedAdmitted => "unvalidated_admitted",
        }
    }
}

/// Whether the request changes a spec the service would have to accept.
/// Updates that leave the spec alone (finalizers, labels, the status) are
/// never refused: a finalizer must always be removable, even when the
/// service has since become stricter, or the object could not be deleted.
pub fn needs_validation(req: &AdmissionRequest<DynamicObject>) -> bool {
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return false;
    }
    let Some(obj) = &req.object else { return false };
    if obj.metadata.deletion_timestamp.is_some() {
        return false;
    }
    match req.operation {
        Operation::Create => true,
        Operation::Update => req.old_object.as_ref().map(|o| o.data.get("spec")) != Some(obj.data.get("spec")),
        _ => false,
    }
}

/// The answer to a validation the service was asked for.
pub fn decide(
    resp: AdmissionResponse,
    kind: Kind,
    name: &str,
    candidate: &Candidate,
    answer: Result<pb::PlanChangesResponse, portcullis_client::Error>,
    policy: FailurePolicy,
) -> (AdmissionResponse, Verdict) {
    let renamed = |field: &str, rule: &str| (candidate.resource_field(field), rule.to_string());
    match answer {
        Ok(plan) if plan.violations.is_empty() => (resp, Verdict::Admitted),
        Ok(plan) => {
            let v: Vec<_> = plan
                .violations
                .iter()
                .map(|v| renamed(&v.field, &v.description))
                .collect();
            (deny(resp, kind, name, &v), Verdict::Refused)
        }
        Err(e) if e.code() == Code::InvalidArgument && !e.violations().is_empty() => {
            let v: Vec<_> = e
                .violations()
                .iter()
                .map(|v| renamed(&v.field, &v.description))
                .collect();
            (deny(resp, kind, name, &v), Verdict::Refused)
        }
        Err(e) => {
            let why = format!(
                "Portcullis could not validate this {} ({}: {})",
                kind.label(),
                e.reason(),
                e.message()
            );
            let policy_name = policy.name();
            match policy {
                FailurePolicy::Fail => (
                    resp.deny(format!(
                        "{why}; refused because the webhook's failurePolicy is {policy_name}"
                    )),
                    Verdict::UnvalidatedRefused,
                ),
                FailurePolicy::Ignore => {
                    let mut resp = resp;
                    resp.warnings = Some(vec![format!(
                        "{why}; admitted unvalidated because the webhook's failurePolicy is {policy_name}"
                    )]);
                    (resp, Verdict::UnvalidatedAdmitted)
                }
            }
        }
    }
}

/// Reviews one request: skips what needs no validation, refuses local
/// violations, and otherwise asks the service through `validate`.
pub async fn review<F, Fut>(
    req: &AdmissionRequest<DynamicObject>,
    policy: FailurePolicy,
    validate: F,
) -> (AdmissionResponse, Option<Kind>, Verdict)
where
    F: FnOnce(pb::PlanChangesRequest) -> Fut,
    Fut: std::future::Future<Output = Result<pb::PlanChangesResponse, portcullis_client::Error>>,
{
    let resp = AdmissionResponse::from(req);
    let kind = Kind::of(req);
    let (Some(k), Some(obj)) = (kind, &req.object) else {
        return (resp, kind, Verdict::Skipped);
    };
    if !needs_validation(req) {
        return (resp, kind, Verdict::Skipped);
    }
    let name = obj.metadata.name.clone().unwrap_or_default();
    let candidate = match candidate(k, obj) {
        Ok(c) => c,
        Err(v) => {
            let v: Vec<_> = v.0.into_iter().map(|f| (f.field, f.rule)).collect();
            return (deny(resp, k, &name, &v), kind, Verdict::Refused);
        }
    };
    let answer = validate(candidate.request.clone()).await;
    let (resp, verdict) = decide(resp, k, &name, &candidate, answer, policy);
    (resp, kind, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionReview;

    fn request(
        kind: &str,
        op: &str,
        object: serde_json::Value,
        old: Option<serde_json::Value>,
    ) -> AdmissionRequest<DynamicObject> {
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "portcullis.dev", "version": "v1alpha1", "kind": kind},
                "resource": {"group": "portcullis.dev", "version": "v1alpha1", "resource": format!("{}s", kind.to_lowercase())},
                "name": object["metadata"]["name"],
                "namespace": "team-a",
                "operation": op,
                "userInfo": {"username": "alice"},
                "object": object,
                "oldObject": old,
                "dryRun": false,
            }
        });
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(review).expect("a review");
        review.try_into().expect("a request")
    }

    fn role(name: &str, spec: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "Role",
            "metadata": {"name": name, "namespace": "team-a", "uid": "u-1"},
            "spec": spec,
        })
    }

    fn vault(spec: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "Vault",
            "metadata": {"name": "docs", "namespace": "team-a", "uid": "u-2"},
            "spec": spec,
        })
    }

    fn violation(field: &str, rule: &str) -> pb::FieldViolation {
        pb::FieldViolation {
            field: field.into(),
            description: rule.into(),
        }
    }

    async fn answered(
        req: &AdmissionRequest<DynamicObject>,
        answer: Result<pb::PlanChangesResponse, portcullis_client::Error>,
    ) -> (AdmissionResponse, Verdict, Option<pb::PlanChangesRequest>) {
        let mut asked = None;
        let (resp, _, verdict) = review(req, FailurePolicy::Fail, |r| {
            asked = Some(r);
            async move { answer }
        })
        .await;
        (resp, verdict, asked)
    }

    #[tokio::test]
    async fn a_role_is_validated_by_the_service_and_its_paths_renamed() {
        let req = request(
            "Role",
            "CREATE",
            role(
                "reader",
                serde_json::json!({"tenant": "acme.eng", "statements": [
                    {"effect": "Allow", "actions": ["documents:read"], "resources": ["*"]},
                    {"effect": "Allow", "actions": ["documents:read"], "resources": ["*"], "condition": "contxt.mfa"},
                ]}),
            ),
            None,
        );
        let answer = pb::PlanChangesResponse {
            violations: vec![
                violation(
                    "roles[0].statements[1].condition",
                    "undeclared reference to 'contxt' at 1:1",
                ),
                violation("roles[0].description", "too long"),
            ],
            ..Default::default()
        };
        let (resp, verdict, asked) = answered(&req, Ok(answer)).await;
        let asked = asked.expect("the service was asked");
        assert!(asked.validate_only);
        assert_eq!(asked.roles.len(), 1);
        assert_eq!(asked.roles[0].tenant, "acme/eng");
        assert_eq!(asked.roles[0].statements[1].condition, "contxt.mfa");
        assert_eq!(verdict, Verdict::Refused);
        assert!(!resp.allowed);
        assert_eq!(
            resp.result.message,
            "spec.statements[1].condition: undeclared reference to 'contxt' at 1:1; spec.description: too long"
        );
        assert_eq!(resp.result.code, 422);
        let causes = &resp.result.details.as_ref().expect("details").causes;
        assert_eq!(causes[0].field, "spec.statements[1].condition");
        assert_eq!(causes[1].field, "spec.description");
    }

    #[tokio::test]
    async fn identifiers_that_do_not_parse_are_refused_without_asking() {
        let req = request(
            "Role",
            "CREATE",
            role(
                "Bad Name",
                serde_json::json!({"tenant": "acme", "inherits": ["ok", "NOT OK"]}),
            ),
            None,
        );
        let (resp, verdict, asked) = answered(&req, Ok(Default::default())).await;
        assert!(asked.is_none());
        assert_eq!(verdict, Verdict::Refused);
        let fields: Vec<_> = resp
            .result
            .details
            .expect("details")
            .causes
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(fields, ["metadata.name", "spec.inherits[1]"]);
    }

    #[tokio::test]
    async fn a_vaults_bindings_and_members_are_named_by_their_spec_paths() {
        let req = request(
            "Vault",
            "CREATE",
            vault(serde_json::json!({"tenant": "acme", "bindings": [
                {"subject": "user:alice", "role": "reader"},
                {"subject": "user:bob", "role": "reader", "notBefore": "2030-01-01T00:00:00Z"},
            ], "memberships": [
                {"group": "group:a", "members": ["user:x"]},
                {"group": "group:b", "members": ["user:y", "user:z"]},
            ]})),
            None,
        );
        let answer = pb::PlanChangesResponse {
            violations: vec![
                violation("bindings[1].not_before", "out of range"),
                violation("memberships[2].member", "bad member"),
                violation("memberships[1].group", "bad group"),
                violation("vaults[0].display_name", "too long"),
            ],
            ..Default::default()
        };
        let (resp, _, asked) = answered(&req, Ok(answer)).await;
        let asked = asked.expect("asked");
        assert_eq!(
            (asked.vaults.len(), asked.bindings.len(), asked.memberships.len()),
            (1, 2, 3)
        );
        let fields: Vec<_> = resp
            .result
            .details
            .expect("details")
            .causes
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.bindings[1].notBefore",
                "spec.memberships[1].members[1]",
                "spec.memberships[1].group",
                "spec.displayName"
            ]
        );
    }

    #[tokio::test]
    async fn an_update_that_leaves_the_spec_alone_is_never_refused() {
        let spec = serde_json::json!({"tenant": "acme", "statements": [{"effect": "Allow", "actions": ["a:b"], "resources": ["*"]}]});
        let mut new = role("reader", spec.clone());
        new["metadata"]["finalizers"] = serde_json::json!([]);
        let req = request("Role", "UPDATE", new.clone(), Some(role("reader", spec)));
        let unreachable = portcullis_client::Error::from(tonic::Status::unavailable("down"));
        let (resp, verdict, asked) = answered(&req, Err(unreachable.clone())).await;
        assert!(asked.is_none());
        assert!(resp.allowed);
        assert_eq!(verdict, Verdict::Skipped);
        // Nor is one being deleted.
        new["metadata"]["deletionTimestamp"] = serde_json::json!("2030-01-01T00:00:00Z");
        new["spec"]["description"] = serde_json::json!("changed");
        let req = request("Role", "UPDATE", new, None);
        let (resp, verdict, _) = answered(&req, Err(unreachable)).await;
        assert!(resp.allowed);
        assert_eq!(verdict, Verdict::Skipped);
    }

    #[tokio::test]
    async fn an_unreachable_service_is_answered_by_the_failure_policy() {
        let req = request(
            "Role",
            "CREATE",
            role("reader", serde_json::json!({"tenant": "acme", "inherits": ["base"]})),
            None,
        );
        let down = || {
            Err(portcullis_client::Error::from(tonic::Status::unavailable(
                "connection refused",
            )))
        };
        let (resp, verdict, _) = answered(&req, down()).await;
        assert!(!resp.allowed);
        assert_eq!(verdict, Verdict::UnvalidatedRefused);
        assert!(
            resp.result.message.contains("connection refused"),
            "{}",
            resp.result.message
        );
        assert!(
            resp.result.message.contains("failurePolicy is Fail"),
            "{}",
            resp.result.message
        );

        let (resp, _, verdict) = review(&req, FailurePolicy::Ignore, |_| async { down() }).await;
        assert!(resp.allowed);
        assert_eq!(verdict, Verdict::UnvalidatedAdmitted);
        let w = resp.warnings.expect("a warning");
        assert!(w[0].contains("failurePolicy is Ignore"), "{w:?}");
    }

    #[tokio::test]
    async fn refusals_in_the_error_are_refusals_too() {
        let req = request(
            "Tenant",
            "CREATE",
            serde_json::json!({
                "apiVersion": "portcullis.dev/v1alpha1", "kind": "Tenant",
                "metadata": {"name": "acme.eng", "uid": "u-3"},
                "spec": {"limits": {"maxVaults": 5}},
            }),
            None,
        );
        let status = <tonic::Status as tonic_types::StatusExt>::with_error_details(
            tonic::Code::InvalidArgument,
            "invalid",
            tonic_types::ErrorDetails::with_bad_request(vec![tonic_types::FieldViolation::new(
                "tenants[0].limits.max_vaults",
                "too many",
            )]),
        );
        let (resp, verdict, asked) = answered(&req, Err(portcullis_client::Error::from(status))).await;
        assert_eq!(asked.expect("asked").tenants[0].id, "acme/eng");
        assert_eq!(verdict, Verdict::Refused);
        assert_eq!(resp.result.message, "spec.limits.maxVaults: too many");
    }

    #[test]
    fn camel_case_leaves_indices_alone() {
        assert_eq!(camel("statements[1].not_before"), "statements[1].notBefore");
        assert_eq!(camel("limits.max_checks_per_second"), "limits.maxChecksPerSecond");
    }
}
