//! Progress of long work (import, export): a bar with counts and rate on
//! a terminal (indicatif), plain lines at most once a second otherwise, so
//! CI logs and pipes get progress without control characters. On stderr:
//! stdout stays the command's output.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    what: &'static str,
    total: Option<u64>,
    bar: Option<ProgressBar>,
    plain: Mutex<Plain>,
}

struct Plain {
    done: u64,
    started: Instant,
    printed: Instant,
}

impl Progress {
    /// Progress of `what` ("imported", "exported"), out of `total` when
    /// known.
    pub fn new(what: &'static str, total: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let (bar, template) = match total {
                Some(n) => (
                    ProgressBar::new(n),
                    "{msg} [{bar:30}] {pos}/{len} items, {per_sec}, {eta} left",
                ),
                None => (ProgressBar::new_spinner(), "{spinner} {msg} {pos} items, {per_sec}"),
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_message(what);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Progress {
            what,
            total,
            bar,
            plain: Mutex::new(Plain {
                done: 0,
                started: now,
                printed: now,
            }),
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
            return;
        }
        let mut p = self.plain.lock().unwrap_or_else(|e| e.into_inner());
        p.done += n;
        if p.printed.elapsed() >= Duration::from_secs(1) {
            p.printed = Instant::now();
            eprintln!("{}", self.line(&p));
        }
    }

    fn line(&self, p: &Plain) -> String {
        let secs = p.started.elapsed().as_secs_f64().max(1e-3);
        let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
        format!("{} {}{of} items ({:.0}/s)", self.what, p.done, p.done as f64 / secs)
    }

    pub fn finish(&self) {
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None => eprintln!("{}", self.line(&self.plain.lock().unwrap_or_else(|e| e.into_inner()))),
        }
    }
}
