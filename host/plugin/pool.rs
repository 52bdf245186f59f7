//! Where decisions run: a bounded pool of threads of their own.
//!
//! A plugin call may take milliseconds (an allowlist look-up, a signature check,
//! an interpreter), and it blocks the thread it runs on. On the async runtime's
//! threads (two on a two-core machine) a slow policy would stall every socket,
//! health check and admin request; here it only delays the traffic waiting for
//! its decision. Time spent queued for a thread is not the plugin's: the
//! deadline of a call is armed when the call starts on its thread.

use super::{Hook, PluginHost, PolicySet};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

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

/// Which queue a decision waits in. Threads take every urgent decision before
/// any bulk one, so a storm of welcomes (thousands of `admit-worker` calls) delays
/// a node's job or a solution by one call at most, not by the whole storm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Few and waited on: a node's job and connection, a job offered to every
    /// worker, a solution validated or offered to the nodes.
    Urgent,
    /// Many at once: workers connecting and being welcomed.
    Bulk,
}

type Task = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queues {
    urgent: VecDeque<Task>,
    bulk: VecDeque<Task>,
    stopped: bool,
}

#[derive(Default)]
struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        // A task never runs under the lock, so nothing can poison it half-way.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next task, urgent first; `None` once the pool stops.
    fn next(&self) -> Option<Task> {
        let mut queues = self.lock();
        loop {
            if let Some(task) = queues.urgent.pop_front().or_else(|| queues.bulk.pop_front()) {
                return Some(task);
            }
            if queues.stopped {
                return None;
            }
            queues = self.ready.wait(queues).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Stops the threads when the last handle on the pool goes.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.lock().stopped = true;
        self.0.ready.notify_all();
    }
}

/// A fixed number of threads that run policy decisions, urgent ones first, each
/// lane in the order asked. Cheap to clone: clones share the threads.
#[derive(Clone)]
pub struct DecisionPool {
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
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
        let shared = Arc::new(Shared::default());
        for i in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new().name(format!("eligo-decide-{i}")).spawn(move || {
                while let Some(task) = shared.next() {
                    task();
                }
            })?;
        }
        let stop = Arc::new(StopOnDrop(shared.clone()));
        Ok(DecisionPool { shared, _stop: stop, threads, queued: Arc::new(AtomicUsize::new(0)) })
    }

    /// Decisions waiting for a thread or running now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Runs `decide` on the pool, in `lane`, and waits for its answer without
    /// holding a runtime thread. A panic inside is caught and returned as an error.
    pub async fn run<R, F>(&self, lane: Lane, decide: F) -> Result<R, PoolError>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = self.queued.clone();
        queued.fetch_add(1, Ordering::Relaxed);
        // Counted up and down, not set: several pools in one process add up.
        crate::metrics::hot().decisions_queued.increment(1.0);
        let task: Task = Box::new(move || {
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
        {
            let mut queues = self.shared.lock();
            match lane {
                Lane::Urgent => queues.urgent.push_back(task),
                Lane::Bulk => queues.bulk.push_back(task),
            }
        }
        self.shared.ready.notify_one();
        rx.await.unwrap_or(Err(PoolError::Stopped))
    }
}

/// What asking the policies needs: the active plugins and the threads their
/// decisions run on. Borrowed from whoever holds both (the pipeline's services).
#[derive(Clone, Copy)]
pub struct Deciding<'a> {
    /// The plugins whose active set decides.
    pub plugins: &'a PluginHost,
    /// Where a decision that calls a plugin runs: never on the runtime's threads.
    pub pool: &'a DecisionPool,
}

impl Deciding<'_> {
    /// Decides with the active policies: on the decision pool, in `lane`, when
    /// that calls a plugin for `hook`, here when only the built-in rules (or none)
    /// decide. An error (the decision panicked, the pool stopped) is for the caller
    /// to fail closed on.
    pub async fn decide<R, F>(self, lane: Lane, hook: Hook, decide: F) -> Result<R, PoolError>
    where
        R: Send + 'static,
        F: FnOnce(&PolicySet) -> R + Send + 'static,
    {
        let policies = self.plugins.current();
        if policies.calls_plugins(hook) {
            self.pool.run(lane, move || decide(&policies)).await
        } else {
            Ok(decide(&policies))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn decisions_run_off_the_runtime_and_a_panic_is_an_error() {
        let pool = DecisionPool::new(2).expect("pool");
        let caller = std::thread::current().id();
        let ran_on = pool.run(Lane::Bulk, || std::thread::current().id()).await.expect("answer");
        assert_ne!(ran_on, caller, "a decision must not run on the runtime's thread");
        let panicked = pool.run(Lane::Urgent, || -> u32 { panic!("boom") }).await;
        assert_eq!(panicked, Err(PoolError::Panicked("boom".into())));
        assert_eq!(pool.run(Lane::Bulk, || 7).await, Ok(7), "the pool survives a panic");
        assert_eq!(pool.queued(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_held_decision_leaves_the_runtime_free() {
        let pool = DecisionPool::new(1).expect("pool");
        let (release, held) = std::sync::mpsc::channel::<()>();
        let slow = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Bulk, move || held.recv().is_ok()).await }
        });
        // The single runtime thread still runs other tasks while the decision is held.
        let other = tokio::spawn(async { 1 + 1 });
        assert_eq!(other.await.expect("other task"), 2);
        release.send(()).expect("release");
        assert_eq!(slow.await.expect("slow task"), Ok(true));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_urgent_decision_goes_before_the_bulk_queued_ahead_of_it() {
        let pool = DecisionPool::new(1).expect("pool");
        let (release, held) = std::sync::mpsc::channel::<()>();
        let order = Arc::new(Mutex::new(Vec::new()));
        // The only thread is held, with bulk work queued behind it.
        let blocker = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Bulk, move || held.recv().is_ok()).await }
        });
        while pool.queued() < 1 {
            tokio::task::yield_now().await;
        }
        let mut asked = Vec::new();
        for (lane, name) in [(Lane::Bulk, "bulk 1"), (Lane::Bulk, "bulk 2"), (Lane::Urgent, "urgent")] {
            let (asker, order) = (pool.clone(), order.clone());
            asked.push(tokio::spawn(
                async move { asker.run(lane, move || order.lock().expect("order").push(name)).await },
            ));
            let wanted = asked.len() + 1;
            while pool.queued() < wanted {
                tokio::task::yield_now().await;
            }
        }
        release.send(()).expect("release");
        assert_eq!(blocker.await.expect("blocker"), Ok(true));
        for task in asked {
            task.await.expect("task").expect("answer");
        }
        assert_eq!(*order.lock().expect("order"), ["urgent", "bulk 1", "bulk 2"]);
    }
}
