//! DiagnosticsService: what this replica is, and an echo for load tests.

use std::sync::Arc;

use portcullis_proto::v1 as pb;
use portcullis_proto::v1::diagnostics_service_server::DiagnosticsService;
use tonic::{Request, Response, Status};

use super::{AppState, load};
use crate::repo::token;

const SVC: &str = "portcullis.v1.DiagnosticsService";

pub struct DiagnosticsApi {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl DiagnosticsService for DiagnosticsApi {
    async fn get_server_info(
        &self,
        request: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::GetServerInfoResponse>, Status> {
        self.state
            .observed(SVC, "GetServerInfo", async {
                let caller = super::auth::caller(&request)?;
                let index = self.state.index()?;
                let quarantined = index
                    .engine()
                    .quarantined()
                    .scopes
                    .iter()
                    // A confined key learns only of its own subtrees' trouble.
                    .filter(|(scope, _)| caller.may_act_on(scope.tenant.as_str()))
                    .map(|(scope, bad)| pb::QuarantinedScope {
                        tenant: scope.tenant.to_string(),
                        vault: scope.vault.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                        objects: bad.keys().cloned().collect(),
                        detail: bad.values().next().cloned().unwrap_or_default(),
                    })
                    .collect();
                let recent_jobs = if caller.is_confined() {
                    Vec::new()
                } else {
                    let log = self.state.job_log.lock().unwrap_or_else(|p| p.into_inner());
                    log.iter()
                        .rev()
                        .take(20)
                        .map(|r| pb::JobRun {
                            job: r.job.name().to_string(),
                            epoch: r.epoch,
                            at: Some(prost_types::Timestamp::from(r.at)),
                            ok: r.ok,
                        })
                        .collect()
                };
                let tenants = index.tenants();
                Ok(Response::new(pb::GetServerInfoResponse {
                    quarantined,
                    recent_jobs,
                    shard_tenants: if tenants.is_all() {
                        Vec::new()
                    } else {
                        tenants.patterns()
                    },
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    store_id: self.state.store_id.clone(),
                    store_backend: self.state.repo.store.backend().to_string(),
                    revision: token(index.revision()),
                    leader: self.state.leader.is_leader.load(std::sync::atomic::Ordering::Relaxed),
                    leader_epoch: load(&self.state.leader.epoch),
                }))
            })
            .await
    }

    async fn echo(&self, request: Request<pb::EchoRequest>) -> Result<Response<pb::EchoResponse>, Status> {
        self.state
            .observed(SVC, "Echo", async {
                let r = request.into_inner();
                Ok(Response::new(pb::EchoResponse { payload: r.payload }))
            })
            .await
    }
}
