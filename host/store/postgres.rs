//! PostgreSQL through sqlx: the production store.
//!
//! Timestamps are `timestamp` columns (without time zone, as in the original system)
//! holding UTC, set by the database's clock: every server instance then stamps rows with
//! the same clock, which finishing a worker's connection relies on (it compares solution
//! and connection times). `proof_target` and `solution_target` are u64 values stored
//! bit-cast to `bigint` (`as i64` on write, `as u64` on read).
//!
//! Queries cast `id` and `block_height` to `bigint` because a database taken over from
//! the original system may hold them as `integer`.

use std::io;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use super::{
    in_input_order, Inserted, NewJob, NewSolution, Page, Paged, Settlement, SolutionFilter, Store, StoreError,
    StoredJob, StoredSolution, WorkerConnection, WorkerFilter, WorkerRow,
};

/// How long connecting (or waiting for a pooled connection) may take before failing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The current time as stored: UTC, without time zone.
macro_rules! now_utc {
    () => {
        "(now() AT TIME ZONE 'utc')"
    };
}

/// Columns of a [`JobRow`].
macro_rules! job_columns {
    () => {
        "task_id, block_height::bigint AS block_height, proof_target, epoch_challenge, created_at, \
         broadcast_at IS NOT NULL AS broadcast"
    };
}

/// Columns of a [`SolutionRow`]. The original system's columns are nullable; a row it
/// wrote without them reads as empty text or `false`.
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
        "id::bigint AS id, coalesce(ip, '') AS ip, coalesce(address, '') AS address, coalesce(hardware, '') AS hardware, \
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

/// The store on PostgreSQL.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Worker connects and disconnects come in storms (every worker of a pool
    /// reconnects after a restart); queued here, they wait their turn instead of
    /// timing out on the pool, which would close the worker.
    connection_writes: std::sync::Arc<tokio::sync::Semaphore>,
}

impl PgStore {
    /// Connects to the database at `url` (a `postgres://` URL) with a pool of at most
    /// `max_connections`. Fails within about 5 s if the database cannot be reached, with
    /// the reason (refused, authentication, unknown database …).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        // The pool retries a refused connection until its timeout and then reports only
        // that it timed out; one direct attempt first reports why.
        match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
            Ok(Ok(probe)) => probe.close().await?,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                let timed_out = io::Error::new(io::ErrorKind::TimedOut, "no answer from PostgreSQL within 5 s");
                return Err(sqlx::Error::Io(timed_out).into());
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            // Half the pool at most: the processors keep connections during a storm.
            connection_writes: std::sync::Arc::new(tokio::sync::Semaphore::new((max_connections as usize / 2).max(1))),
        })
    }

    /// The connection pool, for queries outside the [`Store`] trait.
    pub fn pool(&self) -> &PgPool {
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
    created_at: NaiveDateTime,
    broadcast: bool,
}

impl From<JobRow> for StoredJob {
    fn from(r: JobRow) -> Self {
        StoredJob {
            task_id: r.task_id,
            block_height: r.block_height,
            proof_target: r.proof_target as u64,
            epoch_challenge: r.epoch_challenge,
            created_at: r.created_at.and_utc(),
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
    created_at: NaiveDateTime,
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
            created_at: r.created_at.and_utc(),
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
    connected_at: NaiveDateTime,
    disconnected_at: Option<NaiveDateTime>,
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
            connected_at: r.connected_at.and_utc(),
            disconnected_at: r.disconnected_at.map(|d| d.and_utc()),
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/postgres").run(&self.pool).await?;
        Ok(())
    }

    async fn insert_jobs(&self, jobs: &[NewJob]) -> Result<Vec<Inserted<StoredJob>>, StoreError> {
        let heights: Vec<i64> = jobs.iter().map(|j| j.block_height).collect();
        let mut tx = self.pool.begin().await?;
        // ON CONFLICT waits for a concurrent insert of the same height to commit, so the
        // select after it always finds the row one of them stored. Sorted by height,
        // concurrent batches take the unique index's locks in one order: no deadlock.
        let created: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO job (task_id, block_height, proof_target, epoch_challenge) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[]) AS j(t, h, p, e) ORDER BY h \
             ON CONFLICT (block_height) DO NOTHING RETURNING block_height::bigint",
        )
        .bind(jobs.iter().map(|j| j.task_id.as_str()).collect::<Vec<_>>())
        .bind(&heights)
        .bind(jobs.iter().map(|j| j.proof_target as i64).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.epoch_challenge.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let rows: Vec<JobRow> =
            sqlx::query_as(concat!("SELECT ", job_columns!(), " FROM job WHERE block_height = ANY($1)"))
                .bind(&heights)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        in_input_order(heights, rows, |r| r.block_height, created)
    }

