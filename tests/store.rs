//! The store contract, written once over `dyn Store` and run against every backend:
//! SQLite in memory, SQLite in a file, and PostgreSQL (at `ELIGO_TEST_POSTGRES_URL`, in a
//! schema of its own per test, dropped afterwards). An unreachable PostgreSQL fails the
//! PostgreSQL tests; it never skips them.

mod support;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use eligo::store::postgres::PgStore;
use eligo::store::sqlite::SqliteStore;
use eligo::store::{
    Inserted, NewJob, NewSolution, Page, Presence, Recovery, Settlement, Shares, SolutionFilter, Store, StoredJob,
    StoredSolution, Tally, Verdict, WorkerConnection, WorkerFilter,
};
use futures::FutureExt;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// A store under test, with raw access to its database for what the trait does not read.
#[derive(Clone)]
struct Backend {
    store: Arc<dyn Store>,
    raw: Raw,
}

/// The pool behind the store.
#[derive(Clone)]
enum Raw {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

/// A `worker` row's times.
#[derive(Debug, Clone, Copy, PartialEq)]
struct WorkerTimes {
    connected_at: DateTime<Utc>,
    disconnected_at: Option<DateTime<Utc>>,
}

impl Backend {
    async fn worker_times(&self, id: i64) -> WorkerTimes {
        match &self.raw {
            Raw::Pg(pool) => {
                let (c, d): (NaiveDateTime, Option<NaiveDateTime>) =
                    sqlx::query_as("SELECT connected_at, disconnected_at FROM worker WHERE id = $1")
                        .bind(id)
                        .fetch_one(pool)
                        .await
                        .expect("reading a worker row");
                WorkerTimes { connected_at: c.and_utc(), disconnected_at: d.map(|d| d.and_utc()) }
            }
            Raw::Sqlite(pool) => {
                let (connected_at, disconnected_at) =
                    sqlx::query_as("SELECT connected_at, disconnected_at FROM worker WHERE id = ?1")
                        .bind(id)
                        .fetch_one(pool)
                        .await
                        .expect("reading a worker row");
                WorkerTimes { connected_at, disconnected_at }
            }
        }
    }

    /// Opens a finished connection again: what two racing connects of one worker leave.
    async fn reopen_worker(&self, id: i64) {
        let sql = "UPDATE worker SET disconnected_at = NULL WHERE id = $1";
        let affected = match &self.raw {
            Raw::Pg(pool) => sqlx::query(sql).bind(id).execute(pool).await.map(|r| r.rows_affected()),
            Raw::Sqlite(pool) => {
                sqlx::query(&sql.replace('$', "?")).bind(id).execute(pool).await.map(|r| r.rows_affected())
            }
        };
        assert_eq!(affected.expect("reopening a worker row"), 1);
    }

    /// Moves a solution's `created_at` to `at`: rows of the past, without waiting for them.
    async fn backdate_solution(&self, unique_key: &str, at: DateTime<Utc>) {
        let sql = "UPDATE solution SET created_at = $1 WHERE unique_key = $2";
        let affected = match &self.raw {
            Raw::Pg(pool) => {
                sqlx::query(sql).bind(at.naive_utc()).bind(unique_key).execute(pool).await.map(|r| r.rows_affected())
            }
            Raw::Sqlite(pool) => {
                let stored = at.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
                let sql = sql.replace('$', "?");
                sqlx::query(&sql).bind(stored).bind(unique_key).execute(pool).await.map(|r| r.rows_affected())
            }
        };
        assert_eq!(affected.expect("backdating a solution"), 1);
    }

    /// `(stream, payload, reason)` of every rejected message, oldest first.
    async fn rejected(&self) -> Vec<(String, String, String)> {
        let sql = "SELECT stream, payload, reason FROM rejected_message ORDER BY id";
        match &self.raw {
            Raw::Pg(pool) => sqlx::query_as(sql).fetch_all(pool).await,
            Raw::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await,
        }
        .expect("reading rejected messages")
    }
}

/// Which backend a test runs on.
enum Kind {
    SqliteMemory,
    SqliteFile,
    Postgres,
}

/// Runs `test` on a fresh, migrated store of `kind`.
async fn run<F, Fut>(kind: Kind, test: F)
where
    F: FnOnce(Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    match kind {
        Kind::SqliteMemory => {
            let store = SqliteStore::in_memory().await.expect("opening SQLite in memory");
            store.migrate().await.expect("migrating SQLite");
            let raw = Raw::Sqlite(store.pool().clone());
            test(Backend { store: Arc::new(store), raw }).await;
        }
        Kind::SqliteFile => {
            let dir = tempfile::tempdir().expect("creating a temporary directory");
            let store = SqliteStore::open(&dir.path().join("eligo.db")).await.expect("opening SQLite in a file");
            store.migrate().await.expect("migrating SQLite");
            let raw = Raw::Sqlite(store.pool().clone());
            test(Backend { store: Arc::new(store), raw }).await;
        }
        Kind::Postgres => run_postgres("", test).await,
    }
}

/// Runs `test` in a schema of its own, dropped afterwards even if the test fails.
/// `before_migrating` (SQL) fills the schema before the store migrates it.
async fn run_postgres<F, Fut>(before_migrating: &str, test: F)
where
    F: FnOnce(Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    let url = support::postgres_url();
    let unreachable = |e: &dyn std::fmt::Display| -> ! {
        panic!("PostgreSQL at {url} is unreachable: {e} (start it, or set ELIGO_TEST_POSTGRES_URL)")
    };
    let mut admin = match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&url)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => unreachable(&e),
        Err(_) => unreachable(&"no answer within 10 s"),
    };
    let schema = format!("eligo_test_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut admin).await.expect("creating a test schema");

    let separator = if url.contains('?') { '&' } else { '?' };
    let store_url = format!("{url}{separator}options=-c%20search_path%3D{schema}");
    let outcome = AssertUnwindSafe(async {
        let store = PgStore::connect(&store_url, 4).await.unwrap_or_else(|e| unreachable(&e));
        let pool = store.pool().clone();
        sqlx::raw_sql(before_migrating).execute(&pool).await.expect("preparing the test schema");
        store.migrate().await.expect("migrating PostgreSQL");
        test(Backend { store: Arc::new(store), raw: Raw::Pg(pool.clone()) }).await;
        pool.close().await;
    })
    .catch_unwind()
    .await;

    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut admin).await.expect("dropping the test schema");
    let _ = admin.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Generates, for each test function, one `#[tokio::test]` per backend.
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite_memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                crate::run(crate::Kind::SqliteMemory, crate::$name).await;
            })*
        }
        mod sqlite_file {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                crate::run(crate::Kind::SqliteFile, crate::$name).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                crate::run(crate::Kind::Postgres, crate::$name).await;
            })*
        }
    };
}

