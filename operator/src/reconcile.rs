//! The reconcilers: each turns one resource into Portcullis objects and
//! writes back a `Ready` condition.
//!
//! Every Portcullis object the operator writes is labelled with the
//! resource that owns it (kind, namespace, name, uid). A second resource
//! claiming an object whose owner still exists gets `Ready=False`, reason
//! `Conflict`; an object whose owner is gone (or that carries no owner) is
//! adopted.
//!
//! Outcomes and retries:
//! - `Applied`: in force; resynced every `resync` (drift is re-applied).
//! - `InvalidSpec`, `NamespaceNotAllowed`, `Conflict`: the user must change
//!   something; retried only on a change (or the slow resync), no hot loop.
//! - `TenantNotFound`, `VaultNotFound`, `ServiceUnavailable`, `LimitExceeded`,
//!   `Unauthorized`, `DependentsExist`: retried with exponential backoff.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Resource, ResourceExt};
use portcullis::api::convert;
use portcullis::engine::ids::{RoleName, TenantId, VaultName};
use portcullis::engine::model::{Labels, Source};
use portcullis::manifest;
use portcullis_proto::v1 as pb;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Code;

use crate::crd::{Condition, Role, Status, Tenant, Vault};
use crate::metrics::Metrics;
use crate::service::{Service, unreachable};

pub const FINALIZER: &str = "portcullis.dev/cleanup";
pub const OWNER_KIND: &str = "portcullis.dev/owner-kind";
pub const OWNER_NAMESPACE: &str = "portcullis.dev/owner-namespace";
pub const OWNER_NAME: &str = "portcullis.dev/owner-name";
pub const OWNER_UID: &str = "portcullis.dev/owner-uid";
pub const MANAGED_BY: &str = "portcullis.dev/managed-by";

pub struct Ctx {
    pub client: kube::Client,
    pub service: Service,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub resync: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Ctx {
    pub fn new(client: kube::Client, service: Service, recorder: Recorder, metrics: Metrics, resync: Duration) -> Ctx {
        Ctx {
            client,
            service,
            recorder,
            metrics,
            resync,
            failures: Mutex::default(),
        }
    }

    fn backoff(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.to_string()).or_default();
        *n = (*n + 1).min(16);
        Duration::from_millis(500u64.saturating_mul(1 << (*n - 1).min(9))).min(Duration::from_secs(300))
    }

    fn reset(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Deletion must wait (dependents, or the service is unreachable).
    #[error("{0}")]
    Waiting(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

/// When to look at an object again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// In force: the periodic resync.
    Resync,
    /// A transient state: exponential backoff.
    Backoff,
    /// Needs a user's change; a change triggers a reconcile anyway.
    OnChange,
}

#[derive(Debug)]
struct Outcome {
    ready: bool,
    reason: &'static str,
    message: String,
    retry: Retry,
    revision: Option<String>,
    /// Whether anything was written to Portcullis.
    changed: bool,
}

impl Outcome {
    fn ready(revision: String, changed: bool, message: String) -> Outcome {
        Outcome {
            ready: true,
            reason: "Applied",
            message,
            retry: Retry::Resync,
            revision: Some(revision),
            changed,
        }
    }
    fn not_ready(reason: &'static str, message: impl Into<String>, retry: Retry) -> Outcome {
        Outcome {
            ready: false,
            reason,
            message: message.into(),
            retry,
            revision: None,
            changed: false,
        }
    }
    /// Classifies a refused call.
    fn from_status(s: &tonic::Status, what: &str) -> Outcome {
        let msg = format!("{what}: {}", s.message());
        if unreachable(s) {
            return Outcome::not_ready(
                "ServiceUnavailable",
                format!("Portcullis is unreachable: {}", s.message()),
                Retry::Backoff,
            );
        }
        match s.code() {
            Code::InvalidArgument => Outcome::not_ready("InvalidSpec", msg, Retry::OnChange),
            Code::ResourceExhausted => Outcome::not_ready("LimitExceeded", msg, Retry::Backoff),
            Code::Unauthenticated | Code::PermissionDenied => Outcome::not_ready("Unauthorized", msg, Retry::Backoff),
            // Branch on the service's ErrorInfo reason, never its message: a
            // missing vault's message names its tenant too.
            Code::FailedPrecondition => match reason(s).as_deref() {
                Some("TENANT_NOT_FOUND") => Outcome::not_ready("TenantNotFound", msg, Retry::Backoff),
                Some("VAULT_NOT_FOUND") => Outcome::not_ready("VaultNotFound", msg, Retry::Backoff),
                _ => Outcome::not_ready("ServiceUnavailable", msg, Retry::Backoff),
            },
            _ => Outcome::not_ready("ServiceUnavailable", msg, Retry::Backoff),
        }
    }
}

/// The `google.rpc.ErrorInfo` reason of a service error, if it sent one.
fn reason(s: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    s.get_details_error_info().map(|i| i.reason)
}

/// A resource kind the reconcilers handle.
trait Kind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug + Send + Sync + 'static
{
    const KIND: &'static str;
    fn status(&self) -> Option<&Status>;
}

impl Kind for Tenant {
    const KIND: &'static str = "Tenant";
    fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }
}
impl Kind for Vault {
    const KIND: &'static str = "Vault";
    fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }
}
impl Kind for Role {
    const KIND: &'static str = "Role";
    fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }
}

