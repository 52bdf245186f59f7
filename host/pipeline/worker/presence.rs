//! The worker server's side of presence: connection events go to the `worker`
//! queue from a background task, so a welcome never waits for the broker or the
//! database. The presence processor ([`crate::pipeline::processors::presence`]) writes them.
//!
//! In a reconnect storm (`STORM_EVENTS` events within one `QUIET`) events wait
//! until connections have been quiet for `QUIET` (at most `MOST_HELD`, or
//! `MOST_HELD_EVENTS`): the broker, the presence processor and the database would
//! otherwise take CPU from the welcomes, and the rows can come a moment later.
//! Events wait as values and are serialised when they go, so a welcome in a storm
//! does not pay for that either. Outside a storm each event goes as it comes.
//! Events waiting together are published as one message, several messages
//! concurrently (up to [`IN_FLIGHT`] awaiting confirms), retried with backoff while
//! the queue is unavailable; their order does not matter (each carries its
//! connection's whole record). While the broker is down, at most
//! [`MAX_WAITING`] events wait in memory besides those in flight; past that new
//! events are dropped and counted (`eligo_presence_events_dropped_total`): the
//! rows they would have written are finished by the instance's next start, as
//! for a crash. What is still in memory when the process dies (a storm's last
//! `MOST_HELD` of events at most, or what waits for a broker that is down) is
//! lost: a connection whose opening was lost has no row, and the instance's next
//! start finishes the rows it left open.

use crate::pipeline::Backoff;
use crate::protocol::PresenceEvent;
use crate::transport::{Stream, WorkQueue};
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

/// Messages awaiting the broker's confirm at once.
pub const IN_FLIGHT: usize = 64;

/// Most events one message carries.
pub const EVENTS_PER_MESSAGE: usize = 256;

/// Most events waiting for the publisher (about 400 bytes each: ~40 MB).
pub const MAX_WAITING: usize = 100_000;

/// Connections come in a storm when this many events arrive within one `QUIET`
/// (500 a second); fewer are published at once, as they come.
const STORM_EVENTS: usize = 100;

/// A storm's events are published once connections have been quiet this long...
const QUIET: Duration = Duration::from_millis(200);

/// ...or once the oldest has waited this long: longer than one process's share of
/// a storm takes to welcome (100,000 workers over 6 processes took 8–12 s on two
/// busy cores), so its rows are written after it, not during it: rows written
/// during a storm's last seconds took ~5 % from its welcomes (docs/capacity.md)...
const MOST_HELD: Duration = Duration::from_secs(30);

/// ...or once this many wait: more than one process's share of that storm
/// (16,666 connections each) and more sockets than a process holds under a
/// common open-files limit (20,000), yet a storm's held events (~13 MiB at
/// most) stay far below `MAX_WAITING`, past which new ones would be dropped,
/// however fast a host welcomes.
const MOST_HELD_EVENTS: usize = 32_768;

/// Most events taken from the channel at once.
const RECEIVED_AT_ONCE: usize = 4096;

