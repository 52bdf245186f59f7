//! The client side of `scripts/soak`: for a given time, a node submits a job
//! every few seconds and workers answer each job with solutions at a steady
//! rate; connections closed by eligo (1013 during a broker outage, …) reconnect.
//! Every interval it prints one line: what was accepted (sent on a connection
//! that was not closed right after), delivered (received by the node) and
//! duplicated, for jobs and solutions.
//!
//! `cargo run --release --example soak -- --minutes 30`

use anyhow::{Context, Result};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
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
}

/// Sent and received, by key: heights for jobs, nonces for solutions.
#[derive(Default)]
struct Counts {
    accepted: HashMap<u64, ()>,
    received: HashMap<u64, u32>,
    /// Received twice on one connection (jobs: any worker's).
    repeats: u32,
}

impl Counts {
    fn duplicated(&self) -> u32 {
        self.repeats + self.received.values().map(|n| n - 1).sum::<u32>()
    }

    fn line(&self) -> String {
        let delivered = self.accepted.keys().filter(|k| self.received.contains_key(k)).count();
        format!("accepted {} delivered {} duplicated {}", self.accepted.len(), delivered, self.duplicated())
    }
}

#[derive(Default)]
struct Tally {
    jobs: Counts,
    solutions: Counts,
    reconnects: u64,
}

type Shared = Arc<Mutex<Tally>>;
type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

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
    // The current job's task id, as workers last saw it.
    let task: Arc<Mutex<Option<String>>> = Arc::default();
    let nonces = Arc::new(std::sync::atomic::AtomicU64::new(1));
    tokio::spawn(node(args.clone(), tally.clone(), end));
    for i in 0..args.workers {
        tokio::spawn(worker(args.clone(), i, tally.clone(), task.clone(), nonces.clone(), end));
    }
    let started = Instant::now();
    let report = |tally: &Tally| {
        println!(
            "soak t={:>5}s jobs: {} | solutions: {} | reconnects {}",
            started.elapsed().as_secs(),
            tally.jobs.line(),
            tally.solutions.line(),
            tally.reconnects
        );
    };
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(args.report_secs).min(end - Instant::now())).await;
        report(&tally.lock().expect("tally"));
    }
    // Let what is in flight arrive.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let tally = tally.lock().expect("tally");
    print!("soak final ");
    report(&tally);
    let lost = |c: &Counts| {
        let mut keys: Vec<u64> = c.accepted.keys().filter(|k| !c.received.contains_key(k)).copied().collect();
        keys.sort_unstable();
        keys
    };
    let duplicated = |c: &Counts| c.duplicated();
    let (jobs_lost, solutions_lost) = (lost(&tally.jobs), lost(&tally.solutions));
    println!(
        "soak result: jobs lost {} duplicated {}; solutions lost {} duplicated {}",
        jobs_lost.len(),
        duplicated(&tally.jobs),
        solutions_lost.len(),
        duplicated(&tally.solutions)
    );
    // The keys, so the store can say whether eligo had them (unique_key, block_height).
    let first = |keys: &[u64]| keys.iter().take(50).map(u64::to_string).collect::<Vec<_>>().join(" ");
    if !jobs_lost.is_empty() || !solutions_lost.is_empty() {
        println!("soak lost: heights [{}] nonces [{}]", first(&jobs_lost), first(&solutions_lost));
    }
    Ok(())
}

