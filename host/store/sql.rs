//! The store's queries and row mapping, written once for every SQL [`Dialect`].
//!
//! `proof_target` and `solution_target` are u64 values stored bit-cast to a signed
//! 64-bit integer (`as i64` on write, `as u64` on read): never compare them in SQL.
//! `id` and `block_height` are read through `CAST(… AS bigint)` because a PostgreSQL
//! database taken over from the original system may hold them as `integer`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;

use super::dialect::{Column, Dialect, Exec, Query, Sql};
use super::{
    in_input_order, Inserted, MinerActivity, NewJob, NewSolution, Page, Paged, Presence, Recovery, Settlement, Shares,
    SolutionFilter, Store, StoreError, StoredJob, StoredSolution, Tally, Verdict, WorkerActivity, WorkerConnection,
    WorkerFilter, WorkerRow,
};

/// A timestamp as stored: each dialect says how its column decodes into one.
#[derive(Clone, Copy, Debug)]
pub struct Stamp(pub DateTime<Utc>);

/// Columns of a [`JobRow`].
const JOB_COLUMNS: &str = "task_id, CAST(block_height AS bigint) AS block_height, proof_target, epoch_challenge, \
                           created_at, broadcast_at IS NOT NULL AS broadcast";

/// Columns of a [`SolutionRow`]. The original system's columns are nullable; a row it
/// wrote without them reads as empty text or `false`.
const SOLUTION_COLUMNS: &str =
    "unique_key, coalesce(hardware_id, '') AS hardware_id, coalesce(caption, '') AS caption, \
     coalesce(task_id, '') AS task_id, coalesce(solution, '') AS solution, solution_target, \
     coalesce(valid, false) AS valid, coalesce(checked, false) AS checked, invalid_reason, \
     broadcast_at IS NOT NULL AS broadcast, created_at, address";

/// Columns of a [`WorkerConnectionRow`]; the original system's columns are nullable.
const WORKER_COLUMNS: &str = "CAST(id AS bigint) AS id, coalesce(ip, '') AS ip, coalesce(address, '') AS address, \
     coalesce(hardware, '') AS hardware, coalesce(hardware_id, '') AS hardware_id, coalesce(caption, '') AS caption, \
     instance, connected_at, disconnected_at";

/// When an open connection of a worker (the `worker` row being updated) ended, as far as
/// the database knows: at that worker's latest solution sent during it (after it opened,
/// before the worker's next connection opened), or else when it opened. Timestamps of
/// both databases compare in time order (SQLite's text always has six fraction digits).
const FINISHED_AT: &str = "coalesce(
    (SELECT max(s.created_at) FROM solution s
     WHERE s.hardware_id = worker.hardware_id AND s.caption = worker.caption
       AND s.created_at >= worker.connected_at
       AND NOT EXISTS (
           SELECT 1 FROM worker n
           WHERE n.hardware_id = worker.hardware_id AND n.caption = worker.caption
             AND n.connected_at > worker.connected_at AND n.connected_at <= s.created_at)),
    worker.connected_at)";

/// The store on a SQL database of dialect `D`.
#[derive(Debug)]
pub struct SqlStore<D: Dialect> {
    pool: D::Pool,
    /// Worker connects and disconnects come in storms (every worker of a pool
    /// reconnects after a restart); queued here, they wait their turn instead of
    /// timing out on the pool or the write lock, which would close the worker.
    connection_writes: Arc<Semaphore>,
}

impl<D: Dialect> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        SqlStore { pool: self.pool.clone(), connection_writes: self.connection_writes.clone() }
    }
}

impl<D: Dialect> SqlStore<D> {
    /// A store on `pool` that lets at most `connection_writers` worker connection
    /// records be written at once.
    pub(super) fn with_pool(pool: D::Pool, connection_writers: usize) -> Self {
        SqlStore { pool, connection_writes: Arc::new(Semaphore::new(connection_writers.max(1))) }
    }

    /// The connection pool, for queries outside the [`Store`] trait.
    pub fn pool(&self) -> &D::Pool {
        &self.pool
    }

    async fn fetch<R: super::dialect::StoreRow>(&self, query: Query) -> Result<Vec<R>, StoreError> {
        D::fetch(Exec::Pool(&self.pool), query).await
    }

