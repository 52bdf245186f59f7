//! The open connections of one server.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio_util::task::TaskTracker;

/// The open connections of one server, by id, and their tasks.
pub struct Registry<C> {
    connections: Mutex<HashMap<u64, C>>,
    next_id: AtomicU64,
    tasks: TaskTracker,
}

impl<C> Default for Registry<C> {
    fn default() -> Self {
        Registry { connections: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1), tasks: TaskTracker::new() }
    }
}

impl<C> Registry<C> {
    /// Adds a connection; returns its id.
    pub fn insert(&self, connection: C) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, connection);
        id
    }

    /// Removes a connection.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// The connections, locked: to copy out what a decision needs, or to apply
    /// one. Never hold it across a plugin call or an await. A panic that
    /// poisoned it is outlived: every change under it is a whole-field write, so
    /// the map is never half-updated, and delivery must not stop for good.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<u64, C>> {
        self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none are open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tracks a connection's task, so [`closed`](Self::closed) can wait for it.
    pub fn track<F: Future<Output = ()>>(&self, task: F) -> impl Future<Output = ()> {
        self.tasks.track_future(task)
    }

    /// Waits until every tracked connection task has finished.
    pub async fn closed(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}
