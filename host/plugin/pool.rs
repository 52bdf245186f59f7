//! Where decisions run: a bounded pool of threads of their own.
//!
//! A plugin call may take milliseconds (an allowlist look-up, a signature check,
//! an interpreter), and it blocks the thread it runs on. On the async runtime's
//! threads (two on a two-core machine) a slow policy would stall every socket,
//! health check and admin request; here it only delays the traffic waiting for
//! its decision. Time spent queued for a thread is not the plugin's: the
//! deadline of a call is armed when the call starts on its thread.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Why a decision did not come back. The caller fails closed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// The decision panicked; the pool's thread survives it.
    #[error("the decision panicked: {0}")]
    Panicked(String),
    /// The pool is gone (the process is stopping).
    #[error("the decision pool has stopped")]
    Stopped,
}

/// A fixed number of threads that run policy decisions, in the order asked.
/// Cheap to clone: clones share the threads.
#[derive(Clone)]
pub struct DecisionPool {
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    queued: Arc<AtomicUsize>,
}

impl std::fmt::Debug for DecisionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionPool").field("threads", &self.threads).finish()
    }
}

impl DecisionPool {
    /// A pool of `threads` threads; 0 is one per core.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("eligo-decide-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(DecisionPool { pool: Arc::new(pool), threads, queued: Arc::new(AtomicUsize::new(0)) })
    }

    /// How many threads decide.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Decisions waiting for a thread or running now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Runs `decide` on the pool and waits for its answer without holding a
    /// runtime thread. A panic inside is caught and returned as an error.
    pub async fn run<R, F>(&self, decide: F) -> Result<R, PoolError>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = self.queued.clone();
        queued.fetch_add(1, Ordering::Relaxed);
        // Counted up and down, not set: several pools in one process add up.
        crate::metrics::hot().decisions_queued.increment(1.0);
        self.pool.spawn_fifo(move || {
            let answer = std::panic::catch_unwind(AssertUnwindSafe(decide)).map_err(|panic| {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                tracing::error!(panic = %text, "a decision panicked; it fails closed");
                PoolError::Panicked(text)
            });
            queued.fetch_sub(1, Ordering::Relaxed);
            crate::metrics::hot().decisions_queued.decrement(1.0);
            // The asker may have gone (its connection closed): nobody to tell.
            let _ = tx.send(answer);
        });
        rx.await.unwrap_or(Err(PoolError::Stopped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn decisions_run_off_the_runtime_and_a_panic_is_an_error() {
        let pool = DecisionPool::new(2).expect("pool");
        let caller = std::thread::current().id();
        let ran_on = pool.run(|| std::thread::current().id()).await.expect("answer");
        assert_ne!(ran_on, caller, "a decision must not run on the runtime's thread");
        let panicked = pool.run(|| -> u32 { panic!("boom") }).await;
        assert_eq!(panicked, Err(PoolError::Panicked("boom".into())));
        assert_eq!(pool.run(|| 7).await, Ok(7), "the pool survives a panic");
        assert_eq!(pool.queued(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_held_decision_leaves_the_runtime_free() {
        let pool = DecisionPool::new(1).expect("pool");
        let (release, held) = std::sync::mpsc::channel::<()>();
        let slow = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(move || held.recv().is_ok()).await }
        });
        // The single runtime thread still runs other tasks while the decision is held.
        let other = tokio::spawn(async { 1 + 1 });
        assert_eq!(other.await.expect("other task"), 2);
        release.send(()).expect("release");
        assert_eq!(slow.await.expect("slow task"), Ok(true));
    }
}
