//! Retrying calls the server could not serve now.
//!
//! Written here rather than with a tower retry layer because the decision
//! needs the decoded `ErrorInfo` (an `INDEX_BEHIND` is worth retrying, a
//! refusal never is) and each attempt needs its own request clone.

use std::future::Future;
use std::time::Duration;

use tonic::Code;

use crate::{Error, Reason};

/// How often and how long to retry a call that failed with UNAVAILABLE
/// (the server is unreachable, loading, behind or shutting down).
/// Portcullis writes are idempotent, so writes are retried too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 never retries.
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Never retries.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }
    }

    fn retryable(e: &Error) -> bool {
        e.code() == Code::Unavailable && !matches!(e.reason(), Reason::VaultQuarantined)
    }

    /// Runs `call` until it succeeds, fails for good, or the attempts are
    /// spent.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut backoff = self.initial_backoff;
        let mut attempt = 1;
        loop {
            match call().await.map_err(Error::from) {
                Ok(v) => return Ok(v),
                Err(e) if attempt < self.attempts && Self::retryable(&e) => {
                    tokio::time::sleep(e.retry_after().unwrap_or(backoff).min(self.max_backoff)).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn unavailable_is_retried_until_it_succeeds() {
        let calls = AtomicU32::new(0);
        let r = fast(4)
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(tonic::Status::unavailable("down"))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn refusals_are_not_retried_and_attempts_are_bounded() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = fast(4)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(tonic::Status::permission_denied("no"))
            })
            .await;
        assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = fast(3)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(tonic::Status::unavailable("down"))
            })
            .await;
        assert!(r.unwrap_err().is_unavailable());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
