//! What the pipeline persists, behind the [`Store`] trait: PostgreSQL in
//! production ([`postgres::PgStore`]), SQLite on a bare machine
//! ([`sqlite::SqliteStore`]). Both are one implementation ([`sql::SqlStore`]): the
//! queries and row mapping are written once, and each database states only what it
//! says differently ([`dialect::Dialect`]: parameters, batches, time, transactions).
//! Both pass the same test suite (`tests/store.rs`).
//!
//! Tables are those of the original system (`job`, `solution`, `worker`) plus
//! what eligo needs: a job's `proof_target` and broadcast marker, a solution's
//! broadcast marker, validation reason and payout address, the server instance owning a worker
//! connection, and `rejected_message` for messages the processors could not use.

pub mod dialect;
pub mod postgres;
pub mod sql;
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

impl StoreError {
    /// Whether the database refused the data itself (a value too long, a character
    /// it cannot store): trying the same rows again can never succeed. Anything
    /// else (connection lost, database restarting) may pass on a retry.
    pub fn is_permanent(&self) -> bool {
        let StoreError::Database(sqlx::Error::Database(db)) = self else { return false };
        let code = db.code().unwrap_or_default();
        // PostgreSQL class 22 is "data exception"; SQLite: 18 too big, 20 type mismatch.
        code.starts_with("22") || code == "18" || code == "20"
    }
}

/// A job to insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    /// A fresh uuid, used if the height is new.
    pub task_id: String,
    /// The block height the job is for.
    pub block_height: i64,
    /// The target a solution must reach.
    pub proof_target: u64,
    /// The `epoch_challenge` object as compact JSON text.
    pub epoch_challenge: String,
}

/// A stored job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredJob {
    /// The job's task id (a uuid).
    pub task_id: String,
    /// The block height the job is for.
    pub block_height: i64,
    /// The target a solution must reach.
    pub proof_target: u64,
    /// The `epoch_challenge` object.
    pub epoch_challenge: String,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// Produced to the `job` topic already.
    pub broadcast: bool,
}

/// A solution to insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSolution {
    /// `partial_solution.nonce` as text.
    pub unique_key: String,
    /// The sending worker's `hardware_id`.
    pub hardware_id: String,
    /// The sending worker's `caption`.
    pub caption: String,
    /// The job's task id (a uuid).
    pub task_id: String,
    /// The worker's `solution` object as compact JSON text.
    pub solution: String,
    /// The target the solution claims to reach.
    pub solution_target: u64,
    /// The payout address of the connection that sent it (its welcome's `address`);
    /// `None` when the message did not say.
    pub address: Option<String>,
}

/// A stored solution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSolution {
    /// `partial_solution.nonce` as text: unique per solution.
    pub unique_key: String,
    /// The sending worker's `hardware_id`.
    pub hardware_id: String,
    /// The sending worker's `caption`.
    pub caption: String,
    /// The job's task id (a uuid).
    pub task_id: String,
    /// The worker's `solution` object.
    pub solution: String,
    /// The target the solution claims to reach.
    pub solution_target: u64,
    /// Whether it was judged valid (or accepted unchecked).
    pub valid: bool,
    /// Whether a validator judged it.
    pub checked: bool,
    /// Why a validator refused it.
    pub invalid_reason: Option<String>,
    /// Produced to the `solution` topic already.
    pub broadcast: bool,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// The payout address of the connection that sent it; `None` for rows stored
    /// before eligo kept it.
    pub address: Option<String>,
}

/// A worker connection to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConnection {
    /// The welcome's `ip`.
    pub ip: String,
    /// The payout address (the welcome's `address`).
    pub address: String,
    /// The welcome's `hardware`.
    pub hardware: String,
    /// The welcome's `hardware_id`.
    pub hardware_id: String,
    /// The welcome's `caption`.
    pub caption: String,
    /// The server instance holding the connection (for crash recovery).
    pub instance: String,
}

