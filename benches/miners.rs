//! The miners query (`/api/v1/miners/{address}`, [`Store::miner_activity`]) over a
//! large `solution` table, on SQLite and PostgreSQL, against two floors measured in
//! the same run: the same call for an address with no rows (the same statements,
//! their index ranges empty), and one statement of the same shape (grouped counts
//! and latest time) over one row found by primary key. Also the share export of
//! one hour over every address ([`Store::shares`]), and the plans of both.
//!
//! `cargo bench --bench miners -- --json` prints one JSON object; without `--json`,
//! a table. The table is filled with `ELIGO_BENCH_MINER_ROWS` solutions (default
//! 5,000,000) spread over the last 48 hours, 1,000 addresses and 5,000 workers (90 %
//! valid, 8 % invalid, 2 % unchecked), by one `INSERT … SELECT` from a generated
//! series, plus each worker's connections (the latest open), then vacuumed as
//! autovacuum would (PostgreSQL). PostgreSQL is
//! `ELIGO_BENCH_POSTGRES_URL` (or the test database), in a schema of its own
//! dropped afterwards; SQLite a file in a temporary folder. A database that is
//! unreachable is reported as such. Without `--bench` (as `cargo test --benches`
//! runs it) nothing is measured.

use chrono::{DateTime, Duration, Utc};
use eligo::store::postgres::PgStore;
use eligo::store::sqlite::SqliteStore;
use eligo::store::Store;
use serde_json::{json, Value};
use sqlx::Connection;
use std::time::Instant;

/// Addresses, and workers (five per address), the rows are spread over.
const ADDRESSES: i64 = 1_000;
const WORKERS: i64 = 5 * ADDRESSES;
/// Past connections of each worker, besides its open one.
const PAST_CONNECTIONS: i64 = 10;
/// The time the rows are spread over.
const SPREAD_HOURS: i64 = 48;
/// Calls per measurement.
const SAMPLES: usize = 500;
/// Calls of the share export (each reads an hour of every address).
const SHARE_SAMPLES: usize = 5;
/// A solution object of realistic size, the same in every row.
const SOLUTION: &str = r#"{"partial_solution":{"address":"aleo1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq","nonce":1},"proof.w":{"x":"1234567890123456789012345678901234567890","y":"0"}}"#;

/// The windows of the API: 15 minutes, an hour, a day before `now`.
fn windows(now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    vec![now - Duration::minutes(15), now - Duration::hours(1), now - Duration::hours(24)]
}

/// p50, p99 and max of `samples`, in milliseconds.
fn quantiles(mut samples: Vec<f64>) -> Value {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    json!({ "p50_ms": round(at(0.5)), "p99_ms": round(at(0.99)), "max_ms": round(at(1.0)), "samples": samples.len() })
}

/// Times `calls` runs of `call`, after a few unmeasured ones.
async fn timed<F, Fut>(calls: usize, mut call: F) -> Result<Value, String>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    for i in 0..calls.min(10) {
        call(i).await?;
    }
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls {
        let started = Instant::now();
        call(i).await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(quantiles(samples))
}

/// An address of the bench's rows, picked by `i`.
fn address(i: usize) -> String {
    format!("aleo1bench{}", (i as i64 * 7919) % ADDRESSES)
}

/// The statement of the by-key floor: the miners query's shape over one row.
const BY_KEY: &str = "SELECT coalesce(hardware_id, '') AS h, count(*) FILTER (WHERE checked AND valid) AS v, \
                      max(created_at) AS at FROM solution WHERE id = $1 GROUP BY 1";

/// Statements of the same shape as the store's, to show their plans.
fn plans_of(day_ago: &str, hour_ago: &str) -> [String; 2] {
    [
        format!(
            "SELECT hardware_id, caption, count(*) FILTER (WHERE checked AND valid), max(created_at) FROM solution \
             WHERE address = 'aleo1bench1' AND created_at >= {day_ago} GROUP BY 1, 2"
        ),
        format!(
            "WITH RECURSIVE addresses(address) AS (SELECT min(address) FROM solution WHERE address IS NOT NULL \
             UNION ALL SELECT (SELECT min(n.address) FROM solution n WHERE n.address > addresses.address) \
             FROM addresses WHERE addresses.address IS NOT NULL) \
             SELECT s.address, count(*), sum(s.solution_target & 4294967295) FROM addresses \
             JOIN solution s ON s.address = addresses.address WHERE s.created_at >= {hour_ago} AND s.checked \
             AND s.valid GROUP BY s.address ORDER BY s.address"
        ),
    ]
}

