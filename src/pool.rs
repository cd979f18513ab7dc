//! Bounded pools for work that must not cost others their service.
//!
//! Expensive reads (lookups, effective permissions, export, import, bulk
//! checks and the few checks whose conditions outgrow the inline budget)
//! run on blocking threads, at most `concurrency` at once, with at most
//! `queue` waiting; beyond that a request is refused at once with
//! RESOURCE_EXHAUSTED and a `RetryInfo`. CheckPermission itself never
//! waits here, so a flood of lookups leaves checks their threads.
//!
//! Store transactions use a second, larger pool owned by the repository
//! ([`crate::repo::Repo::call`]), so a write storm cannot grow the process
//! to hundreds of threads either.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::error::ServiceError;

pub struct Pool {
    name: &'static str,
    /// Counts the requests refused because the queue was full.
    rejected: prometheus::IntCounter,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
}

/// Counts a waiter for as long as it waits, cancelled or not.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    pub fn new(name: &'static str, concurrency: usize, queue: usize, rejected: prometheus::IntCounter) -> Pool {
        Pool {
            name,
            rejected,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            waiting: AtomicUsize::new(0),
            queue,
        }
    }

    /// Runs `f` on a blocking thread once a slot is free; refuses at once
    /// when the queue is full.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, ServiceError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    self.rejected.inc();
                    return Err(ServiceError::Overloaded {
                        what: self.name,
                        retry_after: Duration::from_millis(200),
                    });
                }
                let _waiting = Waiting(&self.waiting);
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| ServiceError::ShuttingDown)?
            }
        };
        // The caller's span follows the work onto the blocking thread, so
        // store transactions trace as children of their RPC.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _in = span.enter();
            f()
        })
        .await
        .map_err(|e| ServiceError::WorkerFailed { detail: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let pool = Arc::new(Pool::new("test", 1, 1, prometheus::IntCounter::new("t", "t").unwrap()));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let hold = {
            let (p, rx) = (pool.clone(), rx.clone());
            tokio::spawn(async move { p.run(move || rx.lock().unwrap().recv().ok()).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let queued = {
            let p = pool.clone();
            tokio::spawn(async move { p.run(|| 2).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = pool.run(|| 3).await.unwrap_err();
        assert!(matches!(e, ServiceError::Overloaded { .. }), "{e:?}");
        tx.send(()).unwrap();
        assert!(hold.await.unwrap().is_ok());
        assert_eq!(queued.await.unwrap().unwrap(), 2);
        assert_eq!(pool.run(|| 4).await.unwrap(), 4, "room again");
    }
}