    async fn jobs_by_task(&self, task_ids: &[String]) -> Result<Vec<StoredJob>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!("SELECT ", job_columns!(), " FROM job WHERE task_id = ANY($1)"))
            .bind(task_ids)
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
        let keys: Vec<&str> = solutions.iter().map(|s| s.unique_key.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        // Sorted by key for the same reason as jobs by height.
        let created: Vec<String> = sqlx::query_scalar(
            "INSERT INTO solution (unique_key, hardware_id, caption, task_id, solution, solution_target) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[]) \
             AS s(k, h, c, t, s, st) ORDER BY k \
             ON CONFLICT (unique_key) DO NOTHING RETURNING unique_key",
        )
        .bind(&keys)
        .bind(solutions.iter().map(|s| s.hardware_id.as_str()).collect::<Vec<_>>())
        .bind(solutions.iter().map(|s| s.caption.as_str()).collect::<Vec<_>>())
        .bind(solutions.iter().map(|s| s.task_id.as_str()).collect::<Vec<_>>())
        .bind(solutions.iter().map(|s| s.solution.as_str()).collect::<Vec<_>>())
        .bind(solutions.iter().map(|s| s.solution_target as i64).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let rows: Vec<SolutionRow> =
            sqlx::query_as(concat!("SELECT ", solution_columns!(), " FROM solution WHERE unique_key = ANY($1)"))
                .bind(&keys)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        in_input_order(keys.iter().map(|k| k.to_string()), rows, |r| r.unique_key.clone(), created)
    }

    async fn settle(&self, settlement: &Settlement<'_>) -> Result<(), StoreError> {
        if settlement.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let verdicts = settlement.verdicts;
        if !verdicts.is_empty() {
            sqlx::query(
                "UPDATE solution SET valid = v.valid, checked = v.checked, invalid_reason = v.reason \
                 FROM UNNEST($1::text[], $2::bool[], $3::bool[], $4::text[]) AS v(k, valid, checked, reason) \
                 WHERE solution.unique_key = v.k",
            )
            .bind(verdicts.iter().map(|v| v.unique_key.as_str()).collect::<Vec<_>>())
            .bind(verdicts.iter().map(|v| v.valid).collect::<Vec<_>>())
            .bind(verdicts.iter().map(|v| v.checked).collect::<Vec<_>>())
            .bind(verdicts.iter().map(|v| v.invalid_reason.as_deref()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        let broadcast = [
            (
                concat!(
                    "UPDATE job SET broadcast_at = ",
                    now_utc!(),
                    " WHERE task_id = ANY($1) AND broadcast_at IS NULL"
                ),
                settlement.jobs_broadcast,
            ),
            (
                concat!(
                    "UPDATE solution SET broadcast_at = ",
                    now_utc!(),
                    " WHERE unique_key = ANY($1) AND broadcast_at IS NULL"
                ),
                settlement.solutions_broadcast,
            ),
        ];
        for (statement, keys) in broadcast {
            if !keys.is_empty() {
                sqlx::query(statement).bind(keys).execute(&mut *tx).await?;
            }
        }
        let rejected = settlement.rejected;
        if !rejected.is_empty() {
            sqlx::query(
                "INSERT INTO rejected_message (stream, payload, reason) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])",
            )
            .bind(rejected.iter().map(|r| r.stream.as_str()).collect::<Vec<_>>())
            .bind(rejected.iter().map(|r| r.payload.as_str()).collect::<Vec<_>>())
            .bind(rejected.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn broadcast_solutions_at(&self, block_height: i64) -> Result<Vec<(StoredJob, StoredSolution)>, StoreError> {
        // `block_height` is unique: at most one job, whose solutions are all the answer.
        let Some(job) =
            sqlx::query_as::<_, JobRow>(concat!("SELECT ", job_columns!(), " FROM job WHERE block_height = $1"))
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
            " FROM solution WHERE task_id = $1 AND broadcast_at IS NOT NULL ORDER BY id"
        ))
        .bind(&job.task_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(solutions.into_iter().map(|s| (job.clone(), s.into())).collect())
    }

    async fn worker_connected(&self, worker: &WorkerConnection) -> Result<i64, StoreError> {
        let _turn = self.connection_writes.acquire().await.ok();
        let mut tx = self.pool.begin().await?;
        sqlx::query(concat!(
            "UPDATE worker SET disconnected_at = ",
            finished_at!(),
            " WHERE hardware_id = $1 AND caption = $2 AND disconnected_at IS NULL"
        ))
        .bind(&worker.hardware_id)
        .bind(&worker.caption)
        .execute(&mut *tx)
        .await?;
        let id: i64 = sqlx::query_scalar(concat!(
            "INSERT INTO worker (ip, address, hardware, hardware_id, caption, instance, connected_at) \
             VALUES ($1, $2, $3, $4, $5, $6, ",
            now_utc!(),
            ") RETURNING id::bigint"
        ))
        .bind(&worker.ip)
        .bind(&worker.address)
        .bind(&worker.hardware)
        .bind(&worker.hardware_id)
        .bind(&worker.caption)
        .bind(&worker.instance)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn worker_disconnected(&self, id: i64) -> Result<(), StoreError> {
        let _turn = self.connection_writes.acquire().await.ok();
        sqlx::query(concat!(
            "UPDATE worker SET disconnected_at = ",
            now_utc!(),
            " WHERE id = $1 AND disconnected_at IS NULL"
        ))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn close_connections_of(&self, instance: &str) -> Result<u64, StoreError> {
        let finished = sqlx::query(concat!(
            "UPDATE worker SET disconnected_at = ",
            finished_at!(),
            " WHERE instance = $1 AND disconnected_at IS NULL"
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
            " FROM worker WHERE hardware_id = $1 AND caption = $2 ORDER BY connected_at, id"
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
            " FROM job WHERE ($1::bigint IS NULL OR block_height < $1) ORDER BY block_height DESC LIMIT $2"
        ))
        .bind(page.before)
        .bind(i64::from(page.limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(Paged::of(rows, page, |r| r.block_height))
    }

    async fn job_at_height(&self, block_height: i64) -> Result<Option<StoredJob>, StoreError> {
        let row: Option<JobRow> =
            sqlx::query_as(concat!("SELECT ", job_columns!(), " FROM job WHERE block_height = $1"))
                .bind(block_height)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(Into::into))
    }

    async fn list_solutions(&self, filter: &SolutionFilter, page: Page) -> Result<Paged<StoredSolution>, StoreError> {
        let rows: Vec<KeyedSolutionRow> = sqlx::query_as(concat!(
            "SELECT id::bigint AS id, ",
            solution_columns!(),
            " FROM solution WHERE ($1::bigint IS NULL OR id < $1) AND ($2::text IS NULL OR task_id = $2) \
             AND ($3::text IS NULL OR hardware_id = $3) AND ($4::text IS NULL OR unique_key = $4) \
             ORDER BY id DESC LIMIT $5"
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
            " FROM worker WHERE ($1::bigint IS NULL OR id < $1) AND ($2::text IS NULL OR hardware_id = $2) \
             AND ($3::boolean IS NULL OR (disconnected_at IS NULL) = $3) ORDER BY id DESC LIMIT $4"
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
