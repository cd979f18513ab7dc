//! The command line: `serve`, and the client commands that talk to a
//! server (`check`, `apply`, `import`, `export`), plus `hash-key`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod audit;
mod get;
mod lookup;
mod progress;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use portcullis_client::{Client, Config};
use portcullis_proto::v1 as pb;

use crate::api::auth::Keys;
use crate::api::convert;
use crate::engine::ids::{TenantId, VaultName};
use crate::engine::model::{Labels, Source};
use crate::manifest::{self, Document};
use crate::server::{ServeOptions, TlsFiles};
use crate::store::Backend;
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A gRPC authorization service: tenants, vaults, roles, bindings."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Check one permission (`-o json` for scripts).
    Check(lookup::CheckArgs),
    /// What a subject may do an action on, as rules (scope and resource
    /// patterns, conditions).
    LookupResources(lookup::LookupResourcesArgs),
    /// Who may do an action on a resource: every subject, groups expanded.
    LookupSubjects(lookup::LookupSubjectsArgs),
    /// Every statement that reaches a subject, with where it comes from.
    Effective(lookup::EffectiveArgs),
    /// Apply manifests (Tenant, Vault, Role, Binding, Membership documents).
    Apply(ApplyArgs),
    /// Show what applying a manifest would change: each object, and the
    /// access every subject gains and loses. Exit 0 when nothing would
    /// change, 1 when something would, 2 when the manifest is invalid.
    Diff(DiffArgs),
    /// Load roles, bindings and memberships from a manifest into a vault.
    Import(ImportArgs),
    /// Write a vault, its roles, bindings and memberships as a manifest.
    Export(ExportArgs),
    /// List objects (`get tenants`, `get roles --tenant acme`, ...) as a
    /// table, or as manifests `apply -f` reads back (`-o yaml|json`).
    Get(get::GetArgs),
    /// Show objects in detail: limits and usage, statements, members.
    Describe(get::DescribeArgs),
    /// Ask a server's gRPC health service; exit 0 when SERVING (for probes).
    Health {
        #[command(flatten)]
        client: ClientArgs,
        /// The service to ask about; empty for the server as a whole.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Run policy test suites (`*.test.yaml`) offline, with the engine in
    /// process: exit 0 when all pass, 1 when one fails, 2 on an invalid file.
    Test(TestArgs),
    /// Read the audit trail: list, verify a tenant's chain, export JSON lines.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Print the SHA-256 of an API key secret, for the keys file.
    HashKey {
        /// The secret.
        secret: String,
    },
    /// Print a shell completion script: `source <(portcullis completion bash)`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from these definitions:
    /// `portcullis man | man -l -`.
    Man,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Embedded,
    Memory,
    Foundationdb,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Export OpenTelemetry traces (a span per RPC and per store
    /// transaction, parented by the caller's W3C `traceparent`) to this
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`. Off when
    /// unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Prometheus metrics listen address.
    #[arg(long, env = "PORTCULLIS_METRICS_LISTEN", default_value = "127.0.0.1:9090")]
    pub metrics_listen: SocketAddr,
    /// The store backend.
    #[arg(long, env = "PORTCULLIS_STORE", value_enum, default_value = "embedded")]
    pub store: StoreKind,
    /// Directory of the embedded store.
    #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// FoundationDB cluster file, for `--store foundationdb`.
    #[arg(
        long,
        env = "PORTCULLIS_FDB_CLUSTER_FILE",
        default_value = "/etc/foundationdb/fdb.cluster"
    )]
    pub fdb_cluster_file: PathBuf,
    /// YAML file of API keys; without it the server only listens on loopback, unauthenticated.
    #[arg(long, env = "PORTCULLIS_AUTH_KEYS_FILE")]
    pub auth_keys_file: Option<PathBuf>,
    /// TLS certificate (PEM).
    #[arg(long, env = "PORTCULLIS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "PORTCULLIS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to (mTLS).
    #[arg(long, env = "PORTCULLIS_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// The longest a unary request may take, in seconds.
    #[arg(long, env = "PORTCULLIS_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout: u64,
    /// The longest a request waits for this replica to catch up to a consistency token, in milliseconds.
    #[arg(long, env = "PORTCULLIS_CONSISTENCY_WAIT_MS", default_value_t = 5000)]
    pub consistency_wait_ms: u64,
    /// Largest accepted or sent message, in bytes.
    #[arg(long, env = "PORTCULLIS_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    pub max_message_bytes: usize,
    /// Seconds health reports NOT_SERVING before the listener closes on shutdown.
    #[arg(long, env = "PORTCULLIS_DRAIN_DELAY", default_value_t = 0)]
    pub drain_delay: u64,
    /// Seconds the index may trail the store before health reports NOT_SERVING.
    #[arg(long, env = "PORTCULLIS_MAX_INDEX_LAG", default_value_t = 30)]
    pub max_index_lag: u64,
    /// Seconds between checks of the keys file and the TLS files for changes.
    #[arg(long, env = "PORTCULLIS_RELOAD_INTERVAL", default_value_t = 5)]
    pub reload_interval: u64,
    /// Watch streams open at once on this server.
    #[arg(long, env = "PORTCULLIS_MAX_WATCH_STREAMS", default_value_t = 1024)]
    pub max_watch_streams: usize,
    /// Watch streams open at once per API key.
    #[arg(long, env = "PORTCULLIS_MAX_WATCH_STREAMS_PER_KEY", default_value_t = 128)]
    pub max_watch_streams_per_key: usize,
    /// Seconds a Watch stream waits for its client to read before it is ended (resumable).
    #[arg(long, env = "PORTCULLIS_WATCH_SEND_TIMEOUT", default_value_t = 30)]
    pub watch_send_timeout: u64,
    /// Expensive requests (lookups, bulk checks, export, import, costly conditions) run at once; default half the cores.
    #[arg(long, env = "PORTCULLIS_EXPENSIVE_CONCURRENCY")]
    pub expensive_concurrency: Option<usize>,
    /// Expensive requests waiting before more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "PORTCULLIS_EXPENSIVE_QUEUE", default_value_t = 64)]
    pub expensive_queue: usize,
    #[command(flatten)]
    pub jobs: crate::jobs::JobArgs,
    /// Decision logs: `off`, `stdout`, or a file path (one JSON line per logged check).
    #[arg(long, env = "PORTCULLIS_DECISION_LOG", default_value = "off")]
    pub decision_log: crate::decisions::Sink,
    /// Share of allowed decisions logged, 0 to 1.
    #[arg(long, env = "PORTCULLIS_DECISION_LOG_SAMPLE_ALLOWED", default_value_t = 0.01)]
    pub decision_log_sample_allowed: f64,
    /// Share of denied decisions logged, 0 to 1.
    #[arg(long, env = "PORTCULLIS_DECISION_LOG_SAMPLE_DENIED", default_value_t = 1.0)]
    pub decision_log_sample_denied: f64,
    /// `keys` logs the context's keys only; `values` its values too.
    #[arg(long, env = "PORTCULLIS_DECISION_LOG_CONTEXT", value_enum, default_value = "keys")]
    pub decision_log_context: ContextLogging,
    /// Rotate the decision log file before it passes this many bytes (the old one becomes FILE.1).
    #[arg(long, env = "PORTCULLIS_DECISION_LOG_MAX_BYTES", default_value_t = 100 << 20)]
    pub decision_log_max_bytes: u64,
    /// Serve only these tenants (a shard): comma-separated `TENANT` (that
    /// tenant), `TENANT/**` (its subtree) or `**`. Other tenants' checks get
    /// FAILED_PRECONDITION, reason WRONG_SHARD. Default: every tenant.
    #[arg(long, env = "PORTCULLIS_TENANTS", conflicts_with = "shard_map")]
    pub tenants: Option<crate::index::Tenants>,
    /// A shard map (YAML: shards with name, address, tenants) naming this
    /// replica's tenants under `--shard`; re-read every --reload-interval,
    /// so tenants move between shards without a restart.
    #[arg(long, env = "PORTCULLIS_SHARD_MAP", requires = "shard")]
    pub shard_map: Option<PathBuf>,
    /// This replica's shard in `--shard-map`.
    #[arg(long, env = "PORTCULLIS_SHARD", requires = "shard_map")]
    pub shard: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ContextLogging {
    Keys,
    Values,
}

fn share(flag: &str, v: f64) -> Result<f64> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        bail!("{flag} must be between 0 and 1, got {v}")
    }
}

impl ServeArgs {
    pub fn options(&self) -> Result<ServeOptions> {
        let keys = match &self.auth_keys_file {
            Some(p) => Keys::load(p)?,
            None => Keys::none(),
        };
        Ok(ServeOptions {
            listen: self.listen,
            trace_requests: self.otlp_endpoint.is_some(),
            metrics_listen: Some(self.metrics_listen),
            backend: match self.store {
                StoreKind::Embedded => Backend::Embedded {
                    dir: self.data_dir.clone(),
                },
                StoreKind::Memory => Backend::Memory,
                StoreKind::Foundationdb => Backend::FoundationDb {
                    cluster_file: self.fdb_cluster_file.clone(),
                },
            },
            keys,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.client_ca.clone(),
                }),
                _ => None,
            },
            request_timeout: Duration::from_secs(self.request_timeout.max(1)),
            max_message_bytes: self.max_message_bytes,
            consistency_wait: Duration::from_millis(self.consistency_wait_ms),
            drain_delay: Duration::from_secs(self.drain_delay),
            jobs: self.jobs.options(),
            max_index_lag: Duration::from_secs(self.max_index_lag.max(1)),
            reload_interval: Duration::from_secs(self.reload_interval.max(1)),
            watch: crate::api::watch::WatchLimits {
                max_streams: self.max_watch_streams,
                max_streams_per_key: self.max_watch_streams_per_key,
                send_timeout: Duration::from_secs(self.watch_send_timeout.max(1)),
            },
            expensive_concurrency: self
                .expensive_concurrency
                .unwrap_or_else(|| (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) / 2).max(1)),
            expensive_queue: self.expensive_queue,
            decision_log: crate::decisions::DecisionLogOptions {
                sink: self.decision_log.clone(),
                sample_allowed: share("--decision-log-sample-allowed", self.decision_log_sample_allowed)?,
                sample_denied: share("--decision-log-sample-denied", self.decision_log_sample_denied)?,
                context_values: self.decision_log_context == ContextLogging::Values,
                max_bytes: self.decision_log_max_bytes,
                ..Default::default()
            },
            shard: match (&self.tenants, &self.shard_map, &self.shard) {
                (Some(t), _, _) => crate::server::ShardOptions::Tenants(t.clone()),
                (None, Some(path), Some(name)) => crate::server::ShardOptions::Map {
                    path: path.clone(),
                    name: name.clone(),
                },
                _ => crate::server::ShardOptions::All,
            },
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server.
    #[arg(long, env = "PORTCULLIS_ENDPOINT", default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    /// API key secret, sent as `authorization: Bearer <token>`.
    #[arg(long, env = "PORTCULLIS_TOKEN")]
    pub token: Option<String>,
    /// CA certificate (PEM) to verify an https endpoint with.
    #[arg(long, env = "PORTCULLIS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, env = "PORTCULLIS_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "PORTCULLIS_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test files, or directories searched recursively for `*.test.yaml`.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Also write a JUnit XML report here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// Print how many cases each role statement and binding applied in, and
    /// those no case exercised.
    #[arg(long)]
    pub coverage: bool,
    /// Fail (exit 1) when less than this share (in percent) of role
    /// statements and bindings was exercised.
    #[arg(long, value_parser = clap::value_parser!(f64))]
    pub min_coverage: Option<f64>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Manifest file ('-' for standard input).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Print what applying would change (as `diff` does) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: text or json.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Manifest file ('-' for standard input).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub vault: String,
    /// Manifest of Role, Binding and Membership documents (as `export` writes).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub vault: String,
    /// Output file; standard output when omitted.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

fn read_file(p: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

/// Connects with the client flags.
pub async fn connect(c: &ClientArgs) -> Result<Client> {
    let mut config = Config::new(c.endpoint.clone()).optional_token(c.token.clone());
    if let Some(ca) = &c.ca_cert {
        config = config.ca_certificate(read_file(ca)?);
    }
    if let (Some(cert), Some(key)) = (&c.client_cert, &c.client_key) {
        config = config.client_identity(read_file(cert)?, read_file(key)?);
    }
    Ok(config.connect().await?)
}

fn read_input(p: &PathBuf) -> Result<String> {
    if p.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    }
}

/// The runtime the binary runs on. Its threads get 8 MiB stacks (virtual
/// memory, committed only as used) rather than 2 MiB: evaluating a
/// condition recurses as deep as the condition nests (at most 100 levels),
/// and a stack overflow aborts the process.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
}

/// Runs a command; the exit code says how it went (commands that only
/// succeed or fail use 0 and, through the error, 1).
/// An error as the command line prints it: a server's refusal with its
/// reason and field violations one per line, anything else with its causes.
pub fn report(e: &anyhow::Error) -> String {
    match e.chain().find_map(|c| c.downcast_ref::<portcullis_client::Error>()) {
        Some(c) => {
            let context: Vec<String> = e
                .chain()
                .take_while(|x| x.downcast_ref::<portcullis_client::Error>().is_none())
                .map(|x| x.to_string())
                .collect();
            if context.is_empty() {
                c.report()
            } else {
                format!("{}: {}", context.join(": "), c.report())
            }
        }
        None => format!("{e:#}"),
    }
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let otlp = match &cli.command {
        Command::Serve(args) => args.otlp_endpoint.clone(),
        _ => None,
    };
    // Inside the runtime: the OTLP exporter needs one.
    let traces = crate::telemetry::init(cli.log_format, otlp.as_deref())?;
    let done = match cli.command {
        Command::Serve(args) => {
            let opts = args.options()?;
            let result = crate::server::run(opts).await;
            drop(traces);
            #[cfg(feature = "fdb")]
            crate::store::fdb::stop_network();
            result?;
            Ok(())
        }
        Command::Check(a) => lookup::check(a).await,
        Command::LookupResources(a) => lookup::lookup_resources(a).await,
        Command::LookupSubjects(a) => lookup::lookup_subjects(a).await,
        Command::Effective(a) => lookup::effective(a).await,
        Command::Apply(a) => apply(a).await,
        Command::Diff(a) => return diff(a).await,
        Command::Import(a) => import(a).await,
        Command::Export(a) => export(a).await,
        Command::Get(a) => get::get(a).await,
        Command::Describe(a) => get::describe(a).await,
        Command::Health { client, service } => health(client, service).await,
        Command::Test(a) => return Ok(policy_test(a)),
        Command::Audit(a) => return audit::run(a).await,
        Command::HashKey { secret } => {
            println!("{}", Keys::hash(&secret));
            Ok(())
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "portcullis", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// `portcullis test`: 0 when every case passed (and coverage is enough),
/// 1 when one failed, 2 when a file is invalid.
fn policy_test(a: TestArgs) -> ExitCode {
    let report = match crate::policytest::run(&a.paths) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match a.output {
        OutputFormat::Text => print!(
            "{}",
            crate::policytest::report::text(&report, a.coverage || a.min_coverage.is_some())
        ),
        OutputFormat::Json => println!("{}", crate::policytest::report::json(&report)),
    }
    if let Some(path) = &a.junit
        && let Err(e) = std::fs::write(path, crate::policytest::report::junit(&report))
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        return ExitCode::from(2);
    }
    if report.failed > 0 {
        return ExitCode::from(1);
    }
    if let Some(min) = a.min_coverage
        && report.coverage_percent + 1e-9 < min
    {
        eprintln!(
            "coverage {:.1}% is below --min-coverage {min}%",
            report.coverage_percent
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

async fn health(c: ClientArgs, service: String) -> Result<()> {
    let client = connect(&c).await?;
    let mut h = tonic_health::pb::health_client::HealthClient::new(client.channel());
    let status = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.clone(),
        })
        .await
        .map_err(portcullis_client::Error::from)?
        .into_inner()
        .status;
    let serving = status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let name = if service.is_empty() { "server" } else { service.as_str() };
    if serving {
        println!("{name}: SERVING");
        Ok(())
    } else {
        bail!("{name}: NOT SERVING")
    }
}

/// Plans applying a manifest; prints the plan.
async fn plan_of(client: &ClientArgs, file: &PathBuf, output: OutputFormat) -> Result<pb::PlanChangesResponse> {
    let text = read_input(file)?;
    let docs = manifest::parse_documents(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let request = crate::diff::request_of(&docs)?;
    let plan = connect(client).await?.plan_changes(request).await?;
    match output {
        OutputFormat::Text => print!("{}", crate::diff::text(&plan)),
        OutputFormat::Json => println!("{}", crate::diff::json(&plan)),
    }
    Ok(plan)
}

async fn diff(a: DiffArgs) -> Result<ExitCode> {
    let plan = plan_of(&a.client, &a.file, a.output).await?;
    Ok(if !plan.violations.is_empty() {
        ExitCode::from(2)
    } else if crate::diff::changes_anything(&plan) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn apply(a: ApplyArgs) -> Result<()> {
    if a.dry_run {
        let plan = plan_of(&a.client, &a.file, a.output).await?;
        if !plan.violations.is_empty() {
            bail!("the manifest would be refused ({} violations)", plan.violations.len());
        }
        return Ok(());
    }
    let text = read_input(&a.file)?;
    let docs = manifest::parse_documents(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    let writes = manifest::writes_of(&docs)?;
    let client = connect(&a.client).await?;
    for applied in client.apply(&writes).await? {
        println!("{applied}");
    }
    Ok(())
}

async fn import(a: ImportArgs) -> Result<()> {
    let text = read_input(&a.file)?;
    let docs = manifest::parse_documents(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    let tid = TenantId::parse(&a.tenant).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
    let vn = VaultName::parse(&a.vault).map_err(|e| anyhow::anyhow!("--vault: {e}"))?;
    let labels = Labels::new();
    let mut items = Vec::new();
    for d in &docs {
        use pb::import_vault_request::Item;
        match d {
            Document::Role { metadata, spec, .. } => {
                let mut spec = spec.clone();
                spec.tenant = manifest::tenant_name_of_id(tid.as_str());
                spec.vault = Some(vn.to_string());
                let r = manifest::role_of(&metadata.name, &spec, &labels)
                    .map_err(|e| anyhow::anyhow!("Role {}: {e}", metadata.name))?;
                items.push(Item::Role(convert::role_to(&r, 0)));
            }
            Document::Binding { spec, .. } => {
                let b = manifest::binding_of("spec", &tid, Some(&vn), &spec.binding, Source::Api, &labels)
                    .map_err(|e| anyhow::anyhow!("Binding: {e}"))?;
                items.push(Item::Binding(convert::binding_to(&b)));
            }
            Document::Membership { spec, .. } => {
                for m in manifest::memberships_of("spec", &tid, Some(&vn), &spec.membership, Source::Api)
                    .map_err(|e| anyhow::anyhow!("Membership: {e}"))?
                {
                    items.push(Item::Membership(convert::membership_to(&m)));
                }
            }
            _ => {}
        }
    }
    let mut client = connect(&a.client).await?.admin();
    let (tenant, vault) = (a.tenant.clone(), a.vault.clone());
    let progress = std::sync::Arc::new(progress::Progress::new("importing", Some(items.len() as u64)));
    let sent = progress.clone();
    // Counted as the stream hands each item to the transport.
    let stream = tokio_stream::iter(items.into_iter().enumerate().map(move |(i, item)| {
        sent.inc(1);
        pb::ImportVaultRequest {
            tenant: if i == 0 { tenant.clone() } else { String::new() },
            vault: if i == 0 { vault.clone() } else { String::new() },
            item: Some(item),
        }
    }));
    let r = client
        .import_vault(stream)
        .await
        .map_err(portcullis_client::Error::from)?
        .into_inner();
    progress.finish();
    println!(
        "imported {} roles, {} bindings, {} memberships at {}",
        r.roles, r.bindings, r.memberships, r.written_at
    );
    Ok(())
}

async fn export(a: ExportArgs) -> Result<()> {
    use tokio_stream::StreamExt;
    let mut client = connect(&a.client).await?.admin();
    let mut stream = client
        .export_vault(pb::ExportVaultRequest {
            tenant: a.tenant.clone(),
            vault: a.vault.clone(),
        })
        .await
        .map_err(portcullis_client::Error::from)?
        .into_inner();
    let mut docs = Vec::new();
    let mut revision = String::new();
    let progress = progress::Progress::new("exporting", None);
    while let Some(item) = stream.next().await {
        let item = item.map_err(portcullis_client::Error::from)?;
        progress.inc(1);
        revision = item.revision.clone();
        use pb::export_vault_response::Item;
        match item.item {
            Some(Item::Vault(v)) => {
                let v = convert::vault_from(&v, "vault").map_err(|e| anyhow::anyhow!("{e}"))?;
                docs.push(manifest::vault_doc(&v));
            }
            Some(Item::Role(r)) => {
                let role = convert::role_from(&r, "role").map_err(|e| anyhow::anyhow!("{e}"))?;
                docs.push(manifest::role_doc(&role));
            }
            Some(Item::Binding(b)) => {
                let b =
                    convert::binding_from(&b, "binding", &a.tenant, &a.vault).map_err(|e| anyhow::anyhow!("{e}"))?;
                docs.push(manifest::binding_doc(&b));
            }
            Some(Item::Membership(m)) => {
                let m = convert::membership_from(&m, "membership", &a.tenant, &a.vault)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                docs.push(manifest::membership_doc(&m));
            }
            None => {}
        }
    }
    progress.finish();
    let text = format!("# exported at {revision}\n{}", manifest::to_yaml(&docs));
    match a.output {
        Some(p) => std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}
