//! The pipeline's stages, each a role `eligo serve` can run:
//!
//! ```text
//! node ──ws──▶ node::server ──queue `job`──▶ processors::job ──▶ store, log `job`
//! worker ◀─ws── worker::server ◀── log `job` (fanout)
//! worker ──ws──▶ worker::server ──queue `solution`──▶ processors::solution ──▶ store, log `solution`
//! node ◀─ws── node::server ◀── log `solution` (fanout)
//! node ◀─sse/webhook── node::routes ◀── node::server (nodes over HTTP: POST a job, same path)
//! worker::presence ──queue `worker`──▶ processors::presence ──▶ store (`worker` rows)
//! ```
//!
//! [`consume`] is the processors' batch loop over a queue, [`fanout`] the servers'
//! tail of a topic. Below the stages: [`crate::edge`] (listeners, admission) and
//! [`crate::session`] (one connection's plumbing).
//!
//! Every decision on the way is asked of the plugins ([`crate::plugin::PolicySet`]).

pub mod consume;
pub mod fanout;
pub mod node;
pub mod processors;
pub mod views;
pub mod worker;

use crate::plugin::{Deciding, DecisionPool, Hook, Lane, PluginHost, PolicySet, PoolError};
use crate::store::Store;
use crate::transport::{EventLog, WorkQueue};
use std::sync::Arc;
use std::time::Duration;

/// The backends and plugins every stage works with.
#[derive(Clone)]
pub struct Services {
    /// Where nodes' jobs and workers' solutions enter.
    pub queue: Arc<dyn WorkQueue>,
    /// Where stored jobs and valid solutions leave.
    pub log: Arc<dyn EventLog>,
    /// Where everything is persisted.
    pub store: Arc<dyn Store>,
    /// The policies.
    pub plugins: Arc<PluginHost>,
    /// Where the policies' decisions run: never on the runtime's threads.
    pub decisions: DecisionPool,
}

impl Services {
    /// What asking the policies needs, borrowed: the plugins and the decision pool.
    pub fn deciding(&self) -> Deciding<'_> {
        Deciding { plugins: &self.plugins, pool: &self.decisions }
    }

    /// Decides with the active policies (see [`Deciding::decide`]).
    pub async fn decide<R, F>(&self, lane: Lane, hook: Hook, decide: F) -> Result<R, PoolError>
    where
        R: Send + 'static,
        F: FnOnce(&PolicySet) -> R + Send + 'static,
    {
        self.deciding().decide(lane, hook, decide).await
    }
}

/// The delays between retries of a failing broker or database: 100 ms doubling
/// to 5 s, each with up to as much again at random (backon's jitter), so the
/// processes that lost a broker together do not all retry in the same instant.
#[derive(Debug)]
pub struct Backoff {
    delays: backon::ExponentialBackoff,
}

/// The longest wait between two retries, before jitter.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Default for Backoff {
    fn default() -> Self {
        Backoff { delays: Self::schedule() }
    }
}

impl Backoff {
    fn schedule() -> backon::ExponentialBackoff {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(BACKOFF_MAX)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Waits the current delay; the next one is longer, up to the cap.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.delays.next().unwrap_or(BACKOFF_MAX)).await;
    }

    /// Back to the shortest delay after a success.
    pub fn reset(&mut self) {
        self.delays = Self::schedule();
    }
}
