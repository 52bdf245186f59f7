//! The client side of `scripts/soak`: for a given time, a node submits a job
//! every few seconds and workers answer each job with solutions at a steady
//! rate; connections closed by eligo (1013 during a broker outage, …) reconnect.
//!
//! Everything is counted by the acknowledged protocol (`docs/protocol.md`): a job
//! or solution counts once eligo answered `ack` `accepted` for it — never by
//! guessing from a connection that stayed open. At the end, with
//! `--postgres-url`, the store is read too, and for jobs and solutions it prints
//! acked, stored, delivered, lost (acked but not stored, or not delivered to a
//! node or worker that should get it) and duplicated; then it checks the
//! `worker` rows: one per connection the workers made, every one finished.
//!
//! `cargo run --release --example soak -- --minutes 30 --postgres-url postgres://…`

use anyhow::{Context, Result};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Mixed load for a long run; see the module documentation.
#[derive(Parser, Clone, Debug)]
struct Args {
    /// The node server.
    #[arg(long, default_value = "ws://127.0.0.1:8001/")]
    node_url: String,
    /// The worker server.
    #[arg(long, default_value = "ws://127.0.0.1:8002/")]
    worker_url: String,
    /// How long to run.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Worker connections.
    #[arg(long, default_value_t = 20)]
    workers: usize,
    /// Seconds between jobs.
    #[arg(long, default_value_t = 5)]
    job_every_secs: u64,
    /// Solutions per second each worker sends for the current job.
    #[arg(long, default_value_t = 5)]
    solutions_per_sec: u64,
    /// Seconds between report lines.
    #[arg(long, default_value_t = 30)]
    report_secs: u64,
    /// eligo's PostgreSQL: read at the end to count what was stored and check the
    /// `worker` rows. Without it, stored and lost are not counted.
    #[arg(long)]
    postgres_url: Option<String>,
    /// Seconds to wait after the load for what is in flight to arrive.
    #[arg(long, default_value_t = 20)]
    settle_secs: u64,
}

/// One kind of work (jobs by height, solutions by nonce), counted by answers.
#[derive(Default)]
struct Counts {
    /// Answered `accepted`.
    acked: BTreeSet<u64>,
    /// Answered `refused` (not retried as the same key by workers; a node
    /// submits its job again).
    refused: u64,
    /// Sent, then the connection closed before any answer: eligo may or may not
    /// have it, so it counts neither way.
    unanswered: u64,
    /// Received by the other side, by key.
    received: HashSet<u64>,
    /// Received twice on one connection.
    duplicated: u64,
}

impl Counts {
    fn line(&self) -> String {
        let delivered = self.acked.iter().filter(|k| self.received.contains(k)).count();
        format!(
            "acked {} refused {} unanswered {} delivered {} duplicated {}",
            self.acked.len(),
            self.refused,
            self.unanswered,
            delivered,
            self.duplicated
        )
    }
}

#[derive(Default)]
struct Tally {
    jobs: Counts,
    solutions: Counts,
    valid: u64,
    invalid: u64,
    reconnects: u64,
    worker_connections: u64,
}