store_tests!(
    migrating_again_changes_nothing,
    a_job_is_stored_once_per_height,
    targets_keep_all_64_bits,
    concurrent_inserts_of_one_height_store_one_job,
    concurrent_inserts_of_one_solution_store_one,
    latest_broadcast_job_is_the_highest_broadcast,
    a_solution_is_stored_once_and_keeps_its_verdict,
    a_batch_of_new_and_stored_solutions_says_which_it_created,
    one_settlement_records_each_solutions_verdict_and_broadcast,
    broadcast_solutions_at_a_height_come_oldest_first_with_their_job,
    rejected_messages_are_kept,
    reconnecting_finishes_the_open_connection_at_the_latest_solution,
    reconnecting_without_solutions_finishes_at_connection_time,
    disconnecting_sets_the_time_once,
    closing_an_instance_finishes_only_its_open_connections,
    a_connection_ends_before_the_next_connection_of_its_worker,
    a_workers_connections_are_listed_oldest_first,
    jobs_are_listed_by_height_highest_first_page_by_page,
    solutions_are_listed_newest_first_by_job_worker_or_nonce,
    worker_connections_are_listed_newest_first_open_or_finished,
    a_connection_is_written_once_however_often_its_events_come,
    a_connections_end_may_come_before_its_start,
    a_later_connection_finishes_the_workers_open_one_at_its_latest_solution,
    a_recovery_finishes_what_its_instance_left_open_before_it,
    a_miners_windows_count_its_own_solutions_by_verdict,
    a_miners_workers_are_online_by_its_own_open_connections,
    shares_sum_full_64_bit_targets_of_valid_solutions_per_address,
);

