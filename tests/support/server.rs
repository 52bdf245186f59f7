//! A whole eligo on fresh backends, and the frames nodes and workers send it.

use super::backends::{Backends, Kind};
use super::ws::Client;
use eligo::app::{start_with, Running};
use eligo::config::Config;
use eligo::store::Store;
use serde_json::{json, Value};
use std::sync::Arc;

/// What [`Server::solve_one_job`] sent.
pub struct Solved {
    /// The job's task id.
    pub task: String,
    /// The nonce of the valid solution.
    pub good: u64,
    /// The nonce of the invalid one.
    pub bad: u64,
}

/// A running server on fresh backends, with the named plugins in its folder.
pub struct Server {
    pub running: Running,
    pub backends: Backends,
}

impl Server {
    pub async fn start(kind: Kind, plugins: &[&str]) -> Server {
        Self::start_on(Backends::new(kind).await, plugins, None).await
    }

    pub async fn start_on(backends: Backends, plugins: &[&str], store: Option<Arc<dyn Store>>) -> Server {
        Self::start_configured(backends, plugins, store, |_| {}).await
    }

    pub async fn start_configured(
        backends: Backends,
        plugins: &[&str],
        store: Option<Arc<dyn Store>>,
        configure: impl FnOnce(&mut Config),
    ) -> Server {
        let dir = backends.dir().join("policies");
        std::fs::create_dir_all(&dir).expect("policies dir");
        for (i, name) in plugins.iter().enumerate() {
            std::fs::copy(super::plugin_path(name), dir.join(format!("{}0-{name}.wasm", i + 1))).expect("copy plugin");
        }
        let mut config = Config::default();
        config.node.listen = ([127, 0, 0, 1], 0).into();
        config.worker.listen = ([127, 0, 0, 1], 0).into();
        config.admin.listen = Some(([127, 0, 0, 1], 0).into());
        config.plugins.dir = dir;
        config.plugins.debounce_ms = 50;
        configure(&mut config);
        let store = store.unwrap_or_else(|| backends.store.clone());
        let running =
            start_with(&config, backends.queue.clone(), backends.log.clone(), store).await.expect("eligo starts");
        Server { running, backends }
    }

    pub async fn node(&self) -> Client {
        Client::connect(self.running.node_addr.expect("node server")).await
    }

    pub async fn worker(&self, hardware_id: &str) -> Client {
        let mut worker = Client::connect(self.running.worker_addr.expect("worker server")).await;
        worker.send(&welcome(hardware_id)).await;
        worker
    }

    /// A worker `hardware_id` and a node connect; the node sends a job at `height`
    /// (target 500), the worker a valid and an invalid solution to it. Returns
    /// once the node has the valid one, with both connections still open.
    pub async fn solve_one_job(&self, hardware_id: &str, height: i64) -> (Client, Client, Solved) {
        let mut worker = self.worker(hardware_id).await;
        let mut node = self.node().await;
        let solved = solve(&mut worker, &mut node, height).await;
        (worker, node, solved)
    }

    pub async fn stop(self) {
        self.running.stop().await;
        self.backends.finish().await;
    }
}

/// `node` sends a job at `height` (target 500) and `worker`, whose next frame is
/// that job, sends a valid and an invalid solution to it; returns once the node
/// has the valid one.
pub async fn solve(worker: &mut Client, node: &mut Client, height: i64) -> Solved {
    node.send(&job(height, 500)).await;
    let work = worker.recv("the job").await;
    let task = work["task_id"].as_str().expect("task id").to_string();
    let (good, reached) = super::solver::solve(&work["epoch_challenge"], 500, 0);
    let (bad, _) = super::solver::fail(&work["epoch_challenge"], 500, 0);
    worker.send(&solution(&task, good, reached)).await;
    worker.send(&solution(&task, bad, 500)).await;
    node.recv("the valid solution").await;
    Solved { task, good, bad }
}

/// Where the nonces of [`assert_node_quiet`]'s markers start: above any a test sends.
const MARKER_NONCES: u64 = 1 << 40;

/// Silence proven by order, on the node side: `worker` sends one more valid
/// solution to the job `work` (a worker's job frame) reaching `target`, and
/// `node`'s next frame must be that one. One job's solutions share one ordered
/// partition of the log, and a node's frames one ordered outbox, so a solution
/// the pipeline already had for `node` comes before it. Call it once what was
/// sent before is judged (a verdict, or the node got a later solution of the job).
/// Returns the marker's nonce.
pub async fn assert_node_quiet(worker: &mut Client, node: &mut Client, work: &Value, target: u64, what: &str) -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(MARKER_NONCES);
    let start = NEXT.fetch_add(1 << 20, std::sync::atomic::Ordering::Relaxed);
    let (nonce, reached) = super::solver::solve(&work["epoch_challenge"], target, start);
    let task = work["task_id"].as_str().expect("a job frame has a task id");
    worker.send(&solution(task, nonce, reached)).await;
    let got = node.recv("the marker solution").await;
    assert_eq!(got["partial_solution"]["nonce"], nonce, "nothing before the marker ({what}), got {got}");
    nonce
}

/// Silence proven by order, on the worker side: `node` sends the job `marker`,
/// higher than every job sent before, and `worker`'s next frame must be it. Jobs
/// share one ordered partition of the log, and a worker's frames one ordered
/// outbox, so a job the pipeline already had for `worker` comes before it. Call
/// it once the jobs sent before are queued (acknowledged, or sent on). A node
/// connection of its own sending the marker leaves the test's nodes waiting
/// where they were. Returns the worker's job frame.
pub async fn assert_worker_quiet(node: &mut Client, worker: &mut Client, marker: &Value, what: &str) -> Value {
    node.send(marker).await;
    let got = worker.recv("the marker job").await;
    assert_eq!(got["epoch_challenge"], marker["epoch_challenge"], "nothing before the marker ({what}), got {got}");
    got
}

pub fn welcome(hardware_id: &str) -> Value {
    json!({ "ip": "10.1.2.3", "address": "aleo1worker", "hardware": "NVIDIA RTX 4090", "hardware_id": hardware_id, "caption": "rig" })
}

pub fn challenge(height: i64) -> Value {
    json!({ "epoch_number": height / 10, "seed": format!("s{height}"), "nested": { "b": 2, "a": 1 } })
}

pub fn job(height: i64, target: u64) -> Value {
    json!({ "epoch_challenge": challenge(height), "proof_target": target, "block_height": height })
}

pub fn solution(task_id: &str, nonce: u64, target: u64) -> Value {
    json!({ "type": "solution", "task_id": task_id, "solution_target": target,
            "solution": { "partial_solution": { "nonce": nonce, "address": "aleo1worker" }, "proof.w": { "x": "1" } } })
}