/// The measurements on a filled store; `by_key(id)` runs [`BY_KEY`].
async fn measure<F, Fut>(store: &dyn Store, rows: i64, by_key: F) -> Result<Value, String>
where
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let now = Utc::now();
    let check = store.miner_activity(&address(0), &windows(now)).await.map_err(|e| e.to_string())?;
    let seen: u64 = check.workers.iter().map(|w| w.tally.valid[2] + w.tally.invalid[2] + w.tally.unchecked[2]).sum();
    let miner = timed(SAMPLES, |i| async move {
        store.miner_activity(&address(i), &windows(Utc::now())).await.map(drop).map_err(|e| e.to_string())
    })
    .await?;
    let unknown = timed(SAMPLES, |_| async move {
        store.miner_activity("aleo1none", &windows(Utc::now())).await.map(drop).map_err(|e| e.to_string())
    })
    .await?;
    let by_key = timed(SAMPLES, |i| by_key(1 + (i as i64 * 7919) % rows)).await?;
    let mut lines = 0;
    let shares = timed(SHARE_SAMPLES, |_| {
        let now = Utc::now();
        async move { store.shares(now - Duration::hours(1), now).await.map(drop).map_err(|e| e.to_string()) }
    })
    .await?;
    if let Ok(found) = store.shares(now - Duration::hours(1), now).await {
        lines = found.len();
    }
    let ratio = |floor: &Value| {
        let (m, f) = (miner["p99_ms"].as_f64().unwrap_or(0.0), floor["p99_ms"].as_f64().unwrap_or(0.0));
        if f > 0.0 {
            json!((m / f * 100.0).round() / 100.0)
        } else {
            Value::Null
        }
    };
    Ok(json!({
        "rows_of_one_address_in_24h": seen,
        "miner": miner,
        "floor_unknown_address": unknown,
        "floor_by_key": by_key,
        "p99_vs_unknown_address": ratio(&unknown),
        "p99_vs_by_key": ratio(&by_key),
        "shares_1h": shares,
        "shares_1h_addresses": lines,
    }))
}

/// What the statements that fill a store say in each database.
struct Fill {
    /// A table of one column `i`, from the first number to the second.
    series: fn(i64, i64) -> String,
    /// The time this SQL expression's seconds before now, as the database stores times.
    at: fn(&str) -> String,
    /// A random u64 bit-cast to a signed integer, as targets are stored.
    target: &'static str,
}

fn solutions_sql(fill: &Fill, rows: i64) -> String {
    let step = (SPREAD_HOURS * 3600) as f64 / rows as f64;
    let age = format!("(({rows} - i) * {step})");
    format!(
        "INSERT INTO solution (unique_key, hardware_id, caption, task_id, solution, solution_target, valid, checked, \
         invalid_reason, address, created_at) \
         SELECT 'bench-' || i, 'hw-' || (i % {WORKERS}), 'rig', '00000000-0000-0000-0000-000000000000', '{SOLUTION}', \
         {target}, i % 10 <> 0, i % 50 <> 0, CASE WHEN i % 10 = 0 AND i % 50 <> 0 THEN 'pow-check: too easy' END, \
         'aleo1bench' || ((i % {WORKERS}) % {ADDRESSES}), {at} FROM {series}",
        target = fill.target,
        at = (fill.at)(&age),
        series = (fill.series)(1, rows),
    )
}