/// One worker connection as the presence processor records it: opened, and maybe
/// already ended. Written by [`Store::record_presence`] once per `key`, however often
/// its events are delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    /// Unique per connection (the worker server draws it).
    pub key: String,
    /// Who connected, and to which instance.
    pub worker: WorkerConnection,
    /// When the worker server welcomed it.
    pub connected_at: DateTime<Utc>,
    /// When it ended, once it has.
    pub disconnected_at: Option<DateTime<Utc>>,
}

/// A server instance started again at `at`: the connections it left open before then
/// are finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The instance's name (`worker.instance`).
    pub instance: String,
    /// When it started again.
    pub at: DateTime<Utc>,
}

/// A row of `worker`: one connection of a worker (`disconnected_at` absent while open).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct WorkerRow {
    /// The row's id.
    pub id: i64,
    /// The welcome's `ip`.
    pub ip: String,
    /// The payout address (the welcome's `address`).
    pub address: String,
    /// The welcome's `hardware`.
    pub hardware: String,
    /// The welcome's `hardware_id`.
    pub hardware_id: String,
    /// The welcome's `caption`.
    pub caption: String,
    /// The server instance that held the connection.
    pub instance: String,
    /// When the worker was welcomed.
    pub connected_at: DateTime<Utc>,
    /// When the connection ended; none while it is open.
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

/// A validators' verdict on a stored solution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `partial_solution.nonce` as text: unique per solution.
    pub unique_key: String,
    /// Whether it was judged valid (or accepted unchecked).
    pub valid: bool,
    /// Whether a validator judged it.
    pub checked: bool,
    /// Why a validator refused it.
    pub invalid_reason: Option<String>,
}

/// A message a processor could not use, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The queue's stream (`job` or `solution`).
    pub stream: String,
    /// The message as text (invalid UTF-8 and NUL characters replaced).
    pub payload: String,
    /// Why it could not be used.
    pub reason: String,
}

impl Rejected {
    /// A rejected message of `stream`, its payload made storable as text.
    pub fn new(stream: &str, payload: &[u8], reason: impl Into<String>) -> Self {
        // PostgreSQL text cannot hold NUL; the record must never fail to be stored.
        let payload = String::from_utf8_lossy(payload).replace('\0', "\u{FFFD}");
        Rejected { stream: stream.into(), payload, reason: reason.into().replace('\0', "\u{FFFD}") }
    }
}

/// What a processor records about a batch once its log deliveries are confirmed:
/// written in one transaction by [`Store::settle`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Settlement<'a> {
    /// Verdicts on solutions of the batch.
    pub verdicts: &'a [Verdict],
    /// Jobs (by task id) now produced to the `job` topic.
    pub jobs_broadcast: &'a [String],
    /// Solutions (by unique key) now produced to the `solution` topic.
    pub solutions_broadcast: &'a [String],
    /// Messages of the batch that could not be used.
    pub rejected: &'a [Rejected],
}

impl Settlement<'_> {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.verdicts.is_empty()
            && self.jobs_broadcast.is_empty()
            && self.solutions_broadcast.is_empty()
            && self.rejected.is_empty()
    }
}

/// Rows as stored for each input, in input order: an input repeated in the batch
/// is reported as found (`created: false`) after its first occurrence. `rows` are
/// the batch's rows as read back, `created` the keys the insert created.
fn in_input_order<R, T, K>(
    keys: impl IntoIterator<Item = K>,
    rows: Vec<R>,
    key_of: impl Fn(&R) -> K,
    created: Vec<K>,
) -> Result<Vec<Inserted<T>>, StoreError>
where
    R: Into<T>,
    T: Clone,
    K: std::hash::Hash + Eq,
{
    let stored: std::collections::HashMap<K, T> = rows.into_iter().map(|r| (key_of(&r), r.into())).collect();
    let created: std::collections::HashSet<K> = created.into_iter().collect();
    let mut seen = std::collections::HashSet::new();
    keys.into_iter()
        .map(|key| {
            let row =
                stored.get(&key).cloned().ok_or_else(|| StoreError::Corrupt("an inserted row is missing".into()))?;
            let created = created.contains(&key) && seen.insert(key);
            Ok(Inserted { row, created })
        })
        .collect()
}