    async fn fetch_optional<R: super::dialect::StoreRow>(&self, query: Query) -> Result<Option<R>, StoreError> {
        Ok(self.fetch(query).await?.pop())
    }

    async fn execute(&self, query: Query) -> Result<u64, StoreError> {
        D::execute(Exec::Pool(&self.pool), query).await
    }

    /// The job at `block_height`, read with the statement both lookups by height use.
    async fn job_row_at(&self, block_height: i64) -> Result<Option<StoredJob>, StoreError> {
        let mut q = Sql::<D>::default();
        let sql = format!("SELECT {JOB_COLUMNS} FROM job WHERE block_height = {}", q.arg(block_height));
        Ok(self.fetch_optional::<JobRow>(q.finish(sql)).await?.map(Into::into))
    }
}

/// A `job` row as read.
#[derive(sqlx::FromRow)]
struct JobRow {
    task_id: String,
    block_height: i64,
    proof_target: i64,
    epoch_challenge: String,
    created_at: Stamp,
    broadcast: bool,
}

impl From<JobRow> for StoredJob {
    fn from(r: JobRow) -> Self {
        StoredJob {
            task_id: r.task_id,
            block_height: r.block_height,
            proof_target: r.proof_target as u64,
            epoch_challenge: r.epoch_challenge,
            created_at: r.created_at.0,
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
    created_at: Stamp,
    address: Option<String>,
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
            created_at: r.created_at.0,
            address: r.address,
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
    connected_at: Stamp,
    disconnected_at: Option<Stamp>,
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
            connected_at: r.connected_at.0,
            disconnected_at: r.disconnected_at.map(|d| d.0),
        }
    }
}

/// One worker's solutions in one bucket of a miner's windows: the rows whose
/// narrowest window is the `bucket`-th.
#[derive(sqlx::FromRow)]
struct BucketRow {
    hardware_id: String,
    caption: String,
    bucket: i64,
    valid: i64,
    invalid: i64,
    unchecked: i64,
    last_solution_at: Option<Stamp>,
}

/// One worker of a miner as the `worker` table has it.
#[derive(sqlx::FromRow)]
struct ConnectedRow {
    hardware_id: String,
    caption: String,
    connected_since: Option<Stamp>,
}

/// One address's valid solutions, their targets summed as two 32-bit halves.
#[derive(sqlx::FromRow)]
struct SharesRow {
    address: String,
    valid: i64,
    high: i64,
    low: i64,
}

impl From<SharesRow> for Shares {
    fn from(r: SharesRow) -> Self {
        let (high, low) = (r.high as u64 as u128, r.low as u64 as u128);
        Shares { address: r.address, valid: r.valid as u64, target_sum: (high << 32) + low }
    }
}

/// The worker `(hardware_id, caption)` of `workers`, added with no activity in
/// `windows` windows if absent.
fn worker_in(
    workers: &mut std::collections::BTreeMap<(String, String), WorkerActivity>,
    hardware_id: String,
    caption: String,
    windows: usize,
) -> &mut WorkerActivity {
    workers.entry((hardware_id.clone(), caption.clone())).or_insert_with(|| WorkerActivity {
        hardware_id,
        caption,
        connected_since: None,
        tally: Tally::zero(windows),
        last_solution_at: None,
    })
}

/// A batch's writes to solution rows, one row each: its verdict (if `judged`) and
/// whether it was broadcast (`sent`).
#[derive(Default)]
struct SolutionChanges {
    keys: Vec<String>,
    judged: Vec<bool>,
    valid: Vec<bool>,
    checked: Vec<bool>,
    reasons: Vec<Option<String>>,
    sent: Vec<bool>,
}

impl SolutionChanges {
    fn of(verdicts: &[Verdict], broadcast: &[String]) -> Self {
        let mut changes = SolutionChanges::default();
        let mut at: HashMap<&str, usize> = HashMap::with_capacity(verdicts.len() + broadcast.len());
        for v in verdicts {
            if at.insert(&v.unique_key, changes.keys.len()).is_none() {
                changes.push(&v.unique_key, Some(v), false);
            }
        }
        for key in broadcast {
            match at.get(key.as_str()) {
                Some(&i) => changes.sent[i] = true,
                None => {
                    at.insert(key, changes.keys.len());
                    changes.push(key, None, true);
                }
            }
        }
        changes
    }

