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

use super::{
    in_input_order, Inserted, NewJob, NewSolution, Page, Paged, Settlement, SolutionFilter, Store, StoreError,
    StoredJob, StoredSolution, WorkerConnection, WorkerFilter, WorkerRow,
};

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

/// A JSON array of the values, for `json_each`: SQLite has no array parameters.
fn json_array<T: serde::Serialize>(values: &[T]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".into())
}

/// The store on SQLite.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Worker connects and disconnects come in storms (every worker of a pool
    /// reconnects after a restart); queued here, they wait their turn instead of
    /// timing out on SQLite's write lock, which would close the worker.
    connection_writes: std::sync::Arc<tokio::sync::Semaphore>,
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
        Ok(Self { pool, connection_writes: std::sync::Arc::new(tokio::sync::Semaphore::new(1)) })
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
        Ok(Self { pool, connection_writes: std::sync::Arc::new(tokio::sync::Semaphore::new(1)) })
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

/// A `solution` row with its id: the cursor of a listing.
#[derive(sqlx::FromRow)]
struct KeyedSolutionRow {
    id: i64,
    #[sqlx(flatten)]
    row: SolutionRow,
}

impl From<KeyedSolutionRow> for StoredSolution {
    fn from(r: KeyedSolutionRow) -> Self {
        r.row.into()
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

    async fn insert_jobs(&self, jobs: &[NewJob]) -> Result<Vec<Inserted<StoredJob>>, StoreError> {
        let batch: Vec<serde_json::Value> = jobs
            .iter()
            .map(|j| {
                serde_json::json!({ "t": j.task_id, "h": j.block_height, "p": j.proof_target as i64,
                                    "e": j.epoch_challenge })
            })
            .collect();
        let heights: Vec<i64> = jobs.iter().map(|j| j.block_height).collect();
        let heights_json = json_array(&heights);
        // IMMEDIATE takes the write lock up front: see `worker_connected`.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // `WHERE true` tells SQLite's parser that ON CONFLICT is the upsert clause.
        let created: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO job (task_id, block_height, proof_target, epoch_challenge, created_at) \
             SELECT json_extract(value, '$.t'), json_extract(value, '$.h'), json_extract(value, '$.p'), \
                    json_extract(value, '$.e'), ?2 \
             FROM json_each(?1) WHERE true ON CONFLICT (block_height) DO NOTHING RETURNING block_height",
        )
        .bind(serde_json::Value::Array(batch).to_string())
        .bind(now())
        .fetch_all(&mut *tx)
        .await?;
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM job WHERE block_height IN (SELECT value FROM json_each(?1))"
        ))
        .bind(&heights_json)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        in_input_order(heights, rows, |r| r.block_height, created)
    }

    async fn jobs_by_task(&self, task_ids: &[String]) -> Result<Vec<StoredJob>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM job WHERE task_id IN (SELECT value FROM json_each(?1))"
        ))
        .bind(json_array(task_ids))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
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

    async fn insert_solutions(&self, solutions: &[NewSolution]) -> Result<Vec<Inserted<StoredSolution>>, StoreError> {
        let batch: Vec<serde_json::Value> = solutions
            .iter()
            .map(|s| {
                serde_json::json!({ "k": s.unique_key, "h": s.hardware_id, "c": s.caption, "t": s.task_id,
                                    "s": s.solution, "st": s.solution_target as i64 })
            })
            .collect();
        let keys: Vec<&str> = solutions.iter().map(|s| s.unique_key.as_str()).collect();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let created: Vec<String> = sqlx::query_scalar(
            "INSERT INTO solution (unique_key, hardware_id, caption, task_id, solution, solution_target, created_at) \
             SELECT json_extract(value, '$.k'), json_extract(value, '$.h'), json_extract(value, '$.c'), \
                    json_extract(value, '$.t'), json_extract(value, '$.s'), json_extract(value, '$.st'), ?2 \
             FROM json_each(?1) WHERE true ON CONFLICT (unique_key) DO NOTHING RETURNING unique_key",
        )
        .bind(serde_json::Value::Array(batch).to_string())
        .bind(now())
        .fetch_all(&mut *tx)
        .await?;
        let rows: Vec<SolutionRow> = sqlx::query_as(concat!(
            "SELECT ",
            solution_columns!(),
            " FROM solution WHERE unique_key IN (SELECT value FROM json_each(?1))"
        ))
        .bind(json_array(&keys))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        in_input_order(keys.iter().map(|k| k.to_string()), rows, |r| r.unique_key.clone(), created)
    }

    async fn settle(&self, settlement: &Settlement<'_>) -> Result<(), StoreError> {
        if settlement.is_empty() {
            return Ok(());
        }
        let at = now();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if !settlement.verdicts.is_empty() {
            let verdicts: Vec<serde_json::Value> = settlement
                .verdicts
                .iter()
                .map(|v| serde_json::json!({ "k": v.unique_key, "v": v.valid, "c": v.checked, "r": v.invalid_reason }))
                .collect();
            sqlx::query(
                "UPDATE solution SET valid = json_extract(v.value, '$.v'), checked = json_extract(v.value, '$.c'), \
                 invalid_reason = json_extract(v.value, '$.r') \
                 FROM json_each(?1) AS v WHERE solution.unique_key = json_extract(v.value, '$.k')",
            )
            .bind(serde_json::Value::Array(verdicts).to_string())
            .execute(&mut *tx)
            .await?;
        }
        let broadcast = [
            (
                "UPDATE job SET broadcast_at = ?2 \
                 WHERE task_id IN (SELECT value FROM json_each(?1)) AND broadcast_at IS NULL",
                settlement.jobs_broadcast,
            ),
            (
                "UPDATE solution SET broadcast_at = ?2 \
                 WHERE unique_key IN (SELECT value FROM json_each(?1)) AND broadcast_at IS NULL",
                settlement.solutions_broadcast,
            ),
        ];
        for (statement, keys) in broadcast {
            if !keys.is_empty() {
                sqlx::query(statement).bind(json_array(keys)).bind(&at).execute(&mut *tx).await?;
            }
        }
        if !settlement.rejected.is_empty() {
            let rejected: Vec<serde_json::Value> = settlement
                .rejected
                .iter()
                .map(|r| serde_json::json!({ "s": r.stream, "p": r.payload, "r": r.reason }))
                .collect();
            sqlx::query(
                "INSERT INTO rejected_message (stream, payload, reason, created_at) \
                 SELECT json_extract(value, '$.s'), json_extract(value, '$.p'), json_extract(value, '$.r'), ?2 \
                 FROM json_each(?1)",
            )
            .bind(serde_json::Value::Array(rejected).to_string())
            .bind(&at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
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

    async fn worker_connected(&self, worker: &WorkerConnection) -> Result<i64, StoreError> {
        let _turn = self.connection_writes.acquire().await.ok();
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
        let _turn = self.connection_writes.acquire().await.ok();
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

    async fn list_jobs(&self, page: Page) -> Result<Paged<StoredJob>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM job WHERE (?1 IS NULL OR block_height < ?1) ORDER BY block_height DESC LIMIT ?2"
        ))
        .bind(page.before)
        .bind(i64::from(page.limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(Paged::of(rows, page, |r| r.block_height))
    }

    async fn job_at_height(&self, block_height: i64) -> Result<Option<StoredJob>, StoreError> {
        let row: Option<JobRow> =
            sqlx::query_as(concat!("SELECT ", job_columns!(), " FROM job WHERE block_height = ?1"))
                .bind(block_height)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(Into::into))
    }

    async fn list_solutions(&self, filter: &SolutionFilter, page: Page) -> Result<Paged<StoredSolution>, StoreError> {
        let rows: Vec<KeyedSolutionRow> = sqlx::query_as(concat!(
            "SELECT id AS id, ",
            solution_columns!(),
            " FROM solution WHERE (?1 IS NULL OR id < ?1) AND (?2 IS NULL OR task_id = ?2) \
             AND (?3 IS NULL OR hardware_id = ?3) AND (?4 IS NULL OR unique_key = ?4) \
             ORDER BY id DESC LIMIT ?5"
        ))
        .bind(page.before)
        .bind(filter.task_id.as_deref())
        .bind(filter.hardware_id.as_deref())
        .bind(filter.unique_key.as_deref())
        .bind(i64::from(page.limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(Paged::of(rows, page, |r| r.id))
    }

    async fn list_worker_connections(&self, filter: &WorkerFilter, page: Page) -> Result<Paged<WorkerRow>, StoreError> {
        let rows: Vec<WorkerConnectionRow> = sqlx::query_as(concat!(
            "SELECT ",
            worker_columns!(),
            " FROM worker WHERE (?1 IS NULL OR id < ?1) AND (?2 IS NULL OR hardware_id = ?2) \
             AND (?3 IS NULL OR (disconnected_at IS NULL) = ?3) ORDER BY id DESC LIMIT ?4"
        ))
        .bind(page.before)
        .bind(filter.hardware_id.as_deref())
        .bind(filter.open)
        .bind(i64::from(page.limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(Paged::of(rows, page, |r| r.id))
    }
}
