//! The Rust client of Portcullis, used by the CLI, the operator and the
//! tests, and by services that call Portcullis.
//!
//! - [`Config`] connects (plaintext on loopback, TLS, mTLS) and sends the
//!   API key on every call ([`Bearer`]).
//! - [`Client`] has one method per unary RPC; each retries on UNAVAILABLE
//!   with exponential backoff ([`RetryPolicy`]) and fails with an [`Error`]
//!   whose [`Reason`] comes from the server's `google.rpc.ErrorInfo`:
//!   branch on it, never on the message.
//! - `list_all_*` read every page of a list.
//! - [`Write`] is one step of applying manifest documents; [`Client::apply`]
//!   runs them in order.
//! - [`shard::Router`] routes calls by tenant over a sharded installation.
//!
//! ```no_run
//! # async fn run() -> Result<(), portcullis_client::Error> {
//! use portcullis_client::{Config, Reason, pb};
//! let client = Config::new("http://127.0.0.1:50051").token("secret").connect().await?;
//! match client.get_tenant(pb::GetTenantRequest { id: "acme".into() }).await {
//!     Ok(t) => println!("{} at {}", t.id, t.revision),
//!     Err(e) if e.reason() == &Reason::TenantNotFound => println!("no such tenant"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```

mod apply;
mod cache;
mod check;
mod connect;
mod error;
mod filter;
mod freshness;
pub mod json;
pub mod layer;
mod pages;
mod retry;
pub mod shard;

use std::sync::Arc;

pub use apply::{Applied, ApplyError, Write};
pub use cache::{CacheConfig, CacheStats, DecisionCache};
pub use check::{BulkResult, Check, CheckBulk, Consistency, Decision};
pub use connect::{Authed, Bearer, Config};
pub use error::{Error, Reason, Violation};
pub use filter::{Access, LookupResources, ResourceFilter, Rule, pattern_matches};
pub use pages::{Changes, PagedRequest, Pages};
pub use portcullis_proto::v1 as pb;
pub use retry::RetryPolicy;

use freshness::Freshness;

use pb::admin_service_client::AdminServiceClient;
use pb::audit_service_client::AuditServiceClient;
use pb::diagnostics_service_client::DiagnosticsServiceClient;
use pb::permission_service_client::PermissionServiceClient;
use pb::watch_service_client::WatchServiceClient;

/// A connected client: cheap to clone, safe to share.
#[derive(Clone)]
pub struct Client {
    channel: tonic::transport::Channel,
    bearer: Bearer,
    admin: AdminServiceClient<Authed>,
    audit: AuditServiceClient<Authed>,
    permission: PermissionServiceClient<Authed>,
    diagnostics: DiagnosticsServiceClient<Authed>,
    watch: WatchServiceClient<Authed>,
    retry: RetryPolicy,
    /// Shared by clones: a write through one is read through all.
    freshness: Arc<Freshness>,
    cache: Option<Arc<DecisionCache>>,
    /// What a typed call asks for unless told otherwise.
    consistency: Consistency,
}

