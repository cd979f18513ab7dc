//! Decision logs: one JSON line per logged check, written off the request's
//! path.
//!
//! A check decides whether it is logged (sampling, separately for allowed
//! and denied decisions) and hands an owned entry to a bounded queue; one
//! writer task serializes and writes. When the queue is full the entry is
//! dropped and counted (`portcullis_decision_log_dropped_total`): a slow
//! disk never slows a check. A file is rotated when it would pass
//! `max_bytes` (the old one becomes `<file>.1`) and reopened on SIGHUP, for
//! logrotate.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

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

/// One logged check.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub time: String,
    pub request_id: String,
    pub caller: String,
    pub tenant: String,
    pub vault: String,
    pub subject: String,
    pub action: String,
    pub resource: String,
    pub decision: &'static str,
    pub reason: &'static str,
    pub revision: String,
    pub deciding: Vec<Decider>,
    pub latency_us: u64,
    pub context_keys: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, thiserror::Error)]
#[error("--decision-log {path}: {error}")]
pub struct OpenError {
    path: PathBuf,
    error: std::io::Error,
}

/// The server's decision log; [`DecisionLog::off`] logs nothing at no cost.
pub struct DecisionLog {
    tx: Option<tokio::sync::mpsc::Sender<Entry>>,
    sample_allowed: f64,
    sample_denied: f64,
    pub context_values: bool,
    dropped: prometheus::IntCounter,
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

impl DecisionLog {
    pub fn off(dropped: prometheus::IntCounter) -> DecisionLog {
        DecisionLog {
            tx: None,
            sample_allowed: 0.0,
            sample_denied: 0.0,
            context_values: false,
            dropped,
        }
    }

    /// Opens the sink (so a bad path fails at start, naming it) and starts
    /// the writer on the current runtime.
    pub fn start(opts: &DecisionLogOptions, dropped: prometheus::IntCounter) -> Result<DecisionLog, OpenError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Entry>(opts.queue.max(1));
        let mut out: Box<dyn Write + Send> = match &opts.sink {
            Sink::Off => return Ok(DecisionLog::off(dropped)),
            Sink::Stdout => Box::new(std::io::stdout()),
            // Buffered: under load the queue is rarely empty, so lines go
            // out in blocks rather than one write each.
            Sink::File(p) => Box::new(std::io::BufWriter::with_capacity(64 << 10, open(p)?)),
        };
        let file = match &opts.sink {
            Sink::File(p) => Some(p.clone()),
            _ => None,
        };
        let max_bytes = opts.max_bytes.max(1);
        let mut size = file
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        tokio::spawn(async move {
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let entry = tokio::select! {
                    e = rx.recv() => match e { Some(e) => e, None => return },
                    Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                        if let Some(p) = &file && let Ok(f) = open(p) {
                            let _ = out.flush();
                            out = Box::new(std::io::BufWriter::with_capacity(64 << 10, f));
                            size = std::fs::metadata(p).map_or(0, |m| m.len());
                        }
                        continue;
                    }
                };
                let mut line = serde_json::to_vec(&entry).unwrap_or_default();
                line.push(b'\n');
                if let Some(p) = &file
                    && size > 0
                    && size + line.len() as u64 > max_bytes
                {
                    let _ = out.flush();
                    let mut rotated = p.clone().into_os_string();
                    rotated.push(".1");
                    if std::fs::rename(p, &rotated).is_ok()
                        && let Ok(f) = open(p)
                    {
                        out = Box::new(std::io::BufWriter::with_capacity(64 << 10, f));
                        size = 0;
                    }
                }
                if out.write_all(&line).is_ok() {
                    size += line.len() as u64;
                }
                // Flush when nothing else waits, so lines reach the file promptly.
                if rx.is_empty() {
                    let _ = out.flush();
                }
            }
        });
        Ok(DecisionLog {
            tx: Some(tx),
            sample_allowed: opts.sample_allowed.clamp(0.0, 1.0),
            sample_denied: opts.sample_denied.clamp(0.0, 1.0),
            context_values: opts.context_values,
            dropped,
        })
    }

    /// Rolled once per check, before it runs: `None` when it cannot be
    /// logged whatever it decides (the log is off, or the roll is above
    /// both shares), so only a check that may be logged is explained.
    pub fn roll(&self) -> Option<f64> {
        self.tx.as_ref()?;
        let top = self.sample_allowed.max(self.sample_denied);
        // Both shares whole: no random number needed.
        let r = if self.sample_allowed.min(self.sample_denied) >= 1.0 {
            0.0
        } else {
            rand::random::<f64>()
        };
        (r < top).then_some(r)
    }

    /// Whether a check with this roll is logged, now its decision is known.
    pub fn keeps(&self, roll: f64, allowed: bool) -> bool {
        let share = if allowed {
            self.sample_allowed
        } else {
            self.sample_denied
        };
        roll < share
    }

    /// Whether a decision is logged: off, or sampled at its share.
    pub fn wants(&self, allowed: bool) -> bool {
        self.roll().is_some_and(|r| self.keeps(r, allowed))
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
            time: "2030-01-01T00:00:00Z".into(),
            request_id: format!("r{n}"),
            caller: "k".into(),
            tenant: "acme".into(),
            vault: "docs".into(),
            subject: "user:a".into(),
            action: "documents:read".into(),
            resource: "document:x".into(),
            decision: "ALLOWED",
            reason: "ALLOWED",
            revision: "v1.1".into(),
            deciding: vec![],
            latency_us: 3,
            context_keys: vec![],
            context: None,
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
}
