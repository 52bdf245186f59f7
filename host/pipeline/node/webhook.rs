//! Solutions POSTed to the webhook an HTTP node's job named, signed the
//! Standard Webhooks way, retried until the node's wait ends.
//!
//! Each solution owed to a webhook is a message on the durable `webhook` queue
//! (RabbitMQ, or the embedded queue) before any attempt is made, so a restart
//! loses none: a message is acked only once its attempt is settled — delivered
//! (2xx), refused for good (410, which stops that node's deliveries), or
//! published again with its next attempt's time. Retries back off
//! exponentially with jitter, from one second up to five minutes.
//!
//! A delivery taken (2xx) is recorded in the store (`webhook_delivery`), and a
//! message for a delivery recorded already is dropped: a restart, which catches
//! its HTTP nodes up on their heights, sends again only what was not taken.
//!
//! Only the URLs of `[node.webhooks.<name>]` are ever called, never one taken
//! from a request, and redirects are not followed.

use crate::config::WebhookConfig;
use crate::pipeline::Backoff;
use crate::store::Store;
use crate::transport::{Delivery, Stream, TransportError, WorkQueue};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The first retry waits about this long; each next one twice as long.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// No retry waits longer than this.
const LONGEST_RETRY: Duration = Duration::from_secs(300);

/// One solution owed to one node's webhook: a message of the `webhook` queue.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WebhookTask {
    /// The HTTP node it is for.
    pub node: String,
    /// The name of the webhook (`[node.webhooks.<name>]`).
    pub callback: String,
    /// `webhook-id`: the same for every attempt, one per solution and node, so a
    /// receiver can tell a retry from a new solution.
    pub webhook_id: String,
    /// What is POSTed: the object a socket node receives.
    pub body: String,
    /// Attempts made so far.
    pub attempt: u32,
    /// Not attempted before this (milliseconds since the epoch).
    pub not_before_ms: i64,
    /// Given up after this: when the node's wait ends.
    pub expires_at_ms: i64,
}

impl WebhookTask {
    /// The first attempt, due now, of delivering `body` (a solution whose key is
    /// `unique_key`) to node `node`'s webhook `callback`.
    pub fn first(node: &str, callback: &str, unique_key: &str, body: &str, expires_at_ms: i64) -> Self {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(format!("{node}\n{unique_key}").as_bytes());
        WebhookTask {
            node: node.to_string(),
            callback: callback.to_string(),
            webhook_id: format!("msg_{}", hex::encode(&digest[..16])),
            body: body.to_string(),
            attempt: 0,
            not_before_ms: 0,
            expires_at_ms,
        }
    }

    /// The next attempt after a failed one at `now_ms`: later by the backoff.
    fn retried(&self, now_ms: i64) -> Self {
        let wait = retry_delay(self.attempt);
        WebhookTask { attempt: self.attempt + 1, not_before_ms: now_ms + wait.as_millis() as i64, ..self.clone() }
    }
}

/// How long to wait after failed attempt `attempt` (0 = the first): doubling
/// from [`FIRST_RETRY`] to [`LONGEST_RETRY`], between half and all of it at random,
/// so receivers that failed together are not retried together.
pub fn retry_delay(attempt: u32) -> Duration {
    let full = FIRST_RETRY.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX)).min(LONGEST_RETRY);
    full.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.5..=1.0))
}

/// Signs `body` for `webhook-signature`: `v1,<base64 HMAC-SHA256>` over
/// `id.timestamp.body` with the secret (`whsec_<base64>`).
pub fn sign(secret: &str, webhook_id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let signer = standardwebhooks::Webhook::new(secret).map_err(|e| format!("bad webhook secret: {e}"))?;
    signer.sign(webhook_id, timestamp, body).map_err(|e| format!("signing failed: {e}"))
}

/// What became of one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered 2xx.
    Delivered,
    /// The receiver answered 410: no more deliveries to this node.
    Gone,
    /// Anything else: try again later.
    Failed(String),
}

impl Attempt {
    fn label(&self) -> &'static str {
        match self {
            Attempt::Delivered => "delivered",
            Attempt::Gone => "gone",
            Attempt::Failed(_) => "failed",
        }
    }
}