fn key<K: Kind>(obj: &K) -> String {
    format!("{}/{}/{}", K::KIND, obj.namespace().unwrap_or_default(), obj.name_any())
}

fn api<K>(ctx: &Ctx, obj: &K) -> Api<K>
where
    K: Kind + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default())
}

fn owner_labels<K: Kind>(obj: &K) -> Labels {
    let mut l = Labels::new();
    l.insert(OWNER_KIND.into(), K::KIND.into());
    l.insert(OWNER_NAMESPACE.into(), obj.namespace().unwrap_or_default());
    l.insert(OWNER_NAME.into(), obj.name_any());
    l.insert(OWNER_UID.into(), obj.uid().unwrap_or_default());
    l.insert(MANAGED_BY.into(), "portcullis-operator".into());
    l
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Writes the Ready condition (keeping its transition time when the status
/// did not change), emits an event when the state changed, and returns when
/// to look again.
async fn finish<K: Kind>(
    ctx: &Ctx,
    obj: &K,
    status_api: &Api<K>,
    outcome: Outcome,
    extra: Option<String>,
) -> Result<Action, Error> {
    let generation = obj.meta().generation;
    let previous = obj
        .status()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .cloned();
    let status_word = if outcome.ready { "True" } else { "False" };
    let transition = match &previous {
        Some(p) if p.status == status_word && p.reason == outcome.reason => p.last_transition_time.clone(),
        _ => now_rfc3339(),
    };
    let condition = Condition {
        type_: "Ready".into(),
        status: status_word.into(),
        reason: outcome.reason.into(),
        message: outcome.message.clone(),
        last_transition_time: transition,
        observed_generation: generation,
    };
    let revision = outcome
        .revision
        .clone()
        .or_else(|| obj.status().and_then(|s| s.revision.clone()));
    let status = Status {
        observed_generation: generation,
        conditions: vec![condition.clone()],
        revision,
        tenant_id: extra,
    };
    let unchanged = obj.status() == Some(&status);
    if !unchanged {
        let patch = serde_json::json!({ "status": status });
        status_api
            .patch_status(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let state_changed = previous
        .as_ref()
        .is_none_or(|p| p.status != condition.status || p.reason != condition.reason || p.message != condition.message);
    let event = if outcome.ready && (outcome.changed || state_changed) {
        Some(Event {
            type_: EventType::Normal,
            reason: "Applied".into(),
            note: Some(outcome.message.clone()),
            action: "Apply".into(),
            secondary: None,
        })
    } else if !outcome.ready && state_changed {
        Some(Event {
            type_: EventType::Warning,
            reason: outcome.reason.into(),
            note: Some(outcome.message.chars().take(1000).collect()),
            action: "Refuse".into(),
            secondary: None,
        })
    } else {
        None
    };
    if let Some(ev) = event {
        publish(ctx, &ev, obj).await;
    }
    let k = key(obj);
    if !outcome.ready {
        ctx.metrics.errors.with_label_values(&[K::KIND, outcome.reason]).inc();
    }
    Ok(match outcome.retry {
        Retry::Resync => {
            ctx.reset(&k);
            Action::requeue(ctx.resync)
        }
        Retry::Backoff => Action::requeue(ctx.backoff(&k)),
        Retry::OnChange => {
            ctx.reset(&k);
            Action::requeue(ctx.resync)
        }
    })
}

/// Publishes an event about `obj`. API servers before 1.22 reject events
/// about cluster-scoped objects unless the reference carries the event's
/// namespace, so a refused event is retried that way.
async fn publish<K: Kind>(ctx: &Ctx, ev: &Event, obj: &K) {
    let mut reference = obj.object_ref(&());
    let first = ctx.recorder.publish(ev, &reference).await;
    let result = match first {
        Err(kube::Error::Api(ref s)) if s.code == 422 && reference.namespace.is_none() => {
            reference.namespace = Some("default".into());
            ctx.recorder.publish(ev, &reference).await
        }
        other => other,
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not publish an event");
    }
}

async fn publish_deleted<K: Kind>(ctx: &Ctx, obj: &K, what: String) {
    let ev = Event {
        type_: EventType::Normal,
        reason: "Deleted".into(),
        note: Some(what),
        action: "Delete".into(),
        secondary: None,
    };
    publish(ctx, &ev, obj).await;
}

/// Whether the service object with `labels` belongs to another live
/// resource; returns that resource's description.
async fn claimed_by_other<K: Kind>(
    ctx: &Ctx,
    me: &K,
    labels: &HashMap<String, String>,
) -> Result<Option<String>, Error> {
    let Some(uid) = labels.get(OWNER_UID) else {
        return Ok(None);
    };
    if Some(uid.as_str()) == me.uid().as_deref() {
        return Ok(None);
    }
    let kind = labels.get(OWNER_KIND).map(String::as_str).unwrap_or("");
    let ns = labels.get(OWNER_NAMESPACE).cloned().unwrap_or_default();
    let name = labels.get(OWNER_NAME).cloned().unwrap_or_default();
    let live_uid = match kind {
        "Tenant" => Api::<Tenant>::all(ctx.client.clone())
            .get_opt(&name)
            .await?
            .and_then(|o| o.uid()),
        "Vault" => Api::<Vault>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&name)
            .await?
            .and_then(|o| o.uid()),
        "Role" => Api::<Role>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&name)
            .await?
            .and_then(|o| o.uid()),
        _ => None,
    };
    Ok((live_uid.as_deref() == Some(uid.as_str())).then(|| format!("{kind} {ns}/{name}")))
}

/// The Tenant a Vault or Role names, and whether its namespace may attach.
async fn attach<K: Kind>(ctx: &Ctx, obj: &K, tenant_name: &str) -> Result<Result<(Tenant, TenantId), Outcome>, Error> {
    let Some(tenant) = Api::<Tenant>::all(ctx.client.clone()).get_opt(tenant_name).await? else {
        return Ok(Err(Outcome::not_ready(
            "TenantNotFound",
            format!("Tenant {tenant_name} does not exist"),
            Retry::Backoff,
        )));
    };
    let ns = obj.namespace().unwrap_or_default();
    let allowed = &tenant.spec.allowed_namespaces;
    if !allowed.iter().any(|a| a == "*" || *a == ns) {
        return Ok(Err(Outcome::not_ready(
            "NamespaceNotAllowed",
            format!(
                "namespace {ns} is not in Tenant {tenant_name}'s allowedNamespaces ({})",
                allowed.join(", ")
            ),
            Retry::OnChange,
        )));
    }
    match TenantId::parse(&manifest::tenant_id_of_name(tenant_name)) {
        Ok(id) => Ok(Ok((tenant, id))),
        Err(e) => Ok(Err(Outcome::not_ready(
            "InvalidSpec",
            format!("spec.tenant: {e}"),
            Retry::OnChange,
        ))),
    }
}

fn observe(ctx: &Ctx, kind: &str, start: Instant) {
    ctx.metrics.reconciles.with_label_values(&[kind]).inc();
    ctx.metrics
        .duration
        .with_label_values(&[kind])
        .observe(start.elapsed().as_secs_f64());
}

fn not_found<T>(r: Result<T, tonic::Status>) -> Result<Option<T>, tonic::Status> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

// ---- Tenant -----------------------------------------------------------------

pub async fn reconcile_tenant(obj: Arc<Tenant>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let start = Instant::now();
    let api = Api::<Tenant>::all(ctx.client.clone());
    let r = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            finalizer::Event::Apply(t) => apply_tenant(&ctx, &t).await,
            finalizer::Event::Cleanup(t) => cleanup_tenant(&ctx, &t).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    observe(&ctx, "Tenant", start);
    r
}

async fn apply_tenant(ctx: &Ctx, obj: &Tenant) -> Result<Action, Error> {
    let api = Api::<Tenant>::all(ctx.client.clone());
    let name = obj.name_any();
    let id_str = manifest::tenant_id_of_name(&name);
    let outcome = tenant_outcome(ctx, obj, &name).await?;
    finish(ctx, obj, &api, outcome, Some(id_str)).await
}

async fn tenant_outcome(ctx: &Ctx, obj: &Tenant, name: &str) -> Result<Outcome, Error> {
    let desired = match manifest::tenant_of(
        name,
        &manifest::TenantSpec {
            display_name: obj.spec.display_name.clone(),
            suspended: obj.spec.suspended,
            limits: obj.spec.limits.clone(),
            allowed_namespaces: Vec::new(),
        },
        &owner_labels(obj),
    ) {
        Ok(t) => t,
        Err(e) => return Ok(Outcome::not_ready("InvalidSpec", e.to_string(), Retry::OnChange)),
    };
    if let Some(parent) = desired.id.parent() {
        let parent_name = manifest::tenant_name_of_id(parent.as_str());
        if Api::<Tenant>::all(ctx.client.clone())
            .get_opt(&parent_name)
            .await?
            .is_none()
        {
            return Ok(Outcome::not_ready(
                "TenantNotFound",
                format!("parent Tenant {parent_name} does not exist"),
                Retry::Backoff,
            ));
        }
    }
    let mut admin = ctx.service.admin.clone();
    let existing = match not_found(
        admin
            .get_tenant(pb::GetTenantRequest {
                id: desired.id.to_string(),
            })
            .await,
    ) {
        Ok(e) => e.map(|r| r.into_inner()),
        Err(s) => return Ok(Outcome::from_status(&s, "GetTenant")),
    };
    let wanted = convert::tenant_to(&desired, 0, None);
    if let Some(e) = &existing {
        if let Some(other) = claimed_by_other(ctx, obj, &e.labels).await? {
            return Ok(Outcome::not_ready(
                "Conflict",
                format!("tenant {} is managed by {other}", desired.id),
                Retry::OnChange,
            ));
        }
        let same = e.display_name == wanted.display_name
            && e.status == wanted.status
            && e.limits == wanted.limits
            && e.labels == wanted.labels;
        if same {
            return Ok(Outcome::ready(
                e.revision.clone(),
                false,
                format!("tenant {} is in force", desired.id),
            ));
        }
    }
    match admin
        .apply_tenant(pb::ApplyTenantRequest {
            tenant: Some(wanted),
            expected_revision: String::new(),
        })
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            Ok(Outcome::ready(
                r.revision,
                r.changed,
                format!("tenant {} applied", desired.id),
            ))
        }
        Err(s) => Ok(Outcome::from_status(&s, "ApplyTenant")),
    }
}

