//! The consume loop both processors share: messages are taken in batches (what is
//! ready, up to a size, waiting at most a short linger for more), handled together,
//! and acked with one broker operation after the handler committed and produced.
//!
//! A batch that fails is retried one message at a time, so one bad message never
//! holds back the others: a message the database refuses outright (a permanent
//! error) is recorded in `rejected_message`; any other failure is retried with
//! backoff. Unsettled messages go back to the queue if the process dies or the
//! broker connection breaks, so nothing accepted is lost.

use super::{Backoff, Services};
// Re-exported where it was defined before it moved down to the settings.
pub use crate::config::BatchSettings;
use crate::store::{Rejected, Settlement};
use crate::transport::{Deliveries, Delivery, Stream, TransportError};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Handling a batch failed; it is retried.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Retry {
    /// What failed.
    pub reason: String,
    /// Retrying the same messages cannot succeed (the database refused the data).
    pub permanent: bool,
}

impl Retry {
    /// A failure that may pass on a retry.
    pub fn from(e: impl std::fmt::Display) -> Self {
        Retry { reason: e.to_string(), permanent: false }
    }

    /// A store failure: permanent if the database refused the data itself.
    pub fn store(e: crate::store::StoreError) -> Self {
        Retry { permanent: e.is_permanent(), reason: e.to_string() }
    }
}

/// Handles a batch of payloads; says what became of each (a metrics label).
pub type BatchHandler = for<'a> fn(&'a Services, &'a [Vec<u8>]) -> BoxFuture<'a, Result<Vec<&'static str>, Retry>>;

/// Consumes `stream` with `handler` until `shutdown`.
pub async fn consume_until(
    stream: Stream,
    services: Services,
    settings: BatchSettings,
    shutdown: CancellationToken,
    handler: BatchHandler,
) {
    consume_draining(stream, services, settings, shutdown, Duration::ZERO, handler).await
}

/// Consumes `stream` with `handler` until `shutdown`, and after it until no message
/// has come for `drain`: how a processor takes what its own process published
/// while stopping.
pub async fn consume_draining(
    stream: Stream,
    services: Services,
    settings: BatchSettings,
    shutdown: CancellationToken,
    drain: Duration,
    handler: BatchHandler,
) {
    let mut backoff = Backoff::default();
    let queue = stream.queue();
    while !shutdown.is_cancelled() {
        let mut deliveries = match services.queue.consume(stream, settings.prefetch).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(queue, error = %e, "cannot consume; retrying");
                tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => continue }
            }
        };
        tracing::info!(queue, prefetch = settings.prefetch, max_batch = settings.max_batch, "consuming");
        loop {
            let mut batch = match next_batch(&mut deliveries, &settings, &shutdown, drain).await {
                Some(Ok(batch)) => batch,
                Some(Err(e)) => {
                    tracing::warn!(queue, error = %e, "consumer broke; reconnecting");
                    break;
                }
                None => return,
            };
            let started = Instant::now();
            let payloads: Vec<Vec<u8>> = batch.iter_mut().map(|d| std::mem::take(&mut d.payload)).collect();
            let Some(outcomes) = handle_with_retries(stream, &services, &payloads, &shutdown, handler).await else {
                return;
            };
            let Some(last) = batch.last() else { continue };
            if let Err(e) = last.acker.ack_through().await {
                tracing::warn!(queue, error = %e, "ack failed; the batch will be redelivered");
                break;
            }
            drop(batch);
            record(stream, &outcomes, started.elapsed());
            backoff.reset();
        }
        tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => {} }
    }
}

/// The outcome of a batch of one message: a processor's one-message form.
pub(crate) fn only<O>(mut outcomes: Vec<O>) -> Result<O, Retry> {
    outcomes.pop().ok_or_else(|| Retry::from("no outcome for the message"))
}