/// One page of a listing, newest first: the operator's API reads the store
/// through these, never whole tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Rows to return, between 1 and [`Page::MAX_LIMIT`].
    pub limit: u32,
    /// Only rows older than this cursor: the `next` of the page before.
    pub before: Option<i64>,
}

impl Page {
    /// The most rows one page returns.
    pub const MAX_LIMIT: u32 = 500;

    /// A page of `limit` rows (clamped to 1..=[`Page::MAX_LIMIT`]) before `before`.
    pub fn new(limit: u32, before: Option<i64>) -> Self {
        Page { limit: limit.clamp(1, Self::MAX_LIMIT), before }
    }
}

/// Rows of one page, and the cursor of the next (`None` on the last page).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paged<T> {
    /// The rows, newest first.
    pub items: Vec<T>,
    /// Pass as [`Page::before`] for the next page.
    pub next: Option<i64>,
}

impl<T> Paged<T> {
    /// A page of `rows` read with `page.limit` as the limit, keyed by `cursor`: a
    /// full page may have a next one, a short page is the last.
    fn of<R: Into<T>>(rows: Vec<R>, page: Page, cursor: impl Fn(&R) -> i64) -> Self {
        let next = if rows.len() as u32 >= page.limit { rows.last().map(cursor) } else { None };
        Paged { items: rows.into_iter().map(Into::into).collect(), next }
    }
}

/// Which solutions a listing returns; every field given must match.
#[derive(Clone, Debug, Default)]
pub struct SolutionFilter {
    /// Solutions to this job.
    pub task_id: Option<String>,
    /// Solutions of this worker hardware.
    pub hardware_id: Option<String>,
    /// The solution with this key (its nonce).
    pub unique_key: Option<String>,
}

/// Which worker connections a listing returns; every field given must match.
#[derive(Clone, Debug, Default)]
pub struct WorkerFilter {
    /// Connections of this worker hardware.
    pub hardware_id: Option<String>,
    /// `Some(true)`: only connections still open; `Some(false)`: only finished ones.
    pub open: Option<bool>,
}

/// Solutions counted by verdict, one count per window of a
/// [`Store::miner_activity`] call, in the order of its `windows`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Accepted by every validating policy.
    pub valid: Vec<u64>,
    /// Refused by a policy.
    pub invalid: Vec<u64>,
    /// Not validated: no policy validates solutions, or not yet, or of an unknown job.
    pub unchecked: Vec<u64>,
}

impl Tally {
    /// Zero in each of `windows` windows.
    pub fn zero(windows: usize) -> Self {
        Tally { valid: vec![0; windows], invalid: vec![0; windows], unchecked: vec![0; windows] }
    }

    /// Adds `other`'s counts, window by window.
    pub fn add(&mut self, other: &Tally) {
        for (mine, theirs) in [
            (&mut self.valid, &other.valid),
            (&mut self.invalid, &other.invalid),
            (&mut self.unchecked, &other.unchecked),
        ] {
            mine.resize(mine.len().max(theirs.len()), 0);
            mine.iter_mut().zip(theirs).for_each(|(m, t)| *m += t);
        }
    }
}

/// One worker (`hardware_id` and `caption`) of a payout address: what it sent within
/// the widest window, and whether it is connected under that address now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerActivity {
    /// The welcome's `hardware_id`.
    pub hardware_id: String,
    /// The welcome's `caption`.
    pub caption: String,
    /// When its open connection under this address opened, if one is open (as the
    /// `worker` table says: recorded by the presence processor, finished by a
    /// restart of the instance that held it).
    pub connected_since: Option<DateTime<Utc>>,
    /// Its solutions in each window.
    pub tally: Tally,
    /// Its latest solution within the widest window.
    pub last_solution_at: Option<DateTime<Utc>>,
}