type Shared = Arc<Mutex<Tally>>;
type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn lock(tally: &Shared) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn connect(url: &str) -> Socket {
    loop {
        if let Ok((socket, _)) = tokio_tungstenite::connect_async(url).await {
            return socket;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tally: Shared = Arc::default();
    let end = Instant::now() + Duration::from_secs(args.minutes * 60);
    let finish = end + Duration::from_secs(args.settle_secs);
    // The current job's task id, as workers last saw it.
    let task: Arc<Mutex<Option<String>>> = Arc::default();
    let nonces = Arc::new(AtomicU64::new(1));
    let node = tokio::spawn(node(args.clone(), tally.clone(), end, finish));
    let workers: Vec<_> = (0..args.workers)
        .map(|i| tokio::spawn(worker(args.clone(), i, tally.clone(), task.clone(), nonces.clone(), end, finish)))
        .collect();
    let started = Instant::now();
    let report = |tally: &Tally| {
        println!(
            "soak t={:>5}s jobs: {} | solutions: {} valid {} invalid {} | reconnects {}",
            started.elapsed().as_secs(),
            tally.jobs.line(),
            tally.solutions.line(),
            tally.valid,
            tally.invalid,
            tally.reconnects
        );
    };
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(args.report_secs).min(end - Instant::now())).await;
        report(&lock(&tally));
    }
    // Workers stop sending at `end` and keep reading answers until `finish`.
    for handle in workers.into_iter().chain([node]) {
        let _ = handle.await;
    }
    print!("soak final ");
    report(&lock(&tally));
    let Some(url) = &args.postgres_url else {
        println!("soak result: stored and lost not counted (no --postgres-url)");
        return Ok(());
    };
    // The presence processor finishes the last connections' rows shortly after they close.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored = Stored::read(url).await?;
    let tally = lock(&tally);
    let mut jobs = Outcome::of(&tally.jobs, &stored.heights);
    // Latest wins: a job superseded within a second by a later one that workers
    // received was due to no connection (a connection that opens is sent only the
    // current job, and none was open in between). Counted apart, not as lost.
    let superseded: Vec<u64> = jobs
        .lost
        .iter()
        .copied()
        .filter(|h| {
            let Some(&at) = stored.broadcast_ms.get(h) else { return false };
            tally.jobs.received.iter().any(|later| {
                *later > *h && stored.broadcast_ms.get(later).is_some_and(|&then| then - at <= SUPERSEDED_WITHIN_MS)
            })
        })
        .collect();
    jobs.lost.retain(|h| !superseded.contains(h));
    let solutions = Outcome::of(&tally.solutions, &stored.nonces);
    println!("soak result: jobs {} superseded {} | solutions {}", jobs.line(), superseded.len(), solutions.line());
    println!(
        "soak presence: worker connections made {}, worker rows {}, left open {}",
        tally.worker_connections, stored.worker_rows, stored.open_worker_rows
    );
    let first = |keys: &[u64]| keys.iter().take(50).map(u64::to_string).collect::<Vec<_>>().join(" ");
    if !jobs.lost.is_empty() || !solutions.lost.is_empty() {
        println!("soak lost: heights [{}] nonces [{}]", first(&jobs.lost), first(&solutions.lost));
    }
    let presence_ok = stored.worker_rows == tally.worker_connections && stored.open_worker_rows == 0;
    if jobs.lost.is_empty() && solutions.lost.is_empty() && tally.jobs.duplicated + tally.solutions.duplicated == 0 {
        println!("soak verdict: PASS{}", if presence_ok { "" } else { " (but the worker rows differ: see above)" });
    } else {
        println!("soak verdict: FAIL");
    }
    Ok(())
}

/// What the store holds at the end of the run.
struct Stored {
    heights: HashSet<u64>,
    /// When each job was broadcast (ms since the epoch), by height.
    broadcast_ms: std::collections::HashMap<u64, i64>,
    nonces: HashSet<u64>,
    worker_rows: u64,
    open_worker_rows: u64,
}

impl Stored {
    async fn read(url: &str) -> Result<Stored> {
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(url).await.context("PostgreSQL")?;
        let jobs: Vec<(i64, Option<f64>)> =
            sqlx::query_as("SELECT block_height, EXTRACT(EPOCH FROM broadcast_at)::float8 * 1000 FROM job")
                .fetch_all(&pool)
                .await?;
        let heights: Vec<i64> = jobs.iter().map(|(h, _)| *h).collect();
        let broadcast_ms = jobs.iter().filter_map(|(h, at)| at.map(|at| (*h as u64, at as i64))).collect();
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT unique_key FROM solution WHERE caption = 'soak'").fetch_all(&pool).await?;
        let (rows, open): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE disconnected_at IS NULL) FROM worker WHERE caption = 'soak'",
        )
        .fetch_one(&pool)
        .await?;
        Ok(Stored {
            heights: heights.into_iter().map(|h| h as u64).collect(),
            broadcast_ms,
            nonces: keys.iter().filter_map(|k| k.parse().ok()).collect(),
            worker_rows: rows as u64,
            open_worker_rows: open as u64,
        })
    }
}

