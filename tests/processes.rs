//! eligo scaled out: several `eligo serve` processes on the same RabbitMQ, Kafka
//! and PostgreSQL, each delivering to its own connections.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::backends::{Backends, Kind};
use support::process::{deployment, spawn, spawn_roles, Process};
use support::ws::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_each_deliver_to_their_own_connections() {
    let backends = Backends::new(Kind::Networked).await;
    let first =
        spawn(&backends, "first", "node-server,worker-server,job-processor,solution-processor,presence-processor");
    let second = spawn(&backends, "second", "node-server,worker-server");

    let welcome =
        |id: &str| json!({ "ip": "1.1.1.1", "address": "a", "hardware": "cpu", "hardware_id": id, "caption": "c" });
    let mut w1 = Client::connect(first.worker).await;
    w1.send(&welcome("w1")).await;
    let mut w2 = Client::connect(second.worker).await;
    w2.send(&welcome("w2")).await;
    let mut n1 = Client::connect(first.node).await;
    let mut n2 = Client::connect(second.node).await;

    // A job from a node on the second process reaches workers on both.
    n2.send(&json!({ "epoch_challenge": { "e": 1 }, "proof_target": 3, "block_height": 500 })).await;
    let t1 = w1.recv("job 500 on the first process").await["task_id"].clone();
    let t2 = w2.recv("job 500 on the second process").await["task_id"].clone();
    assert_eq!(t1, t2, "one job, one task id");

    // Node 1 waits on another height; the solution goes to node 2 only.
    n1.send(&json!({ "epoch_challenge": { "e": 2 }, "proof_target": 3, "block_height": 501 })).await;
    let task501 = w1.recv("job 501").await["task_id"].clone();
    w2.recv("job 501").await;
    // A node on the first process waiting on 500 as node 2 does: once it has the
    // solution, the first process has offered it to node 1 too.
    let mut beside_n1 = Client::connect(first.node).await;
    beside_n1
        .send_queued(&json!({ "epoch_challenge": { "e": 1 }, "proof_target": 3, "block_height": 500 }), "500")
        .await;
    let task = t1.as_str().expect("task id");
    w1.send(&json!({ "task_id": task, "solution_target": 9, "solution": { "partial_solution": { "nonce": 4242 } } }))
        .await;
    assert_eq!(n2.recv("the solution, on the other process").await["partial_solution"]["nonce"], 4242);
    assert_eq!(beside_n1.recv("the solution, on the first process").await["partial_solution"]["nonce"], 4242);
    // Then a solution for 501, found after: node 1's next frame must be it.
    w1.send(
        &json!({ "task_id": task501, "solution_target": 9, "solution": { "partial_solution": { "nonce": 4243 } } }),
    )
    .await;
    let next = n1.recv("the solution for 501").await;
    assert_eq!(next["partial_solution"]["nonce"], 4243, "a solution for a height node 1 does not wait on came first");

    drop((w1, w2, n1, n2, beside_n1));
    drop((first, second));
    backends.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_left_open_by_a_killed_process_are_finished_when_it_restarts() {
    let backends = Backends::new(Kind::Networked).await;
    let roles = "node-server,worker-server,job-processor,solution-processor,presence-processor";
    let first = spawn(&backends, "crashy", roles);
    let mut worker = Client::connect(first.worker).await;
    worker
        .send(&json!({ "ip": "1.1.1.1", "address": "a", "hardware": "cpu", "hardware_id": "hw-crash", "caption": "c" }))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while backends.store.worker_connections("hw-crash", "c").await.expect("rows").is_empty() {
        assert!(Instant::now() < deadline, "the connection was never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(first); // SIGKILL: no chance to record the disconnect
    let rows = backends.store.worker_connections("hw-crash", "c").await.expect("rows");
    assert!(rows[0].disconnected_at.is_none(), "a killed process leaves its connection open");

    let again = spawn(&backends, "crashy", roles);
    let rows = backends.store.worker_connections("hw-crash", "c").await.expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].disconnected_at, Some(rows[0].connected_at), "finished at its last solution, or else its start");
    drop((worker, again));
    backends.finish().await;
}

/// `kill -9` of the process running the solution processor while it works
/// through a backlog: a new one takes over, and every solution a worker had
/// accepted reaches the node once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_killed_mid_batch_loses_and_duplicates_nothing() {
    let backends = Backends::new(Kind::Networked).await;
    let server = spawn(&backends, "edge", "node-server,worker-server,job-processor");
    let mut processor = spawn_processor(&backends, "first");
    let mut worker = Client::connect(server.worker).await;
    worker
        .send(&json!({ "ip": "1.1.1.1", "address": "a", "hardware": "cpu", "hardware_id": "hw", "caption": "c" }))
        .await;
    let mut node = Client::connect(server.node).await;
    node.send(&json!({ "epoch_challenge": { "e": 1 }, "proof_target": 1, "block_height": 600 })).await;
    let task = worker.recv("job 600").await["task_id"].as_str().expect("task id").to_owned();

    const SOLUTIONS: u64 = 3_000;
    for nonce in 1..=SOLUTIONS {
        worker.send(&json!({ "task_id": task, "solution_target": 1, "solution": { "partial_solution": { "nonce": nonce } } }))
            .await;
        if nonce % 100 == 0 {
            // Under the connection's frame budget (1000/s), so every one is accepted.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    let mut received = std::collections::HashMap::<u64, u32>::new();
    // Kill it once it is under way: some delivered, most still queued.
    while received.len() < 200 {
        let got = node.recv_within("solutions before the kill", Duration::from_secs(60)).await;
        *received.entry(got["partial_solution"]["nonce"].as_u64().unwrap_or_default()).or_default() += 1;
    }
    processor.kill_now();
    processor = spawn_processor(&backends, "second");
    while received.len() < SOLUTIONS as usize {
        let got = match node.next_within(Duration::from_secs(60)).await {
            support::ws::Next::Frame(got) => got,
            other => panic!("after {} of {SOLUTIONS} solutions: {other:?}", received.len()),
        };
        *received.entry(got["partial_solution"]["nonce"].as_u64().unwrap_or_default()).or_default() += 1;
    }
    // One more, with an id: the worker's next frames are its ack and verdict (no
    // error frame came before: every solution was accepted), and the node's next
    // frame is it (nothing came twice: a redelivered batch is ahead of it).
    let marker = SOLUTIONS + 1;
    let frame =
        json!({ "task_id": task, "solution_target": 1, "solution": { "partial_solution": { "nonce": marker } } });
    worker.send_judged(&frame, "marker").await;
    assert_eq!(node.recv("the marker").await["partial_solution"]["nonce"], marker, "nothing twice");
    let duplicated: u32 = received.values().map(|n| n - 1).sum();
    println!("processor killed mid-batch: accepted {SOLUTIONS}, delivered {}, duplicated {duplicated}", received.len());
    assert_eq!(duplicated, 0);
    assert!((1..=SOLUTIONS).all(|n| received.contains_key(&n)));
    drop((worker, node, processor, server));
    backends.finish().await;
}

/// Every process of one deployment, killed with `kill -9` while a worker sends
/// solutions and the processors work through them, then started again: every
/// solution eligo acked is stored once and reaches the node once per connection,
/// and every worker connection has one row, finished.
async fn every_process_killed_mid_load_loses_and_duplicates_nothing(kind: Kind) {
    let backends = Backends::new(kind).await;
    let mut processes = deployment(&backends, kind);
    let edge = |processes: &[Process]| (processes[0].node, processes[0].worker);
    let job = json!({ "id": "job-700", "epoch_challenge": { "e": 7 }, "proof_target": 1, "block_height": 700 });
    let accepted = json!({ "type": "ack", "id": "job-700", "status": "accepted" });

    let mut node = Client::connect(edge(&processes).0).await;
    node.send(&job).await;
    assert_eq!(node.recv("the job's ack").await, accepted);
    let before_kill = tokio::spawn(delivered_until_closed(node));
    let mut worker = Client::connect(edge(&processes).1).await;
    worker.send(&kill_welcome()).await;
    let task = worker.recv("job 700").await["task_id"].as_str().expect("task id").to_owned();

    let mut acked = std::collections::BTreeSet::new();
    let mut next_nonce = 1;
    // One round answered and judged; one only acked (the processors still at
    // it); then one cut short by the kill once part of it is acked.
    let sent = send_solutions(&mut worker, &task, &mut next_nonce, 200).await;
    let answers = answers_until(&mut worker, &sent, Until::Judged, Duration::from_secs(30)).await;
    assert_eq!(answers.accepted.len(), 200, "every solution under the budget is accepted: {answers:?}");
    acked.extend(answers.accepted);
    let sent = send_solutions(&mut worker, &task, &mut next_nonce, 200).await;
    let answers = answers_until(&mut worker, &sent, Until::Acked(200), Duration::from_secs(30)).await;
    assert_eq!(answers.accepted.len(), 200, "every solution under the budget is accepted: {answers:?}");
    acked.extend(answers.accepted);
    let sent = send_solutions(&mut worker, &task, &mut next_nonce, 300).await;
    let early = answers_until(&mut worker, &sent, Until::Acked(50), Duration::from_secs(30)).await;
    for process in &mut processes {
        process.kill_now();
    }
    // What the server wrote before it died is still in the socket.
    let late = answers_until(&mut worker, &sent, Until::Judged, Duration::from_secs(10)).await;
    for cut_short in [&early, &late] {
        assert!(cut_short.refused.is_empty(), "nothing was refused: {cut_short:?}");
        acked.extend(cut_short.accepted.iter().copied());
    }
    let first_connection = before_kill.await.expect("the node's first connection");

    drop(processes);
    let processes = deployment(&backends, kind);
    let mut worker = Client::connect(edge(&processes).1).await;
    worker.send(&kill_welcome()).await;
    assert_eq!(worker.recv("the current job, again").await["task_id"], task.as_str());
    let sent = send_solutions(&mut worker, &task, &mut next_nonce, 200).await;
    let answers = answers_until(&mut worker, &sent, Until::Judged, Duration::from_secs(30)).await;
    assert_eq!(answers.accepted.len(), 200, "after the restart every solution is accepted again: {answers:?}");
    assert_eq!(answers.valid, 200, "and found valid");
    acked.extend(answers.accepted);

    // The node comes back and submits its job again, as nodes do.
    let mut node = Client::connect(edge(&processes).0).await;
    node.send(&job).await;
    let mut second_connection = Vec::new();
    let missing = |got: &[u64]| acked.iter().filter(|n| !first_connection.contains(n) && !got.contains(n)).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while missing(&second_connection) > 0 {
        assert!(Instant::now() < deadline, "{} acked solutions never reached the node", missing(&second_connection));
        match node.next_within(Duration::from_secs(5)).await {
            support::ws::Next::Frame(f) if f["type"] == "ack" => assert_eq!(f, accepted),
            support::ws::Next::Frame(f) => {
                second_connection.push(f["partial_solution"]["nonce"].as_u64().expect("nonce"))
            }
            support::ws::Next::Quiet => {}
            closed => panic!("the node's connection closed: {closed:?}"),
        }
    }
    // One more solution: the node's next solution must be it (an ack of its job
    // may come between), so none came twice ahead of it.
    let marker = next_nonce;
    let frame =
        json!({ "task_id": task, "solution_target": 1, "solution": { "partial_solution": { "nonce": marker } } });
    worker.send_judged(&frame, "marker").await;
    let next = loop {
        match node.recv("the marker").await {
            f if f == accepted => continue,
            f => break f,
        }
    };
    assert_eq!(next["partial_solution"]["nonce"], marker, "nothing more");
    for (name, got) in [("first", &first_connection), ("second", &second_connection)] {
        let distinct: std::collections::HashSet<&u64> = got.iter().collect();
        assert_eq!(distinct.len(), got.len(), "a solution reached the node twice on its {name} connection");
    }

    let stored = stored_nonces(&backends, "hw-kill").await;
    let unstored: Vec<&u64> = acked.iter().filter(|n| !stored.contains(n)).collect();
    assert!(unstored.is_empty(), "acked but not stored: {unstored:?}");
    println!(
        "{kind:?}: every process killed mid-load: acked {}, stored {}, delivered {} + {} (two node connections)",
        acked.len(),
        stored.len(),
        first_connection.len(),
        second_connection.len()
    );

    // One row per worker connection; the one the kill cut is finished on restart.
    worker.close().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = backends.store.worker_connections("hw-kill", "c").await.expect("rows");
        if rows.len() == 2 && rows.iter().all(|r| r.disconnected_at.is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "worker rows after the kill: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((node, processes));
    backends.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_embedded_process_killed_mid_load_loses_and_duplicates_nothing() {
    every_process_killed_mid_load_loses_and_duplicates_nothing(Kind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_networked_process_killed_mid_load_loses_and_duplicates_nothing() {
    every_process_killed_mid_load_loses_and_duplicates_nothing(Kind::Networked).await;
}

/// The processes of a deployment, the one serving nodes and workers first:
/// embedded, one process with every role (its queue and store are files of one
/// process); networked, an edge and the processors apart.
fn kill_welcome() -> serde_json::Value {
    json!({ "ip": "1.1.1.1", "address": "a", "hardware": "cpu", "hardware_id": "hw-kill", "caption": "c" })
}

/// Sends `count` solutions with ids (their nonces), as fast as the socket takes
/// them (a send may fail once the server is gone); returns the nonces sent.
async fn send_solutions(worker: &mut Client, task: &str, next_nonce: &mut u64, count: u64) -> Vec<u64> {
    let mut sent = Vec::new();
    for _ in 0..count {
        let nonce = *next_nonce;
        *next_nonce += 1;
        let frame = json!({ "id": nonce, "task_id": task, "solution_target": 1,
                            "solution": { "partial_solution": { "nonce": nonce } } });
        worker.send_text_refusable(frame.to_string()).await;
        sent.push(nonce);
    }
    sent
}

/// What a worker was answered.
#[derive(Debug, Default)]
struct Answers {
    accepted: Vec<u64>,
    refused: Vec<u64>,
    valid: u64,
}

/// How long to read answers.
enum Until {
    /// Every solution sent is answered, and every accepted one judged.
    Judged,
    /// This many are answered.
    Acked(usize),
}

/// Reads answers to `sent` until `until`, the connection closes, or `wait` passes.
async fn answers_until(worker: &mut Client, sent: &[u64], until: Until, wait: Duration) -> Answers {
    let mut answers = Answers::default();
    let deadline = Instant::now() + wait;
    let mut verdicts = 0;
    let done = |answers: &Answers, verdicts: usize| {
        let answered = answers.accepted.len() + answers.refused.len();
        match until {
            Until::Judged => answered == sent.len() && verdicts >= answers.accepted.len(),
            Until::Acked(n) => answered >= n,
        }
    };
    while !done(&answers, verdicts) && Instant::now() < deadline {
        match worker.next_within(Duration::from_secs(1)).await {
            support::ws::Next::Frame(f) if f["type"] == "ack" => {
                let id = f["id"].as_u64().expect("the id sent");
                assert!(sent.contains(&id), "an ack for a solution not sent: {f}");
                if f["status"] == "accepted" {
                    answers.accepted.push(id);
                } else {
                    answers.refused.push(id);
                }
            }
            // Verdicts of an earlier round may still come in.
            support::ws::Next::Frame(f) if f["type"] == "verdict" => {
                if f["id"].as_u64().is_some_and(|id| sent.contains(&id)) {
                    verdicts += 1;
                    answers.valid += u64::from(f["valid"] == true);
                }
            }
            support::ws::Next::Frame(f) => panic!("an unexpected frame: {f}"),
            support::ws::Next::Quiet => {}
            support::ws::Next::Closed(..) => break,
        }
    }
    answers
}

/// The nonces a node connection receives until it closes.
async fn delivered_until_closed(mut node: Client) -> Vec<u64> {
    let mut got = Vec::new();
    while let support::ws::Next::Frame(f) = node.next_within(Duration::from_secs(120)).await {
        got.push(f["partial_solution"]["nonce"].as_u64().expect("a solution"));
    }
    got
}

/// The nonces stored for `hardware_id`, every page.
async fn stored_nonces(backends: &Backends, hardware_id: &str) -> std::collections::HashSet<u64> {
    use eligo::store::{Page, SolutionFilter};
    let filter = SolutionFilter { hardware_id: Some(hardware_id.into()), ..Default::default() };
    let (mut nonces, mut before) = (std::collections::HashSet::new(), None);
    loop {
        let page = backends.store.list_solutions(&filter, Page::new(Page::MAX_LIMIT, before)).await.expect("a page");
        for s in &page.items {
            assert!(nonces.insert(s.unique_key.parse().expect("a nonce")), "stored twice: {}", s.unique_key);
        }
        match page.next {
            Some(next) => before = Some(next),
            None => return nonces,
        }
    }
}

/// A process running only the solution processor.
fn spawn_processor(backends: &Backends, name: &str) -> Process {
    spawn_roles(backends, name, "solution-processor", false)
}
