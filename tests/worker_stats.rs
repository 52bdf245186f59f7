//! What each worker connection did, as `/api/v1/workers` shows it: counted from
//! what a real client sent, judged by the real pipeline, on both backends.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::backends::{Backends, Kind};
use support::server::{job, solution, Server};
use tokio_tungstenite::tungstenite::Message;

/// The stats of the connected worker `hardware_id`, once `done` holds of them (or
/// after a minute, whatever they are).
async fn stats_when(server: &Server, hardware_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    worker_when(server, hardware_id, |w| done(&w["stats"])).await["stats"].clone()
}

/// The connected worker `hardware_id` as `/api/v1/workers` lists it, once `done`
/// holds of it (or after a minute, whatever it is).
async fn worker_when(server: &Server, hardware_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let admin = server.running.admin_addr.expect("admin");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let workers = support::http::get(admin, "/api/v1/workers?limit=500").await.ok_json();
        let found = workers["items"]
            .as_array()
            .and_then(|items| items.iter().find(|w| w["hardware_id"] == hardware_id).cloned());
        if let Some(worker) = found {
            if done(&worker) || tokio::time::Instant::now() > deadline {
                return worker;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "worker {hardware_id} is not listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn counters_match_what_the_worker_sent(kind: Kind) {
    let server = Server::start(kind, &["seed-rules", "pow-check"]).await;
    let mut worker = server.worker("hw-stats").await;
    let mut other = server.worker("hw-other").await;
    let mut node = server.node().await;
    node.send(&job(300, 500)).await;
    let work = worker.recv("the job").await;
    other.recv("the job").await;
    let task = work["task_id"].as_str().expect("task id");
    let (first, reached) = support::solver::solve(&work["epoch_challenge"], 500, 0);
    let (second, reached2) = support::solver::solve(&work["epoch_challenge"], 500, first + 1);
    let (bad, _) = support::solver::fail(&work["epoch_challenge"], 500, 0);
    worker.send(&solution(task, first, reached)).await;
    worker.send(&solution(task, second, reached2)).await;
    worker.send(&solution(task, first, reached)).await; // the same nonce again: a duplicate
    worker.send(&solution(task, bad, 500)).await; // claims a target it does not reach: the policy refuses it
    worker.send(&solution("no-such-task", 77, 500)).await; // no such job
    worker.send_text("{\"not\": \"a solution\"}").await; // refused at the door
    worker.recv("the refusal of the bad frame").await;

    let stats = stats_when(&server, "hw-stats", |s| {
        s["valid"] == 2
            && s["invalid"]["duplicate"] == 1
            && s["invalid"]["policy"] == 1
            && s["invalid"]["unknown_job"] == 1
    })
    .await;
    assert_eq!(stats["accepted"], 5, "{stats:#}");
    assert_eq!(stats["refused"], json!({ "bad_frame": 1, "queue": 0 }), "{stats:#}");
    assert_eq!(stats["valid"], 2, "{stats:#}");
    assert_eq!(stats["invalid"], json!({ "duplicate": 1, "policy": 1, "unknown_job": 1, "malformed": 0 }), "{stats:#}");
    assert!(stats["last_valid_at"].is_string(), "{stats:#}");
    assert!(stats["accepted_per_minute"]["5m"].as_f64() > Some(0.0), "{stats:#}");
    assert_eq!(stats["silent"], false);
    // Another connection's counters are its own.
    let untouched = stats_when(&server, "hw-other", |_| true).await;
    assert_eq!((untouched["accepted"].as_u64(), untouched["valid"].as_u64()), (Some(0), Some(0)), "{untouched:#}");
    server.stop().await;
}

async fn a_worker_without_a_valid_solution_for_the_threshold_is_silent(kind: Kind) {
    let server = Server::start_configured(Backends::new(kind).await, &["seed-rules"], None, |config| {
        config.admin.silent_after_minutes = 0;
    })
    .await;
    let _worker = server.worker("hw-silent").await;
    let stats = stats_when(&server, "hw-silent", |s| s["silent"] == true).await;
    assert_eq!(stats["silent"], true, "{stats:#}");
    server.stop().await;
}

on_both!(counters_match_what_the_worker_sent, a_worker_without_a_valid_solution_for_the_threshold_is_silent);

/// The server pings every connection; a worker that answers shows its round trip,
/// one that pongs unasked (or not at all) shows none.
#[tokio::test]
async fn a_worker_shows_the_round_trip_of_the_servers_ping() {
    let server = Server::start_configured(Backends::new(Kind::Embedded).await, &["seed-rules"], None, |config| {
        config.worker.socket.ping_interval_seconds = 1;
    })
    .await;
    let mut answering = server.worker("hw-pong").await;
    let mut forging = server.worker("hw-forged").await;
    // A pong that answers no ping, carrying what a ping's payload looks like.
    forging.send_frame(Message::Pong(1u64.to_be_bytes().to_vec().into())).await;
    // Reading is what answers a ping (the client library pongs as it reads).
    let reading = tokio::spawn(async move {
        loop {
            if let support::ws::Next::Closed(..) = answering.next_within(Duration::from_secs(60)).await {
                return;
            }
        }
    });
    let worker = worker_when(&server, "hw-pong", |w| w["ping_ms"].is_number()).await;
    let ping_ms = worker["ping_ms"].as_f64().expect("a round trip once the worker answered a ping");
    assert!(ping_ms > 0.0 && ping_ms < 10_000.0, "{worker:#}");
    // The forging worker never reads, so it never answers a ping.
    let forged = worker_when(&server, "hw-forged", |_| true).await;
    assert_eq!(forged["ping_ms"], Value::Null, "{forged:#}");
    reading.abort();
    server.stop().await;
}

/// What `examples/worker` prints (the counts mining software shows) is what the
/// workers API shows for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_worker_prints_the_counts_the_api_shows() {
    use tokio::io::AsyncBufReadExt;
    let server = Server::start(Kind::Embedded, &["seed-rules", "pow-check"]).await;
    let url = format!("ws://{}/", server.running.worker_addr.expect("worker server"));
    let mut example = tokio::process::Command::new(support::example_path("worker"))
        .args([url.as_str(), "500"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting examples/worker");
    let hardware_id = format!("example-{}", example.id().expect("a running example"));
    let mut lines = tokio::io::BufReader::new(example.stdout.take().expect("piped")).lines();
    worker_when(&server, &hardware_id, |_| true).await;
    let mut node = server.node().await;
    let mut printed = String::new();
    for height in 1..=3 {
        node.send(&job(400 + height, 500)).await;
        // Its ack and its verdict: two lines of counts per job.
        let mut counts_seen = 0;
        while counts_seen < 2 {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("the example answers within a minute")
                .expect("reading its output")
                .expect("the example runs on");
            if let Some(counts) = line.strip_prefix("worker: accepted ") {
                printed = format!("accepted {}", counts.split(" (").next().unwrap_or_default());
                counts_seen += 1;
            }
        }
    }
    assert_eq!(printed, "accepted 3 refused 0 | valid 3 invalid 0");
    let stats = stats_when(&server, &hardware_id, |s| s["valid"] == 3).await;
    let invalid: u64 = stats["invalid"].as_object().expect("by reason").values().filter_map(Value::as_u64).sum();
    let refused: u64 = stats["refused"].as_object().expect("by reason").values().filter_map(Value::as_u64).sum();
    let shown =
        format!("accepted {} refused {refused} | valid {} invalid {invalid}", stats["accepted"], stats["valid"]);
    assert_eq!(shown, printed, "{stats:#}");
    drop(example);
    server.stop().await;
}
