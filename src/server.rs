//! Wiring: the one place the store, the index, the gRPC services, health,
//! reflection, metrics, leadership and jobs are put together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::v1::admin_service_server::AdminServiceServer;
use portcullis_proto::v1::audit_service_server::AuditServiceServer;
use portcullis_proto::v1::diagnostics_service_server::DiagnosticsServiceServer;
use portcullis_proto::v1::permission_service_server::PermissionServiceServer;
use portcullis_proto::v1::watch_service_server::WatchServiceServer;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::api::admin::AdminApi;
use crate::api::auth::{Keys, KeysError, Scope};
use crate::api::diagnostics::DiagnosticsApi;
use crate::api::permission::PermissionApi;
use crate::api::watch::WatchApi;
use crate::api::{AppState, LeaderStatus};
use crate::error::ServiceError;
use crate::index::LiveIndex;
use crate::jobs::{self, JobOptions};
use crate::repo::Repo;
use crate::store::{self, Backend, StoreError};
use crate::telemetry::{self, Metrics};
pub use crate::transport::TlsFiles;
use crate::transport::{self, TlsError, TlsReloader};

pub const SERVICES: [&str; 4] = [
    "portcullis.v1.PermissionService",
    "portcullis.v1.AdminService",
    "portcullis.v1.WatchService",
    "portcullis.v1.DiagnosticsService",
];

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// A span per RPC ([`crate::telemetry::traces`]): on when traces are
    /// exported.
    pub trace_requests: bool,
    pub metrics_listen: Option<SocketAddr>,
    pub backend: Backend,
    pub keys: Keys,
    pub tls: Option<TlsFiles>,
    /// The longest a unary request may take.
    pub request_timeout: Duration,
    pub max_message_bytes: usize,
    pub consistency_wait: Duration,
    /// How long health reports NOT_SERVING before the listener closes on
    /// shutdown, so load balancers stop sending first.
    pub drain_delay: Duration,
    pub jobs: JobOptions,
    /// Health turns NOT_SERVING while the index has trailed the store for
    /// longer than this, so traffic goes to replicas that are current.
    pub max_index_lag: Duration,
    /// How often the keys file and the TLS files are checked for changes.
    pub reload_interval: Duration,
    pub watch: crate::api::watch::WatchLimits,
    /// Expensive requests (lookups, bulk checks, export, import, costly
    /// conditions) running at once, and waiting, before load is shed.
    pub expensive_concurrency: usize,
    pub expensive_queue: usize,
    pub decision_log: crate::decisions::DecisionLogOptions,
    pub shard: ShardOptions,
}

/// Which tenants a replica serves.
#[derive(Debug, Clone, Default)]
pub enum ShardOptions {
    /// Every tenant: not sharded.
    #[default]
    All,
    /// These patterns, fixed for the process's life (`--tenants`).
    Tenants(crate::index::Tenants),
    /// The patterns the shard map names for this shard (`--shard-map FILE
    /// --shard NAME`), re-read every `reload_interval`: a tenant moved
    /// between shards in the map is served by its new shard without a
    /// restart.
    Map { path: std::path::PathBuf, name: String },
}

impl ShardOptions {
    /// The patterns in force now.
    fn tenants(&self) -> Result<crate::index::Tenants, String> {
        match self {
            ShardOptions::All => Ok(crate::index::Tenants::all()),
            ShardOptions::Tenants(t) => Ok(t.clone()),
            ShardOptions::Map { path, name } => {
                let map = portcullis_client::shard::ShardMap::load(path)?;
                map.shard(name)
                    .map(|s| s.tenants.clone())
                    .ok_or_else(|| format!("{}: no shard named {name:?}", path.display()))
            }
        }
    }
}

