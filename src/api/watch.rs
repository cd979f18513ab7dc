//! WatchService: the committed changes of a vault or a tenant, streamed.
//!
//! What one stream may hold is bounded whatever the client does: changes
//! are read from the store a few commits at a time, sent in messages of at
//! most [`MAX_MESSAGE_CHANGES_BYTES`] (a large commit becomes several
//! messages of the same revision, `more` set on all but the last), and at
//! most two messages wait for the client. A client that reads
//! nothing for [`WatchLimits::send_timeout`] is ended with ABORTED, reason
//! `WATCH_FELL_BEHIND` and the revision to resume after. Streams are capped
//! per API key and per server (RESOURCE_EXHAUSTED, `WATCH_STREAMS_EXHAUSTED`,
//! with a `RetryInfo`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_proto::v1 as pb;
use portcullis_proto::v1::watch_service_server::WatchService;
use tonic::{Code, Request, Response, Status};

use super::confine::TenantFields;
use super::convert::{change_to, opt_vault, tenant_id};
use super::{AppState, auth};
use crate::engine::Violations;
use crate::repo::{parse_token, token};

const SVC: &str = "portcullis.v1.WatchService";
/// Commits read from the store at once, per stream.
const PAGE: usize = 16;
/// Messages waiting for the client, per stream.
const BUFFERED: usize = 2;
/// A message holds changes up to about this many encoded bytes (one change
/// at least, however large).
pub const MAX_MESSAGE_CHANGES_BYTES: usize = 256 * 1024;

/// The bounds of the watch service.
#[derive(Debug, Clone)]
pub struct WatchLimits {
    pub max_streams: usize,
    pub max_streams_per_key: usize,
    /// How long a stream may wait for its client to read before it is ended.
    pub send_timeout: Duration,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            max_streams: 1024,
            max_streams_per_key: 128,
            send_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    per_key: HashMap<Arc<str>, usize>,
    trim_pending: bool,
}

pub struct WatchApi {
    pub state: Arc<AppState>,
    pub limits: WatchLimits,
    open: Arc<Mutex<Open>>,
}

impl WatchApi {
    pub fn new(state: Arc<AppState>, limits: WatchLimits) -> WatchApi {
        WatchApi {
            state,
            limits,
            open: Default::default(),
        }
    }

    /// Counts a new stream of `key`, or refuses it over a cap.
    fn admit(&self, key: &Arc<str>) -> Result<StreamSlot, Status> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = open.per_key.get(key).copied().unwrap_or(0);
        let (full, limit, what) = if open.total >= self.limits.max_streams {
            (true, self.limits.max_streams, "this server")
        } else if mine >= self.limits.max_streams_per_key {
            (true, self.limits.max_streams_per_key, "this API key")
        } else {
            (false, 0, "")
        };
        if full {
            return Err(super::status::build(
                Code::ResourceExhausted,
                &format!("{what} has {limit} Watch streams open, the most allowed; close one or retry later"),
                "WATCH_STREAMS_EXHAUSTED",
                &[("limit", limit.to_string()), ("scope", what.to_string())],
                Some(Duration::from_secs(1)),
                None,
            ));
        }
        open.total += 1;
        *open.per_key.entry(key.clone()).or_default() += 1;
        Ok(StreamSlot {
            open: self.open.clone(),
            key: key.clone(),
        })
    }
}

/// An open stream's place in the counts, released when the stream ends.
struct StreamSlot {
    open: Arc<Mutex<Open>>,
    key: Arc<str>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.per_key.remove(&self.key);
            }
        }
        if !open.trim_pending {
            open.trim_pending = true;
            release_freed_memory(self.open.clone());
        }
    }
}

/// Hands memory freed by ended streams back to the system. glibc keeps
/// freed memory in its per-thread arenas for reuse, so without this the
/// resident size of a server stays at its highest after a burst of
/// watchers; `malloc_trim` returns the free pages (on a blocking thread:
/// it walks the heap).
/// Streams tend to end together, so the trim runs once, shortly after the
/// first of a group ends.
fn release_freed_memory(open: Arc<Mutex<Open>>) {
    let Ok(h) = tokio::runtime::Handle::try_current() else {
        return;
    };
    h.spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        open.lock().unwrap_or_else(|p| p.into_inner()).trim_pending = false;
        let _ = tokio::task::spawn_blocking(|| {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only releases free memory; it is safe to
            // call at any time from any thread.
            unsafe {
                libc::malloc_trim(0);
            }
        })
        .await;
    });
}

