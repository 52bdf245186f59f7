//! What each backend of the pipeline carries alone, through eligo's own clients,
//! measured in the same run as eligo (by `scripts/bench`) so that eligo's
//! solution rate can be read as a fraction of the slowest part.
//!
//! `cargo bench --bench parts -- --json` prints one JSON object of messages (or
//! rows) per second: RabbitMQ publish-with-confirm then consume-and-ack, the
//! embedded queue likewise, Kafka (librdkafka's mock cluster) produce with
//! delivery reports, and batched solution inserts into SQLite and PostgreSQL.
//! Services come from `ELIGO_BENCH_AMQP_URL` and `ELIGO_BENCH_POSTGRES_URL` (a
//! vhost and a database of their own: the bench leaves rows and queues behind), or
//! the test services; a part
//! whose service is unreachable is reported as such. Without `--bench` (as
//! `cargo test --benches` runs it) nothing is measured.

use eligo::store::{postgres::PgStore, sqlite::SqliteStore, NewSolution, Store};
use eligo::transport::amqp::AmqpQueue;
use eligo::transport::kafka::{KafkaLog, MockKafka};
use eligo::transport::sqlite_queue::SqliteQueue;
use eligo::transport::{EventLog, Stream, Topic, WorkQueue};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Instant;

/// Messages per transport measurement.
const MESSAGES: usize = 20_000;
/// Rows per store measurement, and per batch (the processors' default batch).
const ROWS: usize = 20_000;
const BATCH: usize = 256;
/// Publishes in flight at once, as many worker connections would have.
const IN_FLIGHT: usize = 256;

/// A solution message of realistic size (~300 bytes).
fn payload(i: usize) -> Vec<u8> {
    json!({ "hardware_id": format!("bench-{}", i % 1000), "caption": "bench", "task_id": uuid::Uuid::nil().to_string(),
            "solution": { "partial_solution": { "nonce": i, "address": "aleo1qqqqqqqqqqqqqqqqqqqqqqqqqqqq" },
                          "proof.w": { "x": "1234567890123456789012345678901234567890", "y": "0" } },
            "solution_target": 1 })
    .to_string()
    .into_bytes()
}

/// Publishes `MESSAGES` with confirms (`IN_FLIGHT` at a time), then consumes and
/// acks them in batches; returns both rates.
async fn queue_rates(queue: &dyn WorkQueue) -> Result<Value, String> {
    queue.declare().await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    futures::stream::iter(0..MESSAGES)
        .map(|i| async move { queue.publish(Stream::Solution, &payload(i)).await })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let publish = MESSAGES as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut deliveries = queue.consume(Stream::Solution, 512).await.map_err(|e| e.to_string())?;
    let mut batch = Vec::new();
    let mut consumed = 0;
    while consumed < MESSAGES {
        let Some(Ok(delivery)) = deliveries.next().await else { return Err("the consumer ended".into()) };
        batch.push(delivery);
        consumed += 1;
        if batch.len() == BATCH || consumed == MESSAGES {
            if let Some(last) = batch.last() {
                last.acker.ack_through().await.map_err(|e| e.to_string())?;
            }
            batch.clear();
        }
    }
    let consume = MESSAGES as f64 / started.elapsed().as_secs_f64();
    Ok(json!({ "publish_per_s": publish.round(), "consume_ack_per_s": consume.round() }))
}

/// Produces `MESSAGES` (`IN_FLIGHT` at a time) and waits for every delivery report.
async fn log_rate(log: &dyn EventLog) -> Result<Value, String> {
    let started = Instant::now();
    futures::stream::iter(0..MESSAGES)
        .map(|i| async move { log.produce(Topic::Solution, &i.to_string(), &payload(i)).await })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(json!({ "produce_per_s": (MESSAGES as f64 / started.elapsed().as_secs_f64()).round() }))
}

/// Inserts `ROWS` solutions in batches of `BATCH`, one transaction each.
async fn store_rate(store: &dyn Store) -> Result<Value, String> {
    store.migrate().await.map_err(|e| e.to_string())?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    for chunk in (0..ROWS).collect::<Vec<_>>().chunks(BATCH) {
        let batch: Vec<NewSolution> = chunk
            .iter()
            .map(|i| NewSolution {
                unique_key: format!("{run}-{i}"),
                hardware_id: format!("bench-{}", i % 1000),
                caption: "bench".into(),
                task_id: uuid::Uuid::nil().to_string(),
                solution: String::from_utf8_lossy(&payload(*i)).into_owned(),
                solution_target: 1,
                address: Some(format!("aleo1bench{}", i % 1000)),
            })
            .collect();
        store.insert_solutions(&batch).await.map_err(|e| e.to_string())?;
    }
    Ok(json!({ "insert_rows_per_s": (ROWS as f64 / started.elapsed().as_secs_f64()).round() }))
}

fn outcome(result: Result<Value, String>) -> Value {
    result.unwrap_or_else(|e| json!({ "error": e }))
}

async fn measure() -> Value {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => return json!({ "error": format!("no temporary folder: {e}") }),
    };
    let amqp = std::env::var("ELIGO_BENCH_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let postgres =
        std::env::var("ELIGO_BENCH_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());

    let rabbitmq = match AmqpQueue::connect(&amqp).await {
        Ok(queue) => outcome(queue_rates(&queue).await),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let embedded_queue = match SqliteQueue::open(&dir.path().join("queue.db")).await {
        Ok(queue) => outcome(queue_rates(&queue).await),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let kafka = match MockKafka::start() {
        Ok(cluster) => {
            let rate = match KafkaLog::connect(cluster.settings()).await {
                Ok(log) => outcome(log_rate(&log).await),
                Err(e) => json!({ "error": e.to_string() }),
            };
            // librdkafka's clients must be gone before their cluster.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            drop(cluster);
            rate
        }
        Err(e) => json!({ "error": e.to_string() }),
    };
    let sqlite = match SqliteStore::open(&dir.path().join("store.db")).await {
        Ok(store) => outcome(store_rate(&store).await),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let postgresql = match PgStore::connect(&postgres, 4).await {
        Ok(store) => outcome(store_rate(&store).await),
        Err(e) => json!({ "error": e.to_string() }),
    };
    json!({ "rabbitmq": rabbitmq, "embedded_queue": embedded_queue, "kafka_mock": kafka,
            "sqlite": sqlite, "postgresql": postgresql })
}

fn main() {
    // Cargo passes `--bench` under `cargo bench` only.
    if !std::env::args().any(|a| a == "--bench") {
        println!("parts: measured only under `cargo bench` (needs RabbitMQ and PostgreSQL)");
        return;
    }
    let json_out = std::env::args().any(|a| a == "--json");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("parts: no async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(measure());
    if json_out {
        println!("{result}");
    } else {
        println!("{}", serde_json::to_string_pretty(&result).unwrap_or_default());
    }
}
