//! SQLite through sqlx: the store for a single machine without PostgreSQL.
//!
//! Timestamps are UTC text `YYYY-MM-DD HH:MM:SS.ffffff`, always with six fraction
//! digits so that SQL compares them (and takes their `max`) in time order; the process
//! clock sets them, as every writer runs on this machine. `proof_target` and
//! `solution_target` are u64 values stored bit-cast to a signed integer (`as i64` on
//! write, `as u64` on read).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{Inserted, NewJob, NewSolution, Store, StoreError, StoredJob, StoredSolution, WorkerConnection, WorkerRow};

/// How long a write waits for another connection's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections of a file-backed store: WAL lets readers run beside the one writer.
const FILE_CONNECTIONS: u32 = 4;

/// Columns of a [`JobRow`].
macro_rules! job_columns {
    () => {
        "task_id, block_height, proof_target, epoch_challenge, created_at, broadcast_at IS NOT NULL AS broadcast"
    };
}

/// Columns of a [`SolutionRow`]; the original system's columns are nullable.
macro_rules! solution_columns {
    () => {
        "unique_key, coalesce(hardware_id, '') AS hardware_id, coalesce(caption, '') AS caption, \
         coalesce(task_id, '') AS task_id, coalesce(solution, '') AS solution, solution_target, \
         coalesce(valid, false) AS valid, coalesce(checked, false) AS checked, invalid_reason, \
         broadcast_at IS NOT NULL AS broadcast, created_at"
    };
}

/// Columns of a [`WorkerConnectionRow`]; the original system's columns are nullable.
macro_rules! worker_columns {
    () => {
        "id, coalesce(ip, '') AS ip, coalesce(address, '') AS address, coalesce(hardware, '') AS hardware, \
         coalesce(hardware_id, '') AS hardware_id, coalesce(caption, '') AS caption, instance, connected_at, \
         disconnected_at"
    };
}

/// When an open connection of a worker (the `worker` row being updated) ended, as far as
/// the database knows: at that worker's latest solution sent during it (after it opened,
/// before the worker's next connection opened), or else when it opened.
macro_rules! finished_at {
    () => {
        "coalesce(
            (SELECT max(s.created_at) FROM solution s
             WHERE s.hardware_id = worker.hardware_id AND s.caption = worker.caption
               AND s.created_at >= worker.connected_at
               AND NOT EXISTS (
                   SELECT 1 FROM worker n
                   WHERE n.hardware_id = worker.hardware_id AND n.caption = worker.caption
                     AND n.connected_at > worker.connected_at AND n.connected_at <= s.created_at)),
            worker.connected_at)"
    };
}