    fn push(&mut self, key: &str, verdict: Option<&Verdict>, sent: bool) {
        self.keys.push(key.to_string());
        self.judged.push(verdict.is_some());
        self.valid.push(verdict.is_some_and(|v| v.valid));
        self.checked.push(verdict.is_some_and(|v| v.checked));
        self.reasons.push(verdict.and_then(|v| v.invalid_reason.clone()));
        self.sent.push(sent);
    }
}

/// Texts of a batch, one per input.
fn texts<T>(items: &[T], field: impl Fn(&T) -> &str) -> Column {
    Column::Texts(items.iter().map(|i| field(i).to_string()).collect())
}

#[async_trait]
impl<D: Dialect> Store for SqlStore<D> {
    async fn migrate(&self) -> Result<(), StoreError> {
        D::migrate(&self.pool).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.execute(Sql::<D>::default().finish("SELECT 1".into())).await.map(|_| ())
    }

    async fn insert_jobs(&self, jobs: &[NewJob]) -> Result<Vec<Inserted<StoredJob>>, StoreError> {
        let heights: Vec<i64> = jobs.iter().map(|j| j.block_height).collect();
        let mut tx = D::begin(&self.pool).await?;
        // ON CONFLICT waits for a concurrent insert of the same height to commit, so the
        // select after it always finds the row one of them stored. Sorted by height,
        // concurrent batches take the unique index's locks in one order: no deadlock.
        // (`WHERE true` tells SQLite's parser that ON CONFLICT is the upsert clause.)
        let mut q = Sql::<D>::default();
        let sql = format!(
            "INSERT INTO job (task_id, block_height, proof_target, epoch_challenge, created_at) \
             SELECT b.t, b.h, b.p, b.e, {now} FROM {rows} WHERE true ORDER BY b.h \
             ON CONFLICT (block_height) DO NOTHING RETURNING CAST(block_height AS bigint)",
            rows = q.rows(
                "b",
                vec![
                    ("t", texts(jobs, |j| &j.task_id)),
                    ("h", Column::Ints(heights.clone())),
                    ("p", Column::Ints(jobs.iter().map(|j| j.proof_target as i64).collect())),
                    ("e", texts(jobs, |j| &j.epoch_challenge)),
                ],
            ),
            now = q.now(),
        );
        let created: Vec<(i64,)> = D::fetch(Exec::Tx(&mut tx), q.finish(sql)).await?;
        let mut q = Sql::<D>::default();
        let sql =
            format!("SELECT {JOB_COLUMNS} FROM job WHERE {}", q.is_in("block_height", Column::Ints(heights.clone())));
        let rows: Vec<JobRow> = D::fetch(Exec::Tx(&mut tx), q.finish(sql)).await?;
        D::commit(tx).await?;
        in_input_order(heights, rows, |r| r.block_height, created.into_iter().map(|(h,)| h).collect())
    }

