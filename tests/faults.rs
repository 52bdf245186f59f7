//! A broker restart under a running eligo: affected connections are closed with
//! 1013 and the reason, the server stays up and resumes on its own, and what was
//! accepted before the outage is not lost.

mod support;

use eligo::app::start_with;
use eligo::config::Config;
use serde_json::json;
use std::process::Command;
use std::time::Duration;
use support::backends::{Backends, Kind};
use support::ws::{Client, Next};

/// Runs `rabbitmqctl` with its arguments; panics with its output if it fails.
fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl is installed with RabbitMQ");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts RabbitMQ's app again even if the test fails half-way: other tests need it.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_restart_closes_with_1013_and_eligo_recovers_without_losing_jobs() {
    let backends = Backends::new(Kind::Networked).await;
    let dir = backends.dir().join("policies");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(support::plugin_path("seed-rules"), dir.join("seed-rules.wasm")).expect("copy");
    let mut config = Config::default();
    config.node.listen = ([127, 0, 0, 1], 0).into();
    config.worker.listen = ([127, 0, 0, 1], 0).into();
    config.admin.listen = None;
    config.plugins.dir = dir;
    let running = start_with(&config, backends.queue.clone(), backends.log.clone(), backends.store.clone())
        .await
        .expect("eligo starts");
    let node_addr = running.node_addr.expect("node server");
    let mut worker = Client::connect(running.worker_addr.expect("worker server")).await;
    worker
        .send(&json!({ "ip": "1.1.1.1", "address": "a", "hardware": "cpu", "hardware_id": "hw", "caption": "c" }))
        .await;
    let mut node = Client::connect(node_addr).await;
    node.send(&json!({ "epoch_challenge": { "e": 1 }, "proof_target": 1, "block_height": 900 })).await;
    worker.recv("job 900 before the outage").await;

    let restart = Restart;
    rabbitmqctl(&["stop_app"]);
    node.send(&json!({ "epoch_challenge": { "e": 2 }, "proof_target": 1, "block_height": 901 })).await;
    match node.next_within(Duration::from_secs(30)).await {
        Next::Closed(code, reason) => {
            assert_eq!(code, 1013, "broker unavailable: try again later ({reason})");
            assert!(reason.contains("job not accepted") && reason.contains("RabbitMQ"), "{reason}");
        }
        other => panic!("expected the node to be closed with 1013, got {other:?}"),
    }
    rabbitmqctl(&["start_app"]);
    drop(restart);

    // The server stayed up: a node reconnects and its job flows once the broker is back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut again = Client::connect(node_addr).await;
        again.send(&json!({ "epoch_challenge": { "e": 3 }, "proof_target": 1, "block_height": 902 })).await;
        match again.next_within(Duration::from_secs(2)).await {
            Next::Closed(1013, _) => {
                assert!(tokio::time::Instant::now() < deadline, "eligo never reconnected to RabbitMQ");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Next::Quiet => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let work = worker.recv("job 902 after the broker came back").await;
    assert_eq!(work["epoch_challenge"], json!({ "e": 3 }));
    running.stop().await;
    backends.finish().await;
}