async fn cleanup_tenant(ctx: &Ctx, obj: &Tenant) -> Result<Action, Error> {
    let name = obj.name_any();
    let api = Api::<Tenant>::all(ctx.client.clone());
    // Dependents declared in Kubernetes.
    let mut dependents = Vec::new();
    for t in api.list(&Default::default()).await?.items {
        if t.name_any().starts_with(&format!("{name}.")) {
            dependents.push(format!("Tenant {}", t.name_any()));
        }
    }
    for v in Api::<Vault>::all(ctx.client.clone())
        .list(&Default::default())
        .await?
        .items
    {
        if v.spec.tenant == name {
            dependents.push(format!("Vault {}/{}", v.namespace().unwrap_or_default(), v.name_any()));
        }
    }
    for r in Api::<Role>::all(ctx.client.clone())
        .list(&Default::default())
        .await?
        .items
    {
        if r.spec.tenant == name {
            dependents.push(format!("Role {}/{}", r.namespace().unwrap_or_default(), r.name_any()));
        }
    }
    let id = manifest::tenant_id_of_name(&name);
    if !dependents.is_empty() {
        let n = dependents.len();
        dependents.truncate(5);
        let msg = format!("waiting for {n} dependents to be deleted: {}", dependents.join(", "));
        let outcome = Outcome::not_ready("DependentsExist", msg.clone(), Retry::Backoff);
        finish(ctx, obj, &api, outcome, Some(id)).await?;
        return Err(Error::Waiting(msg));
    }
    let mut admin = ctx.service.admin.clone();
    let owned = match not_found(admin.get_tenant(pb::GetTenantRequest { id: id.clone() }).await) {
        Ok(Some(t)) => claimed_by_other(ctx, obj, &t.into_inner().labels).await?.is_none(),
        Ok(None) => false,
        Err(s) => return Err(Error::Waiting(format!("cannot delete tenant {id}: {}", s.message()))),
    };
    if owned {
        match admin
            .delete_tenant(pb::DeleteTenantRequest {
                id: id.clone(),
                expected_revision: String::new(),
            })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) if s.code() == Code::FailedPrecondition => {
                let msg = s.message().to_string();
                finish(
                    ctx,
                    obj,
                    &api,
                    Outcome::not_ready("DependentsExist", msg.clone(), Retry::Backoff),
                    Some(id),
                )
                .await?;
                return Err(Error::Waiting(msg));
            }
            Err(s) => return Err(Error::Waiting(format!("cannot delete tenant {id}: {}", s.message()))),
        }
    }
    publish_deleted(ctx, obj, format!("tenant {id} deleted from Portcullis")).await;
    Ok(Action::await_change())
}