/// One method per unary RPC: the request is cloned for each attempt, and a
/// write (marked `writes`) leaves its revision for
/// [`Consistency::ReadYourWrites`].
macro_rules! unary {
    ($($service:ident { $($(#[$doc:meta])* $name:ident($req:ty) -> $resp:ty $(, $writes:ident)?;)* })*) => {
        impl Client {
            $($(
                $(#[$doc])*
                pub async fn $name(&self, request: $req) -> Result<$resp, Error> {
                    let client = &self.$service;
                    let response = self.retry
                        .run(|| {
                            let mut c = client.clone();
                            let r = request.clone();
                            async move { c.$name(r).await.map(tonic::Response::into_inner) }
                        })
                        .await?;
                    $(unary!(@$writes self, request, response);)?
                    Ok(response)
                }
            )*)*
        }
    };
    (@writes $self:ident, $request:ident, $response:ident) => {
        $self.freshness.wrote(
            freshness::WritesTenant::tenant(&$request),
            freshness::WrittenAt::written_at(&$response),
        )
    };
}

unary! {
    admin {
        apply_tenant(pb::ApplyTenantRequest) -> pb::ApplyTenantResponse, writes;
        get_tenant(pb::GetTenantRequest) -> pb::Tenant;
        list_tenants(pb::ListTenantsRequest) -> pb::ListTenantsResponse;
        delete_tenant(pb::DeleteTenantRequest) -> pb::DeleteResponse, writes;
        apply_vault(pb::ApplyVaultRequest) -> pb::ApplyVaultResponse, writes;
        get_vault(pb::GetVaultRequest) -> pb::Vault;
        list_vaults(pb::ListVaultsRequest) -> pb::ListVaultsResponse;
        delete_vault(pb::DeleteVaultRequest) -> pb::DeleteResponse, writes;
        apply_role(pb::ApplyRoleRequest) -> pb::ApplyRoleResponse, writes;
        get_role(pb::GetRoleRequest) -> pb::Role;
        list_roles(pb::ListRolesRequest) -> pb::ListRolesResponse;
        delete_role(pb::DeleteRoleRequest) -> pb::DeleteResponse, writes;
        write_bindings(pb::WriteBindingsRequest) -> pb::WriteResponse, writes;
        list_bindings(pb::ListBindingsRequest) -> pb::ListBindingsResponse;
        write_memberships(pb::WriteMembershipsRequest) -> pb::WriteResponse, writes;
        list_memberships(pb::ListMembershipsRequest) -> pb::ListMembershipsResponse;
        /// What a change would do, without writing it.
        plan_changes(pb::PlanChangesRequest) -> pb::PlanChangesResponse;
    }
    permission {
        /// The raw RPC, never cached and with the consistency as given;
        /// [`Client::check`] is the typed call.
        check_permission(pb::CheckPermissionRequest) -> pb::CheckPermissionResponse;
        /// The raw RPC; [`Client::check_bulk`] is the typed call.
        check_bulk_permissions(pb::CheckBulkPermissionsRequest) -> pb::CheckBulkPermissionsResponse;
        /// One page, raw; [`Client::effective_permissions`] streams them all.
        get_effective_permissions(pb::GetEffectivePermissionsRequest) -> pb::GetEffectivePermissionsResponse;
    }
    audit {
        /// A page of audit events.
        list_audit_events(pb::ListAuditEventsRequest) -> pb::ListAuditEventsResponse;
        /// Recomputes a tenant's audit chain.
        verify_audit_chain(pb::VerifyAuditChainRequest) -> pb::VerifyAuditChainResponse;
    }
    diagnostics {
        get_server_info(pb::GetServerInfoRequest) -> pb::GetServerInfoResponse;
        echo(pb::EchoRequest) -> pb::EchoResponse;
    }
}

impl Client {
    /// One PermissionService call under the retry policy, each attempt on
    /// its own clone of `request` (and with `timeout` as its deadline): the
    /// typed checks and lookups share it.
    pub(crate) async fn permission_call<Q, T, F, Fut>(
        &self,
        request: &Q,
        timeout: Option<std::time::Duration>,
        call: F,
    ) -> Result<T, Error>
    where
        Q: Clone,
        F: Fn(PermissionServiceClient<Authed>, tonic::Request<Q>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.retry
            .run(|| {
                let mut r = tonic::Request::new(request.clone());
                if let Some(t) = timeout {
                    r.set_timeout(t);
                }
                let fut = call(self.permission.clone(), r);
                async move { fut.await.map(tonic::Response::into_inner) }
            })
            .await
    }

    fn new(channel: tonic::transport::Channel, bearer: Bearer, retry: RetryPolicy) -> Client {
        let authed = || tonic::service::interceptor::InterceptedService::new(channel.clone(), bearer.clone());
        Client {
            admin: AdminServiceClient::new(authed()),
            audit: AuditServiceClient::new(authed()),
            permission: PermissionServiceClient::new(authed()),
            diagnostics: DiagnosticsServiceClient::new(authed()),
            watch: WatchServiceClient::new(authed()),
            channel,
            bearer,
            retry,
            freshness: Arc::default(),
            cache: None,
            consistency: Consistency::default(),
        }
    }

    /// The same client, its calls made on behalf of `who` (recorded in the
    /// audit trail; the operator names the Kubernetes object it reconciles).
    /// It shares this client's write tokens and decision cache.
    pub fn on_behalf_of(&self, who: &str) -> Result<Client, Error> {
        Ok(Client {
            freshness: self.freshness.clone(),
            cache: self.cache.clone(),
            consistency: self.consistency.clone(),
            ..Client::new(self.channel.clone(), self.bearer.on_behalf_of(who)?, self.retry)
        })
    }

    /// The decision cache, when [`Config::decision_cache`] enabled one.
    pub fn decision_cache(&self) -> Option<&DecisionCache> {
        self.cache.as_deref()
    }

    /// The newest revision token this client wrote to `tenant` or one of
    /// its ancestors: what [`Consistency::ReadYourWrites`] waits for.
    pub fn written_at(&self, tenant: &str) -> Option<String> {
        self.freshness.needed(tenant).map(freshness::token_of)
    }

    /// The channel without the API key, for the standard services (health,
    /// reflection) that need none.
    pub fn channel(&self) -> tonic::transport::Channel {
        self.channel.clone()
    }

    /// The generated AdminService client, for the streaming calls (import,
    /// export) and anything else without a method here.
    pub fn admin(&self) -> AdminServiceClient<Authed> {
        self.admin.clone()
    }

    /// The generated PermissionService client.
    pub fn permission(&self) -> PermissionServiceClient<Authed> {
        self.permission.clone()
    }

    /// The generated DiagnosticsService client.
    pub fn diagnostics(&self) -> DiagnosticsServiceClient<Authed> {
        self.diagnostics.clone()
    }

    /// The generated WatchService client (Watch is a stream, not retried).
    pub fn watch(&self) -> WatchServiceClient<Authed> {
        self.watch.clone()
    }

    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Client {
        self.retry = retry;
        self
    }
}
