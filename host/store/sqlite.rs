//! SQLite through sqlx: the store for a single machine without PostgreSQL, and what
//! its SQL says differently.
//!
//! Timestamps are UTC text `YYYY-MM-DD HH:MM:SS.ffffff`, always with six fraction
//! digits so that SQL compares them (and takes their `max`) in time order; the process
//! clock sets them, as every writer runs on this machine. SQLite has no array
//! parameters: a batch travels as one JSON document, read back with `json_each`.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::error::BoxDynError;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    SqliteTypeInfo, SqliteValueRef,
};
use sqlx::{Arguments, Decode, Type};

use super::dialect::{run_on_sqlx, Arg, Column, Dialect, Sql};
use super::sql::{SqlStore, Stamp};
use super::StoreError;

/// How long a write waits for another connection's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections of a file-backed store: WAL lets readers run beside the one writer.
const FILE_CONNECTIONS: u32 = 4;

/// The SQLite dialect of the store's SQL.
#[derive(Clone, Copy, Debug)]
pub struct SqliteDialect;

/// The store on SQLite.
pub type SqliteStore = SqlStore<SqliteDialect>;

impl SqlStore<SqliteDialect> {
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
        // One writer at a time: SQLite has one write lock.
        Ok(Self::with_pool(pool, 1))
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
        Ok(Self::with_pool(pool, 1))
    }
}

/// A time as stored.
fn stored_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// The current time as stored.
fn now() -> String {
    stored_time(Utc::now())
}

/// Value `i` of the column as JSON.
fn json_at(column: &Column, i: usize) -> serde_json::Value {
    match column {
        Column::Texts(v) => v[i].clone().into(),
        Column::OptionalTexts(v) => v[i].clone().into(),
        Column::Ints(v) => v[i].into(),
        Column::Bools(v) => v[i].into(),
        Column::Times(v) => v[i].map(stored_time).into(),
    }
}

/// A list as the JSON array `json_each` reads.
fn json_list(column: &Column) -> String {
    serde_json::Value::Array((0..column.len()).map(|i| json_at(column, i)).collect()).to_string()
}

impl Dialect for SqliteDialect {
    type Pool = SqlitePool;
    type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

    const PARAMETER: &'static str = "?";

    fn now(sql: &mut Sql<Self>) -> String {
        sql.arg(now().as_str())
    }

    fn is_in(sql: &mut Sql<Self>, expr: &str, values: Column) -> String {
        format!("{expr} IN (SELECT value FROM json_each({}))", sql.arg(Arg::List(values)))
    }

    /// SQLite has no `LATERAL`; its joins are nested loops, probing by index.
    fn join_each(table: &str, alias: &str, on: &str) -> String {
        format!("JOIN {table} AS {alias} ON {on}")
    }

    fn is_any_of(expr: &str, subquery: &str) -> String {
        format!("{expr} IN ({subquery})")
    }

    fn rows(sql: &mut Sql<Self>, alias: &str, columns: Vec<(&str, Column)>) -> String {
        let count = columns.first().map_or(0, |(_, c)| c.len());
        let batch: Vec<serde_json::Value> =
            (0..count).map(|i| columns.iter().map(|(_, c)| json_at(c, i)).collect()).collect();
        let fields: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, (name, _))| format!("json_extract(value, '$[{i}]') AS {name}"))
            .collect();
        let batch = sql.arg(serde_json::Value::Array(batch).to_string().as_str());
        format!("(SELECT {} FROM json_each({batch})) AS {alias}", fields.join(", "))
    }

    async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/sqlite").run(pool).await?;
        Ok(())
    }

    /// IMMEDIATE takes the write lock up front (waiting up to the busy timeout): a
    /// deferred transaction that read first could not upgrade and would fail at once.
    async fn begin(pool: &SqlitePool) -> Result<Self::Tx, StoreError> {
        Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    run_on_sqlx!();
}

/// The statement's parameters; lists become JSON text.
fn arguments(args: Vec<Arg>) -> Result<SqliteArguments<'static>, StoreError> {
    let mut out = SqliteArguments::default();
    for arg in args {
        match arg {
            Arg::Scalar(v) => v.add_to(&mut out),
            Arg::Time(v) => out.add(stored_time(v)),
            Arg::List(column) => out.add(json_list(&column)),
        }
        .map_err(sqlx::Error::Encode)?;
    }
    Ok(out)
}

/// Timestamps are text; sqlx reads them as UTC.
impl Type<sqlx::Sqlite> for Stamp {
    fn type_info() -> SqliteTypeInfo {
        <DateTime<Utc> as Type<sqlx::Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <DateTime<Utc> as Type<sqlx::Sqlite>>::compatible(ty)
    }
}

impl<'r> Decode<'r, sqlx::Sqlite> for Stamp {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Stamp(<DateTime<Utc> as Decode<sqlx::Sqlite>>::decode(value)?))
    }
}
