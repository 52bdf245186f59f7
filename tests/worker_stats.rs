//! What each worker connection did, as `/api/v1/workers` shows it: counted from
//! what a real client sent, judged by the real pipeline, on both backends.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::backends::{Backends, Kind};
use support::server::{job, solution, Server};

/// The stats of the connected worker `hardware_id`, once `done` holds of them (or
/// after a minute, whatever they are).
async fn stats_when(server: &Server, hardware_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let admin = server.running.admin_addr.expect("admin");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let workers = support::http::get(admin, "/api/v1/workers?limit=500").await.ok_json();
        let found = workers["items"]
            .as_array()
            .and_then(|items| items.iter().find(|w| w["hardware_id"] == hardware_id).map(|w| w["stats"].clone()));
        if let Some(stats) = found {
            if done(&stats) || tokio::time::Instant::now() > deadline {
                return stats;
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