/// What one payout address's workers did, from its own rows only: the solutions
/// stored with the address and the connections welcomed with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MinerActivity {
    /// Its workers that sent a solution within the widest window, are connected, or
    /// were within it; by `hardware_id`, then `caption`.
    pub workers: Vec<WorkerActivity>,
    /// Its latest solution, at any time.
    pub last_solution_at: Option<DateTime<Utc>>,
}

/// One payout address's valid solutions in a time range: what a payout system
/// shares its rewards by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shares {
    /// The payout address (the welcome's `address`).
    pub address: String,
    /// How many.
    pub valid: u64,
    /// The sum of their `solution_target`s (each a u64: the sum may pass u64).
    pub target_sum: u128,
}

/// Persistence for the pipeline.
///
/// The processors work in batches: every write they make is a multi-row statement
/// ([`insert_jobs`](Self::insert_jobs), [`insert_solutions`](Self::insert_solutions),
/// [`settle`](Self::settle)). The one-row methods are shorthands over them.
#[async_trait]
pub trait Store: Send + Sync {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Whether the database answers a query now (what `/readyz` asks).
    async fn check(&self) -> Result<(), StoreError>;

    /// Inserts the jobs whose height is not stored, in one transaction; returns
    /// each job's row as stored now, in input order.
    async fn insert_jobs(&self, jobs: &[NewJob]) -> Result<Vec<Inserted<StoredJob>>, StoreError>;
    /// The stored jobs among these task ids (unknown ones are left out).
    async fn jobs_by_task(&self, task_ids: &[String]) -> Result<Vec<StoredJob>, StoreError>;
    /// The broadcast job of greatest height: what a newly connected worker gets.
    async fn latest_broadcast_job(&self) -> Result<Option<StoredJob>, StoreError>;

