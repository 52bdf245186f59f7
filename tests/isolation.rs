//! Isolation: a slow policy holds only the traffic waiting for its decisions,
//! and what one worker sends cannot make the server remember unbounded keys.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::backends::{Backends, Kind};
use support::http::get;
use support::server::{job, welcome, Server};
use support::ws::Client;

on_both!(
    a_slow_policy_holds_only_the_traffic_waiting_for_it,
    workers_leaving_during_an_offer_cost_the_others_nothing,
    a_solution_key_over_its_limit_is_refused_and_forgotten
);

/// Rounds of `testing-slow`'s loop per call: a few hundred milliseconds or more
/// on any machine this runs on, far longer than a health check or an ack takes.
const SPIN: u64 = 400_000_000;

/// The decisions waiting for, or running on, this server's decision pool (its
/// own count: tests running beside it in this process have pools of their own).
fn decisions_in_progress(server: &Server) -> usize {
    server.running.services.decisions.queued()
}

/// A server whose only policy is `testing-slow` at [`SPIN`], on two decision
/// threads. The loop is the plugin's own work, well within the limits it is given.
async fn slow_server(kind: Kind) -> Server {
    Server::start_configured(Backends::new(kind).await, &["testing-slow"], None, |config| {
        config.plugins.config.insert("10-testing-slow".into(), json!({ "spin": SPIN }));
        config.plugins.limits.fuel = 0;
        config.plugins.limits.deadline_ms = 600_000;
        config.plugins.decision_threads = 2;
    })
    .await
}

/// `n` workers that have sent their welcome, named `{name}-{i}`.
async fn welcoming(server: &Server, name: &str, n: usize) -> Vec<Client> {
    let worker_addr = server.running.worker_addr.expect("worker server");
    let mut workers = Vec::new();
    for i in 0..n {
        let mut worker = Client::connect(worker_addr).await;
        worker.send(&welcome(&format!("{name}-{i}"))).await;
        workers.push(worker);
    }
    workers
}

/// Waits until the server's decision pool has work, saying `what` if it never does.
async fn until_deciding(server: &Server, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while decisions_in_progress(server) < 1 {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Eight workers welcomed at once under a policy whose `admit-worker` and
/// `offer-job` each take a few hundred milliseconds keep both decision threads
/// busy for seconds. Meanwhile health, the admin API and another node's acknowledged job
/// answer — proven by order: the decisions are still running after they did.
/// The workers then get the job current by the time they were admitted.
async fn a_slow_policy_holds_only_the_traffic_waiting_for_it(kind: Kind) {
    let server = slow_server(kind).await;
    let admin = server.running.admin_addr.expect("admin server");
    let mut node = server.node().await;
    let mut first = job(1, 1000);
    first["id"] = json!("job-1");
    node.send(&first).await;
    assert_eq!(node.recv("the first job's ack").await["status"], "accepted");

    let mut workers = welcoming(&server, "hw-slow", 8).await;
    until_deciding(&server, "the welcomes never reached the decision pool").await;

    for _ in 0..5 {
        let health = get(admin, "/healthz").await;
        assert_eq!(health.status, 200, "{}", health.body);
    }
    let listed = get(admin, "/api/v1/workers").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let mut second = job(2, 1000);
    second["id"] = json!("job-2");
    node.send(&second).await;
    assert_eq!(node.recv("the second job's ack").await["status"], "accepted");
    assert!(
        decisions_in_progress(&server) >= 1,
        "health, the admin API and the ack must not wait for the slow decisions"
    );

    for worker in &mut workers {
        let work = worker.recv_within("the job, once admitted", Duration::from_secs(120)).await;
        assert_eq!(work["epoch_challenge"]["seed"], "s2", "the job current when it was admitted: {work}");
    }
    server.stop().await;
}

/// An offer is decided on copies: workers that leave while `offer-job` runs are
/// skipped when it is applied, and every worker still connected gets the job.
async fn workers_leaving_during_an_offer_cost_the_others_nothing(kind: Kind) {
    let server = slow_server(kind).await;
    let admin = server.running.admin_addr.expect("admin server");
    let mut workers = welcoming(&server, "hw-leaving", 8).await;
    let welcomed = tokio::time::Instant::now() + Duration::from_secs(120);
    while get(admin, "/status").await.json()["workers"] != json!(8) {
        assert!(tokio::time::Instant::now() < welcomed, "the workers were never welcomed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut node = server.node().await;
    node.send(&job(3, 1000)).await;
    until_deciding(&server, "the offer never reached the decision pool").await;
    // Half of them leave while the offer is decided.
    let staying = workers.split_off(4);
    for worker in workers {
        worker.close().await;
    }
    for mut worker in staying {
        let work = worker.recv_within("the job offered while others left", Duration::from_secs(120)).await;
        assert_eq!(work["epoch_challenge"]["seed"], "s3", "{work}");
    }
    server.stop().await;
}

/// A solution whose key (`partial_solution.nonce`) is over
/// `max_solution_key_bytes` is refused with the limit, before it reaches the
/// queue, a policy or a node; one at the limit goes through.
async fn a_solution_key_over_its_limit_is_refused_and_forgotten(kind: Kind) {
    let server = Server::start(kind, &["seed-rules"]).await;
    let mut worker = server.worker("hw-keys").await;
    let mut node = server.node().await;
    node.send(&job(5, 1)).await;
    let work = worker.recv("the job").await;
    let task = work["task_id"].as_str().expect("task").to_string();
    let solution = |nonce: Value, id: u64| {
        json!({ "type": "solution", "id": id, "task_id": task, "solution_target": 5,
                "solution": { "partial_solution": { "nonce": nonce, "address": "aleo1worker" } } })
    };
    worker.send(&solution(json!("n".repeat(12_000)), 1)).await;
    let refused = worker.recv("the ack of the over-long key").await;
    assert_eq!((refused["id"].clone(), refused["status"].clone()), (json!(1), json!("refused")), "{refused}");
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("partial_solution.nonce") && reason.contains("128"), "{reason}");

    let at_limit = "k".repeat(128);
    worker.send(&solution(json!(at_limit), 2)).await;
    assert_eq!(worker.recv("the ack at the limit").await["status"], "accepted");
    let delivered = node.recv("the solution at the limit").await;
    assert_eq!(delivered["partial_solution"]["nonce"], json!(at_limit), "only the solution within the limit arrives");
    server.stop().await;
}