/// Each worker's past connections (an hour each, ending every few hours back) and its open one.
fn workers_sql(fill: &Fill) -> String {
    let count = WORKERS * (PAST_CONNECTIONS + 1);
    format!(
        "INSERT INTO worker (ip, address, hardware, hardware_id, caption, instance, connected_at, disconnected_at) \
         SELECT '192.0.2.1', 'aleo1bench' || ((i % {WORKERS}) % {ADDRESSES}), 'gpu', 'hw-' || (i % {WORKERS}), 'rig', \
         'bench', {connected}, CASE WHEN i / {WORKERS} = 0 THEN NULL ELSE {ended} END FROM {series}",
        connected = (fill.at)(&format!("((i / {WORKERS}) * 5 * 3600 + 3600)")),
        ended = (fill.at)(&format!("((i / {WORKERS}) * 5 * 3600)")),
        series = (fill.series)(0, count - 1),
    )
}

async fn on_postgres(url: &str, rows: i64) -> Result<Value, String> {
    let mut admin = sqlx::PgConnection::connect(url).await.map_err(|e| e.to_string())?;
    let schema = format!("eligo_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut admin).await.map_err(|e| e.to_string())?;
    let separator = if url.contains('?') { '&' } else { '?' };
    let result = async {
        let store = PgStore::connect(&format!("{url}{separator}options=-c%20search_path%3D{schema}"), 4)
            .await
            .map_err(|e| e.to_string())?;
        store.migrate().await.map_err(|e| e.to_string())?;
        let fill = Fill {
            series: |from, to| format!("generate_series({from}, {to}) AS i"),
            at: |secs| format!("(now() AT TIME ZONE 'utc') - make_interval(secs => {secs})"),
            target: "hashtextextended('t' || i, 0)",
        };
        let started = Instant::now();
        for sql in [solutions_sql(&fill, rows), workers_sql(&fill)] {
            sqlx::query(&sql).execute(store.pool()).await.map_err(|e| format!("{e}: {sql}"))?;
        }
        // What autovacuum does to a table that only grows (PostgreSQL 13 and later):
        // without it every first read of a row would also write its page.
        sqlx::raw_sql("VACUUM (ANALYZE) solution, worker").execute(store.pool()).await.map_err(|e| e.to_string())?;
        let load_s = started.elapsed().as_secs_f64();
        let now = "(now() AT TIME ZONE 'utc')";
        let mut plans = Vec::new();
        for sql in plans_of(&format!("{now} - interval '1 day'"), &format!("{now} - interval '1 hour'")) {
            let lines: Vec<(String,)> =
                sqlx::query_as(&format!("EXPLAIN {sql}")).fetch_all(store.pool()).await.map_err(|e| e.to_string())?;
            plans.push(lines.into_iter().map(|(l,)| l.trim().to_string()).collect::<Vec<_>>().join(" / "));
        }
        let pool = store.pool().clone();
        let by_key = |id: i64| {
            let pool = pool.clone();
            async move {
                let row: Option<(String, i64, chrono::NaiveDateTime)> =
                    sqlx::query_as(BY_KEY).bind(id).fetch_optional(&pool).await.map_err(|e| e.to_string())?;
                row.map(drop).ok_or_else(|| "a bench row is missing".to_string())
            }
        };
        let mut out = measure(&store, rows, by_key).await?;
        out["load_s"] = json!((load_s * 10.0).round() / 10.0);
        out["plans"] = json!(plans);
        store.pool().close().await;
        Ok(out)
    }
    .await;
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut admin).await;
    result
}