/// The HTTP client that calls webhooks could not be made.
#[derive(Debug, thiserror::Error)]
#[error("the client that calls webhooks could not be made: {0}")]
pub struct ClientError(#[source] reqwest::Error);

/// Calls the configured webhooks.
pub struct WebhookSender {
    client: reqwest::Client,
    hooks: BTreeMap<String, WebhookConfig>,
}

impl WebhookSender {
    /// A sender for the configured `hooks`, each attempt given `timeout`.
    pub fn new(hooks: BTreeMap<String, WebhookConfig>, timeout: Duration) -> Result<Self, ClientError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("eligo/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError)?;
        Ok(WebhookSender { client, hooks })
    }

    /// Whether a webhook of this name is configured.
    pub fn knows(&self, name: &str) -> bool {
        self.hooks.contains_key(name)
    }

    /// One attempt of `task`.
    pub async fn attempt(&self, task: &WebhookTask) -> Attempt {
        let Some(hook) = self.hooks.get(&task.callback) else {
            // Its configuration may come back (a restart with it): retried until the wait ends.
            tracing::warn!(webhook = %task.callback, node = %task.node, "a delivery names a webhook that is not configured");
            return Attempt::Failed(format!("no webhook named {:?} is configured", task.callback));
        };
        let timestamp = chrono::Utc::now().timestamp();
        let signature = match sign(&hook.secret, &task.webhook_id, timestamp, task.body.as_bytes()) {
            Ok(signature) => signature,
            Err(e) => return Attempt::Failed(e),
        };
        let started = std::time::Instant::now();
        let sent = self
            .client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("webhook-id", &task.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(task.body.clone())
            .send()
            .await;
        let outcome = match sent {
            Ok(response) if response.status().is_success() => Attempt::Delivered,
            Ok(response) if response.status() == reqwest::StatusCode::GONE => Attempt::Gone,
            Ok(response) => Attempt::Failed(format!("the receiver answered {}", response.status())),
            Err(e) => Attempt::Failed(format!("the receiver could not be reached: {e}")),
        };
        crate::metrics::histogram("eligo_webhook_seconds", &[("webhook", &task.callback)])
            .record(started.elapsed().as_secs_f64());
        crate::metrics::add(
            "eligo_webhook_attempts_total",
            &[("webhook", &task.callback), ("outcome", outcome.label())],
            1,
        );
        outcome
    }
}

/// What the deliverer tells the node server.
#[async_trait::async_trait]
pub trait WebhookOwner: Send + Sync + 'static {
    /// Node `node`'s webhook answered 410: deliver nothing more to it.
    async fn webhook_gone(&self, node: &str);
    /// Whether node `node`'s deliveries were stopped by a 410 (as far as this process knows).
    fn webhook_stopped(&self, node: &str) -> bool;
}

/// Takes the `webhook` queue and attempts each message when it is due, at most
/// `concurrency` at once, until `shutdown`. Reconnects with backoff.
pub async fn deliver_forever(
    queue: Arc<dyn WorkQueue>,
    store: Arc<dyn Store>,
    sender: Arc<WebhookSender>,
    owner: Arc<dyn WebhookOwner>,
    concurrency: u16,
    shutdown: CancellationToken,
) {
    let concurrency = concurrency.max(1);
    let permits = Arc::new(tokio::sync::Semaphore::new(usize::from(concurrency)));
    // Messages wait here (unacked) until due: room for those waiting as well as those in flight.
    let prefetch = concurrency.saturating_mul(4);
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        let mut deliveries = match queue.consume(Stream::Webhook, prefetch).await {
            Ok(deliveries) => deliveries,
            Err(e) => {
                tracing::warn!(error = %e, "webhook queue unavailable; retrying");
                tokio::select! { _ = backoff.wait() => continue, _ = shutdown.cancelled() => return }
            }
        };
        backoff.reset();
        loop {
            let next = tokio::select! {
                next = deliveries.next() => next,
                _ = shutdown.cancelled() => return,
            };
            match next {
                Some(Ok(delivery)) => {
                    let parts = Parts {
                        queue: queue.clone(),
                        store: store.clone(),
                        sender: sender.clone(),
                        owner: owner.clone(),
                        permits: permits.clone(),
                    };
                    tokio::spawn(async move { settle(delivery, &parts).await });
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "webhook queue broke; reconnecting");
                    break;
                }
                None => break,
            }
        }
    }
}

/// What settling a message takes.
struct Parts {
    queue: Arc<dyn WorkQueue>,
    store: Arc<dyn Store>,
    sender: Arc<WebhookSender>,
    owner: Arc<dyn WebhookOwner>,
    permits: Arc<tokio::sync::Semaphore>,
}

