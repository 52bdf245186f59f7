//! The worker server's side of presence: connection events go to the `worker`
//! queue from a background task, so a welcome never waits for the broker or the
//! database. The presence processor ([`crate::pipeline::processors::presence`]) writes them.
//!
//! Events waiting together are published as one message, several messages
//! concurrently (up to [`IN_FLIGHT`] awaiting confirms), retried with backoff while
//! the queue is unavailable; their order does not matter (each carries its
//! connection's whole record). While the broker is down, at most
//! [`MAX_WAITING`] events wait in memory besides those in flight; past that new
//! events are dropped and counted (`eligo_presence_events_dropped_total`): the
//! rows they would have written are finished by the instance's next start, as
//! for a crash. What is still in memory when the
//! process dies is lost, and the instance's next start finishes what it left open.

use crate::pipeline::Backoff;
use crate::protocol::PresenceEvent;
use crate::transport::{Stream, WorkQueue};
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Messages awaiting the broker's confirm at once.
pub const IN_FLIGHT: usize = 64;

/// Most events one message carries.
pub const EVENTS_PER_MESSAGE: usize = 256;

/// Most events waiting for the publisher (about 300 bytes each: ~30 MB).
pub const MAX_WAITING: usize = 100_000;

/// Hands presence events to the background publisher.
pub struct PresenceSender {
    events: Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    waiting: Arc<AtomicUsize>,
}

impl PresenceSender {
    /// A sender, and the task that publishes what it is given to `queue` until the
    /// sender is closed and everything given is confirmed.
    pub fn start(queue: Arc<dyn WorkQueue>) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        (PresenceSender { events: Mutex::new(Some(tx)), waiting: waiting.clone() }, publish_all(queue, rx, waiting))
    }

    /// Queues an event for publishing; never waits. Over [`MAX_WAITING`] the
    /// event is dropped and counted.
    pub fn send(&self, event: &PresenceEvent) {
        if self.waiting.load(Ordering::Relaxed) >= MAX_WAITING {
            crate::metrics::hot().presence_events_dropped.increment(1);
            return;
        }
        let Ok(bytes) = serde_json::to_vec(event) else { return };
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if let Some(events) = self.events.lock().ok().as_ref().and_then(|e| e.as_ref()) {
            if events.send(bytes).is_err() {
                tracing::warn!("the presence publisher has stopped; an event is not recorded");
            }
        }
    }

    /// No more events: the publisher finishes what it holds and stops.
    pub fn close(&self) {
        if let Ok(mut events) = self.events.lock() {
            events.take();
        }
    }
}

/// Publishes every event received until the channel closes and all are confirmed.
/// The events waiting at a moment travel as one message (a JSON array of up to
/// [`EVENTS_PER_MESSAGE`]): a storm of connections costs the broker and the
/// processor a few hundred messages, not one per worker.
async fn publish_all(
    queue: Arc<dyn WorkQueue>,
    mut events: mpsc::UnboundedReceiver<Vec<u8>>,
    unpublished: Arc<AtomicUsize>,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    let mut backoff = Backoff::default();
    let mut waiting = Vec::with_capacity(EVENTS_PER_MESSAGE);
    while open || !in_flight.is_empty() {
        tokio::select! {
            taken = events.recv_many(&mut waiting, EVENTS_PER_MESSAGE), if open && in_flight.len() < IN_FLIGHT => {
                if taken == 0 {
                    open = false;
                } else {
                    unpublished.fetch_sub(taken, Ordering::Relaxed);
                    in_flight.push(publish(queue.clone(), batch(&mut waiting)));
                }
            }
            Some(result) = in_flight.next() => match result {
                Ok(()) => backoff.reset(),
                Err(bytes) => {
                    // The queue is unavailable: try this one again after a pause (the
                    // others in flight fail or pass on their own).
                    backoff.wait().await;
                    in_flight.push(publish(queue.clone(), bytes));
                }
            },
        }
    }
}

/// The events as one JSON array, emptying `events`.
fn batch(events: &mut Vec<Vec<u8>>) -> Vec<u8> {
    let mut message = Vec::with_capacity(events.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
    message.push(b'[');
    for (i, event) in events.drain(..).enumerate() {
        if i > 0 {
            message.push(b',');
        }
        message.extend_from_slice(&event);
    }
    message.push(b']');
    message
}

/// Publishes one message; gives it back if the queue did not take it.
async fn publish(queue: Arc<dyn WorkQueue>, bytes: Vec<u8>) -> Result<(), Vec<u8>> {
    match queue.publish(Stream::Worker, &bytes).await {
        Ok(()) => {
            crate::metrics::add("eligo_presence_messages_published_total", &[], 1);
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "publishing a presence event failed; retrying");
            Err(bytes)
        }
    }
}
