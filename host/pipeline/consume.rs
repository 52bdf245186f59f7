//! The consume loop both processors share: one message at a time, acked after it
//! was handled, requeued when handling failed, with backoff while a broker or the
//! database is down, until shutdown.

use super::{Backoff, Services};
use crate::transport::Stream;
use futures::StreamExt;
use std::future::Future;
use std::pin::Pin;
use tokio_util::sync::CancellationToken;

/// Handling a message failed this time; it is requeued and retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Retry(pub String);

impl Retry {
    /// Wraps any error.
    pub fn from(e: impl std::fmt::Display) -> Self {
        Retry(e.to_string())
    }
}

/// Handles one message's payload; says what became of it (a metrics label).
pub type Handler = fn(Services, Vec<u8>) -> Pin<Box<dyn Future<Output = Result<&'static str, Retry>> + Send>>;

/// Consumes `stream` with `handler` until `shutdown`.
pub async fn consume_until(stream: Stream, services: Services, shutdown: CancellationToken, handler: Handler) {
    let mut backoff = Backoff::default();
    let queue = stream.queue();
    while !shutdown.is_cancelled() {
        let mut deliveries = match services.queue.consume(stream, 1).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(queue, error = %e, "cannot consume; retrying");
                tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => continue }
            }
        };
        tracing::info!(queue, "consuming");
        loop {
            let item = tokio::select! {
                _ = shutdown.cancelled() => return,
                item = deliveries.next() => item,
            };
            let delivery = match item {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    tracing::warn!(queue, error = %e, "consumer broke; reconnecting");
                    break;
                }
                None => {
                    tracing::warn!(queue, "consumer ended; reconnecting");
                    break;
                }
            };
            match handler(services.clone(), delivery.payload).await {
                Ok(outcome) => {
                    crate::metrics::add("eligo_messages_processed_total", &[("queue", queue), ("outcome", outcome)], 1);
                    if let Err(e) = delivery.acker.ack().await {
                        tracing::warn!(queue, error = %e, "ack failed; the message will be redelivered");
                        break;
                    }
                    backoff.reset();
                }
                Err(e) => {
                    tracing::warn!(queue, error = %e, "message not processed; requeued");
                    crate::metrics::add("eligo_processing_retries_total", &[("queue", queue)], 1);
                    if let Err(e) = delivery.acker.requeue().await {
                        tracing::warn!(queue, error = %e, "requeue failed; the message will be redelivered");
                        break;
                    }
                    tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => {} }
                }
            }
        }
        tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => {} }
    }
}
