//! A webhook receiver: a real HTTP server that checks each request's signature
//! the Standard Webhooks way and answers with the status it is told to.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

/// The signing secret the tests configure.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// `webhook-id`.
    pub id: String,
    /// The body, parsed.
    pub body: serde_json::Value,
    /// Whether its signature verified with [`SECRET`].
    pub verified: bool,
    /// The status it was answered.
    pub answered: u16,
}

struct Shared {
    status: AtomicU16,
    received: Mutex<Vec<Received>>,
}

/// A running receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// A receiver on a free port, answering `status`.
    pub async fn start(status: u16) -> Receiver {
        Self::start_at("127.0.0.1:0".parse().expect("address"), status).await
    }

    /// A receiver at `addr` (to come back on the same port), answering `status`.
    pub async fn start_at(addr: SocketAddr, status: u16) -> Receiver {
        let shared = Arc::new(Shared { status: AtomicU16::new(status), received: Mutex::new(Vec::new()) });
        let app = axum::Router::new().fallback(receive).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.expect("the receiver binds");
        let addr = listener.local_addr().expect("its address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, shared, task }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers `status` from now on.
    pub fn answer(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("receiver lock").clone()
    }

    /// The requests it answered 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| (200..300).contains(&r.answered)).collect()
    }

    /// Waits until `done` holds of what it got, for at most `wait`.
    pub async fn until(&self, wait: std::time::Duration, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let received = self.received();
            if done(&received) || tokio::time::Instant::now() > deadline {
                return received;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Stops listening (its port is free again).
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let verified = standardwebhooks::Webhook::new(SECRET).expect("secret").verify(&body, &headers).is_ok();
    let status = shared.status.load(Ordering::SeqCst);
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    shared.received.lock().expect("receiver lock").push(Received { id, body, verified, answered: status });
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