impl ServeOptions {
    /// Loopback, in-memory, no auth, fast jobs: for tests.
    pub fn for_tests() -> ServeOptions {
        ServeOptions {
            listen: "127.0.0.1:0".parse().expect("valid"),
            trace_requests: false,
            metrics_listen: Some("127.0.0.1:0".parse().expect("valid")),
            backend: Backend::Memory,
            keys: Keys::none(),
            tls: None,
            request_timeout: Duration::from_secs(30),
            max_message_bytes: 4 << 20,
            consistency_wait: Duration::from_secs(5),
            drain_delay: Duration::ZERO,
            jobs: JobOptions::default(),
            max_index_lag: Duration::from_secs(30),
            reload_interval: Duration::from_secs(5),
            watch: Default::default(),
            expensive_concurrency: 1,
            expensive_queue: 64,
            decision_log: Default::default(),
            shard: ShardOptions::All,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "refusing to serve without API keys on {0}: unauthenticated serving is allowed only on a loopback address; pass --auth-keys-file, require client certificates with --client-ca, or listen on 127.0.0.1"
    )]
    Unauthenticated(SocketAddr),
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    DecisionLog(#[from] crate::decisions::OpenError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot prepare the store: {0}")]
    Prepare(#[from] ServiceError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
    #[error("cannot install a signal handler: {0}")]
    Signal(std::io::Error),
    #[error("--shard-map: {0}")]
    ShardMap(String),
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    health: tonic_health::server::HealthReporter,
    drain_delay: Duration,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// This server's metrics (its own registry, apart from other servers').
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.state.metrics
    }

    /// Health to NOT_SERVING, wait the drain delay, stop accepting, let
    /// in-flight calls finish, stop the background tasks.
    pub async fn shutdown(self) {
        self.state.metrics.serving.set(0);
        for s in SERVICES.iter().chain(std::iter::once(&"")) {
            self.health.set_service_status(*s, ServingStatus::NotServing).await;
        }
        tokio::time::sleep(self.drain_delay).await;
        let _ = self.shutdown.send(true);
        // In-flight calls get a bounded time to finish.
        let abort = self.server.abort_handle();
        match tokio::time::timeout(Duration::from_secs(15), self.server).await {
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "server stopped with an error"),
            Ok(Err(e)) => tracing::error!(error = %e, "server task failed"),
            Ok(Ok(Ok(()))) => {}
            Err(_) => {
                tracing::warn!("in-flight calls did not finish within 15s; closing them");
                abort.abort();
            }
        }
        for b in self.background {
            let _ = tokio::time::timeout(Duration::from_secs(5), b).await;
        }
        tracing::info!("stopped");
    }

    /// Resolves when the index is loaded and the server is SERVING.
    pub async fn ready(&self) {
        while self.state.index().is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// tonic answers a message over the size limit with OUT_OF_RANGE; gRPC's
/// status codes say RESOURCE_EXHAUSTED. Portcullis never answers
/// OUT_OF_RANGE itself, so every such status (sent in the headers of a
/// trailers-only response) is one of those.
fn message_too_large_is_resource_exhausted<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let code = |c: tonic::Code| http::HeaderValue::from(c as i32);
    if resp.headers().get("grpc-status") == Some(&code(tonic::Code::OutOfRange)) {
        resp.headers_mut()
            .insert("grpc-status", code(tonic::Code::ResourceExhausted));
    }
    resp
}

/// Logs and counts the outcome of one reload check.
fn reloaded<E: std::fmt::Display>(metrics: &Metrics, what: &str, files: &str, r: Result<bool, E>) {
    match r {
        Ok(true) => {
            tracing::info!("{files} changed; the new configuration is in force (TLS: for new connections)");
            metrics.config_reloads.with_label_values(&[what, "ok"]).inc();
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "{files} changed but cannot be used; the previous configuration stays in force");
            metrics.config_reloads.with_label_values(&[what, "error"]).inc();
        }
    }
}

/// Runs `f` on the blocking pool every `every`, until shutdown. Polling,
/// not inotify: Kubernetes updates a mounted Secret or ConfigMap by
/// swapping a symlink to a new directory, which file watches on the old
/// paths miss; reading every few seconds catches every change.
fn spawn_polling(
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
    f: impl Fn() + Clone + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let _ = tokio::task::spawn_blocking(f.clone()).await;
        }
    })
}

/// Re-reads the shard map every `every`, until shutdown, and reloads the
/// index when this shard's patterns changed. A map that cannot be read, or
/// no longer names the shard, leaves the patterns in force as they were.
fn spawn_resharder(
    index: Arc<LiveIndex>,
    shard: ShardOptions,
    every: Duration,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    spawn_polling(every, shutdown, move || {
        let r = shard.tenants().and_then(|t| {
            if **index.tenants() == t {
                return Ok(false);
            }
            tracing::info!(tenants = %t, "the shard map moved tenants; reloading the index for them");
            index.reshard(t).map(|()| true).map_err(|e| e.to_string())
        });
        reloaded(&metrics, "shard_map", "the shard map", r);
    })
}

