//! An example node over HTTP: POSTs a job every few seconds at a rising height,
//! all to one HTTP node, and prints the solutions from the node's stream of
//! server-sent events, resuming with `Last-Event-ID` when the stream breaks.
//!
//! `cargo run --example http_node -- [http://127.0.0.1:8001] [seconds between jobs] [proof target]`
//!
//! Set `ELIGO_NODE_TOKEN` when a policy asks nodes for a token.

use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "http://127.0.0.1:8001".into());
    let every: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let target: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let token = std::env::var("ELIGO_NODE_TOKEN").ok();
    let client = reqwest::Client::new();
    let authorized = |request: reqwest::RequestBuilder| match &token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    // Heights rise with time, so a restarted node keeps going up.
    let mut height =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64 / every as i64;
    let mut node: Option<String> = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(every));
    let (found_tx, mut found) = tokio::sync::mpsc::channel::<String>(64);
    println!("node over HTTP: POSTing to {base}/api/v1/jobs every {every} s at proof target {target}");
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                height += 1;
                let job = json!({ "epoch_challenge": { "epoch_number": height / 360, "epoch_block_hash": format!("ab{height:x}") },
                                  "proof_target": target, "block_height": height });
                let mut request = authorized(client.post(format!("{base}/api/v1/jobs"))).json(&job);
                if let Some(id) = &node {
                    request = request.header("eligo-node", id);
                }
                // The same key on a retry of this POST: the job is queued once.
                request = request.header("idempotency-key", format!("height-{height}"));
                let response = request.send().await?;
                let status = response.status();
                let answer: Value = response.json().await.unwrap_or(Value::Null);
                println!("node over HTTP: height {height}: {status} {answer}");
                if status == reqwest::StatusCode::NOT_FOUND {
                    node = None; // expired: the next POST makes a new node
                }
                if let (None, Some(id)) = (&node, answer["node"].as_str()) {
                    node = Some(id.to_string());
                    let url = format!("{base}{}", answer["events"].as_str().unwrap_or_default());
                    tokio::spawn(follow(authorized(client.get(url)), found_tx.clone()));
                }
            }
            Some(solution) = found.recv() => println!("node over HTTP: received {solution}"),
        }
    }
}

/// Reads the node's stream, reconnecting with `Last-Event-ID` after a break, and
/// sends on each solution's data.
async fn follow(request: reqwest::RequestBuilder, found: tokio::sync::mpsc::Sender<String>) {
    let mut last_id: Option<String> = None;
    loop {
        let Some(mut request) = request.try_clone() else { return };
        request = request.header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let response = match request.send().await {
            Ok(response) if response.status().is_success() => response,
            Ok(response) => {
                println!("node over HTTP: stream answered {}; it has ended", response.status());
                return;
            }
            Err(e) => {
                println!("node over HTTP: stream failed ({e}); reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut body = response.bytes_stream();
        let mut text = String::new();
        while let Some(Ok(bytes)) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&bytes).replace("\r\n", "\n"));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let (mut event, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    match line.split_once(':') {
                        Some(("event", v)) => event = v.trim().to_string(),
                        Some(("id", v)) => last_id = Some(v.trim().to_string()),
                        Some(("data", v)) => data = v.trim_start().to_string(),
                        _ => {}
                    }
                }
                match event.as_str() {
                    "solution" if found.send(data).await.is_err() => return,
                    "expired" => return,
                    _ => {}
                }
            }
        }
    }
}