/// Submits a job every few seconds; receives the solutions of every job it
/// submitted. A job counts as accepted once its connection stayed open a second
/// after it was sent (a refused one closes it with 1013); until then it is sent
/// again on every new connection.
async fn node(args: Args, tally: Shared, end: Instant) {
    const CONFIRM: Duration = Duration::from_secs(1);
    let mut height = chrono_height();
    let mut socket = connect(&args.node_url).await;
    let mut next_job = Instant::now();
    let mut unconfirmed: Option<(i64, Instant)> = None;
    let job = |height: i64| {
        Message::text(
            json!({ "epoch_challenge": { "h": height }, "proof_target": 1, "block_height": height }).to_string(),
        )
    };
    loop {
        if Instant::now() >= end + Duration::from_secs(15) {
            return;
        }
        if let Some((sent, at)) = unconfirmed {
            if at.elapsed() >= CONFIRM {
                tally.lock().expect("tally").jobs.accepted.insert(sent as u64, ());
                unconfirmed = None;
            }
        }
        if unconfirmed.is_none() && Instant::now() >= next_job && Instant::now() < end {
            height += 1;
            if socket.send(job(height)).await.is_ok() {
                unconfirmed = Some((height, Instant::now()));
            }
            next_job = Instant::now() + Duration::from_secs(args.job_every_secs);
        }
        match tokio::time::timeout(Duration::from_millis(200), socket.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Text(text)))) => {
                let value: Value = serde_json::from_str(&text).unwrap_or_default();
                if let Some(nonce) = value["partial_solution"]["nonce"].as_u64() {
                    *tally.lock().expect("tally").solutions.received.entry(nonce).or_default() += 1;
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                tally.lock().expect("tally").reconnects += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                socket = connect(&args.node_url).await;
                if let Some((sent, _)) = unconfirmed {
                    if socket.send(job(sent)).await.is_ok() {
                        unconfirmed = Some((sent, Instant::now()));
                    }
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Heights that do not collide with an earlier run on the same database.
fn chrono_height() -> i64 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (secs as i64) * 1_000
}

/// Receives jobs (a job is delivered once any worker has it; a worker getting
/// one twice is a duplicate) and sends solutions for the current one at a
/// steady rate.
async fn worker(
    args: Args,
    index: usize,
    tally: Shared,
    task: Arc<Mutex<Option<String>>>,
    nonces: Arc<std::sync::atomic::AtomicU64>,
    end: Instant,
) {
    let welcome = json!({ "ip": "10.0.0.1", "address": "a", "hardware": "cpu",
                          "hardware_id": format!("soak-{index}"), "caption": "soak" });
    let mut socket = connect(&args.worker_url).await;
    let _ = socket.send(Message::text(welcome.to_string())).await;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / args.solutions_per_sec.max(1)));
    // A solution sent is accepted unless the connection closes before the next tick.
    let mut unconfirmed: Option<u64> = None;
    let mut seen = std::collections::HashSet::new();
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(nonce) = unconfirmed.take() {
                    tally.lock().expect("tally").solutions.accepted.insert(nonce, ());
                }
                let current = task.lock().expect("task").clone();
                if let Some(task_id) = current {
                    let nonce = nonces.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let solution = json!({ "task_id": task_id, "solution_target": 1,
                                           "solution": { "partial_solution": { "nonce": nonce } } });
                    if socket.send(Message::text(solution.to_string())).await.is_ok() {
                        unconfirmed = Some(nonce);
                    }
                }
            }
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).unwrap_or_default();
                    if let (Some(task_id), Some(height)) = (value["task_id"].as_str(), value["epoch_challenge"]["h"].as_u64()) {
                        *task.lock().expect("task") = Some(task_id.to_owned());
                        let mut tally = tally.lock().expect("tally");
                        if seen.insert(height) {
                            tally.jobs.received.insert(height, 1);
                        } else {
                            tally.jobs.repeats += 1;
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    unconfirmed = None;
                    // A new connection is sent the current job again: not a duplicate.
                    seen.clear();
                    tally.lock().expect("tally").reconnects += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    socket = connect(&args.worker_url).await;
                    let _ = socket.send(Message::text(welcome.to_string())).await;
                }
            }
        }
    }
    if let Some(nonce) = unconfirmed {
        tally.lock().expect("tally").solutions.accepted.insert(nonce, ());
    }
    let _ = socket.close(None).await.context("closing");
}