    /// Inserts the solutions whose `unique_key` is not stored, in one transaction;
    /// returns each solution's row as stored now, in input order.
    async fn insert_solutions(&self, solutions: &[NewSolution]) -> Result<Vec<Inserted<StoredSolution>>, StoreError>;
    /// Records verdicts, broadcasts and rejected messages in one transaction. A
    /// broadcast keeps its first time: recording it again changes nothing.
    async fn settle(&self, settlement: &Settlement<'_>) -> Result<(), StoreError>;
    /// Broadcast solutions to jobs at `block_height`, oldest first, with their job:
    /// what a node that (re)submits a job at that height catches up on.
    async fn broadcast_solutions_at(&self, block_height: i64) -> Result<Vec<(StoredJob, StoredSolution)>, StoreError>;

    /// Keeps an HTTP node (its id, when it expires, and `record`, the node server's
    /// own text) so a restart finds it; saving the same id again replaces it.
    /// Expired nodes are deleted on the way.
    async fn save_http_node(&self, id: &str, expires_at_ms: i64, record: &str) -> Result<(), StoreError>;
    /// The records of the HTTP nodes not expired at `now_ms`.
    async fn live_http_nodes(&self, now_ms: i64) -> Result<Vec<String>, StoreError>;
    /// Records that a webhook receiver took delivery `webhook_id` (kept until
    /// `expires_at_ms`); recording it again changes nothing.
    async fn record_webhook_delivery(&self, webhook_id: &str, expires_at_ms: i64) -> Result<(), StoreError>;
    /// Whether delivery `webhook_id` was recorded.
    async fn webhook_delivered(&self, webhook_id: &str) -> Result<bool, StoreError>;

    /// Records a worker connection (`connected_at` = now) and returns its id. The
    /// worker's earlier connections still open (same `hardware_id` and `caption`)
    /// are finished first, as the original system's to-do describes.
    async fn worker_connected(&self, worker: &WorkerConnection) -> Result<i64, StoreError>;
    /// Sets `disconnected_at` = now.
    async fn worker_disconnected(&self, id: i64) -> Result<(), StoreError>;
    /// Finishes every connection `instance` left open (it crashed); returns how many.
    async fn close_connections_of(&self, instance: &str) -> Result<u64, StoreError>;
    /// Records a batch of worker connections and instance recoveries in one
    /// transaction, with the original system's rules: a connection's row is written
    /// once per key (a connection seen again only gains its end); an open row of a
    /// worker (`hardware_id` and `caption`) that has a later connection is finished at
    /// its latest solution before that one; a recovery finishes what its instance
    /// left open before it started.
    async fn record_presence(&self, connections: &[Presence], recoveries: &[Recovery]) -> Result<(), StoreError>;
    /// The connections of one worker (`hardware_id` and `caption`), oldest first.
    async fn worker_connections(&self, hardware_id: &str, caption: &str) -> Result<Vec<WorkerRow>, StoreError>;

    /// Jobs by height, highest first; the cursor is a block height.
    async fn list_jobs(&self, page: Page) -> Result<Paged<StoredJob>, StoreError>;
    /// The job at this height.
    async fn job_at_height(&self, block_height: i64) -> Result<Option<StoredJob>, StoreError>;
    /// Solutions matching `filter`, newest first.
    async fn list_solutions(&self, filter: &SolutionFilter, page: Page) -> Result<Paged<StoredSolution>, StoreError>;
    /// Worker connections matching `filter`, newest first; the cursor is a row id.
    async fn list_worker_connections(&self, filter: &WorkerFilter, page: Page) -> Result<Paged<WorkerRow>, StoreError>;

    /// What the workers of payout `address` did in each window, a window being the
    /// solutions stored at or after its start: `windows` are starts, latest first
    /// (the last is the widest). Counted from the rows stored with the address, in
    /// one query over the `(address, created_at)` index.
    async fn miner_activity(&self, address: &str, windows: &[DateTime<Utc>]) -> Result<MinerActivity, StoreError>;
    /// Per payout address, the valid solutions stored in `[since, until)`, by address.
    /// Rows without an address are counted for no one.
    async fn shares(&self, since: DateTime<Utc>, until: DateTime<Utc>) -> Result<Vec<Shares>, StoreError>;

    /// Inserts a job unless its height is stored; returns the stored row either way.
    async fn insert_job(&self, job: &NewJob) -> Result<Inserted<StoredJob>, StoreError> {
        one(self.insert_jobs(std::slice::from_ref(job)).await?)
    }
    /// Records that the job was produced to the `job` topic.
    async fn mark_job_broadcast(&self, task_id: &str) -> Result<(), StoreError> {
        self.settle(&Settlement { jobs_broadcast: &[task_id.to_string()], ..Settlement::default() }).await
    }
    /// The job with this task id.
    async fn job_by_task(&self, task_id: &str) -> Result<Option<StoredJob>, StoreError> {
        Ok(self.jobs_by_task(&[task_id.to_string()]).await?.pop())
    }
    /// Inserts a solution unless its `unique_key` is stored; returns the stored row either way.
    async fn insert_solution(&self, solution: &NewSolution) -> Result<Inserted<StoredSolution>, StoreError> {
        one(self.insert_solutions(std::slice::from_ref(solution)).await?)
    }
    /// Records the validators' verdict.
    async fn set_validation(
        &self,
        unique_key: &str,
        valid: bool,
        checked: bool,
        invalid_reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let verdict = Verdict {
            unique_key: unique_key.into(),
            valid,
            checked,
            invalid_reason: invalid_reason.map(str::to_string),
        };
        self.settle(&Settlement { verdicts: &[verdict], ..Settlement::default() }).await
    }
    /// Records that the solution was produced to the `solution` topic.
    async fn mark_solution_broadcast(&self, unique_key: &str) -> Result<(), StoreError> {
        self.settle(&Settlement { solutions_broadcast: &[unique_key.to_string()], ..Settlement::default() }).await
    }
    /// Records a message a processor could not use, with why.
    async fn record_rejected(&self, stream: &str, payload: &str, reason: &str) -> Result<(), StoreError> {
        let rejected = Rejected::new(stream, payload.as_bytes(), reason);
        self.settle(&Settlement { rejected: &[rejected], ..Settlement::default() }).await
    }
}

fn one<T>(mut rows: Vec<T>) -> Result<T, StoreError> {
    rows.pop().ok_or_else(|| StoreError::Corrupt("a one-row insert returned no row".into()))
}
