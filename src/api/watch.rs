//! WatchService: the committed changes of a vault or a tenant, streamed.

use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::v1 as pb;
use portcullis_proto::v1::watch_service_server::WatchService;
use tonic::{Request, Response, Status};

use super::confine::TenantFields;
use super::convert::{change_to, opt_vault, tenant_id};
use super::{AppState, auth, observed, st};
use crate::engine::Violations;
use crate::repo::{parse_token, token};

const SVC: &str = "portcullis.v1.WatchService";
const PAGE: usize = 500;

pub struct WatchApi {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl WatchService for WatchApi {
    type WatchStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        observed(SVC, "Watch", async {
            let caller = auth::caller(&request)?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let mut v = Violations::new();
            let t = tenant_id(&mut v, "tenant", &r.tenant);
            let vn = opt_vault(&mut v, "vault", &r.vault);
            let (Some(t), Some(vn)) = (t, vn) else {
                return Err(st(v));
            };
            caller.require_tenant(t.as_str())?;
            let index = self.state.index()?.clone();
            let mut after = if r.after_revision.is_empty() {
                index.revision()
            } else {
                parse_token("after_revision", &r.after_revision).map_err(st)?
            };
            // The first read happens before the stream starts, so a revision
            // older than the changelog is an error status, not a stream item.
            let repo = self.state.repo.clone();
            let (tt, vv) = (t.clone(), vn.clone());
            let (first, upto) = self
                .state
                .blocking(move || repo.read_log(&tt, vv.as_ref(), after, PAGE))
                .await
                .map_err(st)?;
            let repo = self.state.repo.clone();
            let state = self.state.clone();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::WatchResponse, Status>>(64);
            let mut stopping = self.state.shutdown.clone();
            tokio::spawn(async move {
                let mut commits = index.subscribe();
                let mut batch = first;
                let mut upto = upto;
                loop {
                    for (ver, changes) in batch.drain(..) {
                        let msg = pb::WatchResponse {
                            revision: token(ver),
                            changes: changes.iter().map(change_to).collect(),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                        after = ver;
                    }
                    after = after.max(upto);
                    // Wait for the next commit this replica learns of.
                    tokio::select! {
                        r = commits.changed() => if r.is_err() { return },
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = tx.closed() => return,
                        // Streams end when the server shuts down, so draining finishes.
                        _ = stopping.wait_for(|s| *s) => return,
                    }
                    let (repo2, tt, vv) = (repo.clone(), t.clone(), vn.clone());
                    match state
                        .blocking(move || repo2.read_log(&tt, vv.as_ref(), after, PAGE))
                        .await
                    {
                        Ok((b, u)) => {
                            batch = b;
                            upto = u;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(st(e))).await;
                            return;
                        }
                    }
                }
            });
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            Ok(Response::new(Box::pin(stream) as Self::WatchStream))
        })
        .await
    }
}
