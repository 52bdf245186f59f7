//! `/readyz`: whether this process should be sent traffic now. Unlike `/healthz`
//! (alive: restarting would not help), it is 503 while something this process
//! needs is missing — a plugin that failed to load (its decisions are refused),
//! the queue, the log or the store unreachable — and while it drains after
//! SIGTERM, so a load balancer or Kubernetes stops sending it connections.
//!
//! The path needs no token, so its checks are bounded: one check runs at a time
//! and its answer serves every request within [`FRESH`].

use crate::pipeline::Services;
use axum::extract::State;
use axum::http::StatusCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long an answer is reused: probes from many sources cost one check.
const FRESH: Duration = Duration::from_secs(1);
/// How long one backend may take to answer before it counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/readyz` checks, and its latest answer.
pub struct Readiness {
    services: Services,
    draining: CancellationToken,
    latest: tokio::sync::Mutex<Option<(Instant, Answer)>>,
}

/// One answer: ready or not, and a line per check.
#[derive(Clone, Debug)]
pub struct Answer {
    /// Whether every check passed.
    pub ready: bool,
    /// `name: ok` or `name: why not`, in a fixed order.
    pub lines: Vec<String>,
}

impl Readiness {
    /// Readiness of the process whose backends and plugins are `services`;
    /// not ready once `draining` is cancelled.
    pub fn new(services: Services, draining: CancellationToken) -> Self {
        Readiness { services, draining, latest: tokio::sync::Mutex::new(None) }
    }

    /// The answer now: a fresh one, or the one a check made within [`FRESH`].
    pub async fn answer(&self) -> Answer {
        // Draining is known without a check, and must show at once.
        if self.draining.is_cancelled() {
            return Answer { ready: false, lines: vec!["draining: shutting down".into()] };
        }
        let mut latest = self.latest.lock().await;
        if let Some((at, answer)) = latest.as_ref() {
            if at.elapsed() < FRESH {
                return answer.clone();
            }
        }
        let answer = self.check().await;
        *latest = Some((Instant::now(), answer.clone()));
        answer
    }

    async fn check(&self) -> Answer {
        let s = &self.services;
        let (queue, log, store) = tokio::join!(
            bounded("queue", async { s.queue.check().await.map_err(|e| e.to_string()) }),
            bounded("log", async { s.log.check().await.map_err(|e| e.to_string()) }),
            bounded("store", async { s.store.check().await.map_err(|e| e.to_string()) }),
        );
        let failed = super::failed_plugin_files(&s.plugins);
        let plugins = match failed.is_empty() {
            true => ("plugins", Ok(())),
            false => ("plugins", Err(format!("failed to load (reasons at /plugins): {}", failed.join(", ")))),
        };
        let checks = [plugins, queue, log, store];
        Answer {
            ready: checks.iter().all(|(_, r)| r.is_ok()),
            lines: checks
                .into_iter()
                .map(|(name, r)| match r {
                    Ok(()) => format!("{name}: ok"),
                    Err(why) => format!("{name}: {why}"),
                })
                .collect(),
        }
    }
}

/// `check`'s answer, or why not within [`CHECK_TIMEOUT`], under `name`.
async fn bounded(
    name: &'static str,
    check: impl std::future::Future<Output = Result<(), String>>,
) -> (&'static str, Result<(), String>) {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(result) => (name, result),
        Err(_) => (name, Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs()))),
    }
}

/// `/readyz`: 200 `ready` or 503 `not ready`, then a line per check.
pub async fn readyz(State(state): State<Arc<super::AdminState>>) -> (StatusCode, String) {
    let answer = state.readiness.answer().await;
    let (status, head) =
        if answer.ready { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") };
    (status, format!("{head}\n{}\n", answer.lines.join("\n")))
}