fn new_job(block_height: i64) -> NewJob {
    NewJob {
        task_id: Uuid::new_v4().to_string(),
        block_height,
        proof_target: 1_000 + block_height as u64,
        epoch_challenge: format!(r#"{{"epoch_number":{block_height}}}"#),
    }
}

fn new_solution(unique_key: &str, task_id: &str, hardware_id: &str, caption: &str) -> NewSolution {
    NewSolution {
        unique_key: unique_key.to_owned(),
        hardware_id: hardware_id.to_owned(),
        caption: caption.to_owned(),
        task_id: task_id.to_owned(),
        solution: format!(r#"{{"partial_solution":{{"nonce":{unique_key}}}}}"#),
        solution_target: 50,
        address: None,
    }
}

fn worker(hardware_id: &str, caption: &str, instance: &str) -> WorkerConnection {
    WorkerConnection {
        ip: "192.0.2.7".to_owned(),
        address: "aleo1worker".to_owned(),
        hardware: "RTX 4090".to_owned(),
        hardware_id: hardware_id.to_owned(),
        caption: caption.to_owned(),
        instance: instance.to_owned(),
    }
}

async fn insert_job(store: &dyn Store, job: &NewJob) -> Inserted<StoredJob> {
    store.insert_job(job).await.expect("inserting a job")
}

async fn insert_solution(store: &dyn Store, solution: &NewSolution) -> Inserted<StoredSolution> {
    store.insert_solution(solution).await.expect("inserting a solution")
}

/// A solution sent now by the worker `(hardware_id, caption)`; returns its `created_at`.
async fn solve(store: &dyn Store, hardware_id: &str, caption: &str) -> DateTime<Utc> {
    let key = Uuid::new_v4().as_u128().to_string();
    insert_solution(store, &new_solution(&key, "some-task", hardware_id, caption)).await.row.created_at
}

fn assert_recent(at: DateTime<Utc>) {
    let off = (Utc::now() - at).num_seconds().abs();
    assert!(off < 60, "{at} is {off} s away from now: not UTC?");
}

async fn migrating_again_changes_nothing(b: Backend) {
    let job = insert_job(&*b.store, &new_job(1)).await.row;
    b.store.migrate().await.expect("migrating again");
    assert_eq!(b.store.job_by_task(&job.task_id).await.unwrap(), Some(job));
}

async fn a_job_is_stored_once_per_height(b: Backend) {
    let store = &*b.store;
    let first = new_job(100);
    let stored = insert_job(store, &first).await;
    assert!(stored.created);
    let row = stored.row;
    assert_eq!(
        (&*row.task_id, row.block_height, row.proof_target, &*row.epoch_challenge, row.broadcast),
        (&*first.task_id, 100, first.proof_target, &*first.epoch_challenge, false)
    );
    assert_recent(row.created_at);

    let again = NewJob { epoch_challenge: "{}".to_owned(), proof_target: 7, ..new_job(100) };
    let found = insert_job(store, &again).await;
    assert!(!found.created, "a second job at a stored height must not be created");
    assert_eq!(found.row, row, "the stored job is returned, not the new one");

    assert_eq!(store.job_by_task(&first.task_id).await.unwrap(), Some(row));
    assert_eq!(store.job_by_task(&again.task_id).await.unwrap(), None);
    assert_eq!(store.job_by_task("no-such-task").await.unwrap(), None);
}

async fn targets_keep_all_64_bits(b: Backend) {
    let store = &*b.store;
    for (i, target) in [0, i64::MAX as u64, 1 << 63, u64::MAX].into_iter().enumerate() {
        let job = NewJob { proof_target: target, ..new_job(i as i64) };
        assert_eq!(insert_job(store, &job).await.row.proof_target, target);
        assert_eq!(store.job_by_task(&job.task_id).await.unwrap().unwrap().proof_target, target);

        let solution = NewSolution { solution_target: target, ..new_solution(&i.to_string(), &job.task_id, "hw", "c") };
        assert_eq!(insert_solution(store, &solution).await.row.solution_target, target);
        assert_eq!(insert_solution(store, &solution).await.row.solution_target, target);
    }
}

async fn concurrent_inserts_of_one_height_store_one_job(b: Backend) {
    let attempts = futures::future::join_all((0..16).map(|_| {
        let store = b.store.clone();
        tokio::spawn(async move { store.insert_job(&new_job(500)).await })
    }))
    .await;
    let results: Vec<_> = attempts.into_iter().map(|r| r.expect("task").expect("insert_job")).collect();
    assert_eq!(results.iter().filter(|r| r.created).count(), 1, "exactly one insert creates the job");
    let winner = &results.iter().find(|r| r.created).unwrap().row;
    assert!(results.iter().all(|r| &r.row == winner), "every insert returns the stored job");
}

async fn concurrent_inserts_of_one_solution_store_one(b: Backend) {
    let attempts = futures::future::join_all((0..16).map(|i| {
        let store = b.store.clone();
        tokio::spawn(async move { store.insert_solution(&new_solution("42", "task", &format!("hw{i}"), "c")).await })
    }))
    .await;
    let results: Vec<_> = attempts.into_iter().map(|r| r.expect("task").expect("insert_solution")).collect();
    assert_eq!(results.iter().filter(|r| r.created).count(), 1, "exactly one insert creates the solution");
    let winner = &results.iter().find(|r| r.created).unwrap().row;
    assert!(results.iter().all(|r| &r.row == winner), "every insert returns the stored solution");
}

async fn latest_broadcast_job_is_the_highest_broadcast(b: Backend) {
    let store = &*b.store;
    let [j5, j6, j7] = [new_job(5), new_job(6), new_job(7)];
    for job in [&j5, &j6, &j7] {
        insert_job(store, job).await;
    }
    assert_eq!(store.latest_broadcast_job().await.unwrap(), None);

    store.mark_job_broadcast(&j6.task_id).await.unwrap();
    let latest = store.latest_broadcast_job().await.unwrap().expect("a broadcast job");
    assert_eq!((&*latest.task_id, latest.block_height, latest.broadcast), (&*j6.task_id, 6, true));

    store.mark_job_broadcast(&j5.task_id).await.unwrap();
    store.mark_job_broadcast(&j6.task_id).await.unwrap();
    store.mark_job_broadcast("no-such-task").await.unwrap();
    assert_eq!(store.latest_broadcast_job().await.unwrap(), Some(latest.clone()), "7 is not broadcast");

    // What the job processor sees when a node sends height 6 again: stored and broadcast.
    let again = insert_job(store, &new_job(6)).await;
    assert!(!again.created);
    assert_eq!(again.row, latest);
    assert!(!store.job_by_task(&j7.task_id).await.unwrap().unwrap().broadcast);
}

async fn a_solution_is_stored_once_and_keeps_its_verdict(b: Backend) {
    let store = &*b.store;
    let first = NewSolution { solution_target: 77, ..new_solution("1001", "task-a", "hw-1", "rig") };
    let stored = insert_solution(store, &first).await;
    assert!(stored.created);
    let row = stored.row;
    assert_eq!(
        (&*row.unique_key, &*row.hardware_id, &*row.caption, &*row.task_id, &*row.solution, row.solution_target),
        (&*first.unique_key, "hw-1", "rig", "task-a", &*first.solution, 77)
    );
    assert_eq!((row.valid, row.checked, row.invalid_reason.as_deref(), row.broadcast), (false, false, None, false));
    assert_recent(row.created_at);

    let duplicate = NewSolution { hardware_id: "hw-2".to_owned(), solution_target: 1, ..first.clone() };
    let found = insert_solution(store, &duplicate).await;
    assert!(!found.created);
    assert_eq!(found.row, row, "the stored solution is returned, not the new one");

    store.set_validation("1001", false, true, Some("target below the job's")).await.unwrap();
    let refused = insert_solution(store, &first).await.row;
    assert_eq!(
        (refused.valid, refused.checked, refused.invalid_reason.as_deref()),
        (false, true, Some("target below the job's"))
    );
    store.set_validation("1001", true, true, None).await.unwrap();
    store.set_validation("no-such-key", true, true, None).await.unwrap();
    store.mark_solution_broadcast("1001").await.unwrap();
    store.mark_solution_broadcast("1001").await.unwrap();
    store.mark_solution_broadcast("no-such-key").await.unwrap();
    let accepted = insert_solution(store, &first).await.row;
    assert_eq!(
        (accepted.valid, accepted.checked, accepted.invalid_reason, accepted.broadcast),
        (true, true, None, true)
    );
    assert_eq!(accepted.created_at, row.created_at);
}

async fn a_batch_of_new_and_stored_solutions_says_which_it_created(b: Backend) {
    let store = &*b.store;
    let old = insert_solution(store, &new_solution("old", "task", "hw", "rig")).await.row;
    store.set_validation("old", false, true, Some("stale")).await.unwrap();
    let batch = [
        new_solution("new", "task", "hw", "rig"),
        NewSolution { hardware_id: "other".to_owned(), ..new_solution("old", "task", "hw", "rig") },
        new_solution("new", "task", "hw", "rig"),
    ];
    let got = store.insert_solutions(&batch).await.unwrap();
    let summary: Vec<_> = got
        .iter()
        .map(|s| (s.created, &*s.row.unique_key, &*s.row.hardware_id, s.row.checked, s.row.invalid_reason.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            (true, "new", "hw", false, None),
            (false, "old", "hw", true, Some("stale")),
            (false, "new", "hw", false, None)
        ],
        "the stored row comes back for a key stored before, created only once for a repeat"
    );
    assert_eq!(got[1].row.created_at, old.created_at);
}

async fn one_settlement_records_each_solutions_verdict_and_broadcast(b: Backend) {
    let store = &*b.store;
    for key in ["valid", "invalid", "unchecked", "untouched"] {
        insert_solution(store, &new_solution(key, "task", "hw", "rig")).await;
    }
    let verdict = |key: &str, valid: bool, reason: Option<&str>| Verdict {
        unique_key: key.to_owned(),
        valid,
        checked: true,
        invalid_reason: reason.map(str::to_owned),
    };
    let verdicts = [verdict("valid", true, None), verdict("invalid", false, Some("below target"))];
    let broadcast = ["valid".to_owned(), "unchecked".to_owned(), "no-such-key".to_owned()];
    store
        .settle(&Settlement { verdicts: &verdicts, solutions_broadcast: &broadcast, ..Default::default() })
        .await
        .unwrap();
    let mut seen = Vec::new();
    for key in ["valid", "invalid", "unchecked", "untouched"] {
        let row = insert_solution(store, &new_solution(key, "task", "hw", "rig")).await.row;
        seen.push((key, row.valid, row.checked, row.invalid_reason, row.broadcast));
    }
    assert_eq!(
        seen,
        [
            ("valid", true, true, None, true),
            ("invalid", false, true, Some("below target".to_owned()), false),
            ("unchecked", false, false, None, true),
            ("untouched", false, false, None, false),
        ]
    );
}

async fn broadcast_solutions_at_a_height_come_oldest_first_with_their_job(b: Backend) {
    let store = &*b.store;
    let job10 = insert_job(store, &new_job(10)).await.row;
    let job11 = insert_job(store, &new_job(11)).await.row;
    store.mark_job_broadcast(&job10.task_id).await.unwrap();
    let job10 = store.job_by_task(&job10.task_id).await.unwrap().unwrap();

    let mut keys = Vec::new();
    for (key, task) in [("1", &job10), ("2", &job10), ("3", &job10), ("4", &job11), ("5", &job10)] {
        insert_solution(store, &new_solution(key, &task.task_id, "hw", "rig")).await;
        keys.push(key);
    }
    insert_solution(store, &new_solution("6", "unknown-task", "hw", "rig")).await;
    // Broadcast out of insertion order; "3" never.
    for key in ["5", "2", "1", "4", "6"] {
        store.mark_solution_broadcast(key).await.unwrap();
    }

    let at10 = store.broadcast_solutions_at(10).await.unwrap();
    let got: Vec<_> = at10.iter().map(|(job, s)| (job, &*s.unique_key, s.broadcast)).collect();
    assert_eq!(got, [(&job10, "1", true), (&job10, "2", true), (&job10, "5", true)]);
    let at11 = store.broadcast_solutions_at(11).await.unwrap();
    let got: Vec<_> = at11.iter().map(|(job, s)| (job, &*s.unique_key)).collect();
    assert_eq!(got, [(&job11, "4")]);
    assert_eq!(store.broadcast_solutions_at(12).await.unwrap(), []);
}

async fn rejected_messages_are_kept(b: Backend) {
    b.store.record_rejected("job", "not json", "expected value at line 1").await.unwrap();
    b.store.record_rejected("solution", "{}", "missing field `task_id`").await.unwrap();
    let owned = |s: [&str; 3]| (s[0].to_owned(), s[1].to_owned(), s[2].to_owned());
    assert_eq!(
        b.rejected().await,
        [owned(["job", "not json", "expected value at line 1"]), owned(["solution", "{}", "missing field `task_id`"])]
    );
}

async fn reconnecting_finishes_the_open_connection_at_the_latest_solution(b: Backend) {
    let store = &*b.store;
    let rig = worker("hw-1", "rig-a", "i1");
    solve(store, "hw-1", "rig-a").await; // before the connection: not part of it
    let first = store.worker_connected(&rig).await.unwrap();
    assert_recent(b.worker_times(first).await.connected_at);
    solve(store, "hw-1", "rig-a").await;
    let latest = solve(store, "hw-1", "rig-a").await;
    // Other workers' solutions: same hardware other caption, same caption other hardware.
    solve(store, "hw-1", "rig-b").await;
    solve(store, "hw-2", "rig-a").await;
    let other_open = store.worker_connected(&worker("hw-1", "rig-b", "i1")).await.unwrap();

    let second = store.worker_connected(&WorkerConnection { instance: "i2".to_owned(), ..rig }).await.unwrap();
    assert_ne!(first, second);
    assert_eq!(b.worker_times(first).await.disconnected_at, Some(latest));
    let now_open = b.worker_times(second).await;
    assert_eq!(now_open.disconnected_at, None);
    assert!(now_open.connected_at >= latest);
    assert_eq!(b.worker_times(other_open).await.disconnected_at, None, "another worker's connection stays open");
}

async fn reconnecting_without_solutions_finishes_at_connection_time(b: Backend) {
    let store = &*b.store;
    let rig = worker("hw-1", "rig-a", "i1");
    solve(store, "hw-1", "rig-a").await;
    let first = store.worker_connected(&rig).await.unwrap();
    let second = store.worker_connected(&rig).await.unwrap();
    let first_times = b.worker_times(first).await;
    assert_eq!(first_times.disconnected_at, Some(first_times.connected_at));
    assert_eq!(b.worker_times(second).await.disconnected_at, None);
}

async fn disconnecting_sets_the_time_once(b: Backend) {
    let store = &*b.store;
    let rig = worker("hw-1", "rig-a", "i1");
    let id = store.worker_connected(&rig).await.unwrap();
    store.worker_disconnected(id).await.unwrap();
    let closed = b.worker_times(id).await;
    let at = closed.disconnected_at.expect("disconnected");
    assert!(at >= closed.connected_at);
    assert_recent(at);

    solve(store, "hw-1", "rig-a").await;
    store.worker_disconnected(id).await.unwrap();
    store.worker_connected(&rig).await.unwrap();
    assert_eq!(b.worker_times(id).await, closed, "a finished connection is never finished again");
    store.worker_disconnected(424_242).await.unwrap();
}

async fn closing_an_instance_finishes_only_its_open_connections(b: Backend) {
    let store = &*b.store;
    let idle = store.worker_connected(&worker("hw-a", "rig", "i1")).await.unwrap();
    let busy = store.worker_connected(&worker("hw-b", "rig", "i1")).await.unwrap();
    let elsewhere = store.worker_connected(&worker("hw-c", "rig", "i2")).await.unwrap();
    let gone = store.worker_connected(&worker("hw-d", "rig", "i1")).await.unwrap();
    store.worker_disconnected(gone).await.unwrap();
    let gone_times = b.worker_times(gone).await;
    let busy_latest = solve(store, "hw-b", "rig").await;
    solve(store, "hw-c", "rig").await;

    assert_eq!(store.close_connections_of("i1").await.unwrap(), 2);
    let idle_times = b.worker_times(idle).await;
    assert_eq!(idle_times.disconnected_at, Some(idle_times.connected_at));
    assert_eq!(b.worker_times(busy).await.disconnected_at, Some(busy_latest));
    assert_eq!(b.worker_times(elsewhere).await.disconnected_at, None);
    assert_eq!(b.worker_times(gone).await, gone_times);

    assert_eq!(store.close_connections_of("i1").await.unwrap(), 0);
    assert_eq!(store.close_connections_of("no-such-instance").await.unwrap(), 0);
}

async fn a_connection_ends_before_the_next_connection_of_its_worker(b: Backend) {
    let store = &*b.store;
    let rig = worker("hw-1", "rig-a", "i1");
    let first = store.worker_connected(&rig).await.unwrap();
    let during_first = solve(store, "hw-1", "rig-a").await;
    let second = store.worker_connected(&rig).await.unwrap();
    let during_second = solve(store, "hw-1", "rig-a").await;
    // Two connects racing can leave both open; the older one must not claim the
    // solutions sent after the newer one opened.
    b.reopen_worker(first).await;

    assert_eq!(store.close_connections_of("i1").await.unwrap(), 2);
    assert_eq!(b.worker_times(first).await.disconnected_at, Some(during_first));
    assert_eq!(b.worker_times(second).await.disconnected_at, Some(during_second));
}

async fn a_workers_connections_are_listed_oldest_first(b: Backend) {
    let store = &*b.store;
    assert_eq!(store.worker_connections("hw-1", "rig-a").await.unwrap(), []);
    let rig = worker("hw-1", "rig-a", "i1");
    let first = store.worker_connected(&rig).await.unwrap();
    store.worker_connected(&worker("hw-1", "rig-b", "i1")).await.unwrap();
    store.worker_connected(&worker("hw-2", "rig-a", "i1")).await.unwrap();
    let second = store.worker_connected(&WorkerConnection { instance: "i2".to_owned(), ..rig.clone() }).await.unwrap();

    let rows = store.worker_connections("hw-1", "rig-a").await.unwrap();
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [first, second]);
    let last = &rows[1];
    assert_eq!(
        (&*last.ip, &*last.address, &*last.hardware, &*last.hardware_id, &*last.caption, &*last.instance),
        (&*rig.ip, &*rig.address, &*rig.hardware, "hw-1", "rig-a", "i2")
    );
    for row in &rows {
        let times = b.worker_times(row.id).await;
        assert_eq!((row.connected_at, row.disconnected_at), (times.connected_at, times.disconnected_at));
    }
    assert!(rows[0].disconnected_at.is_some() && rows[1].disconnected_at.is_none());
}

/// Now, at the precision both databases keep.
fn stamp() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

fn presence(key: &str, worker: WorkerConnection, connected_at: DateTime<Utc>) -> Presence {
    Presence { key: key.to_owned(), worker, connected_at, disconnected_at: None }
}

/// `(connected_at, disconnected_at)` of a worker's rows, oldest first.
async fn times_of(store: &dyn Store, hardware_id: &str, caption: &str) -> Vec<(DateTime<Utc>, Option<DateTime<Utc>>)> {
    let rows = store.worker_connections(hardware_id, caption).await.unwrap();
    rows.iter().map(|r| (r.connected_at, r.disconnected_at)).collect()
}

async fn a_connection_is_written_once_however_often_its_events_come(b: Backend) {
    let store = &*b.store;
    let opened = presence("c-1", worker("hw-1", "rig-a", "i1"), stamp());
    store.record_presence(std::slice::from_ref(&opened), &[]).await.unwrap();
    store.record_presence(&[opened.clone(), opened.clone()], &[]).await.unwrap();
    assert_eq!(times_of(store, "hw-1", "rig-a").await, [(opened.connected_at, None)]);

    let ended_at = stamp();
    let ended = Presence { disconnected_at: Some(ended_at), ..opened.clone() };
    store.record_presence(std::slice::from_ref(&ended), &[]).await.unwrap();
    // Delivered again, late: the end stays, and nothing is added.
    store.record_presence(&[opened.clone(), ended.clone()], &[]).await.unwrap();
    store.record_presence(&[Presence { disconnected_at: Some(stamp()), ..opened.clone() }], &[]).await.unwrap();
    assert_eq!(times_of(store, "hw-1", "rig-a").await, [(opened.connected_at, Some(ended_at))]);
    let row = &store.worker_connections("hw-1", "rig-a").await.unwrap()[0];
    assert_eq!((&*row.ip, &*row.address, &*row.instance), ("192.0.2.7", "aleo1worker", "i1"));
}

async fn a_connections_end_may_come_before_its_start(b: Backend) {
    let store = &*b.store;
    let opened = presence("c-1", worker("hw-1", "rig-a", "i1"), stamp());
    let ended_at = stamp();
    store.record_presence(&[Presence { disconnected_at: Some(ended_at), ..opened.clone() }], &[]).await.unwrap();
    store.record_presence(std::slice::from_ref(&opened), &[]).await.unwrap();
    assert_eq!(times_of(store, "hw-1", "rig-a").await, [(opened.connected_at, Some(ended_at))]);
}

async fn a_later_connection_finishes_the_workers_open_one_at_its_latest_solution(b: Backend) {
    let store = &*b.store;
    let rig = worker("hw-1", "rig-a", "i1");
    let first = presence("c-1", rig.clone(), stamp());
    let other = presence("c-other", worker("hw-1", "rig-b", "i1"), stamp());
    store.record_presence(&[first.clone(), other.clone()], &[]).await.unwrap();
    solve(store, "hw-1", "rig-a").await;
    let latest = solve(store, "hw-1", "rig-a").await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let second = presence("c-2", rig.clone(), stamp());
    // The new connection and a quiet one of the same worker in one batch.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let third = presence("c-3", rig, stamp());
    store.record_presence(&[second.clone(), third.clone()], &[]).await.unwrap();
    assert_eq!(
        times_of(store, "hw-1", "rig-a").await,
        [
            (first.connected_at, Some(latest)),
            (second.connected_at, Some(second.connected_at)),
            (third.connected_at, None)
        ]
    );
    assert_eq!(times_of(store, "hw-1", "rig-b").await, [(other.connected_at, None)], "another worker stays open");
}

async fn a_recovery_finishes_what_its_instance_left_open_before_it(b: Backend) {
    let store = &*b.store;
    let idle = presence("c-idle", worker("hw-a", "rig", "i1"), stamp());
    let busy = presence("c-busy", worker("hw-b", "rig", "i1"), stamp());
    let elsewhere = presence("c-else", worker("hw-c", "rig", "i2"), stamp());
    store.record_presence(&[idle.clone(), busy.clone(), elsewhere.clone()], &[]).await.unwrap();
    let busy_latest = solve(store, "hw-b", "rig").await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let restarted = stamp();
    tokio::time::sleep(Duration::from_millis(2)).await;
    // Welcomed by the restarted instance before its recovery was processed.
    let after = presence("c-after", worker("hw-d", "rig", "i1"), stamp());
    store
        .record_presence(std::slice::from_ref(&after), &[Recovery { instance: "i1".into(), at: restarted }])
        .await
        .unwrap();
    assert_eq!(times_of(store, "hw-a", "rig").await, [(idle.connected_at, Some(idle.connected_at))]);
    assert_eq!(times_of(store, "hw-b", "rig").await, [(busy.connected_at, Some(busy_latest))]);
    assert_eq!(times_of(store, "hw-c", "rig").await, [(elsewhere.connected_at, None)]);
    assert_eq!(times_of(store, "hw-d", "rig").await, [(after.connected_at, None)]);
}

#[tokio::test]
async fn postgres_connect_fails_fast_and_says_why_when_unreachable() {
    let started = Instant::now();
    // Port 1 on the loopback: nothing listens there, so the connection is refused.
    let error = PgStore::connect("postgres://postgres@127.0.0.1:1/test", 2).await.expect_err("nothing listens");
    assert!(started.elapsed() < Duration::from_secs(7), "took {:?}", started.elapsed());
    let message = error.to_string();
    assert!(message.to_lowercase().contains("refused"), "{message}");
}

/// The original system's tables as it created them (`integer` keys and heights,
/// nullable columns), with one row each.
const ORIGINAL_SCHEMA: &str = "
    CREATE TABLE job (id serial PRIMARY KEY, block_height integer NOT NULL UNIQUE, epoch_challenge text NOT NULL,
        task_id varchar(36) NOT NULL UNIQUE, created_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'));
    CREATE TABLE solution (id serial PRIMARY KEY, hardware_id varchar(255), caption varchar(255),
        task_id varchar(36), unique_key text UNIQUE, solution text, valid boolean DEFAULT false,
        checked boolean DEFAULT false, created_at timestamp);
    CREATE INDEX ix_solution_task_id ON solution (task_id);
    CREATE INDEX ix_solution_hardware_id_caption ON solution (hardware_id, caption);
    CREATE TABLE worker (id serial PRIMARY KEY, ip varchar(45), address text, hardware text,
        hardware_id varchar(255), caption varchar(255), connected_at timestamp NOT NULL, disconnected_at timestamp);
    INSERT INTO job (block_height, epoch_challenge, task_id, created_at)
        VALUES (7, '{}', 'original-task', '2024-05-01 12:00:00');
    INSERT INTO solution (hardware_id, caption, task_id, unique_key, solution, valid, checked, created_at)
        VALUES ('hw', 'rig', 'original-task', '99', NULL, NULL, NULL, '2024-05-01 12:00:01');
    INSERT INTO worker (ip, address, hardware, hardware_id, caption, connected_at)
        VALUES ('192.0.2.1', 'aleo1', 'gpu', 'hw', 'rig', '2024-05-01 11:59:00');
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_takes_over_the_original_systems_database() {
    run_postgres(ORIGINAL_SCHEMA, |b: Backend| async move {
        let store = &*b.store;
        let job = store.job_by_task("original-task").await.unwrap().expect("the original job");
        let at = |s: &str| NaiveDateTime::parse_from_str(s, "%F %T").unwrap().and_utc();
        assert_eq!((job.block_height, job.proof_target, job.broadcast), (7, 0, false));
        assert_eq!(job.created_at, at("2024-05-01 12:00:00"));
        assert!(!insert_job(store, &new_job(7)).await.created);
        assert!(insert_job(store, &new_job(8)).await.created);

        let solution = insert_solution(store, &new_solution("99", "other", "x", "y")).await;
        assert!(!solution.created);
        let row = solution.row;
        assert_eq!((&*row.task_id, &*row.solution, row.valid, row.checked), ("original-task", "", false, false));
        store.mark_solution_broadcast("99").await.unwrap();
        assert_eq!(store.broadcast_solutions_at(7).await.unwrap().len(), 1);

        // The original's open connection is finished at its solution.
        let id = store.worker_connected(&worker("hw", "rig", "i1")).await.unwrap();
        let rows = store.worker_connections("hw", "rig").await.unwrap();
        assert_eq!(rows.iter().map(|r| (r.id, &*r.instance)).collect::<Vec<_>>(), [(1, ""), (id, "i1")]);
        assert_eq!(rows[0].connected_at, at("2024-05-01 11:59:00"));
        assert_eq!(rows[0].disconnected_at, Some(at("2024-05-01 12:00:01")));
    })
    .await;
}

async fn jobs_are_listed_by_height_highest_first_page_by_page(b: Backend) {
    let store = &*b.store;
    assert_eq!(store.list_jobs(Page::new(10, None)).await.unwrap().items, []);
    for height in [3, 1, 5, 2, 4] {
        insert_job(store, &new_job(height)).await;
    }
    let first = store.list_jobs(Page::new(2, None)).await.unwrap();
    assert_eq!(first.items.iter().map(|j| j.block_height).collect::<Vec<_>>(), [5, 4]);
    let second = store.list_jobs(Page::new(2, first.next)).await.unwrap();
    assert_eq!(second.items.iter().map(|j| j.block_height).collect::<Vec<_>>(), [3, 2]);
    let last = store.list_jobs(Page::new(2, second.next)).await.unwrap();
    assert_eq!(last.items.iter().map(|j| j.block_height).collect::<Vec<_>>(), [1]);
    assert_eq!(last.next, None, "a short page is the last");

    let at_four = store.job_at_height(4).await.unwrap().expect("the job at height 4");
    assert_eq!(at_four.block_height, 4);
    assert_eq!(Some(at_four), store.list_jobs(Page::new(1, Some(5))).await.unwrap().items.pop());
    assert_eq!(store.job_at_height(99).await.unwrap(), None);
}

async fn solutions_are_listed_newest_first_by_job_worker_or_nonce(b: Backend) {
    let store = &*b.store;
    for (key, task, hw) in
        [("1", "task-a", "hw-1"), ("2", "task-a", "hw-2"), ("3", "task-b", "hw-1"), ("4", "task-a", "hw-1")]
    {
        insert_solution(store, &new_solution(key, task, hw, "rig")).await;
    }
    let keys =
        |page: eligo::store::Paged<StoredSolution>| page.items.into_iter().map(|s| s.unique_key).collect::<Vec<_>>();
    let all = SolutionFilter::default();
    assert_eq!(keys(store.list_solutions(&all, Page::new(10, None)).await.unwrap()), ["4", "3", "2", "1"]);
    let by_task = SolutionFilter { task_id: Some("task-a".into()), ..SolutionFilter::default() };
    assert_eq!(keys(store.list_solutions(&by_task, Page::new(10, None)).await.unwrap()), ["4", "2", "1"]);
    let both = SolutionFilter { hardware_id: Some("hw-1".into()), ..by_task.clone() };
    assert_eq!(keys(store.list_solutions(&both, Page::new(10, None)).await.unwrap()), ["4", "1"]);
    let by_nonce = SolutionFilter { unique_key: Some("3".into()), ..SolutionFilter::default() };
    let found = store.list_solutions(&by_nonce, Page::new(10, None)).await.unwrap();
    assert_eq!((found.items.len(), &*found.items[0].task_id, found.next), (1, "task-b", None));

    let first = store.list_solutions(&by_task, Page::new(2, None)).await.unwrap();
    assert!(first.next.is_some(), "a full page has a cursor");
    assert_eq!(keys(store.list_solutions(&by_task, Page::new(2, first.next)).await.unwrap()), ["1"]);
}

async fn worker_connections_are_listed_newest_first_open_or_finished(b: Backend) {
    let store = &*b.store;
    let first = store.worker_connected(&worker("hw-1", "rig-a", "i1")).await.unwrap();
    let other = store.worker_connected(&worker("hw-2", "rig-a", "i1")).await.unwrap();
    let second = store.worker_connected(&worker("hw-1", "rig-a", "i1")).await.unwrap();
    let ids = |filter: WorkerFilter| async move {
        let page = store.list_worker_connections(&filter, Page::new(10, None)).await.unwrap();
        page.items.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    assert_eq!(ids(WorkerFilter::default()).await, [second, other, first]);
    let hw1 = WorkerFilter { hardware_id: Some("hw-1".into()), ..WorkerFilter::default() };
    assert_eq!(ids(hw1.clone()).await, [second, first]);
    assert_eq!(
        ids(WorkerFilter { open: Some(true), ..hw1.clone() }).await,
        [second],
        "the reconnect finished the first"
    );
    assert_eq!(ids(WorkerFilter { open: Some(false), ..hw1 }).await, [first]);
    let page = store.list_worker_connections(&WorkerFilter::default(), Page::new(2, None)).await.unwrap();
    assert_eq!(page.next, Some(other));
    let rest = store.list_worker_connections(&WorkerFilter::default(), Page::new(2, page.next)).await.unwrap();
    assert_eq!((rest.items.len(), rest.next), (1, None));
}

/// A solution of payout `address` (none: a row from before eligo kept it) to `task_id`.
fn paid(key: &str, hardware_id: &str, address: Option<&str>, target: u64) -> NewSolution {
    NewSolution {
        address: address.map(str::to_owned),
        solution_target: target,
        ..new_solution(key, "some-task", hardware_id, "rig")
    }
}

/// Stores `solution`, `age` ago, with the verdict `valid` (`None`: not validated).
async fn stored(b: &Backend, solution: NewSolution, age: chrono::Duration, valid: Option<bool>) {
    let key = solution.unique_key.clone();
    insert_solution(&*b.store, &solution).await;
    if let Some(valid) = valid {
        let reason = (!valid).then_some("pow-check: too easy");
        b.store.set_validation(&key, valid, true, reason).await.unwrap();
    }
    b.backdate_solution(&key, stamp() - age).await;
}

/// Starts of the last 15 minutes, hour and day.
fn windows() -> [DateTime<Utc>; 3] {
    let now = Utc::now();
    [now - chrono::Duration::minutes(15), now - chrono::Duration::hours(1), now - chrono::Duration::hours(24)]
}

async fn a_miners_windows_count_its_own_solutions_by_verdict(b: Backend) {
    let min = chrono::Duration::minutes;
    let a = Some("aleo1a");
    // hw-1: valid 5 min ago and 30 min ago, invalid 2 h ago, valid 2 days ago (outside every window).
    stored(&b, paid("1", "hw-1", a, 10), min(5), Some(true)).await;
    stored(&b, paid("2", "hw-1", a, 10), min(30), Some(true)).await;
    stored(&b, paid("3", "hw-1", a, 10), min(120), Some(false)).await;
    stored(&b, paid("4", "hw-1", a, 10), min(2 * 24 * 60), Some(true)).await;
    // hw-2: unchecked 1 min ago, invalid 10 min ago.
    stored(&b, paid("5", "hw-2", a, 10), min(1), None).await;
    stored(&b, paid("6", "hw-2", a, 10), min(10), Some(false)).await;
    // Another address, and a row with none, from the same rig: counted for no one else.
    stored(&b, paid("7", "hw-1", Some("aleo1b"), 10), min(1), Some(true)).await;
    stored(&b, paid("8", "hw-1", None, 10), min(1), Some(true)).await;

    let activity = b.store.miner_activity("aleo1a", &windows()).await.unwrap();
    let tallies: Vec<(&str, &Tally)> = activity.workers.iter().map(|w| (w.hardware_id.as_str(), &w.tally)).collect();
    let tally = |valid: [u64; 3], invalid: [u64; 3], unchecked: [u64; 3]| Tally {
        valid: valid.to_vec(),
        invalid: invalid.to_vec(),
        unchecked: unchecked.to_vec(),
    };
    assert_eq!(
        tallies,
        [("hw-1", &tally([1, 2, 2], [0, 0, 1], [0, 0, 0])), ("hw-2", &tally([0, 0, 0], [1, 1, 1], [1, 1, 1]))]
    );
    let hw1 = &activity.workers[0];
    assert!(hw1.last_solution_at.is_some_and(|at| (Utc::now() - at - min(5)).num_seconds().abs() < 30), "{hw1:?}");
    assert_eq!(hw1.connected_since, None, "no connection recorded");
    // The address's latest solution at any time is the 1-minute-old one.
    let latest = activity.last_solution_at.expect("a latest solution");
    assert!((Utc::now() - latest - min(1)).num_seconds().abs() < 30, "{latest}");

    let by_nonce = SolutionFilter { unique_key: Some("7".into()), ..SolutionFilter::default() };
    let seven = b.store.list_solutions(&by_nonce, Page::new(1, None)).await.unwrap().items;
    assert_eq!(seven[0].address.as_deref(), Some("aleo1b"), "stored with its address");
    let other = b.store.miner_activity("aleo1b", &windows()).await.unwrap();
    assert_eq!(other.workers.len(), 1);
    assert_eq!(other.workers[0].tally.valid, [1, 1, 1], "only its own row");
    let nobody = b.store.miner_activity("aleo1nobody", &windows()).await.unwrap();
    assert_eq!((nobody.workers.len(), nobody.last_solution_at), (0, None));
    // Only old rows: no worker within the windows, but the latest solution is known.
    stored(&b, paid("9", "hw-9", Some("aleo1old"), 10), min(3 * 24 * 60), Some(true)).await;
    let old = b.store.miner_activity("aleo1old", &windows()).await.unwrap();
    assert_eq!((old.workers.len(), old.last_solution_at.is_some()), (0, true));
}

async fn a_miners_workers_are_online_by_its_own_open_connections(b: Backend) {
    let store = &*b.store;
    let hour = chrono::Duration::hours(1);
    let of = |hardware_id: &str, address: &str| WorkerConnection {
        address: address.to_owned(),
        ..worker(hardware_id, "rig", "i1")
    };
    // hw-1 connected now; hw-2 disconnected 2 h ago; hw-3 disconnected 2 days ago;
    // hw-4 connected now under another address.
    let now = stamp();
    let since = now - hour;
    let ended = |key: &str, w: WorkerConnection, until: DateTime<Utc>| Presence {
        disconnected_at: Some(until),
        ..presence(key, w, until - hour)
    };
    store
        .record_presence(
            &[
                presence("c-1", of("hw-1", "aleo1a"), since),
                ended("c-2", of("hw-2", "aleo1a"), now - hour * 2),
                ended("c-3", of("hw-3", "aleo1a"), now - hour * 48),
                presence("c-4", of("hw-4", "aleo1b"), since),
            ],
            &[],
        )
        .await
        .unwrap();
    let activity = store.miner_activity("aleo1a", &windows()).await.unwrap();
    let seen: Vec<(&str, Option<DateTime<Utc>>)> =
        activity.workers.iter().map(|w| (w.hardware_id.as_str(), w.connected_since)).collect();
    assert_eq!(seen, [("hw-1", Some(since)), ("hw-2", None)], "hw-3 ended before the day, hw-4 is another's");
    assert!(activity.workers.iter().all(|w| w.tally == Tally::zero(3)));
}

async fn shares_sum_full_64_bit_targets_of_valid_solutions_per_address(b: Backend) {
    let min = chrono::Duration::minutes;
    let (a, c) = (Some("aleo1a"), Some("aleo1c"));
    // Three valid targets of u64::MAX: a sum past 2^64, and each past i64::MAX as stored.
    for key in ["1", "2", "3"] {
        stored(&b, paid(key, "hw-1", a, u64::MAX), min(30), Some(true)).await;
    }
    stored(&b, paid("4", "hw-2", a, 5), min(30), Some(true)).await;
    stored(&b, paid("5", "hw-2", a, 1 << 40), min(30), Some(false)).await;
    stored(&b, paid("6", "hw-2", a, 1 << 40), min(30), None).await;
    stored(&b, paid("7", "hw-2", a, 1 << 40), min(90), Some(true)).await;
    stored(&b, paid("8", "hw-3", c, 7), min(20), Some(true)).await;
    stored(&b, paid("9", "hw-4", None, 7), min(20), Some(true)).await;
    // An address whose only solution is invalid has no share.
    stored(&b, paid("11", "hw-5", Some("aleo1d"), 7), min(20), Some(false)).await;

    let now = Utc::now();
    let shares = b.store.shares(now - min(60), now).await.unwrap();
    assert_eq!(
        shares,
        [
            Shares { address: "aleo1a".into(), valid: 4, target_sum: 3 * u128::from(u64::MAX) + 5 },
            Shares { address: "aleo1c".into(), valid: 1, target_sum: 7 },
        ]
    );
    // The range is half-open: a solution at `until` is the next range's.
    let at = stamp() - min(200);
    stored(&b, paid("10", "hw-1", a, 3), min(0), Some(true)).await;
    b.backdate_solution("10", at).await;
    assert_eq!(b.store.shares(at - min(1), at).await.unwrap(), []);
    let next = b.store.shares(at, at + min(1)).await.unwrap();
    assert_eq!(next, [Shares { address: "aleo1a".into(), valid: 1, target_sum: 3 }]);
}
