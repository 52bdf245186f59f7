//! What a SQL database must say for the store's queries to run on it: the spelling of
//! parameters, of "now", of a batch of rows and of list membership, and how a
//! statement reaches its pool or transaction. Each database states these once, in
//! its own file ([`super::postgres`], [`super::sqlite`]); the queries themselves are
//! written once, in [`super::sql`].

use std::future::Future;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use sqlx::error::BoxDynError;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Arguments, Encode, FromRow, Type};

use super::StoreError;

/// One column of a batch, or a list to test membership in.
#[derive(Clone, Debug)]
pub enum Column {
    /// Text values.
    Texts(Vec<String>),
    /// Text values, some absent.
    OptionalTexts(Vec<Option<String>>),
    /// 64-bit integers.
    Ints(Vec<i64>),
    /// Booleans.
    Bools(Vec<bool>),
    /// Times, some absent.
    Times(Vec<Option<DateTime<Utc>>>),
}

impl Column {
    /// How many values the column holds.
    pub fn len(&self) -> usize {
        match self {
            Column::Texts(v) => v.len(),
            Column::OptionalTexts(v) => v.len(),
            Column::Ints(v) => v.len(),
            Column::Bools(v) => v.len(),
            Column::Times(v) => v.len(),
        }
    }

    /// Whether the column holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parameter of a statement.
#[derive(Clone, Debug)]
pub enum Arg {
    /// A value every database binds the same way.
    Scalar(Scalar),
    /// A point in time, stored as the dialect stores times.
    Time(DateTime<Utc>),
    /// A list of values, passed as the dialect passes lists.
    List(Column),
}

/// A parameter every database binds the same way.
#[derive(Clone, Debug)]
pub enum Scalar {
    /// A text value.
    Text(String),
    /// A text value or NULL.
    OptionalText(Option<String>),
    /// An integer or NULL.
    OptionalInt(Option<i64>),
    /// A boolean or NULL.
    OptionalBool(Option<bool>),
}

impl Scalar {
    /// Binds the value as the next of `arguments`.
    pub fn add_to<'q, A>(self, arguments: &mut A) -> Result<(), BoxDynError>
    where
        A: Arguments<'q>,
        String: Encode<'q, A::Database> + Type<A::Database>,
        Option<String>: Encode<'q, A::Database> + Type<A::Database>,
        Option<i64>: Encode<'q, A::Database> + Type<A::Database>,
        Option<bool>: Encode<'q, A::Database> + Type<A::Database>,
    {
        match self {
            Scalar::Text(v) => arguments.add(v),
            Scalar::OptionalText(v) => arguments.add(v),
            Scalar::OptionalInt(v) => arguments.add(v),
            Scalar::OptionalBool(v) => arguments.add(v),
        }
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Scalar(Scalar::Text(v.to_string()))
    }
}

impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Scalar(Scalar::OptionalText(v.map(str::to_string)))
    }
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Scalar(Scalar::OptionalInt(Some(v)))
    }
}

impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::Scalar(Scalar::OptionalInt(v))
    }
}

impl From<DateTime<Utc>> for Arg {
    fn from(v: DateTime<Utc>) -> Self {
        Arg::Time(v)
    }
}

impl From<Option<bool>> for Arg {
    fn from(v: Option<bool>) -> Self {
        Arg::Scalar(Scalar::OptionalBool(v))
    }
}

/// A statement ready to run: its text and parameters, numbered in the dialect's way.
#[derive(Debug)]
pub struct Query {
    /// The SQL text.
    pub sql: String,
    /// Parameter `n` (1-based) is `args[n - 1]`.
    pub args: Vec<Arg>,
}

/// Builds one statement for dialect `D`: every fragment that takes a parameter adds it
/// and returns the text that names it, so the SQL is written with `format!` once for
/// every database.
pub struct Sql<D> {
    args: Vec<Arg>,
    dialect: PhantomData<D>,
}

impl<D: Dialect> Default for Sql<D> {
    fn default() -> Self {
        Sql { args: Vec::new(), dialect: PhantomData }
    }
}

impl<D: Dialect> Sql<D> {
    /// A parameter holding `value`.
    pub fn arg(&mut self, value: impl Into<Arg>) -> String {
        self.args.push(value.into());
        D::placeholder(self.args.len())
    }

    /// The current time, as the dialect stores it.
    pub fn now(&mut self) -> String {
        D::now(self)
    }

    /// `expr` is one of `values`.
    pub fn is_in(&mut self, expr: &str, values: Column) -> String {
        D::is_in(self, expr, values)
    }

    /// The batch as a table `alias` with the named columns (of equal length).
    pub fn rows(&mut self, alias: &str, columns: Vec<(&str, Column)>) -> String {
        D::rows(self, alias, columns)
    }

