//! A load generator: opens N workers and M nodes against a running eligo, has the
//! nodes submit jobs at rising heights and every worker answer each job with a
//! solution, and reports what was delivered, latency percentiles and errors.
//!
//! `cargo run --release --example loadgen -- --workers 200 --nodes 4 --jobs 50`

use futures::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone)]
struct Settings {
    node_url: String,
    worker_url: String,
    nodes: usize,
    workers: usize,
    jobs: usize,
    interval: Duration,
}

fn settings() -> anyhow::Result<Settings> {
    let mut s = Settings {
        node_url: "ws://127.0.0.1:8001/".into(),
        worker_url: "ws://127.0.0.1:8002/".into(),
        nodes: 2,
        workers: 50,
        jobs: 20,
        interval: Duration::from_millis(200),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).ok_or_else(|| anyhow::anyhow!("{} needs a value", pair[0]))?;
        match pair[0].as_str() {
            "--node-url" => s.node_url = value.clone(),
            "--worker-url" => s.worker_url = value.clone(),
            "--nodes" => s.nodes = value.parse()?,
            "--workers" => s.workers = value.parse()?,
            "--jobs" => s.jobs = value.parse()?,
            "--interval-ms" => s.interval = Duration::from_millis(value.parse()?),
            other => anyhow::bail!(
                "unknown option {other}; options: --node-url --worker-url --nodes --workers --jobs --interval-ms"
            ),
        }
    }
    Ok(s)
}

/// What every connection records.
#[derive(Default)]
struct Tally {
    job_sent: Mutex<HashMap<i64, Instant>>,
    solution_sent: Mutex<HashMap<u64, Instant>>,
    job_latency: Mutex<Vec<Duration>>,
    solution_latency: Mutex<Vec<Duration>>,
    errors: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let s = settings()?;
    let tally = Arc::new(Tally::default());
    let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let expected_jobs = (s.jobs * s.workers) as u64;
    let bar = ProgressBar::new(expected_jobs * 2);
    bar.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} deliveries {msg}")?);

    let mut tasks = Vec::new();
    for w in 0..s.workers {
        let (socket, _) = tokio_tungstenite::connect_async(&s.worker_url).await?;
        let (tally, bar) = (tally.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = socket.split();
            let welcome = json!({ "ip": "127.0.0.1", "address": "load", "hardware": "cpu",
                                  "hardware_id": format!("load-{w}"), "caption": "loadgen" });
            if tx.send(Message::text(welcome.to_string())).await.is_err() {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            while let Some(Ok(Message::Text(text))) = rx.next().await {
                let Ok(work) = serde_json::from_str::<Value>(&text) else { continue };
                let Some(task_id) = work["task_id"].as_str() else {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let height = work["epoch_challenge"]["height"].as_i64().unwrap_or_default();
                if let Some(sent) = tally.job_sent.lock().ok().and_then(|m| m.get(&height).copied()) {
                    tally.job_latency.lock().map(|mut l| l.push(sent.elapsed())).ok();
                }
                bar.inc(1);
                let nonce = (height - base) as u64 * 1_000_000 + w as u64;
                tally.solution_sent.lock().map(|mut m| m.insert(nonce, Instant::now())).ok();
                let solution = json!({ "task_id": task_id, "solution_target": 1,
                                       "solution": { "partial_solution": { "nonce": nonce } } });
                if tx.send(Message::text(solution.to_string())).await.is_err() {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }));
    }
    let mut nodes = Vec::new();
    for _ in 0..s.nodes {
        let (socket, _) = tokio_tungstenite::connect_async(&s.node_url).await?;
        let (tx, mut rx) = socket.split();
        let (tally, bar) = (tally.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(Message::Text(text))) = rx.next().await {
                let Ok(solution) = serde_json::from_str::<Value>(&text) else { continue };
                match solution["partial_solution"]["nonce"].as_u64() {
                    Some(nonce) => {
                        if let Some(sent) = tally.solution_sent.lock().ok().and_then(|m| m.get(&nonce).copied()) {
                            tally.solution_latency.lock().map(|mut l| l.push(sent.elapsed())).ok();
                        }
                        bar.inc(1);
                    }
                    None => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
        nodes.push(tx);
    }
    // Let every worker's welcome land before the first job.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    for j in 0..s.jobs {
        let height = base + j as i64;
        let job = json!({ "epoch_challenge": { "height": height }, "proof_target": 1, "block_height": height });
        tally.job_sent.lock().map(|mut m| m.insert(height, Instant::now())).ok();
        if nodes[j % s.nodes].send(Message::text(job.to_string())).await.is_err() {
            tally.errors.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(s.interval).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while bar.position() < bar.length().unwrap_or(0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_with_message("done");
    let elapsed = started.elapsed();
    for t in &tasks {
        t.abort();
    }

    let jobs = tally.job_latency.lock().map(|l| l.clone()).unwrap_or_default();
    let solutions = tally.solution_latency.lock().map(|l| l.clone()).unwrap_or_default();
    println!("{} workers, {} nodes, {} jobs in {:.1} s", s.workers, s.nodes, s.jobs, elapsed.as_secs_f64());
    println!("jobs delivered to workers:      {:>8} of {expected_jobs}", jobs.len());
    println!("solutions delivered to nodes:   {:>8} of {expected_jobs}", solutions.len());
    println!("errors:                         {:>8}", tally.errors.load(Ordering::Relaxed));
    for (what, mut samples) in [("job latency", jobs), ("solution latency", solutions)] {
        samples.sort();
        let pct =
            |p: f64| samples.get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1))).copied();
        let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3));
        println!(
            "{what:<18} p50 {}  p90 {}  p99 {}  max {}",
            ms(pct(0.5)),
            ms(pct(0.9)),
            ms(pct(0.99)),
            ms(samples.last().copied())
        );
    }
    Ok(())
}
