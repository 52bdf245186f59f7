//! PostgreSQL through sqlx: the production store, and what its SQL says differently.
//!
//! Timestamps are `timestamp` columns (without time zone, as in the original system)
//! holding UTC, set by the database's clock: every server instance then stamps rows with
//! the same clock, which finishing a worker's connection relies on (it compares solution
//! and connection times). Batches travel as one array parameter per column, unnested.

use std::io;
use std::time::Duration;

use chrono::NaiveDateTime;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgTypeInfo, PgValueRef};
use sqlx::{Arguments, ConnectOptions, Connection, Decode, Type};

use super::dialect::{run_on_sqlx, Arg, Column, Dialect, Sql};
use super::sql::{SqlStore, Stamp};
use super::StoreError;

/// How long connecting (or waiting for a pooled connection) may take before failing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL dialect of the store's SQL.
#[derive(Clone, Copy, Debug)]
pub struct PgDialect;

/// The store on PostgreSQL.
pub type PgStore = SqlStore<PgDialect>;

impl SqlStore<PgDialect> {
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
        // Half the pool at most for worker connection records: the processors keep
        // connections during a storm.
        Ok(Self::with_pool(pool, max_connections as usize / 2))
    }
}

/// The element type of an array parameter holding `column`.
fn array_type(column: &Column) -> &'static str {
    match column {
        Column::Texts(_) | Column::OptionalTexts(_) => "text[]",
        Column::Ints(_) => "bigint[]",
        Column::Bools(_) => "bool[]",
        Column::Times(_) => "timestamp[]",
    }
}

/// The statement's parameters, in PostgreSQL's binary encoding.
fn arguments(args: Vec<Arg>) -> Result<PgArguments, StoreError> {
    let mut out = PgArguments::default();
    for arg in args {
        match arg {
            Arg::Scalar(v) => v.add_to(&mut out),
            Arg::Time(v) => out.add(v.naive_utc()),
            Arg::List(Column::Texts(v)) => out.add(v),
            Arg::List(Column::OptionalTexts(v)) => out.add(v),
            Arg::List(Column::Ints(v)) => out.add(v),
            Arg::List(Column::Bools(v)) => out.add(v),
            Arg::List(Column::Times(v)) => out.add(v.iter().map(|t| t.map(|t| t.naive_utc())).collect::<Vec<_>>()),
        }
        .map_err(sqlx::Error::Encode)?;
    }
    Ok(out)
}

impl Dialect for PgDialect {
    type Pool = PgPool;
    type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

    const PARAMETER: &'static str = "$";

    fn now(_: &mut Sql<Self>) -> String {
        "(now() AT TIME ZONE 'utc')".into()
    }

    fn is_in(sql: &mut Sql<Self>, expr: &str, values: Column) -> String {
        format!("{expr} = ANY({})", sql.arg(Arg::List(values)))
    }

    fn join_each(table: &str, alias: &str, on: &str) -> String {
        format!("CROSS JOIN LATERAL (SELECT * FROM {table} AS {alias} WHERE {on}) AS {alias}")
    }

    /// An array: `IN (subquery)` would be planned as a join, free to scan.
    fn is_any_of(expr: &str, subquery: &str) -> String {
        format!("{expr} = ANY(ARRAY({subquery}))")
    }

    fn rows(sql: &mut Sql<Self>, alias: &str, columns: Vec<(&str, Column)>) -> String {
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let arrays: Vec<String> = columns
            .into_iter()
            .map(|(_, column)| {
                let ty = array_type(&column);
                format!("{}::{ty}", sql.arg(Arg::List(column)))
            })
            .collect();
        format!("UNNEST({}) AS {alias}({})", arrays.join(", "), names.join(", "))
    }

    async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/postgres").run(pool).await?;
        Ok(())
    }

    async fn begin(pool: &PgPool) -> Result<Self::Tx, StoreError> {
        Ok(pool.begin().await?)
    }

    /// A prepared statement switches to a generic plan after five runs, planned
    /// with the statistics of that moment. A table young enough to have none
    /// (a fresh database in its first reconnect storm) looks empty, and the plan
    /// then scans it once per row of each batch: with the storm's rows in it, one
    /// batch's statement ran for over 40 s. Planned on each run, the plan sees the
    /// table's real size.
    async fn plan_afresh(tx: &mut Self::Tx) -> Result<(), StoreError> {
        sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan").execute(&mut **tx).await?;
        Ok(())
    }

    run_on_sqlx!();
}

/// A `timestamp` column holds UTC without a zone.
impl Type<sqlx::Postgres> for Stamp {
    fn type_info() -> PgTypeInfo {
        <NaiveDateTime as Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <NaiveDateTime as Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, sqlx::Postgres> for Stamp {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Stamp(<NaiveDateTime as Decode<sqlx::Postgres>>::decode(value)?.and_utc()))
    }
}
