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
    /// Threads waiting for a task: a task queued while none waits needs no
    /// wake-up call (a system call each), since every thread looks at the queues
    /// before it waits again.
    idle: usize,
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
            queues.idle += 1;
            queues = self.ready.wait(queues).unwrap_or_else(PoisonError::into_inner);
            queues.idle -= 1;
        }
    }

    /// Queues `task` in `lane` (at the front of it with `first`), waking a thread
    /// if one waits. `queueing` runs under the queues' lock, before any thread
    /// can take the task.
    fn push(&self, lane: Lane, first: bool, task: Task, queueing: impl FnOnce()) {
        let wake = {
            let mut queues = self.lock();
            queueing();
            let queue = match lane {
                Lane::Urgent => &mut queues.urgent,
                Lane::Bulk => &mut queues.bulk,
            };
            if first {
                queue.push_front(task);
            } else {
                queue.push_back(task);
            }
            queues.idle > 0
        };
        if wake {
            self.ready.notify_one();
        }
    }

    /// Whether an urgent decision waits for a thread.
    fn urgent_waiting(&self) -> bool {
        !self.lock().urgent.is_empty()
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
        let pool = self.clone();
        let task: Task = Box::new(move || {
            let answer = caught(decide);
            pool.answered();
            // The asker may have gone (its connection closed): nobody to tell.
            let _ = tx.send(answer);
        });
        // Counted as it is queued: decisions counted are queued in that order.
        self.shared.push(lane, false, task, || self.asked());
        rx.await.unwrap_or(Err(PoolError::Stopped))
    }

    /// One more decision waits for its answer.
    fn asked(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        // Counted up and down, not set: several pools in one process add up.
        crate::metrics::hot().decisions_queued.increment(1.0);
    }

    /// One decision fewer waits.
    fn answered(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        crate::metrics::hot().decisions_queued.decrement(1.0);
    }
}

/// Runs `decide`, catching a panic as [`PoolError::Panicked`] (the pool's
/// thread survives it, and the decision fails closed).
fn caught<R>(decide: impl FnOnce() -> R) -> Result<R, PoolError> {
    std::panic::catch_unwind(AssertUnwindSafe(decide)).map_err(|panic| {
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        tracing::error!(panic = %text, "a decision panicked; it fails closed");
        PoolError::Panicked(text)
    })
}

/// A decision asked, with where its answer goes.
type Asked<I, O> = (I, tokio::sync::oneshot::Sender<Result<O, PoolError>>);

/// Bulk decisions of one kind that many ask at once (a storm's welcomes, one
/// `admit-worker` each). Those asked while none of them runs wait together and
/// run as one task on the pool (a task per thread when there are several), one
/// after another in the order asked: a storm of thousands wakes a pool thread a
/// few times, not once per decision (waking a thread cost more than a small
/// policy's call). Between two of them the task steps aside for any urgent
/// decision, which so still waits for one call at most.
///
/// `C` is what every decision reads (the active policies).
pub struct Batched<I, O, C = PolicySet> {
    waiting: Arc<Mutex<Vec<Asked<I, O>>>>,
    decide: fn(&C, I) -> O,
}

impl<I: Send + 'static, O: Send + 'static, C: Send + Sync + 'static> Batched<I, O, C> {
    /// Decisions made by `decide`, batched.
    pub fn new(decide: fn(&C, I) -> O) -> Self {
        Batched { waiting: Arc::default(), decide }
    }
}

impl DecisionPool {
    /// Decides `item` with `batch`'s function and `context`, in the bulk lane,
    /// beside the decisions of `batch` asked meanwhile. The first asked while
    /// none waits starts a task; it takes every decision asked by the time it
    /// runs (its thread's share of them, with several threads), with the
    /// context of the first.
    pub async fn run_batched<I, O, C>(&self, batch: &Batched<I, O, C>, context: Arc<C>, item: I) -> Result<O, PoolError>
    where
        I: Send + 'static,
        O: Send + 'static,
        C: Send + Sync + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let first = {
            let mut waiting = batch.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            self.asked();
            waiting.push((item, tx));
            waiting.len() == 1
        };
        if first {
            let task = batch_task(self.clone(), batch.waiting.clone(), batch.decide, context);
            self.shared.push(Lane::Bulk, false, task, || ());
        }
        rx.await.unwrap_or(Err(PoolError::Stopped))
    }
}

