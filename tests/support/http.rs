//! A minimal HTTP/1.0 client for the admin server: one request per connection,
//! the response read to its end.

use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The header lines, as sent.
    pub head: String,
    pub body: String,
}

impl Response {
    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The body as JSON, after asserting the status is 200.
    pub fn ok_json(&self) -> Value {
        assert_eq!(self.status, 200, "{}", self.body);
        self.json()
    }
}

fn request(path: &str, headers: &[(&str, &str)]) -> String {
    let mut text = format!("GET {path} HTTP/1.0\r\nHost: eligo\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text + "\r\n"
}

fn parse(raw: &str) -> Response {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {head}"));
    Response { status, head: head.to_string(), body: body.to_string() }
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    get_with(addr, path, &[]).await
}

/// `GET path` with extra headers.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connecting to the admin server");
    stream.write_all(request(path, headers).as_bytes()).await.expect("request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("a response within 20 s")
        .expect("reading the response");
    parse(&String::from_utf8_lossy(&raw))
}

/// The first server-sent event of the stream at `path`: its status and the
/// event's lines (`event: …`, `data: …`).
pub async fn first_event(addr: SocketAddr, path: &str) -> Response {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connecting to the admin server");
    stream.write_all(request(path, &[]).as_bytes()).await.expect("request");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((_, body)) = text.split_once("\r\n\r\n") {
            if body.contains("data:") && body.contains("\n\n") {
                return parse(&text);
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("an event within 20 s")
            .expect("reading the stream");
        assert!(n > 0, "the stream ended before an event: {text}");
        raw.extend_from_slice(&buf[..n]);
    }
}

/// Polls `/readyz` until it answers `status`, or fails after 90 s (what a broker
/// takes to be noticed gone and back) with the last answer.
pub async fn readyz_until(admin: SocketAddr, status: u16) -> Response {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let answer = get(admin, "/readyz").await;
        if answer.status == status {
            return answer;
        }
        assert!(tokio::time::Instant::now() < deadline, "/readyz never answered {status}: {}", answer.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `path` until `done` holds for its JSON, or fails after 15 s with the last answer.
pub async fn until(admin: SocketAddr, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answer = get(admin, path).await.ok_json();
        if done(&answer) {
            return answer;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} never got there: {answer:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