/// Acked keys against the store and the receiving side.
struct Outcome {
    acked: usize,
    stored: usize,
    delivered: usize,
    lost: Vec<u64>,
    duplicated: u64,
}

impl Outcome {
    fn of(counts: &Counts, stored: &HashSet<u64>) -> Outcome {
        let lost: Vec<u64> =
            counts.acked.iter().filter(|k| !stored.contains(k) || !counts.received.contains(k)).copied().collect();
        Outcome {
            acked: counts.acked.len(),
            stored: counts.acked.iter().filter(|k| stored.contains(k)).count(),
            delivered: counts.acked.iter().filter(|k| counts.received.contains(k)).count(),
            lost,
            duplicated: counts.duplicated,
        }
    }

    fn line(&self) -> String {
        format!(
            "acked {} stored {} delivered {} lost {} duplicated {}",
            self.acked,
            self.stored,
            self.delivered,
            self.lost.len(),
            self.duplicated
        )
    }
}

/// The answer frames of the acknowledged protocol.
enum Answer {
    Accepted(u64),
    Refused(u64),
    Verdict(bool),
    Other(Value),
}

fn answer(text: &str) -> Answer {
    let value: Value = serde_json::from_str(text).unwrap_or_default();
    match (value["type"].as_str(), value["id"].as_u64()) {
        (Some("ack"), Some(id)) if value["status"] == "accepted" => Answer::Accepted(id),
        (Some("ack"), Some(id)) => Answer::Refused(id),
        (Some("verdict"), _) => Answer::Verdict(value["valid"].as_bool().unwrap_or(false)),
        _ => Answer::Other(value),
    }
}

/// A job broadcast this soon before a later one that workers received may
/// reach no worker: see `main`.
const SUPERSEDED_WITHIN_MS: i64 = 1_000;

/// How many of its latest heights a node submits again on a new connection:
/// solutions in flight across an outage belong to the last few jobs.
const RESUBMITTED_HEIGHTS: usize = 4;

/// Submits a job every few seconds, each with an `id` (its height), and
/// receives the solutions of every job it submitted. A job refused, or left
/// unanswered by a connection that closed, is submitted again; on a new
/// connection the latest heights are submitted again too, as a node resubmits
/// its current work, so the node waits for them there.
async fn node(args: Args, tally: Shared, end: Instant, finish: Instant) {
    let mut height = chrono_height();
    let mut socket = connect(&args.node_url).await;
    let mut next_job = Instant::now();
    // Sent and not answered yet; submitted again after a refusal or a reconnect.
    let mut pending: BTreeSet<i64> = BTreeSet::new();
    let mut recent: Vec<i64> = Vec::new();
    let mut seen: HashSet<u64> = HashSet::new();
    let job = |height: i64| {
        Message::text(
            json!({ "id": height, "epoch_challenge": { "h": height }, "proof_target": 1, "block_height": height })
                .to_string(),
        )
    };
    while Instant::now() < finish {
        if Instant::now() >= next_job && Instant::now() < end {
            height += 1;
            pending.insert(height);
            let _ = socket.send(job(height)).await;
            next_job = Instant::now() + Duration::from_secs(args.job_every_secs);
        }
        let frame = match tokio::time::timeout(Duration::from_millis(200), socket.next()).await {
            Err(_) => continue,
            Ok(frame) => frame,
        };
        match frame {
            Some(Ok(Message::Text(text))) => match answer(&text) {
                Answer::Accepted(h) => {
                    pending.remove(&(h as i64));
                    if !recent.contains(&(h as i64)) {
                        recent.push(h as i64);
                        let drop = recent.len().saturating_sub(RESUBMITTED_HEIGHTS);
                        recent.drain(..drop);
                    }
                    lock(&tally).jobs.acked.insert(h);
                }
                // Still pending: submitted again on the next connection.
                Answer::Refused(_) => lock(&tally).jobs.refused += 1,
                Answer::Verdict(_) => {}
                Answer::Other(value) => {
                    if let Some(nonce) = value["partial_solution"]["nonce"].as_u64() {
                        let mut tally = lock(&tally);
                        tally.solutions.received.insert(nonce);
                        if !seen.insert(nonce) {
                            tally.solutions.duplicated += 1;
                        }
                    }
                }
            },
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                lock(&tally).reconnects += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                socket = connect(&args.node_url).await;
                // A new connection waits for nothing yet, and may be sent a catch-up again.
                seen.clear();
                let again: BTreeSet<i64> = recent.iter().chain(pending.iter()).copied().collect();
                for h in again {
                    pending.insert(h);
                    let _ = socket.send(job(h)).await;
                }
            }
            Some(Ok(_)) => {}
        }
    }
    lock(&tally).jobs.unanswered += pending.len() as u64;
    let _ = socket.close(None).await;
}