/// A task that takes its thread's share of the decisions waiting in a batch
/// (all of them, with one thread) and decides them; the rest, if any, are left
/// to another such task, queued first: a backlog of slow decisions keeps every
/// thread busy rather than one. While decisions wait, one such task is queued
/// or about to take them.
fn batch_task<I: Send + 'static, O: Send + 'static, C: Send + Sync + 'static>(
    pool: DecisionPool,
    waiting: Arc<Mutex<Vec<Asked<I, O>>>>,
    decide: fn(&C, I) -> O,
    context: Arc<C>,
) -> Task {
    Box::new(move || {
        let share = {
            let mut asked = waiting.lock().unwrap_or_else(PoisonError::into_inner);
            let share = asked.len().div_ceil(pool.threads);
            let share: Vec<_> = asked.drain(..share).collect();
            if !asked.is_empty() {
                let rest = batch_task(pool.clone(), waiting.clone(), decide, context.clone());
                pool.shared.push(Lane::Bulk, false, rest, || ());
            }
            share
        };
        decide_in_turn(pool, share.into_iter(), decide, context);
    })
}

/// Decides `asked` in order on a pool thread; steps aside for an urgent
/// decision by queueing the rest at the front of the bulk lane.
fn decide_in_turn<I: Send + 'static, O: Send + 'static, C: Send + Sync + 'static>(
    pool: DecisionPool,
    mut asked: std::vec::IntoIter<Asked<I, O>>,
    decide: fn(&C, I) -> O,
    context: Arc<C>,
) {
    while let Some((item, tx)) = asked.next() {
        let answer = caught(|| decide(&context, item));
        pool.answered();
        let _ = tx.send(answer);
        if asked.len() > 0 && pool.shared.urgent_waiting() {
            let shared = pool.shared.clone();
            shared.push(Lane::Bulk, true, Box::new(move || decide_in_turn(pool, asked, decide, context)), || ());
            return;
        }
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

    /// As [`decide`](Self::decide) in the bulk lane, with `item` decided in
    /// `batch` beside the others asked meanwhile ([`DecisionPool::run_batched`]).
    /// A batch decides with the policies active when its first decision was asked.
    pub async fn decide_batched<I, O>(self, batch: &Batched<I, O>, hook: Hook, item: I) -> Result<O, PoolError>
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        let policies = self.plugins.current();
        if !policies.calls_plugins(hook) {
            return Ok((batch.decide)(&policies, item));
        }
        self.pool.run_batched(batch, policies, item).await
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

    type Answer<T> = tokio::task::JoinHandle<Result<T, PoolError>>;

    /// Holds one of `pool`'s threads with a bulk decision until the returned
    /// sender sends (all of them, called once per thread); returns once that
    /// decision is queued.
    async fn hold_the_thread(pool: &DecisionPool) -> (Answer<bool>, std::sync::mpsc::Sender<()>) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let before = pool.queued();
        let blocker = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Bulk, move || held.recv().is_ok()).await }
        });
        while pool.queued() <= before {
            tokio::task::yield_now().await;
        }
        (blocker, release)
    }

    /// Asks `batch` about each of `items`, each queued before the next is asked.
    async fn ask_in_order<O: Send + 'static, C: Send + Sync + 'static>(
        pool: &DecisionPool,
        batch: &Arc<Batched<u32, O, C>>,
        context: &Arc<C>,
        items: std::ops::Range<u32>,
    ) -> Vec<Answer<O>> {
        let mut asked = Vec::new();
        for i in items {
            let (asker, batch, context) = (pool.clone(), batch.clone(), context.clone());
            let before = pool.queued();
            asked.push(tokio::spawn(async move { asker.run_batched(&batch, context, i).await }));
            while pool.queued() <= before {
                tokio::task::yield_now().await;
            }
        }
        asked
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_decisions_run_together_in_order_and_a_panic_fails_only_its_own() {
        let pool = DecisionPool::new(1).expect("pool");
        // The only thread is held, so the decisions asked meanwhile wait together.
        let (blocker, release) = hold_the_thread(&pool).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let batch: Arc<Batched<u32, u32, Mutex<Vec<u32>>>> = Arc::new(Batched::new(|order, i| {
            assert_ne!(i, 3, "three is refused loudly");
            order.lock().expect("order").push(i);
            i * 10
        }));
        let asked = ask_in_order(&pool, &batch, &order, 0..6).await;
        release.send(()).expect("release");
        assert_eq!(blocker.await.expect("blocker"), Ok(true));
        let mut answers = Vec::new();
        for task in asked {
            answers.push(task.await.expect("task"));
        }
        assert_eq!(answers[..3], [Ok(0), Ok(10), Ok(20)]);
        assert!(matches!(answers[3], Err(PoolError::Panicked(_))), "{:?}", answers[3]);
        assert_eq!(answers[4..], [Ok(40), Ok(50)]);
        assert_eq!(*order.lock().expect("order"), [0, 1, 2, 4, 5], "one task, in the order asked");
        assert_eq!(pool.queued(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_urgent_decision_waits_for_one_batched_decision_not_the_batch() {
        let pool = DecisionPool::new(1).expect("pool");
        let order = Arc::new(Mutex::new(Vec::<String>::new()));
        // The first batched decision holds the only thread until released.
        let (release, held) = std::sync::mpsc::channel::<()>();
        type Context = (Arc<Mutex<Vec<String>>>, Mutex<Option<std::sync::mpsc::Receiver<()>>>);
        let context: Arc<Context> = Arc::new((order.clone(), Mutex::new(Some(held))));
        let batch: Arc<Batched<u32, (), Context>> = Arc::new(Batched::new(|(order, held), i| {
            order.lock().expect("order").push(format!("bulk {i}"));
            if let Some(held) = held.lock().expect("held").take() {
                let _ = held.recv();
            }
        }));
        // Three asked while a bulk decision holds the thread: one batch.
        let (blocker, unblock) = hold_the_thread(&pool).await;
        let asked = ask_in_order(&pool, &batch, &context, 0..3).await;
        unblock.send(()).expect("unblock");
        assert_eq!(blocker.await.expect("blocker"), Ok(true));
        while order.lock().expect("order").is_empty() {
            tokio::task::yield_now().await;
        }
        // The batch is in its first decision: an urgent one comes next, not after the batch.
        let urgent = tokio::spawn({
            let (pool, order) = (pool.clone(), order.clone());
            async move { pool.run(Lane::Urgent, move || order.lock().expect("order").push("urgent".into())).await }
        });
        while pool.queued() < 4 {
            tokio::task::yield_now().await;
        }
        release.send(()).expect("release");
        urgent.await.expect("urgent").expect("answer");
        for task in asked {
            task.await.expect("task").expect("answer");
        }
        assert_eq!(*order.lock().expect("order"), ["bulk 0", "urgent", "bulk 1", "bulk 2"]);
        assert_eq!(pool.queued(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backlog_of_batched_decisions_keeps_every_thread_busy() {
        let pool = DecisionPool::new(2).expect("pool");
        let (blocker_a, release_a) = hold_the_thread(&pool).await;
        let (blocker_b, release_b) = hold_the_thread(&pool).await;
        // Each decision waits (10 s at most) until two have started: only two
        // threads deciding at once get there.
        type Meeting = (Mutex<usize>, std::sync::Condvar);
        let meeting: Arc<Meeting> = Arc::new((Mutex::new(0), std::sync::Condvar::new()));
        let batch: Arc<Batched<u32, bool, Meeting>> = Arc::new(Batched::new(|(started, met), _| {
            let mut started = started.lock().expect("started");
            *started += 1;
            met.notify_all();
            let wait = met.wait_timeout_while(started, std::time::Duration::from_secs(10), |n| *n < 2);
            !wait.expect("meeting").1.timed_out()
        }));
        let asked = ask_in_order(&pool, &batch, &meeting, 0..4).await;
        release_a.send(()).expect("release");
        release_b.send(()).expect("release");
        assert_eq!(blocker_a.await.expect("blocker"), Ok(true));
        assert_eq!(blocker_b.await.expect("blocker"), Ok(true));
        for task in asked {
            assert_eq!(task.await.expect("task"), Ok(true), "the batch ran on one thread only");
        }
    }
}