/// One commit's changes as messages of bounded size.
fn messages(entry: &crate::repo::LogEntry) -> Vec<pb::WatchResponse> {
    let (revision, changes) = (entry.version, &entry.changes);
    let mut out = Vec::new();
    let mut cur: Vec<pb::Change> = Vec::new();
    let mut bytes = 0;
    for c in changes {
        let pc = change_to(c);
        let n = prost::Message::encoded_len(&pc);
        if !cur.is_empty() && bytes + n > MAX_MESSAGE_CHANGES_BYTES {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += n;
        cur.push(pc);
    }
    out.push(cur);
    let last = out.len() - 1;
    out.into_iter()
        .enumerate()
        .map(|(i, changes)| pb::WatchResponse {
            revision: token(revision),
            changes,
            more: i < last,
            actor: entry.by.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
            on_behalf_of: entry
                .by
                .as_ref()
                .and_then(|a| a.on_behalf_of.clone())
                .unwrap_or_default(),
            rpc: entry.by.as_ref().map(|a| a.rpc.clone()).unwrap_or_default(),
        })
        .collect()
}

#[tonic::async_trait]
impl WatchService for WatchApi {
    type WatchStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        self.state.observed(SVC, "Watch", async {
            let caller = auth::caller(&request)?;
            caller.require_all(&request.get_ref().tenant_fields())?;
            let r = request.into_inner();
            let mut v = Violations::new();
            let t = tenant_id(&mut v, "tenant", &r.tenant);
            let vn = opt_vault(&mut v, "vault", &r.vault);
            let (Some(t), Some(vn)) = (t, vn) else {
                return Err(Status::from(v));
            };
            caller.require_tenant(t.as_str())?;
            let index = self.state.index()?.clone();
            let mut after = if r.after_revision.is_empty() {
                index.revision()
            } else {
                parse_token("after_revision", &r.after_revision)?
            };
            let slot = self.admit(&caller.name)?;
            // The first read happens before the stream starts, so a revision
            // older than the changelog is an error status, not a stream item.
            let (tt, vv) = (t.clone(), vn.clone());
            let (first, upto) = self
                .state
                .repo.call(move |repo| repo.read_log(&tt, vv.as_ref(), after, PAGE))
                .await?;
            let state = self.state.clone();
            let send_timeout = self.limits.send_timeout;
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::WatchResponse, Status>>(BUFFERED);
            // The status a stream ends with comes after what is buffered, even
            // when the buffer is full (which is why a slow stream ends).
            let (end_tx, end_rx) = tokio::sync::oneshot::channel::<Status>();
            let mut stopping = self.state.shutdown.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let mut commits = index.subscribe();
                let mut full = first.len() == PAGE;
                let mut batch = first;
                let mut upto = upto;
                loop {
                    for entry in std::mem::take(&mut batch) {
                        let ver = entry.version;
                        for msg in messages(&entry) {
                            match tokio::time::timeout(send_timeout, tx.send(Ok(msg))).await {
                                Ok(Ok(())) => {}
                                Ok(Err(_)) => return,
                                Err(_) => {
                                    // The client stopped reading: end the stream
                                    // with where to resume, rather than buffer.
                                    let resume = token(after);
                                    let _ = end_tx.send(super::status::build(
                                        Code::Aborted,
                                        &format!(
                                            "this Watch stream fell behind (its client read nothing for {send_timeout:?}); watch again with after_revision {resume}"
                                        ),
                                        "WATCH_FELL_BEHIND",
                                        &[("resume_after", resume.clone())],
                                        None,
                                        None,
                                    ));
                                    return;
                                }
                            }
                        }
                        after = ver;
                    }
                    after = after.max(upto);
                    // A full page means more is waiting: read on at once.
                    // Otherwise wait for the next commit this replica learns of.
                    if !full {
                    tokio::select! {
                        r = commits.changed() => if r.is_err() { return },
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = tx.closed() => return,
                        // Streams end when the server shuts down, so draining finishes.
                        _ = stopping.wait_for(|s| *s) => return,
                    }
                    } else if *stopping.borrow() || tx.is_closed() {
                        return;
                    }
                    let (tt, vv) = (t.clone(), vn.clone());
                    match state.repo.call(move |repo| repo.read_log(&tt, vv.as_ref(), after, PAGE)).await {
                        Ok((b, u)) => {
                            full = b.len() == PAGE;
                            batch = b;
                            upto = u;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(Status::from(e))).await;
                            return;
                        }
                    }
                }
            });
            use futures::StreamExt;
            let end = futures::stream::once(end_rx).filter_map(|r| async move { r.ok().map(Err) });
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx).chain(end);
            Ok(Response::new(Box::pin(stream) as Self::WatchStream))
        })
        .await
    }
}
