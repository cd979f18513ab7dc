//! The reconcilers' decisions, without a cluster: fixture builders for the
//! resources, plain functions for status, events and keys, and a mocked
//! Kubernetes API server (tower-test) that answers the calls a reconcile
//! is expected to make, in order, and fails the test on any other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::api::ObjectMeta;
use kube::client::Body;
use kube::runtime::events::{EventType, Recorder, Reporter};
use portcullis_client::{RetryPolicy, pb};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use super::outcome::{Outcome, event_for, next_status};
use super::*;
use crate::crd::{Condition, RoleSpec, TenantSpec, VaultSpec};
use crate::reason::Reason;

// ---- fixtures -----------------------------------------------------------

fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(str::to_string),
        uid: Some(format!("uid-{name}")),
        generation: Some(3),
        resource_version: Some("1".into()),
        ..Default::default()
    }
}

fn tenant(name: &str) -> Tenant {
    Tenant {
        metadata: meta(None, name),
        spec: TenantSpec {
            allowed_namespaces: vec!["*".into()],
            ..Default::default()
        },
        status: None,
    }
}

fn vault(ns: &str, name: &str, tenant: &str) -> Vault {
    Vault {
        metadata: meta(Some(ns), name),
        spec: VaultSpec {
            tenant: tenant.into(),
            ..Default::default()
        },
        status: None,
    }
}

fn role(ns: &str, name: &str, tenant: &str, vault: Option<&str>) -> Role {
    Role {
        metadata: meta(Some(ns), name),
        spec: RoleSpec {
            tenant: tenant.into(),
            vault: vault.map(str::to_string),
            ..Default::default()
        },
        status: None,
    }
}

/// The object under reconciliation already carries the finalizer.
fn finalized<K: Kind>(mut obj: K) -> K {
    obj.meta_mut().finalizers = Some(vec![FINALIZER.into()]);
    obj
}

/// The object is being deleted (and still carries the finalizer).
fn deleting<K: Kind>(obj: K) -> K {
    let mut obj = finalized(obj);
    obj.meta_mut().deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    obj
}

fn ready_condition(reason: &str, message: &str, at: &str) -> Status {
    Status {
        observed_generation: Some(2),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: if reason == "Applied" { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: at.into(),
            observed_generation: Some(2),
        }],
        revision: Some("r1".into()),
        tenant_id: None,
    }
}

fn refused(code: tonic::Code, reason: &str, message: &str, violations: &[(&str, &str)]) -> portcullis_client::Error {
    let mut d = ErrorDetails::with_error_info(reason, "portcullis.dev", HashMap::<String, String>::new());
    if !violations.is_empty() {
        d.set_bad_request(
            violations
                .iter()
                .map(|(f, r)| FieldViolation::new(*f, *r))
                .collect::<Vec<_>>(),
        );
    }
    tonic::Status::with_error_details(code, message, d).into()
}

// ---- a mocked API server ------------------------------------------------

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A context whose Kubernetes client is answered by the returned handle
/// and whose Portcullis client points at a closed port (never retried).
fn mocked() -> (Arc<Ctx>, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let service = portcullis_client::Config::new("http://127.0.0.1:9")
        .retry(RetryPolicy::none())
        .connect_lazy()
        .expect("valid endpoint");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "test".into(),
            instance: None,
        },
    );
    let ctx = Ctx::new(
        client,
        service,
        recorder,
        crate::metrics::Metrics::new(),
        Duration::from_secs(300),
    );
    (Arc::new(ctx), handle)
}

/// One expected call: its method and path; answered with `status` and
/// `body`. Returns the request body.
async fn expect(
    h: &mut Handle,
    method: Method,
    path: &str,
    status: StatusCode,
    body: serde_json::Value,
) -> serde_json::Value {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
        .expect("the client is alive");
    assert_eq!((req.method(), req.uri().path()), (&method, path), "unexpected call");
    let bytes = req.into_body().collect_bytes().await.expect("request body");
    let sent = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).expect("json")))
            .expect("response"),
    );
    sent
}

fn not_found_body() -> serde_json::Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

fn list(kind: &str, items: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": format!("{kind}List"), "metadata": {}, "items": items})
}

fn event_ok() -> serde_json::Value {
    serde_json::json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"}, "eventTime": null})
}

// ---- status and events --------------------------------------------------