    async fn jobs_by_task(&self, task_ids: &[String]) -> Result<Vec<StoredJob>, StoreError> {
        let mut q = Sql::<D>::default();
        let sql =
            format!("SELECT {JOB_COLUMNS} FROM job WHERE {}", q.is_in("task_id", Column::Texts(task_ids.to_vec())));
        let rows: Vec<JobRow> = self.fetch(q.finish(sql)).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn latest_broadcast_job(&self) -> Result<Option<StoredJob>, StoreError> {
        let sql =
            format!("SELECT {JOB_COLUMNS} FROM job WHERE broadcast_at IS NOT NULL ORDER BY block_height DESC LIMIT 1");
        let row: Option<JobRow> = self.fetch_optional(Sql::<D>::default().finish(sql)).await?;
        Ok(row.map(Into::into))
    }

    async fn insert_solutions(&self, solutions: &[NewSolution]) -> Result<Vec<Inserted<StoredSolution>>, StoreError> {
        let keys: Vec<String> = solutions.iter().map(|s| s.unique_key.clone()).collect();
        let mut tx = D::begin(&self.pool).await?;
        // Sorted by key for the same reason as jobs by height. The time is taken inside
        // the transaction, so rows are stamped in the order they commit.
        let mut q = Sql::<D>::default();
        let sql = format!(
            "INSERT INTO solution (unique_key, hardware_id, caption, task_id, solution, solution_target, address, \
             created_at) \
             SELECT b.k, b.h, b.c, b.t, b.s, b.st, b.a, {now} FROM {rows} WHERE true ORDER BY b.k \
             ON CONFLICT (unique_key) DO NOTHING RETURNING {SOLUTION_COLUMNS}",
            rows = q.rows(
                "b",
                vec![
                    ("k", Column::Texts(keys.clone())),
                    ("h", texts(solutions, |s| &s.hardware_id)),
                    ("c", texts(solutions, |s| &s.caption)),
                    ("t", texts(solutions, |s| &s.task_id)),
                    ("s", texts(solutions, |s| &s.solution)),
                    ("st", Column::Ints(solutions.iter().map(|s| s.solution_target as i64).collect())),
                    ("a", Column::OptionalTexts(solutions.iter().map(|s| s.address.clone()).collect())),
                ],
            ),
            now = q.now(),
        );
        let mut rows: Vec<SolutionRow> = D::fetch(Exec::Tx(&mut tx), q.finish(sql)).await?;
        let created: Vec<String> = rows.iter().map(|r| r.unique_key.clone()).collect();
        // Only a key stored before (a repeat, a redelivered batch) needs reading back:
        // in the usual batch every row came back from the insert.
        let new: HashSet<&str> = created.iter().map(String::as_str).collect();
        let before: Vec<String> = keys.iter().filter(|k| !new.contains(k.as_str())).cloned().collect();
        if !before.is_empty() {
            let mut q = Sql::<D>::default();
            let sql = format!(
                "SELECT {SOLUTION_COLUMNS} FROM solution WHERE {}",
                q.is_in("unique_key", Column::Texts(before))
            );
            rows.extend(D::fetch::<SolutionRow>(Exec::Tx(&mut tx), q.finish(sql)).await?);
        }
        D::commit(tx).await?;
        in_input_order(keys, rows, |r| r.unique_key.clone(), created)
    }

    async fn settle(&self, settlement: &Settlement<'_>) -> Result<(), StoreError> {
        if settlement.is_empty() {
            return Ok(());
        }
        let mut tx = D::begin(&self.pool).await?;
        let changes = SolutionChanges::of(settlement.verdicts, settlement.solutions_broadcast);
        if !changes.keys.is_empty() {
            // A verdict and a broadcast of one solution are one write of its row, not
            // two: most rows of a batch get both. A broadcast keeps its first time.
            let mut q = Sql::<D>::default();
            let sql = format!(
                "UPDATE solution SET \
                 valid = CASE WHEN v.judged THEN v.valid ELSE solution.valid END, \
                 checked = CASE WHEN v.judged THEN v.checked ELSE solution.checked END, \
                 invalid_reason = CASE WHEN v.judged THEN v.reason ELSE solution.invalid_reason END, \
                 broadcast_at = CASE WHEN v.sent THEN coalesce(solution.broadcast_at, {now}) \
                                ELSE solution.broadcast_at END \
                 FROM {rows} WHERE solution.unique_key = v.k AND (v.judged OR solution.broadcast_at IS NULL)",
                now = q.now(),
                rows = q.rows(
                    "v",
                    vec![
                        ("k", Column::Texts(changes.keys)),
                        ("judged", Column::Bools(changes.judged)),
                        ("valid", Column::Bools(changes.valid)),
                        ("checked", Column::Bools(changes.checked)),
                        ("reason", Column::OptionalTexts(changes.reasons)),
                        ("sent", Column::Bools(changes.sent)),
                    ],
                ),
            );
            D::execute(Exec::Tx(&mut tx), q.finish(sql)).await?;
        }
        if !settlement.jobs_broadcast.is_empty() {
            let mut q = Sql::<D>::default();
            let sql = format!(
                "UPDATE job SET broadcast_at = {} WHERE {} AND broadcast_at IS NULL",
                q.now(),
                q.is_in("task_id", Column::Texts(settlement.jobs_broadcast.to_vec()))
            );
            D::execute(Exec::Tx(&mut tx), q.finish(sql)).await?;
        }
        let rejected = settlement.rejected;
        if !rejected.is_empty() {
            let mut q = Sql::<D>::default();
            let sql = format!(
                "INSERT INTO rejected_message (stream, payload, reason, created_at) \
                 SELECT r.s, r.p, r.r, {now} FROM {rows}",
                rows = q.rows(
                    "r",
                    vec![
                        ("s", texts(rejected, |r| &r.stream)),
                        ("p", texts(rejected, |r| &r.payload)),
                        ("r", texts(rejected, |r| &r.reason)),
                    ],
                ),
                now = q.now(),
            );
            D::execute(Exec::Tx(&mut tx), q.finish(sql)).await?;
        }
        D::commit(tx).await
    }

    async fn broadcast_solutions_at(&self, block_height: i64) -> Result<Vec<(StoredJob, StoredSolution)>, StoreError> {
        // `block_height` is unique: at most one job, whose solutions are all the answer.
        let Some(job) = self.job_row_at(block_height).await? else {
            return Ok(Vec::new());
        };
        let mut q = Sql::<D>::default();
        let sql = format!(
            "SELECT {SOLUTION_COLUMNS} FROM solution WHERE task_id = {} AND broadcast_at IS NOT NULL ORDER BY id",
            q.arg(job.task_id.as_str())
        );
        let solutions: Vec<SolutionRow> = self.fetch(q.finish(sql)).await?;
        Ok(solutions.into_iter().map(|s| (job.clone(), s.into())).collect())
    }

    async fn worker_connected(&self, worker: &WorkerConnection) -> Result<i64, StoreError> {
        let _turn = self.connection_writes.acquire().await.ok();
        let mut tx = D::begin(&self.pool).await?;
        let mut q = Sql::<D>::default();
        let sql = format!(
            "UPDATE worker SET disconnected_at = {FINISHED_AT} \
             WHERE hardware_id = {} AND caption = {} AND disconnected_at IS NULL",
            q.arg(worker.hardware_id.as_str()),
            q.arg(worker.caption.as_str())
        );
        D::execute(Exec::Tx(&mut tx), q.finish(sql)).await?;
        let mut q = Sql::<D>::default();
        let sql = format!(
            "INSERT INTO worker (ip, address, hardware, hardware_id, caption, instance, connected_at) \
             VALUES ({}, {}, {}, {}, {}, {}, {}) RETURNING CAST(id AS bigint)",
            q.arg(worker.ip.as_str()),
            q.arg(worker.address.as_str()),
            q.arg(worker.hardware.as_str()),
            q.arg(worker.hardware_id.as_str()),
            q.arg(worker.caption.as_str()),
            q.arg(worker.instance.as_str()),
            q.now()
        );
        let id: Vec<(i64,)> = D::fetch(Exec::Tx(&mut tx), q.finish(sql)).await?;
        D::commit(tx).await?;
        id.first().map(|(id,)| *id).ok_or_else(|| StoreError::Corrupt("an inserted worker row has no id".into()))
    }

    async fn worker_disconnected(&self, id: i64) -> Result<(), StoreError> {
        let _turn = self.connection_writes.acquire().await.ok();
        let mut q = Sql::<D>::default();
        let sql = format!(
            "UPDATE worker SET disconnected_at = {} WHERE id = {} AND disconnected_at IS NULL",
            q.now(),
            q.arg(id)
        );
        self.execute(q.finish(sql)).await?;
        Ok(())
    }

    async fn save_http_node(&self, id: &str, expires_at_ms: i64, record: &str) -> Result<(), StoreError> {
        for table in ["http_node", "webhook_delivery"] {
            let mut q = Sql::<D>::default();
            let now = q.arg(chrono::Utc::now().timestamp_millis());
            self.execute(q.finish(format!("DELETE FROM {table} WHERE expires_at < {now}"))).await?;
        }
        let mut q = Sql::<D>::default();
        let sql = format!(
            "INSERT INTO http_node (id, expires_at, record) VALUES ({}, {}, {}) \
             ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at, record = excluded.record",
            q.arg(id),
            q.arg(expires_at_ms),
            q.arg(record)
        );
        self.execute(q.finish(sql)).await?;
        Ok(())
    }

    async fn live_http_nodes(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let mut q = Sql::<D>::default();
        let sql = format!("SELECT record FROM http_node WHERE expires_at >= {} ORDER BY id", q.arg(now_ms));
        Ok(self.fetch::<(String,)>(q.finish(sql)).await?.into_iter().map(|(record,)| record).collect())
    }

    async fn record_webhook_delivery(&self, webhook_id: &str, expires_at_ms: i64) -> Result<(), StoreError> {
        let mut q = Sql::<D>::default();
        let sql = format!(
            "INSERT INTO webhook_delivery (webhook_id, expires_at) VALUES ({}, {}) ON CONFLICT (webhook_id) DO NOTHING",
            q.arg(webhook_id),
            q.arg(expires_at_ms)
        );
        self.execute(q.finish(sql)).await?;
        Ok(())
    }

    async fn webhook_delivered(&self, webhook_id: &str) -> Result<bool, StoreError> {
        let mut q = Sql::<D>::default();
        let sql = format!("SELECT webhook_id FROM webhook_delivery WHERE webhook_id = {}", q.arg(webhook_id));
        Ok(self.fetch_optional::<(String,)>(q.finish(sql)).await?.is_some())
    }

    async fn close_connections_of(&self, instance: &str) -> Result<u64, StoreError> {
        let mut q = Sql::<D>::default();
        let sql = format!(
            "UPDATE worker SET disconnected_at = {FINISHED_AT} WHERE instance = {} AND disconnected_at IS NULL",
            q.arg(instance)
        );
        self.execute(q.finish(sql)).await
    }

    async fn record_presence(&self, connections: &[Presence], recoveries: &[Recovery]) -> Result<(), StoreError> {
        if connections.is_empty() && recoveries.is_empty() {
            return Ok(());
        }
        // One row per key: a batch may hold both events of a connection, and an upsert
        // may not touch a row twice.
        let mut merged: Vec<Presence> = Vec::with_capacity(connections.len());
        let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for c in connections {
            match at.get(c.key.as_str()) {
                Some(&i) => merged[i].disconnected_at = merged[i].disconnected_at.or(c.disconnected_at),
                None => {
                    at.insert(&c.key, merged.len());
                    merged.push(c.clone());
                }
            }
        }
        let mut tx = D::begin(&self.pool).await?;
        // The `worker` table grows by every connection of a storm, faster than its
        // statistics follow: a plan cached while it was small scans it for each key.
        D::plan_afresh(&mut tx).await?;
        if !merged.is_empty() {
            let w = |field: fn(&Presence) -> &str| texts(&merged, field);
            let mut q = Sql::<D>::default();
            let sql = format!(
                "INSERT INTO worker (connection_key, ip, address, hardware, hardware_id, caption, instance, \
                 connected_at, disconnected_at) \
                 SELECT b.k, b.ip, b.a, b.hw, b.h, b.c, b.i, b.since, b.until FROM {} WHERE true ORDER BY b.k \
                 ON CONFLICT (connection_key) DO UPDATE \
                 SET disconnected_at = coalesce(worker.disconnected_at, excluded.disconnected_at)",
                q.rows(
                    "b",
                    vec![
                        ("k", w(|p| &p.key)),
                        ("ip", w(|p| &p.worker.ip)),
                        ("a", w(|p| &p.worker.address)),
                        ("hw", w(|p| &p.worker.hardware)),
                        ("h", w(|p| &p.worker.hardware_id)),
                        ("c", w(|p| &p.worker.caption)),
                        ("i", w(|p| &p.worker.instance)),
                        ("since", Column::Times(merged.iter().map(|p| Some(p.connected_at)).collect())),
                        ("until", Column::Times(merged.iter().map(|p| p.disconnected_at).collect())),
                    ],
                )
            );
            D::execute(Exec::Tx(&mut tx), q.finish(sql)).await?;
            // Earlier connections of these workers left open are finished: looked up
            // worker by worker, so a batch costs its own size, not the open rows'.
            let mut q = Sql::<D>::default();
            let batch = q.rows("p", vec![("h", w(|p| &p.worker.hardware_id)), ("c", w(|p| &p.worker.caption))]);
            let open = D::join_each(
                "worker",
                "o",
                "o.hardware_id = p.h AND o.caption = p.c AND o.disconnected_at IS NULL \
                 AND EXISTS (SELECT 1 FROM worker n WHERE n.hardware_id = o.hardware_id \
                             AND n.caption = o.caption AND n.connected_at > o.connected_at)",
            );
            let earlier = D::is_any_of("id", &format!("SELECT o.id FROM {batch} {open}"));
            let sql = format!("UPDATE worker SET disconnected_at = {FINISHED_AT} WHERE {earlier}");
            D::execute(Exec::Tx(&mut tx), q.finish(sql)).await?;
        }
        for recovery in recoveries {
            let mut q = Sql::<D>::default();
            let sql = format!(
                "UPDATE worker SET disconnected_at = {FINISHED_AT} \
                 WHERE instance = {} AND disconnected_at IS NULL AND connected_at < {}",
                q.arg(recovery.instance.as_str()),
                q.arg(recovery.at)
            );
            D::execute(Exec::Tx(&mut tx), q.finish(sql)).await?;
        }
        D::commit(tx).await
    }

    async fn worker_connections(&self, hardware_id: &str, caption: &str) -> Result<Vec<WorkerRow>, StoreError> {
        let mut q = Sql::<D>::default();
        let sql = format!(
            "SELECT {WORKER_COLUMNS} FROM worker WHERE hardware_id = {} AND caption = {} ORDER BY connected_at, id",
            q.arg(hardware_id),
            q.arg(caption)
        );
        let rows: Vec<WorkerConnectionRow> = self.fetch(q.finish(sql)).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn miner_activity(&self, address: &str, windows: &[DateTime<Utc>]) -> Result<MinerActivity, StoreError> {
        let Some(&widest) = windows.last() else { return Ok(MinerActivity::default()) };
        // One range of the (address, created_at) index: each row falls in the bucket of
        // the narrowest window that holds it, and counts in that window and every wider one.
        let mut q = Sql::<D>::default();
        let narrower = &windows[..windows.len() - 1];
        let whens: String = narrower
            .iter()
            .enumerate()
            .map(|(i, start)| format!("WHEN created_at >= {} THEN {i} ", q.arg(*start)))
            .collect();
        let bucket =
            if whens.is_empty() { "0".to_string() } else { format!("CASE {whens}ELSE {} END", narrower.len()) };
        let sql = format!(
            "SELECT coalesce(hardware_id, '') AS hardware_id, coalesce(caption, '') AS caption, \
             CAST({bucket} AS bigint) AS bucket, \
             count(*) FILTER (WHERE checked AND valid) AS valid, \
             count(*) FILTER (WHERE checked AND NOT valid) AS invalid, \
             count(*) FILTER (WHERE NOT coalesce(checked, false)) AS unchecked, \
             max(created_at) AS last_solution_at \
             FROM solution WHERE address = {} AND created_at >= {} GROUP BY 1, 2, 3",
            q.arg(address),
            q.arg(widest)
        );
        let buckets: Vec<BucketRow> = self.fetch(q.finish(sql)).await?;
        // Connected now, or within the widest window: the address's own connections.
        let mut q = Sql::<D>::default();
        let sql = format!(
            "SELECT coalesce(hardware_id, '') AS hardware_id, coalesce(caption, '') AS caption, \
             max(connected_at) FILTER (WHERE disconnected_at IS NULL) AS connected_since \
             FROM worker WHERE address = {} AND (disconnected_at IS NULL OR disconnected_at >= {}) GROUP BY 1, 2",
            q.arg(address),
            q.arg(widest)
        );
        let connected: Vec<ConnectedRow> = self.fetch(q.finish(sql)).await?;
        let mut q = Sql::<D>::default();
        let sql = format!("SELECT max(created_at) FROM solution WHERE address = {}", q.arg(address));
        let last: Option<(Option<Stamp>,)> = self.fetch_optional(q.finish(sql)).await?;

        let mut workers = std::collections::BTreeMap::new();
        for row in buckets {
            let w = worker_in(&mut workers, row.hardware_id, row.caption, windows.len());
            let from = usize::try_from(row.bucket).unwrap_or(0);
            for window in from..windows.len() {
                w.tally.valid[window] += row.valid as u64;
                w.tally.invalid[window] += row.invalid as u64;
                w.tally.unchecked[window] += row.unchecked as u64;
            }
            w.last_solution_at = w.last_solution_at.max(row.last_solution_at.map(|s| s.0));
        }
        for row in connected {
            worker_in(&mut workers, row.hardware_id, row.caption, windows.len()).connected_since =
                row.connected_since.map(|s| s.0);
        }
        Ok(MinerActivity {
            workers: workers.into_values().collect(),
            last_solution_at: last.and_then(|(at,)| at).map(|s| s.0),
        })
    }

    async fn shares(&self, since: DateTime<Utc>, until: DateTime<Utc>) -> Result<Vec<Shares>, StoreError> {
        // The (address, created_at) index read address by address: each next address is
        // one probe (a loose index scan, which neither database plans by itself), then
        // its range of the time. No index by time alone, which every insert would pay
        // for, and no scan of the whole table, which grows without end.
        // A target is a u64 stored bit-cast to a signed integer: it is summed as its two
        // 32-bit halves, each unsigned, which no count of rows below 2^31 overflows.
        let mut q = Sql::<D>::default();
        let sql = format!(
            "WITH RECURSIVE addresses(address) AS ( \
                 SELECT min(address) FROM solution WHERE address IS NOT NULL \
                 UNION ALL \
                 SELECT (SELECT min(n.address) FROM solution n WHERE n.address > addresses.address) \
                 FROM addresses WHERE addresses.address IS NOT NULL) \
             SELECT s.address, count(*) AS valid, \
             CAST(sum((s.solution_target >> 32) & 4294967295) AS bigint) AS high, \
             CAST(sum(s.solution_target & 4294967295) AS bigint) AS low \
             FROM addresses JOIN solution s ON s.address = addresses.address \
             WHERE s.created_at >= {} AND s.created_at < {} AND s.checked AND s.valid \
             GROUP BY s.address ORDER BY s.address",
            q.arg(since),
            q.arg(until)
        );
        let rows: Vec<SharesRow> = self.fetch(q.finish(sql)).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn list_jobs(&self, page: Page) -> Result<Paged<StoredJob>, StoreError> {
        let mut q = Sql::<D>::default();
        let before = q.arg(page.before);
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM job WHERE (CAST({before} AS bigint) IS NULL OR block_height < {before}) \
             ORDER BY block_height DESC LIMIT {}",
            q.arg(i64::from(page.limit))
        );
        let rows: Vec<JobRow> = self.fetch(q.finish(sql)).await?;
        Ok(Paged::of(rows, page, |r| r.block_height))
    }

    async fn job_at_height(&self, block_height: i64) -> Result<Option<StoredJob>, StoreError> {
        self.job_row_at(block_height).await
    }

    async fn list_solutions(&self, filter: &SolutionFilter, page: Page) -> Result<Paged<StoredSolution>, StoreError> {
        let mut q = Sql::<D>::default();
        let before = q.arg(page.before);
        let task = q.arg(filter.task_id.as_deref());
        let hardware = q.arg(filter.hardware_id.as_deref());
        let key = q.arg(filter.unique_key.as_deref());
        let sql = format!(
            "SELECT CAST(id AS bigint) AS id, {SOLUTION_COLUMNS} FROM solution \
             WHERE (CAST({before} AS bigint) IS NULL OR id < {before}) \
             AND (CAST({task} AS text) IS NULL OR task_id = {task}) \
             AND (CAST({hardware} AS text) IS NULL OR hardware_id = {hardware}) \
             AND (CAST({key} AS text) IS NULL OR unique_key = {key}) ORDER BY id DESC LIMIT {}",
            q.arg(i64::from(page.limit))
        );
        let rows: Vec<KeyedSolutionRow> = self.fetch(q.finish(sql)).await?;
        Ok(Paged::of(rows, page, |r| r.id))
    }

    async fn list_worker_connections(&self, filter: &WorkerFilter, page: Page) -> Result<Paged<WorkerRow>, StoreError> {
        let mut q = Sql::<D>::default();
        let before = q.arg(page.before);
        let hardware = q.arg(filter.hardware_id.as_deref());
        let open = q.arg(filter.open);
        let sql = format!(
            "SELECT {WORKER_COLUMNS} FROM worker WHERE (CAST({before} AS bigint) IS NULL OR id < {before}) \
             AND (CAST({hardware} AS text) IS NULL OR hardware_id = {hardware}) \
             AND (CAST({open} AS boolean) IS NULL OR (disconnected_at IS NULL) = {open}) ORDER BY id DESC LIMIT {}",
            q.arg(i64::from(page.limit))
        );
        let rows: Vec<WorkerConnectionRow> = self.fetch(q.finish(sql)).await?;
        Ok(Paged::of(rows, page, |r| r.id))
    }
}