// ---- Vault ------------------------------------------------------------------

pub async fn reconcile_vault(obj: Arc<Vault>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let start = Instant::now();
    let api = api(&ctx, &*obj);
    let r = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            finalizer::Event::Apply(v) => {
                let outcome = vault_outcome(&ctx, &v).await?;
                finish(&ctx, &*v, &api, outcome, None).await
            }
            finalizer::Event::Cleanup(v) => cleanup_vault(&ctx, &v).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    observe(&ctx, "Vault", start);
    r
}

fn binding_key(b: &pb::Binding) -> String {
    serde_json::to_string(&(
        &b.id,
        &b.subject,
        &b.role,
        b.statements
            .iter()
            .map(|s| {
                (
                    s.sid.clone(),
                    s.effect,
                    s.actions.clone(),
                    s.resources.clone(),
                    s.condition.clone(),
                )
            })
            .collect::<Vec<_>>(),
        &b.scope,
        &b.condition,
        b.not_before.as_ref().map(|t| (t.seconds, t.nanos)),
        b.expires_at.as_ref().map(|t| (t.seconds, t.nanos)),
        b.labels.iter().collect::<BTreeMap<_, _>>(),
    ))
    .unwrap_or_default()
}

async fn vault_outcome(ctx: &Ctx, obj: &Vault) -> Result<Outcome, Error> {
    let name = obj.name_any();
    let vault_name = match VaultName::parse(&name) {
        Ok(v) => v,
        Err(e) => {
            return Ok(Outcome::not_ready(
                "InvalidSpec",
                format!("metadata.name: {e}"),
                Retry::OnChange,
            ));
        }
    };
    let (_, tid) = match attach(ctx, obj, &obj.spec.tenant).await? {
        Ok(x) => x,
        Err(o) => return Ok(o),
    };
    let labels = owner_labels(obj);
    // The declared bindings and memberships, as Portcullis objects.
    let mut viol = Vec::new();
    let mut bindings = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, b) in obj.spec.bindings.iter().enumerate() {
        match manifest::binding_of(
            &format!("spec.bindings[{i}]"),
            &tid,
            Some(&vault_name),
            b,
            Source::Operator,
            &labels,
        ) {
            Ok(b) => {
                if !ids.insert(b.id.clone()) {
                    viol.push(format!("spec.bindings[{i}].id: {} appears twice", b.id));
                }
                bindings.push(convert::binding_to(&b));
            }
            Err(e) => viol.push(e.to_string()),
        }
    }
    let mut memberships = Vec::new();
    for (i, m) in obj.spec.memberships.iter().enumerate() {
        match manifest::memberships_of(
            &format!("spec.memberships[{i}]"),
            &tid,
            Some(&vault_name),
            m,
            Source::Operator,
        ) {
            Ok(ms) => memberships.extend(ms.iter().map(convert::membership_to)),
            Err(e) => viol.push(e.to_string()),
        }
    }
    if !viol.is_empty() {
        return Ok(Outcome::not_ready("InvalidSpec", viol.join("; "), Retry::OnChange));
    }
    let mut admin = ctx.service.admin.clone();
    let existing = match not_found(
        admin
            .get_vault(pb::GetVaultRequest {
                tenant: tid.to_string(),
                name: name.clone(),
            })
            .await,
    ) {
        Ok(e) => e.map(|r| r.into_inner()),
        Err(s) => return Ok(Outcome::from_status(&s, "GetVault")),
    };
    let wanted = pb::Vault {
        tenant: tid.to_string(),
        name: name.clone(),
        display_name: obj.spec.display_name.clone(),
        labels: labels.clone().into_iter().collect(),
        revision: String::new(),
    };
    let mut changed = false;
    let mut revision = existing.as_ref().map(|e| e.revision.clone()).unwrap_or_default();
    if let Some(e) = &existing
        && let Some(other) = claimed_by_other(ctx, obj, &e.labels).await?
    {
        return Ok(Outcome::not_ready(
            "Conflict",
            format!("vault {name} of tenant {tid} is managed by {other}"),
            Retry::OnChange,
        ));
    }
    let same = existing
        .as_ref()
        .is_some_and(|e| e.display_name == wanted.display_name && e.labels == wanted.labels);
    if !same {
        match admin
            .apply_vault(pb::ApplyVaultRequest {
                vault: Some(wanted),
                expected_revision: String::new(),
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                changed |= r.changed;
                revision = r.revision;
            }
            Err(s) => return Ok(Outcome::from_status(&s, "ApplyVault")),
        }
    }
    // Bindings: replace the operator's set, unless it already matches.
    let mut current = Vec::new();
    let mut token = String::new();
    loop {
        let page = match admin
            .list_bindings(pb::ListBindingsRequest {
                tenant: tid.to_string(),
                vault: name.clone(),
                source: pb::Source::Operator as i32,
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(p) => p.into_inner(),
            Err(s) => return Ok(Outcome::from_status(&s, "ListBindings")),
        };
        current.extend(page.bindings);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let have: BTreeSet<String> = current.iter().map(binding_key).collect();
    let want: BTreeSet<String> = bindings.iter().map(binding_key).collect();
    if have != want {
        match admin
            .write_bindings(pb::WriteBindingsRequest {
                tenant: tid.to_string(),
                vault: name.clone(),
                upserts: bindings,
                deletes: vec![],
                replace_source: pb::Source::Operator as i32,
            })
            .await
        {
            Ok(r) => {
                revision = r.into_inner().written_at;
                changed = true;
            }
            Err(s) => {
                let mut o = Outcome::from_status(&s, "WriteBindings");
                o.message = o.message.replace("upserts[", "spec.bindings[");
                return Ok(o);
            }
        }
    }
    // Memberships, the same way.
    let mut current = Vec::new();
    let mut token = String::new();
    loop {
        let page = match admin
            .list_memberships(pb::ListMembershipsRequest {
                tenant: tid.to_string(),
                vault: name.clone(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(p) => p.into_inner(),
            Err(s) => return Ok(Outcome::from_status(&s, "ListMemberships")),
        };
        current.extend(
            page.memberships
                .into_iter()
                .filter(|m| m.source == pb::Source::Operator as i32),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let pair = |m: &pb::Membership| (m.group.clone(), m.member.clone());
    let have: BTreeSet<_> = current.iter().map(pair).collect();
    let want: BTreeSet<_> = memberships.iter().map(pair).collect();
    if have != want {
        match admin
            .write_memberships(pb::WriteMembershipsRequest {
                tenant: tid.to_string(),
                vault: name.clone(),
                upserts: memberships,
                deletes: vec![],
                replace_source: pb::Source::Operator as i32,
            })
            .await
        {
            Ok(r) => {
                revision = r.into_inner().written_at;
                changed = true;
            }
            Err(s) => return Ok(Outcome::from_status(&s, "WriteMemberships")),
        }
    }
    Ok(Outcome::ready(
        revision,
        changed,
        format!(
            "vault {name} of tenant {tid} is in force with {} bindings and {} memberships",
            obj.spec.bindings.len(),
            obj.spec.memberships.iter().map(|m| m.members.len()).sum::<usize>()
        ),
    ))
}

async fn cleanup_vault(ctx: &Ctx, obj: &Vault) -> Result<Action, Error> {
    let name = obj.name_any();
    let tid = manifest::tenant_id_of_name(&obj.spec.tenant);
    let mut admin = ctx.service.admin.clone();
    let request = pb::GetVaultRequest {
        tenant: tid.clone(),
        name: name.clone(),
    };
    let labels = not_found(admin.get_vault(request).await).map(|v| v.map(|v| v.into_inner().labels));
    let delete = pb::DeleteVaultRequest {
        tenant: tid.clone(),
        name: name.clone(),
        expected_revision: String::new(),
    };
    delete_if_owned(
        ctx,
        obj,
        format!("vault {name} of tenant {tid}"),
        labels,
        || async move { admin.delete_vault(delete).await.map(|_| ()) },
    )
    .await
}

// ---- Role -------------------------------------------------------------------

pub async fn reconcile_role(obj: Arc<Role>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let start = Instant::now();
    let api = api(&ctx, &*obj);
    let r = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            finalizer::Event::Apply(r) => {
                let outcome = role_outcome(&ctx, &r).await?;
                finish(&ctx, &*r, &api, outcome, None).await
            }
            finalizer::Event::Cleanup(r) => cleanup_role(&ctx, &r).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    observe(&ctx, "Role", start);
    r
}

async fn role_outcome(ctx: &Ctx, obj: &Role) -> Result<Outcome, Error> {
    let name = obj.name_any();
    if let Err(e) = RoleName::parse(&name) {
        return Ok(Outcome::not_ready(
            "InvalidSpec",
            format!("metadata.name: {e}"),
            Retry::OnChange,
        ));
    }
    let (_, tid) = match attach(ctx, obj, &obj.spec.tenant).await? {
        Ok(x) => x,
        Err(o) => return Ok(o),
    };
    let vault = obj.spec.vault.clone().filter(|v| !v.is_empty());
    if let Some(v) = &vault {
        let ns = obj.namespace().unwrap_or_default();
        match Api::<Vault>::namespaced(ctx.client.clone(), &ns).get_opt(v).await? {
            None => {
                return Ok(Outcome::not_ready(
                    "VaultNotFound",
                    format!("Vault {ns}/{v} does not exist"),
                    Retry::Backoff,
                ));
            }
            Some(vo) if vo.spec.tenant != obj.spec.tenant => {
                return Ok(Outcome::not_ready(
                    "InvalidSpec",
                    format!(
                        "spec.vault: Vault {ns}/{v} belongs to Tenant {}, not {}",
                        vo.spec.tenant, obj.spec.tenant
                    ),
                    Retry::OnChange,
                ));
            }
            Some(_) => {}
        }
    }
    let spec = manifest::RoleSpec {
        tenant: obj.spec.tenant.clone(),
        vault: vault.clone(),
        description: obj.spec.description.clone(),
        statements: obj.spec.statements.clone(),
        inherits: obj.spec.inherits.clone(),
    };
    let role = match manifest::role_of(&name, &spec, &owner_labels(obj)) {
        Ok(r) => r,
        Err(e) => return Ok(Outcome::not_ready("InvalidSpec", e.to_string(), Retry::OnChange)),
    };
    let wanted = convert::role_to(&role, 0);
    let mut admin = ctx.service.admin.clone();
    let existing = match not_found(
        admin
            .get_role(pb::GetRoleRequest {
                tenant: tid.to_string(),
                vault: vault.clone().unwrap_or_default(),
                name: name.clone(),
            })
            .await,
    ) {
        Ok(e) => e.map(|r| r.into_inner()),
        Err(s) => return Ok(Outcome::from_status(&s, "GetRole")),
    };
    if let Some(e) = &existing {
        if let Some(other) = claimed_by_other(ctx, obj, &e.labels).await? {
            return Ok(Outcome::not_ready(
                "Conflict",
                format!("role {name} of tenant {tid} is managed by {other}"),
                Retry::OnChange,
            ));
        }
        let same = e.description == wanted.description
            && e.statements == wanted.statements
            && e.inherits == wanted.inherits
            && e.labels == wanted.labels;
        if same {
            return Ok(Outcome::ready(
                e.revision.clone(),
                false,
                format!("role {name} is in force"),
            ));
        }
    }
    match admin
        .apply_role(pb::ApplyRoleRequest {
            role: Some(wanted),
            expected_revision: String::new(),
        })
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            Ok(Outcome::ready(r.revision, r.changed, format!("role {name} applied")))
        }
        Err(s) => {
            let mut o = Outcome::from_status(&s, "ApplyRole");
            o.message = o
                .message
                .replace("role.statements[", "spec.statements[")
                .replace("role.inherits", "spec.inherits");
            Ok(o)
        }
    }
}

async fn cleanup_role(ctx: &Ctx, obj: &Role) -> Result<Action, Error> {
    let name = obj.name_any();
    let tid = manifest::tenant_id_of_name(&obj.spec.tenant);
    let vault = obj.spec.vault.clone().unwrap_or_default();
    let mut admin = ctx.service.admin.clone();
    let request = pb::GetRoleRequest {
        tenant: tid.clone(),
        vault: vault.clone(),
        name: name.clone(),
    };
    let labels = not_found(admin.get_role(request).await).map(|r| r.map(|r| r.into_inner().labels));
    let delete = pb::DeleteRoleRequest {
        tenant: tid.clone(),
        vault,
        name: name.clone(),
        expected_revision: String::new(),
    };
    delete_if_owned(
        ctx,
        obj,
        format!("role {name} of tenant {tid}"),
        labels,
        || async move { admin.delete_role(delete).await.map(|_| ()) },
    )
    .await
}

/// On a resource's deletion, deletes its Portcullis object if the resource
/// owns it (an object another live resource owns is left alone), then
/// records the deletion. `labels` is the object's, `None` when it is gone.
async fn delete_if_owned<K: Kind, F: std::future::Future<Output = Result<(), tonic::Status>>>(
    ctx: &Ctx,
    obj: &K,
    what: String,
    labels: Result<Option<HashMap<String, String>>, tonic::Status>,
    delete: impl FnOnce() -> F,
) -> Result<Action, Error> {
    let owned = match labels {
        Ok(Some(l)) => claimed_by_other(ctx, obj, &l).await?.is_none(),
        Ok(None) => false,
        // A name the service cannot even hold was never written.
        Err(s) if s.code() == Code::InvalidArgument => false,
        Err(s) => return Err(Error::Waiting(format!("cannot delete {what}: {}", s.message()))),
    };
    if owned {
        match delete().await {
            Ok(()) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(Error::Waiting(format!("cannot delete {what}: {}", s.message()))),
        }
    }
    publish_deleted(ctx, obj, format!("{what} deleted from Portcullis")).await;
    Ok(Action::await_change())
}

/// Errors (the Kubernetes API failing, a deletion waiting) are retried with
/// the same per-object backoff.
pub fn error_policy<K: Resource<DynamicType = ()> + ResourceExt>(obj: Arc<K>, error: &Error, ctx: Arc<Ctx>) -> Action {
    // Keyed by kind too: a Vault and a Role of one name in one namespace
    // must not share a retry counter.
    let k = format!(
        "err/{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    );
    match error {
        Error::Waiting(m) => tracing::info!(object = %obj.name_any(), "{m}"),
        e => tracing::warn!(object = %obj.name_any(), error = %e, "reconcile failed"),
    }
    Action::requeue(ctx.backoff(&k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    fn refused(reason: &str, message: &str) -> tonic::Status {
        tonic::Status::with_error_details(
            Code::FailedPrecondition,
            message,
            ErrorDetails::with_error_info(
                reason,
                "portcullis.dev",
                std::collections::HashMap::<String, String>::new(),
            ),
        )
    }

    #[test]
    fn a_missing_vault_is_vault_not_found_though_its_message_names_the_tenant() {
        let s = refused(
            "VAULT_NOT_FOUND",
            "vault docs does not exist in tenant acme; create it before its roles",
        );
        assert_eq!(Outcome::from_status(&s, "Role r").reason, "VaultNotFound");
        let s = refused(
            "TENANT_NOT_FOUND",
            "tenant acme does not exist; create it before its vaults",
        );
        assert_eq!(Outcome::from_status(&s, "Vault v").reason, "TenantNotFound");
    }
}
