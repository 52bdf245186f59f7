//! eligo scaled out: several `eligo serve` processes on the same RabbitMQ, Kafka
//! and PostgreSQL, each delivering to its own connections.

mod support;

use serde_json::json;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::backends::{Backends, Kind};
use support::ws::Client;

/// A child `eligo serve`, killed when dropped.
struct Process {
    child: Child,
    node: SocketAddr,
    worker: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address")
}

fn spawn(backends: &Backends, name: &str, roles: &str) -> Process {
    spawn_roles(backends, name, roles, true)
}

/// Starts `eligo serve` with `roles`; waits for its listeners if it serves.
fn spawn_roles(backends: &Backends, name: &str, roles: &str, serves: bool) -> Process {
    let plugins = backends.dir().join(format!("policies-{name}"));
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    std::fs::copy(support::plugin_path("seed-rules"), plugins.join("seed-rules.wasm")).expect("copy");
    let (node, worker) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_eligo"))
        .arg("serve")
        .args(["--roles", roles, "--instance", name])
        .args(["--node-listen", &node.to_string(), "--worker-listen", &worker.to_string()])
        .args(["--admin-listen", &free_port().to_string()])
        .arg("--plugins-dir")
        .arg(&plugins)
        .envs(backends.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning eligo");
    let process = Process { child, node, worker };
    let deadline = Instant::now() + Duration::from_secs(60);
    while serves && (std::net::TcpStream::connect(worker).is_err() || std::net::TcpStream::connect(node).is_err()) {
        assert!(Instant::now() < deadline, "eligo {name} did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    process
}

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
    w1.recv("job 501").await;
    w2.recv("job 501").await;
    let task = t1.as_str().expect("task id");
    w1.send(&json!({ "task_id": task, "solution_target": 9, "solution": { "partial_solution": { "nonce": 4242 } } }))
        .await;
    assert_eq!(n2.recv("the solution, on the other process").await["partial_solution"]["nonce"], 4242);
    n1.assert_quiet("a solution for a height node 1 does not wait on").await;

    drop((w1, w2, n1, n2));
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
    node.assert_quiet("nothing twice").await;
    worker.assert_quiet("no error frame: every solution was accepted").await;
    let duplicated: u32 = received.values().map(|n| n - 1).sum();
    println!("processor killed mid-batch: accepted {SOLUTIONS}, delivered {}, duplicated {duplicated}", received.len());
    assert_eq!(duplicated, 0);
    assert!((1..=SOLUTIONS).all(|n| received.contains_key(&n)));
    drop((worker, node, processor, server));
    backends.finish().await;
}

/// A process running only the solution processor.
fn spawn_processor(backends: &Backends, name: &str) -> Process {
    spawn_roles(backends, name, "solution-processor", false)
}

impl Process {
    /// SIGKILL, now: nothing is flushed, acked or recorded.
    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
