//! A real API server (from `PORTCULLIS_TEST_KUBECONFIG`, which `.ci/run`
//! provides through ../shared/tools/k8s), a real Portcullis server and the
//! operator, per test, isolated by a label selector and a namespace.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use portcullis::server::ServeOptions;
use portcullis_operator::crd::{Role, RoleSpec, Tenant, TenantSpec, Vault, VaultSpec};
use portcullis_operator::run::Options;
use portcullis_proto::v1 as pb;
use portcullis_proto::v1::permission_service_client::PermissionServiceClient;

pub const TEST_LABEL: &str = "portcullis.dev/test";

/// The API server, or `None` (and a plain message) when there is none.
pub async fn client() -> Option<Client> {
    let Ok(path) = std::env::var("PORTCULLIS_TEST_KUBECONFIG") else {
        println!(
            "SKIPPED: no Kubernetes API server (set PORTCULLIS_TEST_KUBECONFIG; .ci/run starts one with ../shared/tools/k8s)"
        );
        return None;
    };
    let kc = Kubeconfig::read_from(&path).expect("kubeconfig readable");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig valid");
    let client = Client::try_from(config).expect("client");
    install_crds(&client).await;
    Some(client)
}

async fn install_crds(client: &Client) {
    let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for (_, crd) in portcullis_operator::crd::crds() {
        api.patch(
            &crd.name_any(),
            &PatchParams::apply("portcullis-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("CRD applied");
    }
    // Established takes a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

pub struct Env {
    pub client: Client,
    pub id: String,
    pub ns: String,
    pub service: Option<portcullis::server::Running>,
    pub service_addr: SocketAddr,
    pub operators: Vec<portcullis_operator::run::Running>,
}

pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

impl Env {
    pub async fn new(client: Client) -> Env {
        let id = unique();
        let ns = format!("t-{id}");
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let mut n = k8s_openapi::api::core::v1::Namespace::default();
        n.metadata.name = Some(ns.clone());
        nss.create(&PostParams::default(), &n).await.expect("namespace");
        let service = portcullis::server::start(ServeOptions::for_tests())
            .await
            .expect("service");
        service.ready().await;
        let service_addr = service.addr;
        Env {
            client,
            id,
            ns,
            service: Some(service),
            service_addr,
            operators: Vec::new(),
        }
    }

    pub fn options(&self, identity: &str) -> Options {
        Options {
            endpoint: format!("http://{}", self.service_addr),
            token: None,
            resync: Duration::from_secs(300),
            lease_namespace: self.ns.clone(),
            lease_name: format!("op-{}", self.id),
            lease_duration: Duration::from_secs(3),
            identity: identity.to_string(),
            metrics_listen: "127.0.0.1:0".parse().expect("valid"),
            label_selector: Some(format!("{TEST_LABEL}={}", self.id)),
            drift_poll: Duration::from_millis(300),
            webhook: None,
        }
    }

    pub async fn start_operator(&mut self, identity: &str) {
        let op = portcullis_operator::run::start(self.client.clone(), self.options(identity))
            .await
            .expect("operator");
        self.operators.push(op);
    }

    /// Restarts the service on the same address, empty (a new memory store).
    pub async fn restart_service_empty(&mut self) {
        if let Some(s) = self.service.take() {
            s.shutdown().await;
        }
        let mut o = ServeOptions::for_tests();
        o.listen = self.service_addr;
        let s = portcullis::server::start(o).await.expect("service restarts");
        s.ready().await;
        self.service = Some(s);
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(TEST_LABEL.to_string(), self.id.clone())])
    }

    /// A tenant name unique to this test: `t<id>` plus `.suffix` parts.
    pub fn tenant_name(&self, suffix: &str) -> String {
        if suffix.is_empty() {
            format!("t{}", self.id)
        } else {
            format!("t{}.{suffix}", self.id)
        }
    }

    pub fn tenant_id(&self, suffix: &str) -> String {
        self.tenant_name(suffix).replace('.', "/")
    }

    pub fn tenants(&self) -> Api<Tenant> {
        Api::all(self.client.clone())
    }
    pub fn vaults(&self, ns: &str) -> Api<Vault> {
        Api::namespaced(self.client.clone(), ns)
    }
    pub fn roles(&self, ns: &str) -> Api<Role> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub async fn apply_tenant(&self, suffix: &str, spec: TenantSpec) {
        let mut t = Tenant::new(&self.tenant_name(suffix), spec);
        t.metadata.labels = Some(self.labels());
        self.tenants()
            .patch(&t.name_any(), &PatchParams::apply("tests").force(), &Patch::Apply(&t))
            .await
            .expect("tenant");
    }

    pub async fn apply_vault(&self, ns: &str, name: &str, spec: VaultSpec) {
        let mut v = Vault::new(name, spec);
        v.metadata.labels = Some(self.labels());
        v.metadata.namespace = Some(ns.to_string());
        self.vaults(ns)
            .patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(&v))
            .await
            .expect("vault");
    }

    pub async fn apply_role(&self, ns: &str, name: &str, spec: RoleSpec) {
        let mut r = Role::new(name, spec);
        r.metadata.labels = Some(self.labels());
        r.metadata.namespace = Some(ns.to_string());
        self.roles(ns)
            .patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(&r))
            .await
            .expect("role");
    }

    pub async fn perm(&self) -> PermissionServiceClient<tonic::transport::Channel> {
        PermissionServiceClient::connect(format!("http://{}", self.service_addr))
            .await
            .expect("connect")
    }

    /// Checks with full consistency, so what the operator wrote is seen.
    pub async fn allowed(
        &self,
        tenant: &str,
        vault: &str,
        subject: &str,
        action: &str,
        resource: &str,
    ) -> Result<bool, tonic::Status> {
        let mut p = self.perm().await;
        let r = p
            .check_permission(pb::CheckPermissionRequest {
                tenant: tenant.into(),
                vault: vault.into(),
                subject: subject.into(),
                action: action.into(),
                resource: resource.into(),
                consistency: Some(pb::Consistency {
                    requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
                }),
                ..Default::default()
            })
            .await?;
        Ok(r.into_inner().decision == pb::Decision::Allowed as i32)
    }

    /// Waits (up to 30 s) until a check gives `want`.
    pub async fn eventually_allowed(
        &self,
        tenant: &str,
        vault: &str,
        subject: &str,
        action: &str,
        resource: &str,
        want: bool,
    ) {
        let start = Instant::now();
        loop {
            if let Ok(got) = self.allowed(tenant, vault, subject, action, resource).await
                && got == want
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{subject} {action} {resource} never became {want}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn cleanup(mut self) {
        // Delete everything while an operator still runs, so finalizers clear.
        for v in self
            .vaults(&self.ns)
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let _ = self
                .vaults(&self.ns)
                .delete(&v.name_any(), &DeleteParams::default())
                .await;
        }
        for r in self
            .roles(&self.ns)
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let _ = self
                .roles(&self.ns)
                .delete(&r.name_any(), &DeleteParams::default())
                .await;
        }
        let mine: Vec<String> = self
            .tenants()
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.name_any())
            .filter(|n| n.starts_with(&format!("t{}", self.id)))
            .collect();
        for t in &mine {
            let _ = self.tenants().delete(t, &DeleteParams::default()).await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let left = self
                .tenants()
                .list(&Default::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            if !left.iter().any(|t| t.name_any().starts_with(&format!("t{}", self.id))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for op in self.operators.drain(..) {
            op.shutdown().await;
        }
        if let Some(s) = self.service.take() {
            s.shutdown().await;
        }
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let _ = nss.delete(&self.ns, &DeleteParams::default()).await;
    }
}

/// The Ready condition of an object's status.
pub fn ready(status: Option<&portcullis_operator::crd::Status>) -> Option<(String, String, String)> {
    status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits (up to 30 s) for `get` to return a Ready condition with `reason`.
pub async fn wait_reason<F, Fut>(what: &str, reason: &str, get: F) -> (String, String, String)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<(String, String, String)>>,
{
    let start = Instant::now();
    let mut last = None;
    loop {
        let c = get().await;
        if let Some(c) = &c
            && c.1 == reason
        {
            return c.clone();
        }
        last = c.or(last);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} never reached {reason}; last {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn allow(actions: &[&str], resources: &[&str]) -> portcullis::manifest::StatementSpec {
    portcullis::manifest::StatementSpec {
        sid: None,
        effect: portcullis::manifest::EffectSpec::Allow,
        actions: actions.iter().map(|s| s.to_string()).collect(),
        resources: resources.iter().map(|s| s.to_string()).collect(),
        condition: None,
    }
}

pub fn bind(id: &str, subject: &str, role: &str) -> portcullis::manifest::BindingSpec {
    portcullis::manifest::BindingSpec {
        id: Some(id.into()),
        subject: subject.into(),
        role: Some(role.into()),
        statements: vec![],
        scope: vec![],
        condition: None,
        not_before: None,
        expires_at: None,
    }
}
