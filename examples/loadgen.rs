//! A load generator for a running eligo: opens workers and nodes over the original
//! protocol and measures what eligo delivers, and how fast.
//!
//! Modes:
//! - `round-trip` (default): nodes submit jobs; every worker answers each job.
//! - `jobs`: nodes submit jobs; workers only receive (job fan-out latency).
//! - `solutions`: one job, then workers send `--solutions` solutions in all, at
//!   `--rate` per second (0: as fast as they can); nodes receive them. Checks that
//!   none is lost or duplicated. `--node-transport` says how the nodes receive
//!   them: `ws` (the socket), `sse` (each node POSTs the job over HTTP and reads its
//!   stream of server-sent events) or `webhook` (each node POSTs the job naming the
//!   webhook `--webhook-name`, and a receiver here on `--webhook-listen` takes the
//!   POSTs: start eligo with `ELIGO_NODE_WEBHOOKS_BENCH_URL=http://127.0.0.1:8009/`
//!   and `ELIGO_NODE_WEBHOOKS_BENCH_SECRET=whsec_<base64>`). Over HTTP the report
//!   adds the POST → 202 latency (`post_ack`).
//! - `idle`: workers connect, send their welcome and stay idle for `--hold-secs`
//!   (for measuring memory per connection, and welcomes per second).
//! - `receive`: workers only, timing the jobs of `--run` that another loadgen
//!   (`--mode jobs --workers 0 --run` the same) sends: one process holds only so
//!   many sockets, so a fan-out to more workers is spread over several. Jobs carry
//!   their send time (wall clock), so any process on the machine can time them.
//! - `storm`: a reconnect storm. A node sends one job (none with `--no-job`, for a
//!   server that already holds one) and a probe worker waits until a worker
//!   connecting now is handed it; then all `--workers` connect at once, each sends
//!   its welcome and waits for that job. Times how long until every worker holds
//!   it, and each worker's welcome → job; nobody leaves before everyone has it.
//!   `examples/bare_server.rs` is the floor to compare it with.
//!
//! More than ~28,000 client sockets need more source addresses than 127.0.0.1
//! has ports: connections are spread over 127.0.0.1–127.0.0.`--source-ips`.
//!
//! `cargo run --release --example loadgen -- --mode solutions --workers 100 --solutions 10000 --json`

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use futures::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// What the load generator does; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    RoundTrip,
    Jobs,
    Solutions,
    Idle,
    Receive,
    Storm,
}

/// How the nodes of solutions mode receive their solutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum NodeTransport {
    /// The node's WebSocket, as in the original protocol.
    Ws,
    /// `POST /api/v1/jobs`, then the node's stream of server-sent events.
    Sse,
    /// `POST /api/v1/jobs` naming a webhook; eligo POSTs each solution to it.
    Webhook,
}

/// Drives a running eligo with workers and nodes over the original protocol.
#[derive(Parser, Clone, Debug)]
#[command(about, long_about = None)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "round-trip")]
    mode: Mode,
    /// The node server.
    #[arg(long, default_value = "ws://127.0.0.1:8001/")]
    node_url: String,
    /// The worker server.
    #[arg(long, default_value = "ws://127.0.0.1:8002/")]
    worker_url: String,
    /// The admin server (idle mode waits until /status counts every worker).
    #[arg(long, default_value = "127.0.0.1:8003")]
    admin: String,
    /// Node connections.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Worker connections.
    #[arg(long, default_value_t = 50)]
    workers: usize,
    /// Jobs the nodes submit (round-trip and jobs modes).
    #[arg(long, default_value_t = 20)]
    jobs: usize,
    /// Pause between jobs, in milliseconds.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// Solutions the workers send in all (solutions mode).
    #[arg(long, default_value_t = 10_000)]
    solutions: u64,
    /// Solutions per second in all (solutions mode); 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How long idle workers stay connected (idle mode), in seconds.
    #[arg(long, default_value_t = 10)]
    hold_secs: u64,
    /// Longest wait for outstanding deliveries after the last send, in seconds (storm
    /// mode: for the probe's job, and then without a worker getting it).
    #[arg(long, default_value_t = 30)]
    wait_secs: u64,
    /// Source addresses 127.0.0.1..=127.0.0.N to spread connections over.
    #[arg(long, default_value_t = 50)]
    source_ips: u8,
    /// Connections opened at once.
    #[arg(long, default_value_t = 256)]
    connect_parallelism: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Which jobs are this run's (default: a new name); workers time only those.
    #[arg(long)]
    run: Option<String>,
    /// Receive mode: a file written once every worker is welcomed.
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
    /// Add every job latency to the report (for merging several processes).
    #[arg(long)]
    raw: bool,
    /// Storm mode: send no job first; the worker server already holds one (the bare
    /// server, or a job an earlier loadgen sent with the same `--run`).
    #[arg(long)]
    no_job: bool,
    /// The number of the first worker: worker `w` welcomes as hardware id
    /// `load-{first_worker + w}`. Loadgens storming side by side give each its own
    /// range, so that 100,000 workers are 100,000 rigs, not one rig connected six times.
    #[arg(long, default_value_t = 0)]
    first_worker: usize,
    /// Storm mode: while the workers storm, time what must not wait for the
    /// policies: `/healthz` and `/api/v1/workers` every 50 ms, and a node's
    /// acknowledged jobs every 200 ms (jobs of this run, so the storm's workers
    /// take them too).
    #[arg(long)]
    observe: bool,
    /// Solutions mode: send each nonce as a zero-padded text of this many bytes
    /// (0: a number), to see what long keys cost the server.
    #[arg(long, default_value_t = 0)]
    nonce_bytes: usize,
    /// Solutions mode: how nodes receive solutions. Over HTTP the job goes to
    /// `POST /api/v1/jobs` on the node listener (`--node-url` with http for ws).
    #[arg(long, value_enum, default_value = "ws")]
    node_transport: NodeTransport,
    /// Webhook transport: where the receiver of eligo's webhook POSTs listens.
    #[arg(long, default_value = "127.0.0.1:8009")]
    webhook_listen: SocketAddr,
    /// Webhook transport: the webhook's name in eligo's configuration, the job's `callback`.
    #[arg(long, default_value = "bench")]
    webhook_name: String,
    /// Webhook transport: its secret (`whsec_<base64>`); each POST's signature is
    /// then verified, a bad one counted as an error. Unset: not verified.
    #[arg(long, env = "ELIGO_NODE_WEBHOOKS_BENCH_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
}