#[test]
fn the_transition_time_moves_only_when_status_or_reason_changes() {
    let before = ready_condition("TenantNotFound", "Tenant acme does not exist", "2026-01-01T00:00:00Z");
    let same = Outcome::not_ready(Reason::TenantNotFound, "Tenant acme still does not exist");
    let s = next_status(Some(&before), Some(3), &same, None, "2026-01-02T00:00:00Z");
    let c = &s.conditions[0];
    assert_eq!(c.last_transition_time, "2026-01-01T00:00:00Z", "same status and reason");
    assert_eq!(c.message, "Tenant acme still does not exist");
    assert_eq!((s.observed_generation, c.observed_generation), (Some(3), Some(3)));
    assert_eq!(s.revision.as_deref(), Some("r1"), "the revision in force is kept");

    let applied = Outcome::ready("r2".into(), true, "vault docs applied".into());
    let s = next_status(Some(&before), Some(3), &applied, None, "2026-01-02T00:00:00Z");
    let c = &s.conditions[0];
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Applied"));
    assert_eq!(c.last_transition_time, "2026-01-02T00:00:00Z");
    assert_eq!(s.revision.as_deref(), Some("r2"));

    let other = Outcome::not_ready(Reason::NamespaceNotAllowed, "no");
    let s = next_status(Some(&before), Some(3), &other, None, "2026-01-03T00:00:00Z");
    assert_eq!(
        s.conditions[0].last_transition_time, "2026-01-03T00:00:00Z",
        "the reason changed"
    );
}

#[test]
fn events_mark_changes_not_repeats() {
    let first = Outcome::not_ready(Reason::VaultNotFound, "Vault ns/docs does not exist");
    let ev = event_for(None, &first).expect("a new state is an event");
    assert_eq!(
        (ev.type_, ev.reason.as_str(), ev.action.as_str()),
        (EventType::Warning, "VaultNotFound", "Refuse")
    );
    let before = ready_condition("VaultNotFound", "Vault ns/docs does not exist", "t");
    assert!(
        event_for(before.conditions.first(), &first).is_none(),
        "the same refusal again"
    );

    let applied = Outcome::ready("r".into(), false, "role reader is in force".into());
    let ev = event_for(before.conditions.first(), &applied).expect("became ready");
    assert_eq!((ev.type_, ev.reason.as_str()), (EventType::Normal, "Applied"));
    let now_ready = ready_condition("Applied", "role reader is in force", "t");
    assert!(
        event_for(now_ready.conditions.first(), &applied).is_none(),
        "in force, nothing written"
    );
    let rewritten = Outcome::ready("r".into(), true, "role reader is in force".into());
    assert!(
        event_for(now_ready.conditions.first(), &rewritten).is_some(),
        "drift re-applied"
    );
}

// ---- reasons ------------------------------------------------------------

#[test]
fn service_errors_map_by_reason_never_by_message() {
    // The missing vault's message names the tenant too.
    let e = refused(
        tonic::Code::FailedPrecondition,
        "VAULT_NOT_FOUND",
        "vault docs does not exist in tenant acme; create it before its roles",
        &[],
    );
    assert_eq!(Outcome::from_error(&e, "ApplyRole").reason, Reason::VaultNotFound);
    let e = refused(
        tonic::Code::FailedPrecondition,
        "TENANT_NOT_FOUND",
        "tenant acme does not exist; create it before its vaults",
        &[],
    );
    assert_eq!(Outcome::from_error(&e, "ApplyVault").reason, Reason::TenantNotFound);
    let e = refused(
        tonic::Code::ResourceExhausted,
        "LIMIT_EXCEEDED",
        "tenant acme may hold at most 1 vaults",
        &[],
    );
    assert_eq!(Outcome::from_error(&e, "ApplyVault").reason, Reason::LimitExceeded);
    let e = refused(tonic::Code::PermissionDenied, "TENANT_OUTSIDE_KEY", "confined", &[]);
    assert_eq!(Outcome::from_error(&e, "ApplyVault").reason, Reason::Unauthorized);
    let e: portcullis_client::Error = tonic::Status::unavailable("connection refused").into();
    let o = Outcome::from_error(&e, "GetVault");
    assert_eq!(o.reason, Reason::ServiceUnavailable);
    assert!(o.message.contains("unreachable"), "{}", o.message);
}

#[test]
fn violations_are_reported_at_the_resources_field_paths() {
    let e = refused(
        tonic::Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "invalid request: upserts[1].subject: must be kind:id",
        &[("upserts[1].subject", "must be kind:id")],
    );
    let o = Outcome::from_error_renaming(&e, "WriteBindings", |f| match f.strip_prefix("upserts") {
        Some(rest) => format!("spec.bindings{rest}"),
        None => f.into(),
    });
    assert_eq!(o.reason, Reason::InvalidSpec);
    assert_eq!(
        o.message,
        "WriteBindings: invalid request: spec.bindings[1].subject: must be kind:id"
    );
}