/// The current time as stored.
fn now() -> String {
    Utc::now().format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// The store on SQLite.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path`, in WAL mode.
    ///
    /// `synchronous = NORMAL`: in WAL mode a commit survives a crash of eligo (what
    /// embedded mode promises) and only the last commits can be lost to a power
    /// failure, for several times the write rate of `FULL`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new().max_connections(FILE_CONNECTIONS).connect_with(options).await?;
        Ok(Self { pool })
    }

    /// A fresh database in memory, private to this store, for tests.
    pub async fn in_memory() -> Result<Self, StoreError> {
        // Every connection to `:memory:` is its own database, and the database vanishes
        // with its last connection: one connection, never closed for idleness or age.
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// The connection pool, for queries outside the [`Store`] trait.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// A `job` row as read.
#[derive(sqlx::FromRow)]
struct JobRow {
    task_id: String,
    block_height: i64,
    proof_target: i64,
    epoch_challenge: String,
    created_at: DateTime<Utc>,
    broadcast: bool,
}

impl From<JobRow> for StoredJob {
    fn from(r: JobRow) -> Self {
        StoredJob {
            task_id: r.task_id,
            block_height: r.block_height,
            proof_target: r.proof_target as u64,
            epoch_challenge: r.epoch_challenge,
            created_at: r.created_at,
            broadcast: r.broadcast,
        }
    }
}

/// A `solution` row as read.
#[derive(sqlx::FromRow)]
struct SolutionRow {
    unique_key: String,
    hardware_id: String,
    caption: String,
    task_id: String,
    solution: String,
    solution_target: i64,
    valid: bool,
    checked: bool,
    invalid_reason: Option<String>,
    broadcast: bool,
    created_at: DateTime<Utc>,
}

impl From<SolutionRow> for StoredSolution {
    fn from(r: SolutionRow) -> Self {
        StoredSolution {
            unique_key: r.unique_key,
            hardware_id: r.hardware_id,
            caption: r.caption,
            task_id: r.task_id,
            solution: r.solution,
            solution_target: r.solution_target as u64,
            valid: r.valid,
            checked: r.checked,
            invalid_reason: r.invalid_reason,
            broadcast: r.broadcast,
            created_at: r.created_at,
        }
    }
}

/// A `worker` row as read.
#[derive(sqlx::FromRow)]
struct WorkerConnectionRow {
    id: i64,
    ip: String,
    address: String,
    hardware: String,
    hardware_id: String,
    caption: String,
    instance: String,
    connected_at: DateTime<Utc>,
    disconnected_at: Option<DateTime<Utc>>,
}

impl From<WorkerConnectionRow> for WorkerRow {
    fn from(r: WorkerConnectionRow) -> Self {
        WorkerRow {
            id: r.id,
            ip: r.ip,
            address: r.address,
            hardware: r.hardware,
            hardware_id: r.hardware_id,
            caption: r.caption,
            instance: r.instance,
            connected_at: r.connected_at,
            disconnected_at: r.disconnected_at,
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/sqlite").run(&self.pool).await?;
        Ok(())
    }

    async fn insert_job(&self, job: &NewJob) -> Result<Inserted<StoredJob>, StoreError> {
        let inserted: Option<JobRow> = sqlx::query_as(concat!(
            "INSERT INTO job (task_id, block_height, proof_target, epoch_challenge, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (block_height) DO NOTHING RETURNING ",
            job_columns!()
        ))
        .bind(&job.task_id)
        .bind(job.block_height)
        .bind(job.proof_target as i64)
        .bind(&job.epoch_challenge)
        .bind(now())
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = inserted {
            return Ok(Inserted { row: row.into(), created: true });
        }
        let row: JobRow = sqlx::query_as(concat!("SELECT ", job_columns!(), " FROM job WHERE block_height = ?1"))
            .bind(job.block_height)
            .fetch_one(&self.pool)
            .await?;
        Ok(Inserted { row: row.into(), created: false })
    }

    async fn mark_job_broadcast(&self, task_id: &str) -> Result<(), StoreError> {
        // The first broadcast time is kept: a re-broadcast changes nothing downstream.
        sqlx::query("UPDATE job SET broadcast_at = ?2 WHERE task_id = ?1 AND broadcast_at IS NULL")
            .bind(task_id)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn job_by_task(&self, task_id: &str) -> Result<Option<StoredJob>, StoreError> {
        let row: Option<JobRow> = sqlx::query_as(concat!("SELECT ", job_columns!(), " FROM job WHERE task_id = ?1"))
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    async fn latest_broadcast_job(&self) -> Result<Option<StoredJob>, StoreError> {
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM job WHERE broadcast_at IS NOT NULL ORDER BY block_height DESC LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Into::into))
    }

    async fn insert_solution(&self, solution: &NewSolution) -> Result<Inserted<StoredSolution>, StoreError> {
        let inserted: Option<SolutionRow> = sqlx::query_as(concat!(
            "INSERT INTO solution (unique_key, hardware_id, caption, task_id, solution, solution_target, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (unique_key) DO NOTHING RETURNING ",
            solution_columns!()
        ))
        .bind(&solution.unique_key)
        .bind(&solution.hardware_id)
        .bind(&solution.caption)
        .bind(&solution.task_id)
        .bind(&solution.solution)
        .bind(solution.solution_target as i64)
        .bind(now())
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = inserted {
            return Ok(Inserted { row: row.into(), created: true });
        }
        let row: SolutionRow =
            sqlx::query_as(concat!("SELECT ", solution_columns!(), " FROM solution WHERE unique_key = ?1"))
                .bind(&solution.unique_key)
                .fetch_one(&self.pool)
                .await?;
        Ok(Inserted { row: row.into(), created: false })
    }

    async fn set_validation(
        &self,
        unique_key: &str,
        valid: bool,
        checked: bool,
        invalid_reason: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE solution SET valid = ?2, checked = ?3, invalid_reason = ?4 WHERE unique_key = ?1")
            .bind(unique_key)
            .bind(valid)
            .bind(checked)
            .bind(invalid_reason)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark_solution_broadcast(&self, unique_key: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE solution SET broadcast_at = ?2 WHERE unique_key = ?1 AND broadcast_at IS NULL")
            .bind(unique_key)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn broadcast_solutions_at(&self, block_height: i64) -> Result<Vec<(StoredJob, StoredSolution)>, StoreError> {
        // `block_height` is unique: at most one job, whose solutions are all the answer.
        let Some(job) =
            sqlx::query_as::<_, JobRow>(concat!("SELECT ", job_columns!(), " FROM job WHERE block_height = ?1"))
                .bind(block_height)
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(Vec::new());
        };
        let job = StoredJob::from(job);
        let solutions: Vec<SolutionRow> = sqlx::query_as(concat!(
            "SELECT ",
            solution_columns!(),
            " FROM solution WHERE task_id = ?1 AND broadcast_at IS NOT NULL ORDER BY id"
        ))
        .bind(&job.task_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(solutions.into_iter().map(|s| (job.clone(), s.into())).collect())
    }

    async fn record_rejected(&self, stream: &str, payload: &str, reason: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO rejected_message (stream, payload, reason, created_at) VALUES (?1, ?2, ?3, ?4)")
            .bind(stream)
            .bind(payload)
            .bind(reason)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn worker_connected(&self, worker: &WorkerConnection) -> Result<i64, StoreError> {
        // IMMEDIATE takes the write lock up front (waiting up to the busy timeout): a
        // deferred transaction that read first could not upgrade and would fail at once.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let connected_at = now();
        sqlx::query(concat!(
            "UPDATE worker SET disconnected_at = ",
            finished_at!(),
            " WHERE hardware_id = ?1 AND caption = ?2 AND disconnected_at IS NULL"
        ))
        .bind(&worker.hardware_id)
        .bind(&worker.caption)
        .execute(&mut *tx)
        .await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO worker (ip, address, hardware, hardware_id, caption, instance, connected_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
        )
        .bind(&worker.ip)
        .bind(&worker.address)
        .bind(&worker.hardware)
        .bind(&worker.hardware_id)
        .bind(&worker.caption)
        .bind(&worker.instance)
        .bind(connected_at)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn worker_disconnected(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE worker SET disconnected_at = ?2 WHERE id = ?1 AND disconnected_at IS NULL")
            .bind(id)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn close_connections_of(&self, instance: &str) -> Result<u64, StoreError> {
        let finished = sqlx::query(concat!(
            "UPDATE worker SET disconnected_at = ",
            finished_at!(),
            " WHERE instance = ?1 AND disconnected_at IS NULL"
        ))
        .bind(instance)
        .execute(&self.pool)
        .await?;
        Ok(finished.rows_affected())
    }

    async fn worker_connections(&self, hardware_id: &str, caption: &str) -> Result<Vec<WorkerRow>, StoreError> {
        let rows: Vec<WorkerConnectionRow> = sqlx::query_as(concat!(
            "SELECT ",
            worker_columns!(),
            " FROM worker WHERE hardware_id = ?1 AND caption = ?2 ORDER BY connected_at, id"
        ))
        .bind(hardware_id)
        .bind(caption)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}