/// Microseconds since the Unix epoch: a clock every process on the machine shares.
fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// What every connection records.
#[derive(Default)]
struct Tally {
    job_latency: Mutex<Vec<Duration>>,
    /// Each solution sent: when, and how many receipts of it are still due.
    solution_sent: Mutex<HashMap<u64, (Instant, u32)>>,
    /// Receipts due for each solution (0 counts as 1): over HTTP every node that
    /// POSTed the job is given each solution; over sockets only the one that sent it.
    receivers: u32,
    solution_latency: Mutex<Vec<Duration>>,
    solutions_sent: AtomicU64,
    duplicates: AtomicU64,
    errors: AtomicU64,
    first_send: Mutex<Option<Instant>>,
    last_receipt: Mutex<Option<Instant>>,
}

impl Tally {
    fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn solution_sent(&self, nonce: u64) {
        let now = Instant::now();
        self.solution_sent.lock().map(|mut m| m.insert(nonce, (now, self.receivers.max(1)))).ok();
        self.solutions_sent.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_send.lock() {
            first.get_or_insert(now);
        }
    }

    fn solution_received(&self, nonce: u64) -> bool {
        // Taking the send time out after the last receipt due makes one more a duplicate.
        let sent = self.solution_sent.lock().ok().and_then(|mut m| {
            let (sent, due) = m.get_mut(&nonce)?;
            let sent = *sent;
            *due -= 1;
            if *due == 0 {
                m.remove(&nonce);
            }
            Some(sent)
        });
        let Some(sent) = sent else {
            self.duplicate();
            return false;
        };
        self.solution_latency.lock().map(|mut l| l.push(sent.elapsed())).ok();
        self.last_receipt.lock().map(|mut l| *l = Some(Instant::now())).ok();
        true
    }

    /// A receipt of something already received (by the same node, over HTTP).
    fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }
}

/// A solution's nonce as a node receives it (`partial_solution.nonce`), a number
/// or a zero-padded text.
fn nonce_of(solution: &Value) -> Option<u64> {
    let n = &solution["partial_solution"]["nonce"];
    n.as_u64().or_else(|| n.as_str().and_then(|s| s.parse().ok()))
}

type Socket = WebSocketStream<TcpStream>;

/// Connects to `url`, from source address 127.0.0.(1 + n % spread) when the
/// server is on loopback. Small buffers: thousands of these share the machine.
async fn connect(url: &str, n: usize, spread: u8) -> Result<Socket> {
    let parsed = url::Url::parse(url).with_context(|| format!("bad URL {url}"))?;
    let host = parsed.host_str().context("URL without host")?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addr: SocketAddr = tokio::net::lookup_host((host, port)).await?.next().context("unresolvable host")?;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if addr.ip().is_loopback() && addr.is_ipv4() && spread > 1 {
        let last = 1 + (n % spread as usize) as u8;
        socket.bind(SocketAddr::new(Ipv4Addr::new(127, 0, 0, last).into(), 0))?;
    }
    let stream = socket.connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (socket, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    Ok(socket)
}

fn welcome(w: impl std::fmt::Display) -> Value {
    json!({ "ip": "127.0.0.1", "address": "load", "hardware": "cpu",
            "hardware_id": format!("load-{w}"), "caption": "loadgen" })
}

fn percentiles(mut samples: Vec<Duration>) -> Value {
    samples.sort();
    let at = |p: f64| {
        samples
            .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
            .map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
    };
    json!({ "count": samples.len(), "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99),
            "max_ms": samples.last().map(|d| (d.as_secs_f64() * 1e6).round() / 1e3) })
}

/// `GET path` on the admin server: how long the whole answer took, if it was a 200.
async fn timed_get(admin: &str, path: &str) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut stream = TcpStream::connect(admin).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let status_line = response.split(|b| *b == b'\n').next().unwrap_or_default();
    status_line.windows(5).any(|w| w == b" 200 ").then(|| started.elapsed())
}