// ---- keys and desired state ---------------------------------------------

#[test]
fn backoff_is_kept_per_kind_namespace_and_name() {
    let (v, r) = (vault("team", "docs", "acme"), role("team", "docs", "acme", None));
    assert_ne!(key(&v), key(&r));
    assert_eq!(key(&v), "Vault/team/docs");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ctx, _h) = rt.block_on(async { mocked() });
    let first = ctx.backoff(&key(&v));
    let second = ctx.backoff(&key(&v));
    assert!(second > first, "{first:?} then {second:?}");
    assert_eq!(ctx.backoff(&key(&r)), first, "the Role has its own counter");
    ctx.reset(&key(&v));
    assert_eq!(ctx.backoff(&key(&v)), first);
}

#[test]
fn binding_keys_compare_content_not_label_order() {
    let mut a = pb::Binding {
        id: "b1".into(),
        subject: "user:alice".into(),
        role: "reader".into(),
        ..Default::default()
    };
    a.labels.insert("x".into(), "1".into());
    a.labels.insert("y".into(), "2".into());
    let mut b = a.clone();
    b.labels = [("y".to_string(), "2".to_string()), ("x".to_string(), "1".to_string())].into();
    assert_eq!(vault::binding_key(&a), vault::binding_key(&b));
    b.expires_at = Some(prost_types::Timestamp { seconds: 1, nanos: 0 });
    assert_ne!(vault::binding_key(&a), vault::binding_key(&b));
}

#[test]
fn a_vault_with_a_repeated_binding_id_is_an_invalid_spec_naming_the_field() {
    let mut v = vault("team", "docs", "acme");
    let b = portcullis::manifest::BindingSpec {
        id: Some("same".into()),
        subject: "user:alice".into(),
        role: Some("reader".into()),
        statements: vec![],
        scope: vec![],
        condition: None,
        not_before: None,
        expires_at: None,
    };
    v.spec.bindings = vec![b.clone(), b];
    let tid = portcullis::engine::ids::TenantId::parse("acme").unwrap();
    let e = vault::desired(&v, &tid).err().expect("a duplicate id is refused");
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].field, "spec.bindings[1].id");
    assert_eq!(e.0[0].rule, "same appears twice");
}

#[test]
fn a_tenant_waits_for_its_children_vaults_and_roles_only() {
    let tenants = [tenant("acme"), tenant("acme.eng"), tenant("acmecorp")];
    let vaults = [vault("a", "docs", "acme"), vault("b", "other", "acmecorp")];
    let roles = [role("a", "reader", "acme", Some("docs"))];
    assert_eq!(
        tenant::dependents("acme", &tenants, &vaults, &roles),
        ["Tenant acme.eng", "Vault a/docs", "Role a/reader"]
    );
    assert!(tenant::dependents("acmecorp.x", &tenants, &vaults, &roles).is_empty());
}

// ---- reconciles against the mocked API server ---------------------------

#[tokio::test]
async fn a_new_tenant_first_gets_the_finalizer() {
    let (ctx, mut h) = mocked();
    let t = tenant("acme");
    let answer = serde_json::to_value(finalized(t.clone())).unwrap();
    let server = tokio::spawn(async move {
        let patch = expect(
            &mut h,
            Method::PATCH,
            "/apis/portcullis.dev/v1alpha1/tenants/acme",
            StatusCode::OK,
            answer,
        )
        .await;
        assert!(patch.to_string().contains(FINALIZER), "{patch}");
    });
    let action = reconcile_tenant(Arc::new(t), ctx).await.expect("reconciled");
    assert_eq!(action, Action::await_change());
    server.await.unwrap();
}