    /// The statement with text `sql`, built from this builder's fragments.
    pub fn finish(self, sql: String) -> Query {
        Query { sql, args: self.args }
    }
}

/// A row type the store reads from either database.
pub trait StoreRow: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin {}

impl<T> StoreRow for T where T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin {}

/// Where a statement runs: on a pooled connection, or inside a transaction.
pub enum Exec<'a, D: Dialect> {
    /// Any connection of the pool, in autocommit.
    Pool(&'a D::Pool),
    /// The transaction's connection.
    Tx(&'a mut D::Tx),
}

/// The [`Dialect`] methods that only hand a statement to sqlx: the same text for
/// every database, compiled against each one's own types. Expanded inside a
/// dialect's `impl`, where a function `arguments(Vec<Arg>)` turns parameters into
/// that database's arguments.
macro_rules! run_on_sqlx {
    () => {
        async fn commit(tx: Self::Tx) -> Result<(), StoreError> {
            Ok(tx.commit().await?)
        }

        async fn fetch<R: $crate::store::dialect::StoreRow>(
            exec: $crate::store::dialect::Exec<'_, Self>,
            query: $crate::store::dialect::Query,
        ) -> Result<Vec<R>, StoreError> {
            use $crate::store::dialect::Exec;
            let statement = sqlx::query_as_with::<_, R, _>(&query.sql, arguments(query.args)?);
            Ok(match exec {
                Exec::Pool(pool) => statement.fetch_all(pool).await?,
                Exec::Tx(tx) => statement.fetch_all(&mut **tx).await?,
            })
        }

        async fn execute(
            exec: $crate::store::dialect::Exec<'_, Self>,
            query: $crate::store::dialect::Query,
        ) -> Result<u64, StoreError> {
            use $crate::store::dialect::Exec;
            let statement = sqlx::query_with(&query.sql, arguments(query.args)?);
            let done = match exec {
                Exec::Pool(pool) => statement.execute(pool).await?,
                Exec::Tx(tx) => statement.execute(&mut **tx).await?,
            };
            Ok(done.rows_affected())
        }
    };
}
pub(super) use run_on_sqlx;

/// What differs between the databases the store runs on. Everything else — the SQL,
/// the row mapping, the batching — is written once over this trait.
pub trait Dialect: Send + Sync + Sized + 'static {
    /// The connection pool.
    type Pool: Clone + Send + Sync + std::fmt::Debug;
    /// An open write transaction.
    type Tx: Send;

    /// What stands before a parameter's number (1-based) to name it: `$1`, `?1`.
    const PARAMETER: &'static str;

    /// The text naming parameter `n` (1-based).
    fn placeholder(n: usize) -> String {
        format!("{}{n}", Self::PARAMETER)
    }
    /// The current time as stored in a timestamp column.
    fn now(sql: &mut Sql<Self>) -> String;
    /// A membership test of `expr` in a list passed as a parameter.
    fn is_in(sql: &mut Sql<Self>, expr: &str, values: Column) -> String;
    /// A batch passed as parameters, as a table `alias(columns…)`.
    fn rows(sql: &mut Sql<Self>, alias: &str, columns: Vec<(&str, Column)>) -> String;
    /// Joins `table AS alias` to the rows before it in a `FROM`, looked up once per
    /// row by `on` (which names both): an index probe each, whatever the table's
    /// statistics say. A planner free to choose may hash every row of `table`
    /// instead, and PostgreSQL does when the table has grown since it was analysed.
    fn join_each(table: &str, alias: &str, on: &str) -> String;
    /// A test of `expr` against the values `subquery` returns, each looked up on its
    /// own (by `expr`'s index, where it has one) rather than joined.
    fn is_any_of(expr: &str, subquery: &str) -> String;

    /// Applies the migrations of this database's schema.
    fn migrate(pool: &Self::Pool) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Starts a transaction that writes: it holds the database's write lock, where
    /// the database has one, from the start.
    fn begin(pool: &Self::Pool) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send;
    /// Commits the transaction.
    fn commit(tx: Self::Tx) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Makes the rest of the transaction plan each statement against the tables as
    /// they are now, not reuse a plan cached when they were smaller. A database
    /// without cached plans (or without the risk) does nothing.
    fn plan_afresh(tx: &mut Self::Tx) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = tx;
        std::future::ready(Ok(()))
    }
    /// The rows the statement returns.
    fn fetch<R: StoreRow>(
        exec: Exec<'_, Self>,
        query: Query,
    ) -> impl Future<Output = Result<Vec<R>, StoreError>> + Send;
    /// Runs the statement; returns how many rows it changed.
    fn execute(exec: Exec<'_, Self>, query: Query) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
