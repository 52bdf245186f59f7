//! An example worker: sends its welcome, solves each job it receives with the
//! reference proof-of-work solver (what the `pow-check` plugin verifies), and
//! submits the solution with an `id`, counting the server's answers the way mining
//! software counts shares: accepted / refused (acks), valid / invalid (verdicts).
//!
//! `cargo run --example worker -- [ws://127.0.0.1:8002/] [target to reach]`

#[path = "solver/mod.rs"]
mod solver;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8002/".into());
    let target: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let (socket, _) = tokio_tungstenite::connect_async(&url).await?;
    let (mut tx, mut rx) = socket.split();
    let hardware_id = format!("example-{}", std::process::id());
    let welcome = json!({ "ip": "127.0.0.1", "address": "aleo1example", "hardware": "cpu",
                          "hardware_id": hardware_id, "caption": "example worker" });
    tx.send(Message::text(welcome.to_string())).await?;
    println!("worker: connected to {url} as {hardware_id}; solving to target {target}");
    let mut next_nonce = rand_start();
    let mut counts = Counts::default();
    let mut next_id: u64 = 1;
    while let Some(frame) = rx.next().await {
        match frame? {
            Message::Text(text) => {
                let work: Value = serde_json::from_str(&text)?;
                if counts.answer(&work) {
                    println!("worker: {} ({text})", counts.line());
                    continue;
                }
                let (Some(task_id), Some(challenge)) = (work["task_id"].as_str(), work.get("epoch_challenge")) else {
                    println!("worker: server says {text}");
                    continue;
                };
                let challenge = challenge.clone();
                let start = next_nonce;
                let (nonce, reached) =
                    tokio::task::spawn_blocking(move || solver::solve(&challenge, target, start)).await?;
                next_nonce = nonce + 1;
                let solution = json!({ "id": next_id, "task_id": task_id, "solution_target": reached,
                                       "solution": { "partial_solution": { "nonce": nonce, "address": "aleo1example" } } });
                next_id += 1;
                tx.send(Message::text(solution.to_string())).await?;
                println!("worker: task {task_id}: nonce {nonce} reaches {reached}");
            }
            Message::Close(reason) => {
                println!("worker: closed by server: {reason:?}");
                break;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The server's answers to this worker's solutions.
#[derive(Default)]
struct Counts {
    accepted: u64,
    refused: u64,
    valid: u64,
    invalid: u64,
}

impl Counts {
    /// Counts `frame` if it is an ack or a verdict.
    fn answer(&mut self, frame: &Value) -> bool {
        match (frame["type"].as_str(), frame["status"].as_str(), frame["valid"].as_bool()) {
            (Some("ack"), Some("accepted"), _) => self.accepted += 1,
            (Some("ack"), _, _) => self.refused += 1,
            (Some("verdict"), _, Some(true)) => self.valid += 1,
            (Some("verdict"), _, _) => self.invalid += 1,
            _ => return false,
        }
        true
    }

    fn line(&self) -> String {
        format!("accepted {} refused {} | valid {} invalid {}", self.accepted, self.refused, self.valid, self.invalid)
    }
}

/// Workers start from different nonces so their solutions do not collide.
fn rand_start() -> u64 {
    use rand::Rng;
    rand::thread_rng().gen_range(0..u64::MAX / 2)
}
