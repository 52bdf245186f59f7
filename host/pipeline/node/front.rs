//! What serving nodes over HTTP keeps besides the node registry: the per-IP
//! rate of POSTs and the answers remembered for idempotency keys, each bounded.

use crate::config::{ConnectionLimits, NodeHttpConfig};
use crate::edge::per_ip::{at_least_one, PerIp, PerIpRate, REMEMBERED_CLIENTS};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use utoipa::ToSchema;

/// Idempotency keys remembered at most (the least recently used forgotten first).
pub const IDEMPOTENCY_KEYS: usize = 16_384;
/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Why a request was refused.
#[derive(Serialize, ToSchema)]
pub struct Refused {
    /// `refused`.
    pub status: &'static str,
    /// What was wrong, as a socket's refusal says it; a policy's refusal names the policy.
    pub reason: String,
}

/// What a POST answered, kept for a retry with the same idempotency key.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The status it was answered with.
    pub status: StatusCode,
    /// The JSON body.
    pub body: Value,
    /// Seconds for `Retry-After`, when the client should come back.
    pub retry_after: Option<u64>,
}

impl Answer {
    /// An answer of `status` with `body`.
    pub fn new(status: StatusCode, body: Value) -> Self {
        Answer { status, body, retry_after: None }
    }

    /// A refusal with its reason, as a socket's refusal says it.
    pub fn refused(status: StatusCode, reason: impl std::fmt::Display) -> Self {
        Answer::new(status, json!(Refused { status: "refused", reason: reason.to_string() }))
    }

    /// The same answer, telling the client to retry after `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// An idempotency key's answer: set once by the first POST, awaited by retries
/// that arrive while it runs.
struct Remembered {
    at: Instant,
    answer: Arc<OnceCell<Answer>>,
}

/// What serving nodes over HTTP needs besides the node registry: the per-IP
/// rate of POSTs and the idempotency keys.
pub struct HttpFront {
    per_ip: PerIp,
    rates: PerIpRate,
    remembered: Mutex<lru::LruCache<(String, String), Remembered>>,
}

impl HttpFront {
    /// The front of a node listener whose clients are grouped by `connections`
    /// and whose POSTs are held to `http`'s rate.
    pub fn new(connections: &ConnectionLimits, http: &NodeHttpConfig) -> Self {
        HttpFront {
            per_ip: PerIp::new(&connections.per_ip_exempt, connections.ipv6_prefix_len),
            rates: PerIpRate::new(f64::from(http.jobs_per_second), http.jobs_burst, REMEMBERED_CLIENTS),
            remembered: Mutex::new(lru::LruCache::new(at_least_one(IDEMPOTENCY_KEYS))),
        }
    }

    /// Whether a POST from `ip` is within its rate.
    pub fn within_rate(&self, ip: std::net::IpAddr) -> bool {
        let Some(group) = self.per_ip.group(ip) else { return true };
        self.rates.take(group, Instant::now()).is_ok()
    }

    /// The answer cell of an idempotency key in `scope`: empty until the first
    /// request with it is answered.
    pub fn remember(&self, scope: String, key: String) -> Arc<OnceCell<Answer>> {
        let mut remembered = self.remembered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = remembered
            .get_or_insert((scope, key), || Remembered { at: Instant::now(), answer: Arc::new(OnceCell::new()) });
        entry.answer.clone()
    }

    /// Forgets idempotency keys older than a day.
    pub fn forget_old(&self) {
        let mut remembered = self.remembered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while remembered.peek_lru().is_some_and(|(_, r)| r.at.elapsed() > IDEMPOTENCY_TTL) {
            remembered.pop_lru();
        }
    }
}