/// The next batch: one message (waiting for it), then what is ready or arrives
/// within the linger, up to the batch size. `None` on shutdown, once no message
/// has come for `drain`.
async fn next_batch(
    deliveries: &mut Deliveries,
    settings: &BatchSettings,
    shutdown: &CancellationToken,
    drain: Duration,
) -> Option<Result<Vec<Delivery>, TransportError>> {
    let first = tokio::select! {
        item = deliveries.next() => item,
        _ = shutdown.cancelled() => match tokio::time::timeout(drain, deliveries.next()).await {
            Ok(item) if !drain.is_zero() => item,
            _ => return None,
        },
    };
    let first = match first {
        Some(Ok(d)) => d,
        Some(Err(e)) => return Some(Err(e)),
        None => return Some(Err(TransportError::Closed)),
    };
    let mut batch = vec![first];
    let linger_until = tokio::time::Instant::now() + Duration::from_millis(settings.linger_ms);
    while batch.len() < settings.max_batch.max(1) {
        let next = match deliveries.next().now_or_never() {
            Some(item) => item,
            None => match tokio::time::timeout_at(linger_until, deliveries.next()).await {
                Ok(item) => item,
                Err(_) => break,
            },
        };
        // A broken stream reports again on the next call; the batch in hand goes on
        // (its ack will fail if the channel is gone, and it is redelivered).
        match next {
            Some(Ok(d)) => batch.push(d),
            _ => break,
        }
    }
    Some(Ok(batch))
}

/// Handles the batch; if that fails, each message alone, retrying until it is
/// handled or rejected. `None` on shutdown (nothing is acked then).
async fn handle_with_retries(
    stream: Stream,
    services: &Services,
    payloads: &[Vec<u8>],
    shutdown: &CancellationToken,
    handler: BatchHandler,
) -> Option<Vec<&'static str>> {
    let queue = stream.queue();
    let mut backoff = Backoff::default();
    if payloads.len() > 1 {
        match handler(services, payloads).await {
            Ok(outcomes) => return Some(outcomes),
            Err(e) => {
                tracing::warn!(queue, batch = payloads.len(), error = %e, "batch failed; retrying its messages one by one");
                crate::metrics::add("eligo_processing_retries_total", &[("queue", queue)], 1);
                tokio::select! { _ = shutdown.cancelled() => return None, _ = backoff.wait() => {} }
            }
        }
    }
    let mut outcomes = Vec::with_capacity(payloads.len());
    for payload in payloads {
        loop {
            let error = match handler(services, std::slice::from_ref(payload)).await {
                Ok(mut outcome) => {
                    outcomes.append(&mut outcome);
                    break;
                }
                Err(e) if e.permanent => match reject(stream, services, payload, &e.reason).await {
                    Ok(()) => {
                        outcomes.push("rejected");
                        break;
                    }
                    Err(e) => e,
                },
                Err(e) => e,
            };
            tracing::warn!(queue, error = %error, "message not processed; retrying");
            crate::metrics::add("eligo_processing_retries_total", &[("queue", queue)], 1);
            tokio::select! { _ = shutdown.cancelled() => return None, _ = backoff.wait() => {} }
        }
        backoff.reset();
    }
    Some(outcomes)
}

/// Records a message the database refused outright, so it stops blocking the queue.
async fn reject(stream: Stream, services: &Services, payload: &[u8], reason: &str) -> Result<(), Retry> {
    let rejected = [Rejected::new(stream.exchange(), payload, format!("the database refused it: {reason}"))];
    services.store.settle(&Settlement { rejected: &rejected, ..Settlement::default() }).await.map_err(Retry::from)?;
    tracing::warn!(queue = stream.queue(), %reason, "message rejected: the database refused it");
    Ok(())
}

/// Counts what became of a batch and how long it took.
fn record(stream: Stream, outcomes: &[&'static str], elapsed: Duration) {
    let hot = crate::metrics::hot();
    let batch = match stream {
        Stream::Job => Some((&hot.job_batch_seconds, &hot.job_batch_size)),
        Stream::Solution => Some((&hot.solution_batch_seconds, &hot.solution_batch_size)),
        Stream::Worker => Some((&hot.presence_batch_seconds, &hot.presence_batch_size)),
        // Webhook attempts are timed one by one (`eligo_webhook_seconds`), not in batches.
        Stream::Webhook => None,
    };
    if let Some((seconds, size)) = batch {
        seconds.record(elapsed.as_secs_f64());
        size.record(outcomes.len() as f64);
    }
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    for outcome in outcomes {
        *counts.entry(outcome).or_default() += 1;
    }
    for (outcome, n) in counts {
        crate::metrics::add("eligo_messages_processed_total", &[("queue", stream.queue()), ("outcome", outcome)], n);
    }
}