/// Hands presence events to the background publisher.
pub struct PresenceSender {
    events: Mutex<Option<mpsc::UnboundedSender<PresenceEvent>>>,
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
    pub fn send(&self, event: PresenceEvent) {
        if self.waiting.load(Ordering::Relaxed) >= MAX_WAITING {
            crate::metrics::hot().presence_events_dropped.increment(1);
            return;
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if let Some(events) = self.events.lock().ok().as_ref().and_then(|e| e.as_ref()) {
            if events.send(event).is_err() {
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
///
/// In a storm (`STORM_EVENTS` within one `QUIET`), events wait until connections
/// have been quiet for `QUIET`, or for at most `MOST_HELD`: the welcomes keep the
/// CPU, and the rows (the broker, the presence processor, the database) come
/// right after. Outside a storm each event goes as it comes.
async fn publish_all(
    queue: Arc<dyn WorkQueue>,
    mut events: mpsc::UnboundedReceiver<PresenceEvent>,
    unpublished: Arc<AtomicUsize>,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    let mut backoff = Backoff::default();
    let mut waiting: Vec<PresenceEvent> = Vec::new();
    // When the oldest waiting event came, and the latest.
    let mut held: Option<(Instant, Instant)> = None;
    // Events left waiting for a place in flight go as soon as one frees.
    let mut overdue = false;
    // Events received since `window.0`, counted for at most one `QUIET`.
    let mut window = (Instant::now(), 0usize);
    let mut storm = false;
    while open || !waiting.is_empty() || !in_flight.is_empty() {
        let due = match held {
            Some((first, last)) if open && storm && !overdue && waiting.len() < MOST_HELD_EVENTS => {
                (last + QUIET).min(first + MOST_HELD)
            }
            _ => Instant::now(),
        };
        tokio::select! {
            taken = events.recv_many(&mut waiting, RECEIVED_AT_ONCE), if open => {
                if taken == 0 {
                    open = false;
                } else {
                    let now = Instant::now();
                    if now.duration_since(window.0) >= QUIET {
                        window = (now, 0);
                    }
                    window.1 += taken;
                    storm |= window.1 >= STORM_EVENTS;
                    held = Some((held.map_or(now, |(first, _)| first), now));
                }
            }
            _ = tokio::time::sleep_until(due), if held.is_some() && in_flight.len() < IN_FLIGHT => {
                while !waiting.is_empty() && in_flight.len() < IN_FLIGHT {
                    let rest = waiting.split_off(waiting.len().min(EVENTS_PER_MESSAGE));
                    let message = std::mem::replace(&mut waiting, rest);
                    unpublished.fetch_sub(message.len(), Ordering::Relaxed);
                    // Plain data: serialising it cannot fail.
                    let Ok(bytes) = serde_json::to_vec(&message) else { continue };
                    in_flight.push(publish(queue.clone(), bytes));
                }
                overdue = !waiting.is_empty();
                if !overdue {
                    (held, storm) = (None, false);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Deliveries, TransportError};
    use async_trait::async_trait;

    /// A queue that records when each message was published and how many events it held.
    #[derive(Default)]
    struct Recording(Mutex<Vec<(Instant, usize)>>);

    #[async_trait]
    impl WorkQueue for Recording {
        async fn declare(&self) -> Result<(), TransportError> {
            Ok(())
        }
        async fn publish(&self, _: Stream, payload: &[u8]) -> Result<(), TransportError> {
            let events = serde_json::from_slice::<Vec<serde_json::Value>>(payload).map_or(0, |e| e.len());
            self.0.lock().expect("lock").push((Instant::now(), events));
            Ok(())
        }
        async fn consume(&self, _: Stream, _: u16) -> Result<Deliveries, TransportError> {
            Err(TransportError::Closed)
        }
        async fn ready(&self, _: Stream) -> Result<u64, TransportError> {
            Ok(0)
        }
        async fn check(&self) -> Result<(), TransportError> {
            Ok(())
        }
    }

    fn event(i: usize) -> PresenceEvent {
        PresenceEvent::Recovered { instance: format!("i{i}"), at: chrono::Utc::now() }
    }

    /// A publisher over a recording queue, running, and when it started.
    fn started() -> (Arc<Recording>, PresenceSender, tokio::task::JoinHandle<()>, Instant) {
        let queue = Arc::new(Recording::default());
        let (sender, publishing) = PresenceSender::start(queue.clone());
        (queue, sender, tokio::spawn(publishing), Instant::now())
    }

    fn published(queue: &Recording) -> Vec<(Instant, usize)> {
        queue.0.lock().expect("lock").clone()
    }

    /// Closes the sender, waits for the publisher to end, and counts the events
    /// it published in all.
    async fn all_published(
        queue: &Recording,
        sender: PresenceSender,
        publishing: tokio::task::JoinHandle<()>,
    ) -> usize {
        sender.close();
        publishing.await.expect("the publisher ends");
        published(queue).iter().map(|(_, n)| n).sum()
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_waits_until_quiet_then_goes_in_full_messages() {
        let (queue, sender, publishing, started) = started();
        for i in 0..1000 {
            sender.send(event(i));
        }
        tokio::time::sleep(QUIET / 2).await;
        assert!(published(&queue).is_empty(), "nothing goes while the burst may go on");
        tokio::time::sleep(QUIET).await;
        let sent = published(&queue);
        assert_eq!(sent.iter().map(|(_, n)| n).collect::<Vec<_>>(), [&256, &256, &256, &232]);
        assert!(sent.iter().all(|(at, _)| *at - started >= QUIET), "{sent:?}");
        sender.close();
        publishing.await.expect("the publisher ends");
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_that_never_pauses_waits_at_most_its_limit() {
        let (queue, sender, publishing, started) = started();
        // 700 connections a second, seven every 10 ms, for three seconds longer than the hold.
        let events = (MOST_HELD + Duration::from_secs(3)).as_millis() as usize * 7 / 10;
        assert!(events < MOST_HELD_EVENTS, "the hold fills by time, not by count");
        for i in 0..events {
            sender.send(event(i));
            if i % 7 == 6 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // The 100th event, at 140 ms, makes it a storm; the 98 before went as they came.
        let storm_from = Duration::from_millis(140);
        let sent = published(&queue);
        let before: usize = sent.iter().filter(|(at, _)| *at - started < storm_from).map(|(_, n)| n).sum();
        assert_eq!(before, 98, "the events before the storm go at once");
        let held_until = sent.iter().map(|(at, _)| *at - started).find(|at| *at >= storm_from);
        assert_eq!(held_until, Some(storm_from + MOST_HELD), "then nothing until the oldest held has waited its most");
        assert_eq!(all_published(&queue, sender, publishing).await, events, "every event, once");
    }

    #[tokio::test(start_paused = true)]
    async fn connections_outside_a_storm_go_as_they_come() {
        let (queue, sender, publishing, started) = started();
        // Ten a second: each goes at once.
        for i in 0..20 {
            sender.send(event(i));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let sent = published(&queue);
        assert_eq!(sent.len(), 20, "{sent:?}");
        for (i, (at, events)) in sent.iter().enumerate() {
            assert_eq!((*at - started, *events), (Duration::from_millis(100) * i as u32, 1));
        }
        sender.close();
        publishing.await.expect("the publisher ends");
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_larger_than_the_hold_goes_once_the_hold_is_full() {
        let (queue, sender, publishing, started) = started();
        let storm = MOST_HELD_EVENTS + 4_000;
        for i in 0..storm {
            sender.send(event(i));
        }
        tokio::time::sleep(QUIET / 2).await;
        let at_once: usize = published(&queue).iter().filter(|(at, _)| *at == started).map(|(_, n)| n).sum();
        assert!(at_once >= MOST_HELD_EVENTS, "{at_once} went at once");
        assert_eq!(all_published(&queue, sender, publishing).await, storm, "every event, once");
    }

    #[tokio::test(start_paused = true)]
    async fn closing_publishes_what_waits_at_once() {
        let (queue, sender, publishing, started) = started();
        sender.send(event(0));
        sender.close();
        publishing.await.expect("the publisher ends");
        assert_eq!(published(&queue), [(started, 1)]);
    }
}