/// Re-reads the keys file and the TLS files every `every`, until shutdown.
fn spawn_reloader(
    keys: crate::api::auth::Keys,
    tls: Option<Arc<TlsReloader>>,
    every: Duration,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    spawn_polling(every, shutdown, move || {
        reloaded(&metrics, "keys", "API keys file", keys.reload());
        if let Some(t) = &tls {
            reloaded(&metrics, "tls", "TLS files", t.reload());
        }
    })
}

/// Opens the store, starts serving (health NOT_SERVING), loads the index in
/// the background, then reports SERVING.
pub async fn start(opts: ServeOptions) -> Result<Running, StartError> {
    let mtls = opts.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    if mtls && !opts.keys.is_enabled() {
        // Every connection presents a certificate chaining to the CA, and
        // its subject is the caller: authenticated, with every scope.
        tracing::info!(listen = %opts.listen, "callers authenticated by client certificate (no API keys: every verified client has every scope)");
    } else if !opts.keys.is_enabled() {
        if !opts.listen.ip().is_loopback() {
            return Err(StartError::Unauthenticated(opts.listen));
        }
        tracing::warn!(listen = %opts.listen, "serving WITHOUT authentication (loopback only); pass --auth-keys-file to require API keys");
        if let Some(m) = opts.metrics_listen
            && !m.ip().is_loopback()
        {
            tracing::warn!(metrics = %m, "metrics are exposed beyond loopback on a server without API keys");
        }
    }
    let tenants = opts.shard.tenants().map_err(StartError::ShardMap)?;
    let tls = match &opts.tls {
        Some(files) => Some(TlsReloader::new(files.clone())?),
        None => None,
    };
    let backend = opts.backend.clone();
    let store = tokio::task::spawn_blocking(move || store::open(&backend))
        .await
        .map_err(|e| StoreError::Io(e.to_string()))??;
    let metrics = Metrics::new();
    let repo = Arc::new(Repo::with_metrics(store.clone(), metrics.clone()));
    let store_id = repo.call(|r| r.store_id()).await?;
    let leader = Arc::new(LeaderStatus::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = Arc::new(AppState::new(
        repo.clone(),
        store_id.clone(),
        opts.consistency_wait,
        leader.clone(),
        shutdown_rx.clone(),
        crate::pool::Pool::new(
            "expensive",
            opts.expensive_concurrency,
            opts.expensive_queue,
            metrics.pool_rejected.with_label_values(&["expensive"]),
        ),
        crate::decisions::DecisionLog::start(&opts.decision_log, metrics.decision_log_dropped.clone())?,
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    for s in SERVICES.iter().chain(std::iter::once(&"")) {
        health.set_service_status(*s, ServingStatus::NotServing).await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(portcullis_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(portcullis_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;

    let max = opts.max_message_bytes;
    let keys = &opts.keys;
    let permission = InterceptedService::new(
        PermissionServiceServer::new(PermissionApi { state: state.clone() })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        keys.interceptor(Some(Scope::Check)),
    );
    let admin = InterceptedService::new(
        AdminServiceServer::new(AdminApi { state: state.clone() })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        keys.audited_interceptor(Scope::Admin),
    );
    let watch_svc = InterceptedService::new(
        WatchServiceServer::new(WatchApi::new(state.clone(), opts.watch.clone())).max_encoding_message_size(max),
        keys.interceptor(Some(Scope::Watch)),
    );
    let audit = InterceptedService::new(
        AuditServiceServer::new(crate::api::audit::AuditApi { state: state.clone() })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        keys.audited_interceptor(Scope::Audit),
    );
    let diagnostics = InterceptedService::new(
        DiagnosticsServiceServer::new(DiagnosticsApi { state: state.clone() }),
        keys.interceptor(None),
    );

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|error| StartError::Bind {
            addr: opts.listen,
            error,
        })?;
    let addr = listener.local_addr().map_err(|error| StartError::Bind {
        addr: opts.listen,
        error,
    })?;

    let router = Server::builder()
        .timeout(opts.request_timeout)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(crate::telemetry::traces::GrpcTraceLayer::new(opts.trace_requests))
        .layer(tower::util::MapResponseLayer::new(
            message_too_large_is_resource_exhausted,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(permission)
        .add_service(admin)
        .add_service(watch_svc)
        .add_service(audit)
        .add_service(diagnostics);
    let mut srx = shutdown_rx.clone();
    let stop = async move {
        let _ = srx.wait_for(|s| *s).await;
    };
    let server = match tls.clone() {
        Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(transport::tls(listener, tls), stop)),
        None => tokio::spawn(router.serve_with_incoming_shutdown(transport::plain(listener), stop)),
    };
    tracing::info!(%addr, store = store.backend(), %store_id, "listening");

    let metrics_addr = match opts.metrics_listen {
        Some(m) => {
            let mut mrx = shutdown_rx.clone();
            let a = telemetry::serve_metrics(m, metrics.clone(), async move {
                let _ = mrx.wait_for(|s| *s).await;
            })
            .await
            .map_err(|error| StartError::Bind { addr: m, error })?;
            tracing::info!(addr = %a, "metrics on /metrics");
            Some(a)
        }
        None => None,
    };

    // Load the index, then serve, follow the changelog and run jobs.
    let mut background = vec![spawn_reloader(
        opts.keys.clone(),
        tls,
        opts.reload_interval,
        metrics.clone(),
        shutdown_rx.clone(),
    )];
    {
        let (state, health, repo, jobs_opts) = (state.clone(), health.clone(), repo.clone(), opts.jobs.clone());
        let max_index_lag = opts.max_index_lag;
        let shutdown_rx = shutdown_rx.clone();
        let (shard, reload_every) = (opts.shard.clone(), opts.reload_interval);
        background.push(tokio::spawn(async move {
            let r = repo.clone();
            let index = loop {
                let (r, t) = (r.clone(), tenants.clone());
                match tokio::task::spawn_blocking(move || LiveIndex::load_shard(r, t)).await {
                    Ok(Ok(index)) => break index,
                    Ok(Err(e)) => tracing::error!(error = %e, "loading the index failed; retrying"),
                    Err(e) => tracing::error!(error = %e, "loading the index failed; retrying"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                if *shutdown_rx.borrow() {
                    return;
                }
            };
            state.set_index(index.clone());
            let tailer = index.spawn_tailer(shutdown_rx.clone());
            for s in SERVICES.iter().chain(std::iter::once(&"")) {
                health.set_service_status(*s, ServingStatus::Serving).await;
            }
            state.metrics.serving.set(1);
            tracing::info!("serving");
            let lag = spawn_lag_monitor(
                index.clone(),
                health,
                state.metrics.clone(),
                max_index_lag,
                shutdown_rx.clone(),
            );
            let resharder = matches!(shard, ShardOptions::Map { .. }).then(|| {
                spawn_resharder(
                    index.clone(),
                    shard,
                    reload_every,
                    state.metrics.clone(),
                    shutdown_rx.clone(),
                )
            });
            let jobs = jobs::spawn(
                repo,
                index,
                state.leader.clone(),
                state.job_log.clone(),
                state.metrics.clone(),
                jobs_opts,
                shutdown_rx,
            );
            let _ = tailer.await;
            let _ = jobs.await;
            let _ = lag.await;
            if let Some(r) = resharder {
                let _ = r.await;
            }
        }));
    }

    Ok(Running {
        addr,
        metrics_addr,
        state,
        shutdown: shutdown_tx,
        server,
        health,
        drain_delay: opts.drain_delay,
        background,
    })
}

/// Reports NOT_SERVING while the index has trailed the store for longer
/// than `max_lag` (a stuck tailer must not keep answering from stale
/// data), SERVING again once it catches up.
fn spawn_lag_monitor(
    index: Arc<LiveIndex>,
    health: tonic_health::server::HealthReporter,
    metrics: Arc<Metrics>,
    max_lag: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut serving = true;
        let every = (max_lag / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let behind = index.lagging_for().is_some_and(|d| d > max_lag);
            if behind == serving {
                serving = !behind;
                if behind {
                    tracing::error!(max_lag = ?max_lag, revision = index.revision(), "the index is stuck behind the store; reporting NOT_SERVING");
                } else {
                    tracing::info!("the index caught up with the store; reporting SERVING");
                }
                let status = if serving {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                if *shutdown.borrow() {
                    return;
                }
                metrics.serving.set(i64::from(serving));
                for s in SERVICES.iter().chain(std::iter::once(&"")) {
                    health.set_service_status(*s, status).await;
                }
            }
        }
    })
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(opts: ServeOptions) -> Result<(), StartError> {
    let running = start(opts).await?;
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(StartError::Signal)?;
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
    running.shutdown().await;
    Ok(())
}