/// Waits for one message's time, attempts it and settles it.
async fn settle(delivery: Delivery, parts: &Parts) {
    let Parts { queue, store, sender, owner, permits } = parts;
    let task: WebhookTask = match serde_json::from_slice(&delivery.payload) {
        Ok(task) => task,
        Err(e) => {
            tracing::warn!(error = %e, "a webhook message is unreadable; dropped");
            ack(&delivery).await;
            return;
        }
    };
    let wait = task.not_before_ms - crate::plugin::now_ms() as i64;
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    // A store that cannot answer sends it again rather than lose it.
    if owner.webhook_stopped(&task.node) || store.webhook_delivered(&task.webhook_id).await.unwrap_or(false) {
        ack(&delivery).await;
        return;
    }
    if task.expires_at_ms < crate::plugin::now_ms() as i64 {
        expired(&task);
        ack(&delivery).await;
        return;
    }
    let Ok(_permit) = permits.acquire().await else { return };
    match sender.attempt(&task).await {
        Attempt::Delivered => {
            crate::metrics::add("eligo_node_deliveries_total", &[("transport", "webhook")], 1);
            if let Err(e) = store.record_webhook_delivery(&task.webhook_id, task.expires_at_ms).await {
                tracing::warn!(error = %e, "a webhook delivery could not be recorded; a restart may send it again");
            }
            ack(&delivery).await;
        }
        Attempt::Gone => {
            tracing::info!(node = %task.node, webhook = %task.callback, "the webhook answered 410: no more deliveries to this node");
            owner.webhook_gone(&task.node).await;
            ack(&delivery).await;
        }
        Attempt::Failed(why) => {
            let next = task.retried(crate::plugin::now_ms() as i64);
            if next.not_before_ms > task.expires_at_ms {
                tracing::warn!(node = %task.node, webhook = %task.callback, attempts = next.attempt, %why, "webhook given up: the node's wait ends before another attempt");
                expired(&task);
                ack(&delivery).await;
                return;
            }
            tracing::debug!(node = %task.node, webhook = %task.callback, attempt = next.attempt, %why, "webhook attempt failed; retrying later");
            requeue_later(&delivery, &**queue, &next).await;
        }
    }
}

/// Puts the next attempt on the queue, then acks this one; if the queue refuses,
/// this one goes back instead (it is attempted again sooner, not lost).
async fn requeue_later(delivery: &Delivery, queue: &dyn WorkQueue, next: &WebhookTask) {
    let payload = serde_json::to_vec(next).unwrap_or_default();
    match queue.publish(Stream::Webhook, &payload).await {
        Ok(()) => ack(delivery).await,
        Err(e) => {
            tracing::warn!(error = %e, "could not queue a webhook retry; the attempt goes back to the queue");
            tokio::time::sleep(retry_delay(next.attempt)).await;
            if let Err(e) = delivery.acker.requeue().await {
                tracing::warn!(error = %e, "could not requeue a webhook attempt; the broker redelivers it");
            }
        }
    }
}

fn expired(task: &WebhookTask) {
    crate::metrics::add("eligo_webhooks_expired_total", &[("webhook", &task.callback)], 1);
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack().await {
        tracing::warn!(error = %e, "could not ack a webhook message; it may be attempted again");
    }
}

/// Queues the first attempt of each of `tasks`, retrying while the queue is
/// unavailable until each task expires (a restart catches its node up anyway).
pub async fn enqueue(queue: Arc<dyn WorkQueue>, tasks: Vec<WebhookTask>) {
    for task in tasks {
        let payload = serde_json::to_vec(&task).unwrap_or_default();
        let mut backoff = Backoff::default();
        loop {
            match queue.publish(Stream::Webhook, &payload).await {
                Ok(()) => break,
                Err(e)
                    if task.expires_at_ms < crate::plugin::now_ms() as i64 || matches!(e, TransportError::Closed) =>
                {
                    tracing::warn!(node = %task.node, error = %e, "a webhook delivery could not be queued before the node expired");
                    expired(&task);
                    break;
                }
                Err(e) => {
                    tracing::warn!(node = %task.node, error = %e, "queueing a webhook delivery failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_with_jitter_up_to_the_cap() {
        for attempt in 0..40 {
            let full = FIRST_RETRY.saturating_mul(1 << attempt.min(20)).min(LONGEST_RETRY);
            let delay = retry_delay(attempt);
            assert!(delay >= full / 2 && delay <= full, "attempt {attempt}: {delay:?} of {full:?}");
        }
    }

    #[test]
    fn a_signature_verifies_with_the_standard_library() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"a":1}"#;
        let signature = sign(secret, "msg_1", 1_700_000_000, body).expect("signs");
        assert!(signature.starts_with("v1,"), "{signature}");
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().expect("header"));
        headers.insert("webhook-timestamp", chrono::Utc::now().timestamp().to_string().parse().expect("header"));
        let now = sign(secret, "msg_1", chrono::Utc::now().timestamp(), body).expect("signs");
        headers.insert("webhook-signature", now.parse().expect("header"));
        standardwebhooks::Webhook::new(secret).expect("secret").verify(body, &headers).expect("verifies");
    }

    #[test]
    fn a_webhook_id_is_one_per_solution_and_node() {
        let a = WebhookTask::first("n1", "hook", "k1", "{}", 0).webhook_id;
        assert_eq!(a, WebhookTask::first("n1", "hook", "k1", "{}", 0).webhook_id);
        assert_ne!(a, WebhookTask::first("n2", "hook", "k1", "{}", 0).webhook_id);
        assert_ne!(a, WebhookTask::first("n1", "hook", "k2", "{}", 0).webhook_id);
    }
}
