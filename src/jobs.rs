//! Leader election and background jobs (filled in by the jobs issue).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::LeaderStatus;
use crate::index::LiveIndex;
use crate::repo::Repo;

#[derive(Debug, Clone)]
pub struct JobOptions {
    pub lease_ttl: Duration,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            lease_ttl: Duration::from_secs(15),
        }
    }
}

pub fn spawn(
    _repo: Arc<Repo>,
    _index: Arc<LiveIndex>,
    _leader: Arc<LeaderStatus>,
    _opts: JobOptions,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = shutdown.wait_for(|s| *s).await;
    })
}

/// Command-line flags of leadership and jobs.
#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    /// Leader lease time-to-live, in seconds.
    #[arg(long, env = "PORTCULLIS_LEASE_TTL", default_value_t = 15)]
    pub lease_ttl: u64,
}

impl JobArgs {
    pub fn options(&self) -> JobOptions {
        JobOptions {
            lease_ttl: Duration::from_secs(self.lease_ttl.max(1)),
        }
    }
}
