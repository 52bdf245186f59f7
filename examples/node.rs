//! An example node: submits a job every few seconds at a rising height and prints
//! the solutions it receives.
//!
//! `cargo run --example node -- [ws://127.0.0.1:8001/] [seconds between jobs] [proof target]`

use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8001/".into());
    let every: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let target: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let (socket, _) = tokio_tungstenite::connect_async(&url).await?;
    println!("node: connected to {url}; a job every {every} s at proof target {target}");
    let (mut tx, mut rx) = socket.split();
    // Heights rise with time, so a restarted node keeps going up.
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64 / every as i64;
    let mut ticker = tokio::time::interval(Duration::from_secs(every));
    let mut height = start;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                height += 1;
                let job = json!({ "epoch_challenge": { "epoch_number": height / 360, "epoch_block_hash": format!("ab{height:x}") },
                                  "proof_target": target, "block_height": height });
                tx.send(Message::text(job.to_string())).await?;
                println!("node: submitted height {height}");
            }
            frame = rx.next() => match frame {
                Some(Ok(Message::Text(text))) => println!("node: received {text}"),
                Some(Ok(Message::Close(reason))) => { println!("node: closed by server: {reason:?}"); return Ok(()); }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            }
        }
    }
}