#[tokio::test]
async fn a_vault_of_a_missing_tenant_reports_tenant_not_found_without_calling_the_service() {
    let (ctx, mut h) = mocked();
    let v = finalized(vault("team", "docs", "acme"));
    let me = serde_json::to_value(&v).unwrap();
    let server = tokio::spawn(async move {
        expect(
            &mut h,
            Method::GET,
            "/apis/portcullis.dev/v1alpha1/tenants/acme",
            StatusCode::NOT_FOUND,
            not_found_body(),
        )
        .await;
        let status = expect(
            &mut h,
            Method::PATCH,
            "/apis/portcullis.dev/v1alpha1/namespaces/team/vaults/docs/status",
            StatusCode::OK,
            me,
        )
        .await;
        let c = &status["status"]["conditions"][0];
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("False"), Some("TenantNotFound"))
        );
        assert_eq!(c["observedGeneration"], 3);
        let event = expect(
            &mut h,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/team/events",
            StatusCode::CREATED,
            event_ok(),
        )
        .await;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Warning"), Some("TenantNotFound"))
        );
    });
    let action = reconcile_vault(Arc::new(v), ctx.clone()).await.expect("reconciled");
    assert!(action != Action::await_change());
    server.await.unwrap();
    assert_eq!(
        ctx.metrics.errors.with_label_values(&["Vault", "TenantNotFound"]).get(),
        1
    );
}

#[tokio::test]
async fn a_role_naming_a_missing_vault_reports_vault_not_found() {
    let (ctx, mut h) = mocked();
    let r = finalized(role("team", "reader", "acme", Some("docs")));
    let me = serde_json::to_value(&r).unwrap();
    let t = serde_json::to_value(tenant("acme")).unwrap();
    let server = tokio::spawn(async move {
        expect(
            &mut h,
            Method::GET,
            "/apis/portcullis.dev/v1alpha1/tenants/acme",
            StatusCode::OK,
            t,
        )
        .await;
        expect(
            &mut h,
            Method::GET,
            "/apis/portcullis.dev/v1alpha1/namespaces/team/vaults/docs",
            StatusCode::NOT_FOUND,
            not_found_body(),
        )
        .await;
        let status = expect(
            &mut h,
            Method::PATCH,
            "/apis/portcullis.dev/v1alpha1/namespaces/team/roles/reader/status",
            StatusCode::OK,
            me,
        )
        .await;
        let c = &status["status"]["conditions"][0];
        assert_eq!(c["reason"].as_str(), Some("VaultNotFound"), "{status}");
        assert!(c["message"].as_str().unwrap().contains("Vault team/docs"), "{status}");
        expect(
            &mut h,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/team/events",
            StatusCode::CREATED,
            event_ok(),
        )
        .await;
    });
    reconcile_role(Arc::new(r), ctx).await.expect("reconciled");
    server.await.unwrap();
}

#[tokio::test]
async fn deleting_a_tenant_waits_for_its_dependents_and_keeps_the_finalizer() {
    let (ctx, mut h) = mocked();
    let t = deleting(tenant("acme"));
    let me = serde_json::to_value(&t).unwrap();
    let child = serde_json::to_value(tenant("acme.eng")).unwrap();
    let server = tokio::spawn(async move {
        expect(
            &mut h,
            Method::GET,
            "/apis/portcullis.dev/v1alpha1/tenants",
            StatusCode::OK,
            list("Tenant", vec![child]),
        )
        .await;
        expect(
            &mut h,
            Method::GET,
            "/apis/portcullis.dev/v1alpha1/vaults",
            StatusCode::OK,
            list("Vault", vec![]),
        )
        .await;
        expect(
            &mut h,
            Method::GET,
            "/apis/portcullis.dev/v1alpha1/roles",
            StatusCode::OK,
            list("Role", vec![]),
        )
        .await;
        let status = expect(
            &mut h,
            Method::PATCH,
            "/apis/portcullis.dev/v1alpha1/tenants/acme/status",
            StatusCode::OK,
            me,
        )
        .await;
        let c = &status["status"]["conditions"][0];
        assert_eq!(c["reason"].as_str(), Some("DependentsExist"));
        assert!(c["message"].as_str().unwrap().contains("Tenant acme.eng"), "{status}");
        // The event about a cluster-scoped object goes to `default`.
        expect(
            &mut h,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/default/events",
            StatusCode::CREATED,
            event_ok(),
        )
        .await;
        // No finalizer removal follows: no further request comes before
        // the client goes away.
        let next = tokio::time::timeout(Duration::from_millis(200), h.next_request()).await;
        assert!(
            !matches!(next, Ok(Some(_))),
            "the finalizer must stay: {:?}",
            next.ok().flatten().map(|(r, _)| (r.method().clone(), r.uri().clone()))
        );
    });
    let e = reconcile_tenant(Arc::new(t), ctx).await.unwrap_err();
    assert!(
        matches!(&e, Error::Finalizer(f) if matches!(**f, finalizer::Error::CleanupFailed(Error::Waiting(_)))),
        "{e}"
    );
    assert_eq!(e.metric_label(), "finalizer");
    server.await.unwrap();
}
