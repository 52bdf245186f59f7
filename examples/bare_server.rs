//! A bare WebSocket server: the floor under the reconnect-storm row of `scripts/bench`.
//!
//! It does the least any worker server must do when every worker reconnects at
//! once: accept, read the welcome (the first text frame), send one job-shaped
//! frame (`{"task_id":"…","epoch_challenge":{…}}`) and hold the connection until
//! the client closes it. No policies, no store, no log. The same load client
//! (`loadgen --mode storm --no-job`) storms it and eligo in the same run, so
//! eligo's time reads as a multiple of what accepting and framing alone cost on
//! that machine.
//!
//! `cargo run --release --example bare_server -- --listen 127.0.0.1:28010`

use anyhow::{Context, Result};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::Router;
use clap::Parser;
use serde_json::json;
use std::net::SocketAddr;
use tokio::net::TcpSocket;

/// Serves every WebSocket client one job after its welcome, and nothing else: the
/// floor of the reconnect-storm bench.
#[derive(Parser, Debug)]
struct Args {
    /// Address to listen on (any path is accepted, as eligo does).
    #[arg(long, default_value = "127.0.0.1:28010")]
    listen: SocketAddr,
    /// Connections the kernel may queue before they are accepted; the kernel caps
    /// it at net.core.somaxconn. Large, so a storm is not slowed by SYNs dropped
    /// and retried a second later.
    #[arg(long, default_value_t = 65535)]
    backlog: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Every connection is a file: the soft limit (often 1024) would cap the storm
    // far below what the machine holds.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("could not raise the open-files limit: {e}");
    }
    // One job for everyone, serialised once, as a worker server holds its current job.
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros() as u64;
    let job = json!({
        "task_id": uuid::Uuid::new_v4().to_string(),
        "epoch_challenge": { "height": now_us / 1000, "run": "bare", "sent_us": now_us },
    });
    let app = Router::new().fallback(upgrade).with_state(Utf8Bytes::from(job.to_string()));

    let socket = if args.listen.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    let listener = socket.listen(args.backlog)?;
    eprintln!("bare server: workers connect to ws://{}/", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// The upgrade, with the small per-connection buffers eligo's worker server uses
/// by default, so the floor holds connections of the same weight.
async fn upgrade(ws: WebSocketUpgrade, State(job): State<Utf8Bytes>) -> Response {
    ws.read_buffer_size(4096).write_buffer_size(4096).on_upgrade(move |socket| serve_worker(socket, job))
}

/// Welcome in, job out, then hold until the client goes.
async fn serve_worker(mut socket: WebSocket, job: Utf8Bytes) {
    loop {
        match socket.recv().await {
            Some(Ok(Message::Text(_))) => break,
            Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            // Pings are answered by the library; nothing else comes before a welcome.
            Some(Ok(_)) => {}
        }
    }
    if socket.send(Message::Text(job)).await.is_err() {
        return;
    }
    // Reading, not just waiting: a close from the client (and pings) arrive as frames.
    while let Some(Ok(message)) = socket.recv().await {
        if matches!(message, Message::Close(_)) {
            break;
        }
    }
}