/// Heights that do not collide with an earlier run on the same database.
fn chrono_height() -> i64 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (secs as i64) * 1_000
}

/// Receives jobs (a job is delivered once any worker has it; a worker getting
/// one twice on a connection is a duplicate) and sends solutions, each with an
/// `id` (its nonce), for the current one at a steady rate.
async fn worker(
    args: Args,
    index: usize,
    tally: Shared,
    task: Arc<Mutex<Option<String>>>,
    nonces: Arc<AtomicU64>,
    end: Instant,
    finish: Instant,
) {
    let welcome = json!({ "ip": "10.0.0.1", "address": "a", "hardware": "cpu",
                          "hardware_id": format!("soak-{index}"), "caption": "soak" });
    let mut socket = connect(&args.worker_url).await;
    let _ = socket.send(Message::text(welcome.to_string())).await;
    lock(&tally).worker_connections += 1;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / args.solutions_per_sec.max(1)));
    let mut unanswered: HashSet<u64> = HashSet::new();
    let mut seen = HashSet::new();
    let stop = tokio::time::Instant::from_std(finish);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(stop) => break,
            _ = tick.tick(), if Instant::now() < end => {
                let current = task.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(task_id) = current {
                    let nonce = nonces.fetch_add(1, Ordering::Relaxed);
                    let solution = json!({ "id": nonce, "task_id": task_id, "solution_target": 1,
                                           "solution": { "partial_solution": { "nonce": nonce } } });
                    if socket.send(Message::text(solution.to_string())).await.is_ok() {
                        unanswered.insert(nonce);
                    }
                }
            }
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => match answer(&text) {
                    Answer::Accepted(nonce) => {
                        unanswered.remove(&nonce);
                        lock(&tally).solutions.acked.insert(nonce);
                    }
                    Answer::Refused(nonce) => {
                        unanswered.remove(&nonce);
                        lock(&tally).solutions.refused += 1;
                    }
                    Answer::Verdict(valid) => {
                        let mut tally = lock(&tally);
                        if valid { tally.valid += 1 } else { tally.invalid += 1 }
                    }
                    Answer::Other(value) => {
                        if let (Some(task_id), Some(height)) = (value["task_id"].as_str(), value["epoch_challenge"]["h"].as_u64()) {
                            *task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task_id.to_owned());
                            let mut tally = lock(&tally);
                            tally.jobs.received.insert(height);
                            if !seen.insert(height) {
                                tally.jobs.duplicated += 1;
                            }
                        }
                    }
                },
                Some(Ok(_)) => {}
                _ => {
                    {
                        let mut t = lock(&tally);
                        t.solutions.unanswered += unanswered.drain().count() as u64;
                        t.reconnects += 1;
                    }
                    // A new connection is sent the current job again: not a duplicate.
                    seen.clear();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if Instant::now() >= finish {
                        return;
                    }
                    socket = connect(&args.worker_url).await;
                    let _ = socket.send(Message::text(welcome.to_string())).await;
                    lock(&tally).worker_connections += 1;
                }
            }
        }
    }
    lock(&tally).solutions.unanswered += unanswered.len() as u64;
    let _ = socket.close(None).await;
    // Read until the server's close, so the connection is finished on both sides.
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while socket.next().await.is_some() {} }).await;
}
