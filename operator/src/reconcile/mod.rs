//! The reconcilers: each turns one resource into Portcullis objects and
//! writes back a `Ready` condition whose [`Reason`] says what happened.
//!
//! - [`outcome`]: what a reconcile concluded, the status and event it
//!   writes, and the mapping of the service's error reasons.
//! - [`ownership`]: the labels that tie a Portcullis object to the resource
//!   that owns it, conflicts between resources, and deletion of owned objects.
//! - [`tenant`], [`vault`], [`role`]: one reconciler per kind.
//!
//! Every error is retried with a per-object exponential backoff keyed by
//! kind, namespace and name; outcomes follow [`Reason::retry`].

pub mod outcome;
pub mod ownership;
pub mod role;
pub mod tenant;
pub mod vault;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::finalizer;
use kube::{Resource, ResourceExt};
use portcullis::engine::ids::TenantId;
use portcullis::manifest;
use portcullis_client::Client as Service;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::{Role, Status, Tenant, Vault};
use crate::metrics::Metrics;
use crate::reason::Reason;
use outcome::Outcome;

pub use role::reconcile_role;
pub use tenant::reconcile_tenant;
pub use vault::reconcile_vault;

pub const FINALIZER: &str = "portcullis.dev/cleanup";

/// What every reconcile shares.
pub struct Ctx {
    pub client: kube::Client,
    pub service: Service,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub resync: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Ctx {
    /// The service client acting on behalf of `obj`: its writes are audited
    /// as `Kind/namespace/name uid=…`.
    pub fn acting_for<K: kube::Resource<DynamicType = ()>>(&self, obj: &K) -> Service {
        let m = obj.meta();
        let who = format!(
            "{}/{}{} uid={}",
            K::kind(&()),
            m.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default(),
            m.name.as_deref().unwrap_or(""),
            m.uid.as_deref().unwrap_or("")
        );
        self.service.on_behalf_of(&who).unwrap_or_else(|_| self.service.clone())
    }

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

    /// The next backoff of `key`: 0.5 s doubling to 5 minutes.
    fn backoff(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.to_string()).or_default();
        *n = (*n + 1).min(16);
        Duration::from_millis(500u64.saturating_mul(1 << (*n - 1).min(9))).min(Duration::from_secs(300))
    }

    fn reset(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// When to look again after an outcome with `reason`.
    fn requeue(&self, key: &str, reason: Reason) -> Action {
        match reason.retry() {
            crate::reason::Retry::Backoff => Action::requeue(self.backoff(key)),
            _ => {
                self.reset(key);
                Action::requeue(self.resync)
            }
        }
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

impl Error {
    /// The `error` label of the reconcile-failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Waiting(_) => "waiting",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// A resource kind the reconcilers handle.
pub trait Kind:
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

/// The backoff key of an object: kind, namespace and name, so a Vault and
/// a Role of one name in one namespace do not share a retry counter.
pub fn key<K: Kind>(obj: &K) -> String {
    format!("{}/{}/{}", K::KIND, obj.namespace().unwrap_or_default(), obj.name_any())
}

fn namespaced<K>(ctx: &Ctx, obj: &K) -> Api<K>
where
    K: Kind + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default())
}

fn observe(ctx: &Ctx, kind: &str, start: Instant) {
    ctx.metrics.reconciles.with_label_values(&[kind]).inc();
    ctx.metrics
        .duration
        .with_label_values(&[kind])
        .observe(start.elapsed().as_secs_f64());
}

/// `Ok(None)` for NOT_FOUND.
fn not_found<T>(r: Result<T, portcullis_client::Error>) -> Result<Option<T>, portcullis_client::Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code() == tonic::Code::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The Tenant a Vault or Role names, and whether its namespace may attach.
async fn attach<K: Kind>(ctx: &Ctx, obj: &K, tenant_name: &str) -> Result<Result<(Tenant, TenantId), Outcome>, Error> {
    let Some(tenant) = Api::<Tenant>::all(ctx.client.clone()).get_opt(tenant_name).await? else {
        return Ok(Err(Outcome::not_ready(
            Reason::TenantNotFound,
            format!("Tenant {tenant_name} does not exist"),
        )));
    };
    let ns = obj.namespace().unwrap_or_default();
    let allowed = &tenant.spec.allowed_namespaces;
    if !allowed.iter().any(|a| a == "*" || *a == ns) {
        return Ok(Err(Outcome::not_ready(
            Reason::NamespaceNotAllowed,
            format!(
                "namespace {ns} is not in Tenant {tenant_name}'s allowedNamespaces ({})",
                allowed.join(", ")
            ),
        )));
    }
    match TenantId::parse(&manifest::tenant_id_of_name(tenant_name)) {
        Ok(id) => Ok(Ok((tenant, id))),
        Err(e) => Ok(Err(Outcome::not_ready(
            Reason::InvalidSpec,
            format!("spec.tenant: {e}"),
        ))),
    }
}

/// Errors (the Kubernetes API failing, a deletion waiting) are retried with
/// the same per-object backoff.
pub fn error_policy<K: Kind>(obj: Arc<K>, error: &Error, ctx: Arc<Ctx>) -> Action {
    match error {
        Error::Waiting(m) => tracing::info!(object = %obj.name_any(), "{m}"),
        e => tracing::warn!(object = %obj.name_any(), error = %e, "reconcile failed"),
    }
    ctx.metrics
        .failures
        .with_label_values(&[K::KIND, error.metric_label()])
        .inc();
    Action::requeue(ctx.backoff(&format!("err/{}", key(&*obj))))
}
