//! Wiring: the Kubernetes client, the Portcullis client, the Lease, the
//! three controllers, drift detection and the HTTP endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use portcullis_proto::v1 as pb;
use tokio::sync::{broadcast, watch};

use crate::crd::{Role, Tenant, Vault};
use crate::metrics::{self, Metrics};
use crate::reconcile::{self, Ctx};
use portcullis_client::Client as Service;

#[derive(Debug, Clone)]
pub struct Options {
    pub endpoint: String,
    pub token: Option<String>,
    pub resync: Duration,
    pub lease_namespace: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub identity: String,
    pub metrics_listen: SocketAddr,
    /// Only objects matching this label selector are reconciled.
    pub label_selector: Option<String>,
    /// How often the service's store id is checked, to notice lost data.
    pub drift_poll: Duration,
    /// Serve the validating admission webhook.
    pub webhook: Option<crate::webhook::WebhookOptions>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Connect(#[from] portcullis_client::Error),
    #[error("leader election: {0}")]
    Lease(String),
    #[error("metrics listener: {0}")]
    Listen(std::io::Error),
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),
}

/// A running operator, for embedding (tests) or `main`.
pub struct Running {
    pub metrics_addr: SocketAddr,
    /// Where the admission webhook listens, when it is served.
    pub webhook_addr: Option<SocketAddr>,
    pub metrics: Metrics,
    pub is_leader: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }

    /// Ends the process's work as abruptly as a crash would: no lease
    /// release, no graceful controller shutdown.
    pub fn abort(self) {
        self.task.abort();
    }
}

fn wc(opts: &Options) -> watcher::Config {
    let mut c = watcher::Config::default();
    if let Some(s) = &opts.label_selector {
        c = c.labels(s);
    }
    c
}

fn trigger(tx: &broadcast::Sender<()>) -> impl futures::Stream<Item = ()> + Send + 'static {
    tokio_stream::wrappers::BroadcastStream::new(tx.subscribe()).filter_map(|r| async move { r.ok() })
}

/// Runs the three controllers until `stop` fires.
async fn controllers(
    client: Client,
    ctx: Arc<Ctx>,
    opts: Options,
    resync_all: broadcast::Sender<()>,
    mut stop: watch::Receiver<bool>,
) {
    let stopped = || {
        let mut s = stop.clone();
        async move {
            let _ = s.wait_for(|v| *v).await;
        }
    };
    let tenants = Api::<Tenant>::all(client.clone());
    let vaults = Api::<Vault>::all(client.clone());
    let roles = Api::<Role>::all(client.clone());

    let tenant_ctrl = Controller::new(tenants.clone(), wc(&opts))
        .reconcile_all_on(trigger(&resync_all))
        .graceful_shutdown_on(stopped())
        .run(reconcile::reconcile_tenant, reconcile::error_policy, ctx.clone())
        .for_each(|_| async {});

    let vault_ctrl = Controller::new(vaults.clone(), wc(&opts));
    let vault_store = vault_ctrl.store();
    let vault_ctrl = vault_ctrl
        .watches(tenants.clone(), wc(&opts), move |t: Tenant| {
            let name = t.name_any();
            vault_store
                .state()
                .into_iter()
                .filter(|v| v.spec.tenant == name)
                .map(|v| ObjectRef::from_obj(&*v))
                .collect::<Vec<_>>()
        })
        .reconcile_all_on(trigger(&resync_all))
        .graceful_shutdown_on(stopped())
        .run(reconcile::reconcile_vault, reconcile::error_policy, ctx.clone())
        .for_each(|_| async {});

    let role_ctrl = Controller::new(roles.clone(), wc(&opts));
    let role_store = role_ctrl.store();
    let role_store2 = role_ctrl.store();
    let role_ctrl = role_ctrl
        .watches(tenants, wc(&opts), move |t: Tenant| {
            let name = t.name_any();
            role_store
                .state()
                .into_iter()
                .filter(|r| r.spec.tenant == name)
                .map(|r| ObjectRef::from_obj(&*r))
                .collect::<Vec<_>>()
        })
        .watches(vaults, wc(&opts), move |v: Vault| {
            let (name, ns) = (v.name_any(), v.namespace());
            role_store2
                .state()
                .into_iter()
                .filter(|r| r.spec.vault.as_deref() == Some(name.as_str()) && r.namespace() == ns)
                .map(|r| ObjectRef::from_obj(&*r))
                .collect::<Vec<_>>()
        })
        .reconcile_all_on(trigger(&resync_all))
        .graceful_shutdown_on(stopped())
        .run(reconcile::reconcile_role, reconcile::error_policy, ctx)
        .for_each(|_| async {});

    tokio::select! {
        _ = futures::future::join3(tenant_ctrl, vault_ctrl, role_ctrl) => {}
        _ = until_true(&mut stop) => {}
    }
}

