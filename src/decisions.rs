//! Decision logs: one JSON line per logged check, written off the request's
//! path.
//!
//! A check decides whether it is logged (sampling, separately for allowed
//! and denied decisions, at the server's shares or its tenant's) and hands
//! what it already owns (the request's strings, its explanation, its
//! context) to a bounded queue. One writer thread does everything else:
//! the deciders, the time and revision text, the request id when the caller
//! sent none, the JSON. When the queue is full the entry is dropped and
//! counted (`portcullis_decision_log_dropped_total`): a slow disk never
//! slows a check. A file is rotated when it would pass `max_bytes` (the old
//! one becomes `<file>.1`) and reopened on SIGHUP, for logrotate.
//!
//! The writer polls the queue, sleeping [`IDLE`] whenever it is empty,
//! rather than being woken for each entry: a wake-up per check (a futex
//! call on both sides) cost more than the line itself.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TryRecvError, sync_channel};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::engine::model::{Effect, Tenant};
use crate::engine::{Explanation, TenantId, Timestamp};

/// How long the writer sleeps when the queue is empty: how late a line may
/// reach the file.
pub const IDLE: Duration = Duration::from_millis(5);

/// Where decision logs go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Sink {
    #[default]
    Off,
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for Sink {
    type Err = String;
    fn from_str(s: &str) -> Result<Sink, String> {
        match s {
            "off" => Ok(Sink::Off),
            "stdout" => Ok(Sink::Stdout),
            "" => Err("give off, stdout or a file path".into()),
            path => Ok(Sink::File(PathBuf::from(path))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecisionLogOptions {
    pub sink: Sink,
    /// Share of allowed decisions logged, 0 to 1.
    pub sample_allowed: f64,
    /// Share of denied decisions logged, 0 to 1.
    pub sample_denied: f64,
    /// Log the context's values, not only its keys.
    pub context_values: bool,
    /// Rotate the file before it passes this size.
    pub max_bytes: u64,
    /// Entries waiting for the writer before new ones are dropped.
    pub queue: usize,
}

impl Default for DecisionLogOptions {
    fn default() -> Self {
        DecisionLogOptions {
            sink: Sink::Off,
            sample_allowed: 0.01,
            sample_denied: 1.0,
            context_values: false,
            max_bytes: 100 << 20,
            queue: 10_000,
        }
    }
}

/// The shares of allowed and denied checks logged, each 0 to 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shares {
    pub allowed: f64,
    pub denied: f64,
}

/// The tenants' own sampling (`Tenant.decision_logs`), followed by the
/// index as tenants change. Each share is inherited separately: a tenant's
/// unset share is its nearest ancestor's that sets one, then the server's.
#[derive(Default)]
pub struct TenantSampling {
    set: ArcSwap<HashMap<TenantId, crate::engine::model::DecisionLogSampling>>,
}

impl TenantSampling {
    /// Replaces the set; called with every tenant that sets a share
    /// whenever a tenant changes.
    pub fn update<'a>(&self, tenants: impl IntoIterator<Item = &'a Tenant>) {
        let set = tenants
            .into_iter()
            .filter(|t| !t.decision_logs.is_unset())
            .map(|t| (t.id.clone(), t.decision_logs))
            .collect();
        self.set.store(Arc::new(set));
    }

    /// The shares for a check in `tenant`: `base` (the server's) with the
    /// lineage's own, nearest first.
    pub fn of(&self, tenant: &str, base: Shares) -> Shares {
        let set = self.set.load();
        if set.is_empty() {
            return base;
        }
        let mut shares = base;
        // Root first, so each nearer tenant's share replaces its ancestor's.
        for prefix in crate::engine::ids::lineage_prefixes(tenant) {
            if let Some(d) = set.get(prefix) {
                if let Some(s) = d.sample_allowed {
                    shares.allowed = s.0;
                }
                if let Some(s) = d.sample_denied {
                    shares.denied = s.0;
                }
            }
        }
        shares
    }
}

/// What decided a check: one explanation entry.
#[derive(Debug, Clone, Serialize)]
pub struct Decider {
    pub binding: String,
    pub binding_scope: String,
    pub principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub statement: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    pub effect: &'static str,
}

/// A logged check's deciders: the statements that counted.
pub fn deciders(e: &Explanation) -> Vec<Decider> {
    e.entries
        .iter()
        .filter(|x| x.counted)
        .map(|x| Decider {
            binding: x.binding_id.clone(),
            binding_scope: x.binding_scope.to_string(),
            principal: x.principal.clone(),
            role: x.role.as_ref().map(|k| k.to_string()),
            statement: x.index,
            sid: x.sid.clone(),
            effect: match x.effect {
                Effect::Allow => "ALLOW",
                Effect::Deny => "DENY",
            },
        })
        .collect()
}

/// One logged check, as the check hands it over: what it owned already,
/// nothing formatted.
#[derive(Debug)]
pub struct Entry {
    pub time: Timestamp,
    /// The caller's `x-request-id`; a sane one is logged, else a new id.
    pub request_id: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    pub caller: String,
    pub tenant: String,
    pub vault: String,
    pub subject: String,
    pub action: String,
    pub resource: String,
    pub allowed: bool,
    pub reason: &'static str,
    pub revision: u64,
    pub explanation: Option<Explanation>,
    pub latency_us: u64,
    pub context: serde_json::Map<String, serde_json::Value>,
}

/// One line of the log: the format the README documents.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: String,
    caller: &'a str,
    tenant: &'a str,
    vault: &'a str,
    subject: &'a str,
    action: &'a str,
    resource: &'a str,
    decision: &'static str,
    reason: &'static str,
    revision: String,
    deciding: Vec<Decider>,
    latency_us: u64,
    context_keys: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl Entry {
    fn line(&self, context_values: bool) -> Line<'_> {
        Line {
            time: self.time.to_rfc3339(),
            request_id: self
                .request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .filter(|s| !s.is_empty() && s.len() <= 128)
                .map(str::to_string)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            caller: &self.caller,
            tenant: &self.tenant,
            vault: &self.vault,
            subject: &self.subject,
            action: &self.action,
            resource: &self.resource,
            decision: if self.allowed { "ALLOWED" } else { "DENIED" },
            reason: self.reason,
            revision: crate::repo::token(self.revision),
            deciding: self.explanation.as_ref().map(deciders).unwrap_or_default(),
            latency_us: self.latency_us,
            context_keys: self.context.keys().map(String::as_str).collect(),
            context: context_values.then_some(&self.context),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("--decision-log {path}: {error}")]
pub struct OpenError {
    path: PathBuf,
    error: std::io::Error,
}

/// The server's decision log; [`DecisionLog::off`] logs nothing at no cost.
pub struct DecisionLog {
    tx: Option<SyncSender<Entry>>,
    shares: Shares,
    dropped: prometheus::IntCounter,
    /// Ends the SIGHUP listener with the log.
    _hup: Option<tokio::sync::oneshot::Sender<()>>,
}

/// One roll of a check: the number drawn and the shares it is held to.
#[derive(Debug, Clone, Copy)]
pub struct Roll {
    r: f64,
    shares: Shares,
}

impl Roll {
    /// Whether the check is logged, now its decision is known.
    pub fn keeps(&self, allowed: bool) -> bool {
        self.r
            < if allowed {
                self.shares.allowed
            } else {
                self.shares.denied
            }
    }
}

fn open(path: &PathBuf) -> Result<std::fs::File, OpenError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|error| OpenError {
            path: path.clone(),
            error,
        })
}

/// The writer thread's output: a buffered stdout or file, with the file's
/// rotation and reopening.
struct Output {
    out: Box<dyn Write + Send>,
    file: Option<PathBuf>,
    size: u64,
    max_bytes: u64,
}

impl Output {
    fn buffered(f: std::fs::File) -> Box<dyn Write + Send> {
        // Lines go out in blocks: under load the queue is rarely empty.
        Box::new(std::io::BufWriter::with_capacity(64 << 10, f))
    }

    fn reopen(&mut self) {
        if let Some(p) = &self.file
            && let Ok(f) = open(p)
        {
            let _ = self.out.flush();
            self.out = Self::buffered(f);
            self.size = std::fs::metadata(p).map_or(0, |m| m.len());
        }
    }

    fn write(&mut self, line: &[u8]) {
        if let Some(p) = &self.file
            && self.size > 0
            && self.size + line.len() as u64 > self.max_bytes
        {
            let _ = self.out.flush();
            let mut rotated = p.clone().into_os_string();
            rotated.push(".1");
            if std::fs::rename(p, &rotated).is_ok()
                && let Ok(f) = open(p)
            {
                self.out = Self::buffered(f);
                self.size = 0;
            }
        }
        if self.out.write_all(line).is_ok() {
            self.size += line.len() as u64;
        }
    }
}

impl DecisionLog {
    pub fn off(dropped: prometheus::IntCounter) -> DecisionLog {
        DecisionLog {
            tx: None,
            shares: Shares {
                allowed: 0.0,
                denied: 0.0,
            },
            dropped,
            _hup: None,
        }
    }

    /// Opens the sink (so a bad path fails at start, naming it), starts the
    /// writer thread, and listens for SIGHUP on the current runtime.
    pub fn start(opts: &DecisionLogOptions, dropped: prometheus::IntCounter) -> Result<DecisionLog, OpenError> {
        let out: Box<dyn Write + Send> = match &opts.sink {
            Sink::Off => return Ok(DecisionLog::off(dropped)),
            Sink::Stdout => Box::new(std::io::BufWriter::with_capacity(64 << 10, std::io::stdout())),
            Sink::File(p) => Output::buffered(open(p)?),
        };
        let file = match &opts.sink {
            Sink::File(p) => Some(p.clone()),
            _ => None,
        };
        let mut output = Output {
            size: file
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map_or(0, |m| m.len()),
            out,
            file,
            max_bytes: opts.max_bytes.max(1),
        };
        let (tx, rx) = sync_channel::<Entry>(opts.queue.max(1));
        let hup = Arc::new(AtomicBool::new(false));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        if let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            let hup = hup.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        s = signal.recv() => match s {
                            Some(()) => hup.store(true, Ordering::Relaxed),
                            None => return,
                        },
                    }
                }
            });
        }
        let context_values = opts.context_values;
        let spawned = std::thread::Builder::new().name("decision-log".into()).spawn(move || {
            let mut buf = Vec::with_capacity(1024);
            loop {
                match rx.try_recv() {
                    Ok(entry) => {
                        buf.clear();
                        if serde_json::to_writer(&mut buf, &entry.line(context_values)).is_ok() {
                            buf.push(b'\n');
                            output.write(&buf);
                        }
                    }
                    Err(TryRecvError::Empty) => {
                        let _ = output.out.flush();
                        if hup.swap(false, Ordering::Relaxed) {
                            output.reopen();
                        }
                        std::thread::sleep(IDLE);
                    }
                    Err(TryRecvError::Disconnected) => {
                        let _ = output.out.flush();
                        return;
                    }
                }
            }
        });
        if let Err(error) = spawned {
            return Err(OpenError {
                path: "(writer thread)".into(),
                error,
            });
        }
        Ok(DecisionLog {
            tx: Some(tx),
            shares: Shares {
                allowed: opts.sample_allowed.clamp(0.0, 1.0),
                denied: opts.sample_denied.clamp(0.0, 1.0),
            },
            dropped,
            _hup: Some(stop),
        })
    }

    /// The server's own shares, which a tenant's may replace.
    pub fn shares(&self) -> Shares {
        self.shares
    }

    /// Rolled once per check, before it runs, at the shares `tenant` gives
    /// (from the server's): `None` when it cannot be logged whatever it
    /// decides (the log is off, or the roll is above both shares), so only
    /// a check that may be logged is explained.
    pub fn roll(&self, tenant: impl FnOnce(Shares) -> Shares) -> Option<Roll> {
        self.tx.as_ref()?;
        let shares = tenant(self.shares);
        let top = shares.allowed.max(shares.denied);
        // Both shares whole: no random number needed.
        let r = if shares.allowed.min(shares.denied) >= 1.0 {
            0.0
        } else {
            rand::random::<f64>()
        };
        (r < top).then_some(Roll { r, shares })
    }

    /// Whether a decision is logged at the server's shares.
    pub fn wants(&self, allowed: bool) -> bool {
        self.roll(|s| s).is_some_and(|r| r.keeps(allowed))
    }

    /// Queues an entry; a full queue drops it and counts the drop.
    pub fn log(&self, entry: Entry) {
        if let Some(tx) = &self.tx
            && tx.try_send(entry).is_err()
        {
            self.dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> Entry {
        Entry {
            time: Timestamp::parse_rfc3339("2030-01-01T00:00:00Z").unwrap(),
            request_id: Some(format!("r{n}").parse().unwrap()),
            caller: "k".into(),
            tenant: "acme".into(),
            vault: "docs".into(),
            subject: "user:a".into(),
            action: "documents:read".into(),
            resource: "document:x".into(),
            allowed: true,
            reason: "ALLOWED",
            revision: 1,
            explanation: None,
            latency_us: 3,
            context: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_file_is_rotated_before_it_passes_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.log");
        let opts = DecisionLogOptions {
            sink: Sink::File(path.clone()),
            sample_allowed: 1.0,
            max_bytes: 1000,
            ..Default::default()
        };
        let log = DecisionLog::start(&opts, prometheus::IntCounter::new("d", "d").unwrap()).unwrap();
        for n in 0..20 {
            log.log(entry(n));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(dir.path().join("decisions.log.1")).unwrap();
        assert!(now.len() <= 1000 && old.len() <= 1000, "{} {}", now.len(), old.len());
        assert!(now.lines().last().unwrap().contains("\"request_id\":\"r19\""), "{now}");
        assert!(
            now.lines()
                .chain(old.lines())
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        );
    }

    #[test]
    fn sampling_follows_the_shares() {
        let c = prometheus::IntCounter::new("d", "d").unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _g = rt.enter();
        let opts = DecisionLogOptions {
            sink: Sink::Stdout,
            sample_allowed: 0.0,
            sample_denied: 1.0,
            ..Default::default()
        };
        let log = DecisionLog::start(&opts, c.clone()).unwrap();
        assert!((0..100).all(|_| log.wants(false)));
        assert!((0..100).all(|_| !log.wants(true)));
        let half = DecisionLog::start(
            &DecisionLogOptions {
                sample_allowed: 0.5,
                ..opts
            },
            c.clone(),
        )
        .unwrap();
        let n = (0..10_000).filter(|_| half.wants(true)).count();
        assert!((4000..6000).contains(&n), "{n}");
        assert!(!DecisionLog::off(c).wants(false));
    }

    fn tenant(id: &str, allowed: Option<f64>, denied: Option<f64>) -> Tenant {
        let mut t = Tenant::new(TenantId::parse(id).unwrap());
        t.decision_logs = crate::engine::model::DecisionLogSampling {
            sample_allowed: allowed.map(crate::engine::model::Share),
            sample_denied: denied.map(crate::engine::model::Share),
        };
        t
    }

    #[test]
    fn each_share_is_inherited_from_the_nearest_tenant_setting_it() {
        let base = Shares {
            allowed: 0.01,
            denied: 1.0,
        };
        let s = TenantSampling::default();
        assert_eq!(s.of("acme/eng", base), base);
        s.update(&[
            tenant("acme", Some(0.5), None),
            tenant("acme/eng", None, Some(0.2)),
            tenant("acme/eng/platform", Some(0.0), Some(0.0)),
            tenant("acme/sales", None, None),
        ]);
        let sh = |a, d| Shares { allowed: a, denied: d };
        assert_eq!(s.of("acme", base), sh(0.5, 1.0));
        assert_eq!(s.of("acme/eng", base), sh(0.5, 0.2));
        assert_eq!(s.of("acme/eng/web", base), sh(0.5, 0.2));
        assert_eq!(s.of("acme/eng/platform/x", base), sh(0.0, 0.0));
        assert_eq!(s.of("acme/sales", base), sh(0.5, 1.0));
        // A prefix that is not a tenant boundary does not count.
        assert_eq!(s.of("acmeco", base), base);
        assert_eq!(s.of("globex", base), base);
    }
}
