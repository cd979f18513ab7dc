//! Starting real servers and connecting real clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use portcullis::server::{Running, ServeOptions};
use portcullis_client::Authed;
pub use portcullis_client::Bearer;
use portcullis_proto::v1 as pb;
use portcullis_proto::v1::admin_service_client::AdminServiceClient;
use portcullis_proto::v1::permission_service_client::PermissionServiceClient;
use tonic::transport::Channel;

pub type Admin = AdminServiceClient<Authed>;
pub type Perm = PermissionServiceClient<Authed>;

pub fn bearer(token: Option<&str>) -> Bearer {
    Bearer::optional(token).expect("printable key")
}

pub async fn start(opts: ServeOptions) -> Running {
    let r = portcullis::server::start(opts).await.expect("server starts");
    tokio::time::timeout(Duration::from_secs(20), r.ready())
        .await
        .expect("server becomes ready");
    r
}

pub async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub async fn admin(addr: SocketAddr, token: Option<&str>) -> Admin {
    AdminServiceClient::with_interceptor(channel(addr).await, bearer(token))
}

pub async fn perm(addr: SocketAddr, token: Option<&str>) -> Perm {
    PermissionServiceClient::with_interceptor(channel(addr).await, bearer(token))
}

pub fn tenant(id: &str) -> pb::Tenant {
    pb::Tenant {
        id: id.into(),
        ..Default::default()
    }
}

pub fn vault(tenant: &str, name: &str) -> pb::Vault {
    pb::Vault {
        tenant: tenant.into(),
        name: name.into(),
        ..Default::default()
    }
}

pub fn allow(actions: &[&str], resources: &[&str]) -> pb::Statement {
    pb::Statement {
        effect: pb::Effect::Allow as i32,
        actions: actions.iter().map(|s| s.to_string()).collect(),
        resources: resources.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn deny(actions: &[&str], resources: &[&str]) -> pb::Statement {
    pb::Statement {
        effect: pb::Effect::Deny as i32,
        ..allow(actions, resources)
    }
}

pub fn role(tenant: &str, vault: &str, name: &str, statements: Vec<pb::Statement>) -> pb::Role {
    pb::Role {
        tenant: tenant.into(),
        vault: vault.into(),
        name: name.into(),
        statements,
        ..Default::default()
    }
}

pub fn binding(id: &str, subject: &str, role: &str) -> pb::Binding {
    pb::Binding {
        id: id.into(),
        subject: subject.into(),
        role: role.into(),
        ..Default::default()
    }
}

pub fn check_req(tenant: &str, vault: &str, subject: &str, action: &str, resource: &str) -> pb::CheckPermissionRequest {
    pb::CheckPermissionRequest {
        tenant: tenant.into(),
        vault: vault.into(),
        subject: subject.into(),
        action: action.into(),
        resource: resource.into(),
        ..Default::default()
    }
}

/// Creates tenant `acme`, vault `docs`, role `reader` (documents:read) and
/// returns the revision of the last write.
pub async fn seed(a: &mut Admin) -> String {
    a.apply_tenant(pb::ApplyTenantRequest {
        tenant: Some(tenant("acme")),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    a.apply_vault(pb::ApplyVaultRequest {
        vault: Some(vault("acme", "docs")),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    a.apply_role(pb::ApplyRoleRequest {
        role: Some(role(
            "acme",
            "",
            "reader",
            vec![allow(&["documents:read", "documents:list"], &["document:*"])],
        )),
        expected_revision: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .revision
}

pub async fn is_allowed(p: &mut Perm, subject: &str, action: &str, resource: &str, token: Option<&str>) -> bool {
    let mut r = check_req("acme", "docs", subject, action, resource);
    if let Some(t) = token {
        r.consistency = Some(pb::Consistency {
            requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(t.into())),
        });
    }
    p.check_permission(r).await.unwrap().into_inner().decision == pb::Decision::Allowed as i32
}

/// `examples/acme.yaml` applied through `c`, as the README's "Try it" does.
pub async fn seed_acme(c: &portcullis_client::Client) {
    let docs = portcullis::manifest::parse_documents(include_str!("../../examples/acme.yaml")).unwrap();
    c.apply(&portcullis::manifest::writes_of(&docs).unwrap())
        .await
        .expect("the example applies");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