/// Resolves once the flag is true (without holding its lock afterwards).
async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Notices when the service lost its data (a new store id) and triggers a
/// re-apply of everything.
async fn watch_drift(
    service: Service,
    every: Duration,
    resync_all: broadcast::Sender<()>,
    mut stop: watch::Receiver<bool>,
) {
    let mut known: Option<String> = None;
    loop {
        if let Ok(info) = service.get_server_info(pb::GetServerInfoRequest {}).await {
            let id = info.store_id;
            if known.as_ref().is_some_and(|k| *k != id) {
                tracing::warn!(store_id = %id, "Portcullis has a different store than before (its data was lost or replaced); re-applying everything");
                let _ = resync_all.send(());
            }
            known = Some(id);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = until_true(&mut stop) => return,
        }
    }
}

/// Starts the operator: endpoints at once, controllers while leading.
pub async fn start(client: Client, opts: Options) -> Result<Running, RunError> {
    let service = portcullis_client::Config::new(opts.endpoint.clone())
        .optional_token(opts.token.clone())
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .connect_lazy()?;
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let metrics_addr = metrics::serve(opts.metrics_listen, metrics.clone(), ready.clone())
        .await
        .map_err(RunError::Listen)?;
    // The CRDs must be installed; readiness waits for them.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for (plural, _) in crate::crd::crds() {
        if crds
            .get_opt(&format!("{plural}.{}", crate::crd::GROUP))
            .await?
            .is_none()
        {
            tracing::warn!(crd = %format!("{plural}.{}", crate::crd::GROUP), "CRD not installed; apply crds/ first");
        }
    }
    ready.store(true, Ordering::SeqCst);

    let manager = LeaseManagerBuilder::new(client.clone(), &opts.lease_name)
        .with_namespace(&opts.lease_namespace)
        .with_identity(&opts.identity)
        .with_duration(opts.lease_duration.as_secs().max(2))
        .with_grace((opts.lease_duration.as_secs() / 3).max(1))
        .build()
        .await
        .map_err(|e| RunError::Lease(e.to_string()))?;
    let (mut leading, lease_task) = manager.watch().await;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let webhook_addr = match &opts.webhook {
        Some(w) => {
            let (addr, _task) =
                crate::webhook::serve(w.clone(), service.clone(), metrics.clone(), stop_rx.clone()).await?;
            tracing::info!(%addr, failure_policy = ?w.failure_policy, "admission webhook serving");
            Some(addr)
        }
        None => None,
    };
    let (leader_tx, leader_rx) = watch::channel(false);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "portcullis-operator".into(),
            instance: Some(opts.identity.clone()),
        },
    );
    let ctx = Arc::new(Ctx::new(
        client.clone(),
        service.clone(),
        recorder,
        metrics.clone(),
        opts.resync,
    ));
    let m = metrics.clone();
    let task = tokio::spawn(async move {
        let (resync_all, _) = broadcast::channel(4);
        loop {
            // Wait to lead.
            loop {
                let now_leading = *leading.borrow_and_update();
                if now_leading {
                    break;
                }
                tokio::select! {
                    r = leading.changed() => if r.is_err() { return },
                    _ = until_true(&mut stop_rx) => { drop(leading); let _ = lease_task.await; return }
                }
            }
            tracing::info!(identity = %opts.identity, "leading: reconciling");
            m.leader.set(1);
            let _ = leader_tx.send(true);
            let (term_stop, term_rx) = watch::channel(false);
            let term = tokio::spawn(controllers(
                client.clone(),
                ctx.clone(),
                opts.clone(),
                resync_all.clone(),
                term_rx.clone(),
            ));
            let drift = tokio::spawn(watch_drift(
                ctx.service.clone(),
                opts.drift_poll,
                resync_all.clone(),
                term_rx,
            ));
            let mut shutting_down = false;
            loop {
                tokio::select! {
                    r = leading.changed() => {
                        let still = r.is_ok() && *leading.borrow_and_update();
                        if !still { break; }
                    }
                    _ = until_true(&mut stop_rx) => { shutting_down = true; break; }
                }
            }
            tracing::info!("stopped leading");
            let _ = term_stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(10), term).await;
            drift.abort();
            m.leader.set(0);
            let _ = leader_tx.send(false);
            if shutting_down {
                // Dropping the channel makes the manager release the lease.
                drop(leading);
                let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
                return;
            }
        }
    });
    Ok(Running {
        metrics_addr,
        webhook_addr,
        metrics,
        is_leader: leader_rx,
        stop: stop_tx,
        task,
    })
}