async fn on_sqlite(rows: i64) -> Result<Value, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store = SqliteStore::open(&dir.path().join("bench.db")).await.map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let fill = Fill {
        series: |from, to| {
            format!(
                "(WITH RECURSIVE s(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM s WHERE i < {to}) SELECT i FROM s)"
            )
        },
        // The store's own text: UTC with six fraction digits.
        at: |secs| {
            format!(
                "(SELECT strftime('%Y-%m-%d %H:%M:%S', t / 1000000, 'unixepoch') || printf('.%06d', t % 1000000) \
                 FROM (SELECT CAST((unixepoch('subsec') - {secs}) * 1000000 AS INTEGER) AS t))"
            )
        },
        target: "random()",
    };
    let started = Instant::now();
    let mut conn = store.pool().acquire().await.map_err(|e| e.to_string())?;
    // A page cache the size of the indexes, for the load only.
    sqlx::query("PRAGMA cache_size = -2000000").execute(&mut *conn).await.map_err(|e| e.to_string())?;
    for sql in [solutions_sql(&fill, rows), workers_sql(&fill)] {
        sqlx::query(&sql).execute(&mut *conn).await.map_err(|e| format!("{e}: {sql}"))?;
    }
    sqlx::query("PRAGMA cache_size = -2000").execute(&mut *conn).await.map_err(|e| e.to_string())?;
    drop(conn);
    let load_s = started.elapsed().as_secs_f64();
    let stored = |age: Duration| format!("'{}'", (Utc::now() - age).format("%Y-%m-%d %H:%M:%S%.6f"));
    let mut plans = Vec::new();
    for sql in plans_of(&stored(Duration::days(1)), &stored(Duration::hours(1))) {
        let lines: Vec<(i64, i64, i64, String)> = sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
            .fetch_all(store.pool())
            .await
            .map_err(|e| e.to_string())?;
        plans.push(lines.into_iter().map(|r| r.3).collect::<Vec<_>>().join(" / "));
    }
    let pool = store.pool().clone();
    let by_key = |id: i64| {
        let pool = pool.clone();
        async move {
            let row: Option<(String, i64, String)> = sqlx::query_as(&BY_KEY.replace('$', "?"))
                .bind(id)
                .fetch_optional(&pool)
                .await
                .map_err(|e| e.to_string())?;
            row.map(drop).ok_or_else(|| "a bench row is missing".to_string())
        }
    };
    let mut out = measure(&store, rows, by_key).await?;
    out["load_s"] = json!((load_s * 10.0).round() / 10.0);
    out["plans"] = json!(plans);
    Ok(out)
}

fn outcome(result: Result<Value, String>) -> Value {
    result.unwrap_or_else(|e| json!({ "error": e }))
}

fn print_table(result: &Value) {
    println!("miners query over {} solutions, {} addresses", result["rows"], ADDRESSES);
    for db in ["sqlite", "postgresql"] {
        let r = &result[db];
        if let Some(e) = r["error"].as_str() {
            println!("  {db:<11} unavailable: {e}");
            continue;
        }
        let ms = |k: &str, q: &str| r[k][q].as_f64().unwrap_or(f64::NAN);
        println!(
            "  {db:<11} loaded in {:.0} s; one address ({} rows in 24 h): p50 {:.2} ms, p99 {:.2} ms; floor p99: \
             unknown address {:.2} ms ({}x), by nonce {:.2} ms ({}x); shares of 1 h ({} addresses): p50 {:.0} ms",
            r["load_s"].as_f64().unwrap_or(f64::NAN),
            r["rows_of_one_address_in_24h"],
            ms("miner", "p50_ms"),
            ms("miner", "p99_ms"),
            ms("floor_unknown_address", "p99_ms"),
            r["p99_vs_unknown_address"],
            ms("floor_by_key", "p99_ms"),
            r["p99_vs_by_key"],
            r["shares_1h_addresses"],
            ms("shares_1h", "p50_ms"),
        );
        for (what, plan) in ["miner", "shares"].iter().zip(r["plans"].as_array().into_iter().flatten()) {
            println!("  {:<11} plan of the {what} query: {}", "", plan.as_str().unwrap_or("-"));
        }
    }
}

fn main() {
    // Cargo passes `--bench` under `cargo bench` only.
    if !std::env::args().any(|a| a == "--bench") {
        println!("miners: measured only under `cargo bench` (needs PostgreSQL)");
        return;
    }
    let json_out = std::env::args().any(|a| a == "--json");
    let rows: i64 = std::env::var("ELIGO_BENCH_MINER_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000_000);
    let postgres =
        std::env::var("ELIGO_BENCH_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("miners: no async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        let sqlite = outcome(on_sqlite(rows).await);
        let postgresql = outcome(on_postgres(&postgres, rows).await);
        json!({ "rows": rows, "sqlite": sqlite, "postgresql": postgresql })
    });
    if json_out {
        println!("{result}");
    } else {
        print_table(&result);
    }
}