/// The shortest observation of a storm.
const OBSERVED_AT_LEAST: Duration = Duration::from_secs(5);

/// What `--observe` timed during a storm.
#[derive(Default)]
struct Observed {
    health: Mutex<Vec<Duration>>,
    workers_api: Mutex<Vec<Duration>>,
    job_ack: Mutex<Vec<Duration>>,
    failures: AtomicU64,
}

impl Observed {
    fn note(&self, into: &Mutex<Vec<Duration>>, sample: Option<Duration>) {
        match sample {
            Some(d) => into.lock().expect("samples").push(d),
            None => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn report(&self) -> Value {
        let take = |m: &Mutex<Vec<Duration>>| percentiles(m.lock().expect("samples").clone());
        json!({ "healthz": take(&self.health), "workers_api": take(&self.workers_api),
                "job_ack": take(&self.job_ack), "failures": self.failures.load(Ordering::Relaxed) })
    }
}

/// Times health, the workers API and a node's acknowledged jobs until `stop`.
async fn observe(args: Args, base: i64, observed: Arc<Observed>, stop: CancellationToken) {
    let admin = args.admin.clone();
    let probes = {
        let (observed, stop) = (observed.clone(), stop.clone());
        async move {
            while !stop.is_cancelled() {
                observed.note(&observed.health, timed_get(&admin, "/healthz").await);
                observed.note(&observed.workers_api, timed_get(&admin, "/api/v1/workers?limit=100").await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let jobs = async move {
        let Ok(mut node) = connect(&args.node_url, args.workers + 2, args.source_ips).await else {
            observed.failures.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut height = base;
        while !stop.is_cancelled() {
            height += 1;
            let challenge = json!({ "height": height, "run": args.run, "sent_us": unix_us() });
            let job = json!({ "id": height, "epoch_challenge": challenge, "proof_target": 1, "block_height": height });
            let sent = Instant::now();
            if node.send(Message::text(job.to_string())).await.is_err() {
                observed.failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let acked = tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(Ok(message)) = node.next().await {
                    if let Message::Text(text) = message {
                        let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                        if frame["type"] == "ack" && frame["id"] == json!(height) {
                            return frame["status"] == "accepted";
                        }
                    }
                }
                false
            })
            .await;
            observed.note(&observed.job_ack, matches!(acked, Ok(true)).then(|| sent.elapsed()));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = node.close(None).await;
    };
    tokio::join!(probes, jobs);
}

/// `GET /status` on the admin server: the number of connected workers.
async fn connected_workers(admin: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(admin).await.ok()?;
    stream.write_all(format!("GET /status HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let body = response.split("\r\n\r\n").nth(1)?;
    serde_json::from_str::<Value>(body).ok()?["workers"].as_u64()
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    // Every connection is a file: the soft limit (often 1024) would cap the workers
    // far below what the hard limit allows.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("could not raise the open-files limit: {e}");
    }
    if args.node_transport != NodeTransport::Ws && args.mode != Mode::Solutions {
        bail!("--node-transport sse or webhook is for --mode solutions");
    }
    let over_http = args.node_transport != NodeTransport::Ws;
    let receivers = if over_http { args.nodes.max(1) as u32 } else { 1 };
    let tally = Arc::new(Tally { receivers, ..Tally::default() });
    let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let run_given = args.run.is_some();
    let run = args.run.get_or_insert_with(|| format!("load-{base}")).clone();
    if args.mode == Mode::Storm {
        // The run names the job to wait for when this process sends it or is told
        // whose it is; otherwise (the bare server) any job will do.
        let wanted = (run_given || !args.no_job).then_some(run);
        return storm(&args, base, wanted).await;
    }
    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(args.workers as u64) };
    bar.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")?);
    bar.set_message("workers connected");

    // Workers connect with bounded parallelism; each runs its own task.
    let connect_started = Instant::now();
    let per_worker = args.solutions.div_ceil(args.workers.max(1) as u64);
    let mut handles = Vec::with_capacity(args.workers);
    // Workers send solutions once the nodes can receive them: at once for sockets
    // (connected before the job is sent), after the POSTs' 202 (and the streams'
    // opening) over HTTP.
    let go = CancellationToken::new();
    let sockets: Vec<Result<(usize, Socket)>> = futures::stream::iter(0..args.workers)
        .map(|w| {
            let url = args.worker_url.clone();
            let spread = args.source_ips;
            async move { connect(&url, w, spread).await.map(|s| (w, s)) }
        })
        .buffer_unordered(args.connect_parallelism.max(1))
        .inspect(|_| bar.inc(1))
        .collect()
        .await;
    for socket in sockets {
        let (w, socket) = socket.context("connecting a worker")?;
        handles.push(tokio::spawn(worker(w, socket, args.clone(), tally.clone(), base, per_worker, go.clone())));
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // Welcomes are accepted once the server counts every worker. Jobs wait for
    // that too: a worker welcomed after a job was sent is handed it as the current
    // job, which would time its welcome, not the fan-out.
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    let mut counted = 0;
    while Instant::now() < deadline {
        counted = connected_workers(&args.admin).await.unwrap_or(0);
        if counted >= args.workers as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let welcomed_secs = connect_started.elapsed().as_secs_f64();
    if args.mode == Mode::Idle {
        let report = json!({ "mode": "idle", "workers": args.workers, "welcomed": counted,
            "connect_s": connect_secs, "welcomed_s": welcomed_secs,
            "welcomes_per_s": counted as f64 / welcomed_secs, "errors": tally.errors.load(Ordering::Relaxed) });
        print_report(&args, &report);
        if !args.json {
            eprintln!("holding {} idle workers for {} s", counted, args.hold_secs);
        }
        tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
        return Ok(());
    }

    if let Some(ready) = &args.ready_file {
        std::fs::write(ready, counted.to_string()).with_context(|| format!("writing {}", ready.display()))?;
    }
    let receiving_only = args.mode == Mode::Receive;
    let mut nodes = Vec::new();
    // The webhook's receiver listens before any job names it.
    let hooks = match args.node_transport {
        NodeTransport::Webhook => Some(receive_webhooks(&args, tally.clone(), &mut handles).await?),
        _ => None,
    };
    for n in 0..if receiving_only || over_http { 0 } else { args.nodes } {
        let socket = connect(&args.node_url, args.workers + n, args.source_ips).await.context("connecting a node")?;
        let (tx, mut rx) = socket.split();
        let tally = tally.clone();
        handles.push(tokio::spawn(async move {
            while let Some(Ok(message)) = rx.next().await {
                let Message::Text(text) = message else { continue };
                let Ok(solution) = serde_json::from_str::<Value>(&text) else { continue };
                match nonce_of(&solution) {
                    Some(nonce) => {
                        tally.solution_received(nonce);
                    }
                    None => tally.error(),
                }
            }
        }));
        nodes.push(tx);
    }
    if nodes.is_empty() && !receiving_only && !over_http {
        bail!("at least one node is needed in this mode");
    }
    if counted < args.workers as u64 {
        eprintln!("only {counted} of {} workers were welcomed within {} s", args.workers, args.wait_secs);
    }
    let sending = Instant::now();
    let jobs = if args.mode == Mode::Solutions { 1 } else { args.jobs };
    let mut post_ack = Vec::new();
    let reconnects = Arc::new(AtomicU64::new(0));
    if over_http {
        let challenge = json!({ "height": base, "run": run, "sent_us": unix_us() });
        let mut job = json!({ "epoch_challenge": challenge, "proof_target": 1, "block_height": base });
        if args.node_transport == NodeTransport::Webhook {
            job["callback"] = json!(args.webhook_name);
        }
        let http = http_base(&args.node_url)?;
        let client = reqwest::Client::new();
        for n in 0..args.nodes.max(1) {
            let (took, answer) = post_job(&client, &http, &job).await.with_context(|| format!("node {n}"))?;
            post_ack.push(took);
            if args.node_transport == NodeTransport::Sse {
                let events = answer["events"].as_str().context("the 202 names no events stream")?;
                let url = format!("{http}{events}");
                let stream = open_stream(&client, &url, None).await.with_context(|| format!("node {n}'s stream"))?;
                let (tally, reconnects) = (tally.clone(), reconnects.clone());
                handles.push(tokio::spawn(follow_stream(client.clone(), url, stream, tally, reconnects)));
            }
        }
    }
    go.cancel();
    for j in 0..if receiving_only || over_http { 0 } else { jobs } {
        let height = base + j as i64;
        let challenge = json!({ "height": height, "run": run, "sent_us": unix_us() });
        let job = json!({ "epoch_challenge": challenge, "proof_target": 1, "block_height": height });
        let node_count = nodes.len();
        if nodes[j % node_count].send(Message::text(job.to_string())).await.is_err() {
            tally.error();
        }
        if j + 1 < jobs {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
    }
    let expected_jobs = (jobs * args.workers) as u64;
    let expected_solutions = match args.mode {
        Mode::RoundTrip => expected_jobs,
        Mode::Solutions => per_worker * args.workers as u64 * receivers as u64,
        _ => 0,
    };
    // Wait while deliveries progress, at most `wait_secs` without progress.
    let progress = |t: &Tally| {
        let jobs = t.job_latency.lock().map(|l| l.len()).unwrap_or(0) as u64;
        let solutions = t.solution_latency.lock().map(|l| l.len()).unwrap_or(0) as u64;
        (jobs, solutions)
    };
    let mut last = progress(&tally);
    let mut last_change = Instant::now();
    while last.0 < expected_jobs || last.1 < expected_solutions {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = progress(&tally);
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(args.wait_secs) {
            break;
        }
    }
    let elapsed = sending.elapsed();
    for h in &handles {
        h.abort();
    }

    let job_latencies = tally.job_latency.lock().map(|l| l.clone()).unwrap_or_default();
    let sent = tally.solutions_sent.load(Ordering::Relaxed);
    let received = tally.solution_latency.lock().map(|l| l.len()).unwrap_or(0) as u64;
    let window = match (*tally.first_send.lock().expect("lock"), *tally.last_receipt.lock().expect("lock")) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let mut report = json!({
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "workers": args.workers, "nodes": args.nodes, "jobs": jobs, "elapsed_s": elapsed.as_secs_f64(),
        "connect_s": connect_secs,
        "jobs_delivered": last.0, "jobs_expected": expected_jobs,
        "job_latency": percentiles(job_latencies.clone()),
        "job_latencies_ms": if args.raw {
            json!(job_latencies.iter().map(|d| (d.as_secs_f64() * 1e5).round() / 1e2).collect::<Vec<_>>())
        } else {
            Value::Null
        },
        "solutions_sent": sent, "solutions_received": received,
        "solutions_lost": (sent * receivers as u64).saturating_sub(received),
        "solutions_duplicated": tally.duplicates.load(Ordering::Relaxed),
        "solutions_per_s": if window > 0.0 { received as f64 / window } else { 0.0 },
        "solution_latency": percentiles(tally.solution_latency.lock().map(|l| l.clone()).unwrap_or_default()),
        "errors": tally.errors.load(Ordering::Relaxed),
    });
    if over_http {
        let more = report.as_object_mut().expect("an object");
        more.insert("node_transport".into(), json!(format!("{:?}", args.node_transport).to_lowercase()));
        more.insert("post_ack".into(), percentiles(post_ack));
        if args.node_transport == NodeTransport::Sse {
            more.insert("stream_reconnects".into(), json!(reconnects.load(Ordering::Relaxed)));
        }
        if let Some(hooks) = &hooks {
            more.insert("webhook_requests".into(), json!(hooks.requests.load(Ordering::Relaxed)));
            more.insert("webhook_bad_signatures".into(), json!(hooks.bad_signatures.load(Ordering::Relaxed)));
            more.insert("webhook_verified".into(), json!(hooks.verifier.is_some()));
        }
    }
    print_report(&args, &report);
    Ok(())
}

/// `http://host:port` of the node listener, from its WebSocket URL.
fn http_base(node_url: &str) -> Result<String> {
    let url = url::Url::parse(node_url).with_context(|| format!("bad URL {node_url}"))?;
    let scheme = match url.scheme() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        other => bail!("--node-url: no HTTP for scheme {other}"),
    };
    let host = url.host_str().context("--node-url without host")?;
    let port = url.port_or_known_default().context("--node-url without port")?;
    Ok(format!("{scheme}://{host}:{port}"))
}

/// `POST /api/v1/jobs`: how long until the whole 202 answer came, and the answer.
async fn post_job(client: &reqwest::Client, http: &str, job: &Value) -> Result<(Duration, Value)> {
    let started = Instant::now();
    let response = client.post(format!("{http}/api/v1/jobs")).json(job).send().await.context("POSTing the job")?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let took = started.elapsed();
    if status != reqwest::StatusCode::ACCEPTED {
        let text = text.trim();
        bail!("POST /api/v1/jobs answered {status}{}{text}", if text.is_empty() { "" } else { ": " });
    }
    let answer: Value = serde_json::from_str(&text).context("the 202's body is not JSON")?;
    Ok((took, answer))
}

/// Opens a node's stream of solutions (after `last_id`, when resuming).
async fn open_stream(client: &reqwest::Client, url: &str, last_id: Option<&str>) -> Result<reqwest::Response> {
    let mut request = client.get(url).header("accept", "text/event-stream");
    if let Some(id) = last_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.context("opening the stream")?;
    if !response.status().is_success() {
        bail!("GET {url} answered {}", response.status());
    }
    Ok(response)
}

/// Reads one node's stream: each `solution` event is a receipt, one the node
/// had already received a duplicate. A stream that ends (eligo ends one that
/// read too slowly) is opened again with `Last-Event-ID`, as a client should.
async fn follow_stream(
    client: reqwest::Client,
    url: String,
    mut response: reqwest::Response,
    tally: Arc<Tally>,
    reconnects: Arc<AtomicU64>,
) {
    let mut seen = std::collections::HashSet::new();
    let mut last_id: Option<String> = None;
    loop {
        let mut body = response.bytes_stream();
        let mut text: Vec<u8> = Vec::new();
        while let Some(Ok(bytes)) = body.next().await {
            text.extend_from_slice(&bytes);
            // Events end with an empty line.
            while let Some(end) = text.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = text.drain(..end + 2).collect();
                let (mut event, mut data) = ("", String::new());
                let block = String::from_utf8_lossy(&block);
                for line in block.lines() {
                    match line.split_once(':') {
                        Some(("event", v)) => event = v.trim(),
                        Some(("id", v)) => last_id = Some(v.trim().to_string()),
                        Some(("data", v)) => data.push_str(v.strip_prefix(' ').unwrap_or(v)),
                        _ => {}
                    }
                }
                match event {
                    "solution" => match serde_json::from_str::<Value>(&data).ok().as_ref().and_then(nonce_of) {
                        Some(nonce) if !seen.insert(nonce) => tally.duplicate(),
                        Some(nonce) => {
                            tally.solution_received(nonce);
                        }
                        None => tally.error(),
                    },
                    "expired" => return,
                    _ => {}
                }
            }
        }
        reconnects.fetch_add(1, Ordering::Relaxed);
        response = loop {
            match open_stream(&client, &url, last_id.as_deref()).await {
                Ok(response) => break response,
                Err(_) => {
                    tally.error();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
    }
}

/// What the webhook's receiver counts.
struct Hooks {
    tally: Arc<Tally>,
    /// `webhook-id`s received: one per solution and node, so a second is a duplicate.
    seen: Mutex<std::collections::HashSet<String>>,
    verifier: Option<standardwebhooks::Webhook>,
    requests: AtomicU64,
    bad_signatures: AtomicU64,
}

/// Starts the receiver of eligo's webhook POSTs on `--webhook-listen`.
async fn receive_webhooks(
    args: &Args,
    tally: Arc<Tally>,
    handles: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<Arc<Hooks>> {
    let verifier = match &args.webhook_secret {
        Some(secret) => Some(standardwebhooks::Webhook::new(secret).context("--webhook-secret")?),
        None => None,
    };
    let hooks = Arc::new(Hooks {
        tally,
        seen: Mutex::new(Default::default()),
        verifier,
        requests: AtomicU64::new(0),
        bad_signatures: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind(args.webhook_listen)
        .await
        .with_context(|| format!("listening for webhooks on {}", args.webhook_listen))?;
    let app = axum::Router::new().fallback(webhook_receipt).with_state(hooks.clone());
    handles.push(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    }));
    Ok(hooks)
}

/// One webhook POST: a receipt of its solution, answered 200.
async fn webhook_receipt(
    axum::extract::State(hooks): axum::extract::State<Arc<Hooks>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    hooks.requests.fetch_add(1, Ordering::Relaxed);
    if hooks.verifier.as_ref().is_some_and(|v| v.verify(&body, &headers).is_err()) {
        hooks.bad_signatures.fetch_add(1, Ordering::Relaxed);
        hooks.tally.error();
    }
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if !id.is_empty() && !hooks.seen.lock().map(|mut s| s.insert(id)).unwrap_or(true) {
        hooks.tally.duplicate();
        return axum::http::StatusCode::OK;
    }
    match serde_json::from_slice::<Value>(&body).ok().as_ref().and_then(nonce_of) {
        Some(nonce) => {
            hooks.tally.solution_received(nonce);
        }
        None => hooks.tally.error(),
    }
    axum::http::StatusCode::OK
}

/// One worker: welcome, then per job: answer it (round-trip), note it (jobs), or
/// start sending its share of solutions (solutions).
async fn worker(
    w: usize,
    socket: Socket,
    args: Args,
    tally: Arc<Tally>,
    base: i64,
    per_worker: u64,
    go: CancellationToken,
) {
    let (mut tx, mut rx) = socket.split();
    if tx.send(Message::text(welcome(args.first_worker + w).to_string())).await.is_err() {
        tally.error();
        return;
    }
    while let Some(Ok(message)) = rx.next().await {
        let Message::Text(text) = message else { continue };
        let Ok(work) = serde_json::from_str::<Value>(&text) else { continue };
        let Some(task_id) = work["task_id"].as_str() else {
            tally.error();
            continue;
        };
        let challenge = &work["epoch_challenge"];
        // A worker is first offered the server's current job, which may be an earlier
        // run's: only this run's jobs are measured and answered.
        if challenge["run"].as_str() != args.run.as_deref() {
            continue;
        }
        let height = challenge["height"].as_i64().unwrap_or_default();
        let sent_us = challenge["sent_us"].as_u64().unwrap_or_default();
        let latency = Duration::from_micros(unix_us().saturating_sub(sent_us));
        tally.job_latency.lock().map(|mut l| l.push(latency)).ok();
        match args.mode {
            Mode::RoundTrip => {
                let nonce = (height - base) as u64 * 1_000_000 + w as u64;
                tally.solution_sent(nonce);
                let solution = json!({ "task_id": task_id, "solution_target": 1,
                                       "solution": { "partial_solution": { "nonce": nonce } } });
                if tx.send(Message::text(solution.to_string())).await.is_err() {
                    tally.error();
                    return;
                }
            }
            Mode::Solutions => {
                go.cancelled().await;
                let task_id = task_id.to_string();
                let (tally, rate, workers) = (tally.clone(), args.rate, args.workers as u64);
                // Each worker sends its share at its share of the rate.
                let mut ticker = (rate > 0).then(|| {
                    let period = Duration::from_secs_f64(workers as f64 / rate as f64);
                    tokio::time::interval(period)
                });
                for k in 0..per_worker {
                    if let Some(t) = ticker.as_mut() {
                        t.tick().await;
                    }
                    // Unique across runs: the run's millisecond base in the high bits.
                    let nonce = ((base as u64 & 0xffff_ffff) << 32) | (w as u64 * per_worker + k);
                    tally.solution_sent(nonce);
                    let nonce = match args.nonce_bytes {
                        0 => json!(nonce),
                        width => json!(format!("{nonce:0>width$}")),
                    };
                    let solution = json!({ "task_id": task_id, "solution_target": 1,
                                           "solution": { "partial_solution": { "nonce": nonce } } });
                    if tx.send(Message::text(solution.to_string())).await.is_err() {
                        tally.error();
                        return;
                    }
                }
            }
            Mode::Jobs | Mode::Idle | Mode::Receive | Mode::Storm => {}
        }
    }
}

/// What every worker of a storm shares.
struct Storm {
    url: String,
    spread: u8,
    /// The run whose job counts as held; `None`: the first job frame.
    wanted: Option<String>,
    /// Added to a worker's number for its hardware id (`--first-worker`).
    first_worker: usize,
    /// Connections being opened at once: the TCP and WebSocket handshakes only,
    /// so every worker is connected as fast as the client can, and stays.
    connecting: Semaphore,
    /// Cancelled once every worker holds the job (or the wait is over).
    release: CancellationToken,
    tally: Tally,
    last_connected: Mutex<Option<Instant>>,
    first_error: Mutex<Option<String>>,
    bar: ProgressBar,
}

impl Storm {
    fn connected(&self) {
        self.last_connected.lock().map(|mut l| *l = Some(Instant::now())).ok();
    }

    fn held(&self, latency: Duration) {
        self.tally.job_latency.lock().map(|mut l| l.push(latency)).ok();
        self.tally.last_receipt.lock().map(|mut l| *l = Some(Instant::now())).ok();
        self.bar.inc(1);
    }

    fn held_count(&self) -> u64 {
        self.tally.job_latency.lock().map(|l| l.len()).unwrap_or(0) as u64
    }

    fn failed(&self, error: anyhow::Error) {
        self.tally.error();
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| format!("{error:#}"));
        }
    }
}

/// Whether `text` is a job frame, and the `wanted` run's job when one is named.
fn is_job(text: &str, wanted: Option<&str>) -> bool {
    let Ok(frame) = serde_json::from_str::<Value>(text) else { return false };
    frame["task_id"].is_string() && wanted.is_none_or(|run| frame["epoch_challenge"]["run"].as_str() == Some(run))
}

/// Storm mode: with the job already out, every worker reconnects at once (after a
/// deploy or restart, say) and waits for it.
async fn storm(args: &Args, base: i64, wanted: Option<String>) -> Result<()> {
    let node = if args.no_job { None } else { Some(send_job(args, base).await?) };
    probe(args, wanted.as_deref()).await?;
    if let Some(mut node) = node {
        let _ = node.close(None).await;
    }

    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(args.workers as u64) };
    bar.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")?);
    bar.set_message("workers hold the job");
    let storm = Arc::new(Storm {
        url: args.worker_url.clone(),
        spread: args.source_ips,
        wanted,
        first_worker: args.first_worker,
        connecting: Semaphore::new(args.connect_parallelism.clamp(1, Semaphore::MAX_PERMITS)),
        release: CancellationToken::new(),
        tally: Tally::default(),
        last_connected: Mutex::new(None),
        first_error: Mutex::new(None),
        bar,
    });
    let observed = Arc::new(Observed::default());
    let stop_observing = CancellationToken::new();
    let observer =
        args.observe.then(|| tokio::spawn(observe(args.clone(), base, observed.clone(), stop_observing.clone())));
    let started = Instant::now();
    let handles: Vec<_> = (0..args.workers).map(|w| tokio::spawn(storm_worker(w, storm.clone()))).collect();

    // Until every worker holds the job or has failed, at most `wait_secs` without progress
    // (and, when observing, for at least `OBSERVED_AT_LEAST`, so a quick storm still
    // yields enough samples).
    let settled = |s: &Storm| s.held_count() + s.tally.errors.load(Ordering::Relaxed);
    let mut last = settled(&storm);
    let mut last_change = Instant::now();
    while last < args.workers as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = settled(&storm);
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(args.wait_secs) {
            break;
        }
    }
    if args.observe {
        tokio::time::sleep(OBSERVED_AT_LEAST.saturating_sub(started.elapsed())).await;
    }
    let held = storm.held_count();
    let since_start = |at: &Mutex<Option<Instant>>| {
        at.lock().ok().and_then(|at| *at).map(|at| at.duration_since(started).as_secs_f64()).unwrap_or(0.0)
    };
    let total = since_start(&storm.tally.last_receipt);
    let connected = since_start(&storm.last_connected);
    stop_observing.cancel();
    if let Some(observer) = observer {
        let _ = observer.await;
    }
    storm.release.cancel();
    for handle in handles {
        let _ = handle.await;
    }
    storm.bar.finish_and_clear();

    if held < args.workers as u64 {
        eprintln!("only {held} of {} workers got the job within {} s of no progress", args.workers, args.wait_secs);
    }
    if let Some(error) = storm.first_error.lock().ok().and_then(|e| e.clone()) {
        eprintln!("first error: {error}");
    }
    let latencies = storm.tally.job_latency.lock().map(|l| l.clone()).unwrap_or_default();
    let report = json!({
        "mode": "storm", "workers": args.workers, "held": held,
        "errors": storm.tally.errors.load(Ordering::Relaxed),
        "total_s": total, "workers_per_s": if total > 0.0 { held as f64 / total } else { 0.0 },
        "connected_s": connected, "connect_parallelism": args.connect_parallelism,
        "welcome_to_job": percentiles(latencies.clone()),
        "observed": if args.observe { observed.report() } else { Value::Null },
        "welcome_to_job_ms": if args.raw {
            json!(latencies.iter().map(|d| (d.as_secs_f64() * 1e5).round() / 1e2).collect::<Vec<_>>())
        } else {
            Value::Null
        },
    });
    print_report(args, &report);
    Ok(())
}

/// Sends this run's job through the node server; the connection is returned, and
/// kept, until the job has reached the worker server.
async fn send_job(args: &Args, base: i64) -> Result<Socket> {
    let mut node = connect(&args.node_url, args.workers + 1, args.source_ips).await.context("connecting a node")?;
    let challenge = json!({ "height": base, "run": args.run, "sent_us": unix_us() });
    let job = json!({ "epoch_challenge": challenge, "proof_target": 1, "block_height": base });
    node.send(Message::text(job.to_string())).await.context("sending the job")?;
    Ok(node)
}

/// Waits until a worker connecting now is handed the job: the storm times a server
/// that already holds it, not the pipeline bringing it there.
async fn probe(args: &Args, wanted: Option<&str>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_secs);
    let mut last_error = anyhow::anyhow!("no attempt");
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, probe_once(args, wanted)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last_error = e,
            Err(_) => last_error = anyhow::anyhow!("no job frame"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last_error.context(format!(
        "a probe worker at {} got no job{} within {} s (was the job refused?)",
        args.worker_url,
        wanted.map(|run| format!(" of run {run}")).unwrap_or_default(),
        args.wait_secs
    )))
}

async fn probe_once(args: &Args, wanted: Option<&str>) -> Result<()> {
    // A name of its own, so its welcome is not one of this storm's, nor of one beside it.
    let mut socket = connect(&args.worker_url, args.workers, args.source_ips).await?;
    socket.send(Message::text(welcome(format!("probe-{}", args.first_worker)).to_string())).await?;
    // An earlier job may come first; the wanted one follows when it reaches the server.
    while let Some(message) = socket.next().await {
        if let Message::Text(text) = message? {
            if is_job(&text, wanted) {
                let _ = socket.close(None).await;
                return Ok(());
            }
        }
    }
    bail!("the worker server closed the probe before sending the job")
}

/// One storm worker: connect, welcome, wait for the job, stay until released.
async fn storm_worker(w: usize, storm: Arc<Storm>) {
    let connected = {
        let _permit = storm.connecting.acquire().await;
        connect(&storm.url, w, storm.spread).await
    };
    let mut socket = match connected {
        Ok(socket) => socket,
        Err(e) => return storm.failed(e),
    };
    storm.connected();
    let welcomed = Instant::now();
    if let Err(e) = socket.send(Message::text(welcome(storm.first_worker + w).to_string())).await {
        return storm.failed(e.into());
    }
    let mut held = false;
    loop {
        tokio::select! {
            _ = storm.release.cancelled() => break,
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) if !held && is_job(&text, storm.wanted.as_deref()) => {
                    held = true;
                    storm.held(welcomed.elapsed());
                }
                // Reading on after the job answers pings and notices a close.
                Some(Ok(_)) => {}
                Some(Err(e)) => return storm.failed(e.into()),
                None => return storm.failed(anyhow::anyhow!("closed by the server")),
            },
        }
    }
    let _ = socket.close(None).await;
}

fn print_report(args: &Args, report: &Value) {
    if args.json {
        println!("{report}");
        return;
    }
    for (key, value) in report.as_object().into_iter().flatten() {
        println!("{key:<22} {value}");
    }
}
