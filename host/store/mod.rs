//! What the pipeline persists, behind the [`Store`] trait: PostgreSQL in
//! production ([`postgres::PgStore`]), SQLite on a bare machine
//! ([`sqlite::SqliteStore`]). Both pass the same test suite (`tests/store.rs`).
//!
//! Tables are those of the original system (`job`, `solution`, `worker`) plus
//! what eligo needs: a job's `proof_target` and broadcast marker, a solution's
//! broadcast marker and validation reason, the server instance owning a worker
//! connection, and `rejected_message` for messages the processors could not use.

pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the query failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// A job to insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    /// A fresh uuid, used if the height is new.
    pub task_id: String,
    pub block_height: i64,
    pub proof_target: u64,
    /// The `epoch_challenge` object as compact JSON text.
    pub epoch_challenge: String,
}

/// A stored job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredJob {
    pub task_id: String,
    pub block_height: i64,
    pub proof_target: u64,
    pub epoch_challenge: String,
    pub created_at: DateTime<Utc>,
    /// Produced to the `job` topic already.
    pub broadcast: bool,
}

/// A solution to insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSolution {
    /// `partial_solution.nonce` as text.
    pub unique_key: String,
    pub hardware_id: String,
    pub caption: String,
    pub task_id: String,
    /// The worker's `solution` object as compact JSON text.
    pub solution: String,
    pub solution_target: u64,
}

/// A stored solution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSolution {
    pub unique_key: String,
    pub hardware_id: String,
    pub caption: String,
    pub task_id: String,
    pub solution: String,
    pub solution_target: u64,
    pub valid: bool,
    pub checked: bool,
    /// Why a validator refused it.
    pub invalid_reason: Option<String>,
    /// Produced to the `solution` topic already.
    pub broadcast: bool,
    pub created_at: DateTime<Utc>,
}

/// A worker connection to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConnection {
    pub ip: String,
    pub address: String,
    pub hardware: String,
    pub hardware_id: String,
    pub caption: String,
    /// The server instance holding the connection (for crash recovery).
    pub instance: String,
}

/// A row of `worker`: one connection of a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRow {
    pub id: i64,
    pub ip: String,
    pub address: String,
    pub hardware: String,
    pub hardware_id: String,
    pub caption: String,
    pub instance: String,
    pub connected_at: DateTime<Utc>,
    pub disconnected_at: Option<DateTime<Utc>>,
}

/// Whether an insert created the row or found it already there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inserted<T> {
    /// The row as stored now.
    pub row: T,
    /// `true` if this call created it.
    pub created: bool,
}

/// Persistence for the pipeline.
#[async_trait]
pub trait Store: Send + Sync {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Inserts a job unless its height is stored; returns the stored row either way.
    async fn insert_job(&self, job: &NewJob) -> Result<Inserted<StoredJob>, StoreError>;
    /// Records that the job was produced to the `job` topic.
    async fn mark_job_broadcast(&self, task_id: &str) -> Result<(), StoreError>;
    /// The job with this task id.
    async fn job_by_task(&self, task_id: &str) -> Result<Option<StoredJob>, StoreError>;
    /// The broadcast job of greatest height: what a newly connected worker gets.
    async fn latest_broadcast_job(&self) -> Result<Option<StoredJob>, StoreError>;

    /// Inserts a solution unless its `unique_key` is stored; returns the stored row either way.
    async fn insert_solution(&self, solution: &NewSolution) -> Result<Inserted<StoredSolution>, StoreError>;
    /// Records the validators' verdict.
    async fn set_validation(
        &self,
        unique_key: &str,
        valid: bool,
        checked: bool,
        invalid_reason: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Records that the solution was produced to the `solution` topic.
    async fn mark_solution_broadcast(&self, unique_key: &str) -> Result<(), StoreError>;
    /// Broadcast solutions to jobs at `block_height`, oldest first, with their job:
    /// what a node that (re)submits a job at that height catches up on.
    async fn broadcast_solutions_at(&self, block_height: i64) -> Result<Vec<(StoredJob, StoredSolution)>, StoreError>;

    /// Records a message a processor could not use, with why.
    async fn record_rejected(&self, stream: &str, payload: &str, reason: &str) -> Result<(), StoreError>;

    /// Records a worker connection (`connected_at` = now) and returns its id. The
    /// worker's earlier connections still open (same `hardware_id` and `caption`)
    /// are finished first, as the original system's to-do describes.
    async fn worker_connected(&self, worker: &WorkerConnection) -> Result<i64, StoreError>;
    /// Sets `disconnected_at` = now.
    async fn worker_disconnected(&self, id: i64) -> Result<(), StoreError>;
    /// Finishes every connection `instance` left open (it crashed); returns how many.
    async fn close_connections_of(&self, instance: &str) -> Result<u64, StoreError>;
    /// The connections of one worker (`hardware_id` and `caption`), oldest first.
    async fn worker_connections(&self, hardware_id: &str, caption: &str) -> Result<Vec<WorkerRow>, StoreError>;
}
