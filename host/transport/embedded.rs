//! In-process implementations of the transports, for running on a bare machine.
//!
//! They keep the semantics the pipeline relies on: the queue redelivers what was
//! not acked (also when a consumer goes away) and holds back deliveries beyond
//! `prefetch`; the log keeps recent messages and lets every reader see each one
//! appended after it started. What they cannot do is outlive the process: a
//! message published but not yet processed is lost if eligo dies, which is why
//! the networked brokers exist.

use super::{Acker, Deliveries, Delivery, EventLog, Stream, Tail, Topic, TransportError, WorkQueue};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

const QUEUE: &str = "embedded queue";

fn poisoned() -> TransportError {
    TransportError::Unavailable { broker: QUEUE, detail: "internal lock poisoned".into() }
}

#[derive(Default)]
struct QueueState {
    next_id: u64,
    ready: VecDeque<(u64, Arc<[u8]>, bool)>,
    unacked: HashMap<u64, Arc<[u8]>>,
}

#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Notify,
}

impl Queue {
    fn settle(&self, id: u64, requeue: bool) {
        let Ok(mut state) = self.state.lock() else { return };
        if let Some(payload) = state.unacked.remove(&id) {
            if requeue {
                state.ready.push_front((id, payload, true));
                drop(state);
                self.ready.notify_one();
            }
        }
    }
}

/// An in-process work queue with acks, requeue and prefetch.
#[derive(Clone, Default)]
pub struct EmbeddedQueue {
    queues: Arc<[Queue; 2]>,
}

impl EmbeddedQueue {
    /// An empty queue pair (jobs, solutions).
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages waiting or unacked in a stream's queue.
    pub fn depth(&self, stream: Stream) -> usize {
        let q = &self.queues[stream_index(stream)];
        q.state.lock().map(|s| s.ready.len() + s.unacked.len()).unwrap_or(0)
    }
}

fn stream_index(stream: Stream) -> usize {
    match stream {
        Stream::Job => 0,
        Stream::Solution => 1,
    }
}

/// A handle on one queue that keeps the whole pair alive.
#[derive(Clone)]
struct Handle {
    queues: Arc<[Queue; 2]>,
    index: usize,
}

impl Handle {
    fn get(&self) -> &Queue {
        &self.queues[self.index]
    }
}

struct EmbeddedAcker {
    handle: Handle,
    id: u64,
    /// Held until the delivery is settled: frees one place of the consumer's prefetch.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl EmbeddedAcker {
    fn settle(&self, requeue: bool) {
        let Ok(mut permit) = self.permit.lock() else { return };
        if let Some(permit) = permit.take() {
            self.handle.get().settle(self.id, requeue);
            drop(permit);
        }
    }
}

impl Drop for EmbeddedAcker {
    fn drop(&mut self) {
        // An unsettled delivery goes back to the queue, as with a broker when the
        // consumer's channel closes.
        self.settle(true);
    }
}

#[async_trait]
impl Acker for EmbeddedAcker {
    async fn ack(&self) -> Result<(), TransportError> {
        self.settle(false);
        Ok(())
    }

    async fn requeue(&self) -> Result<(), TransportError> {
        self.settle(true);
        Ok(())
    }
}

#[async_trait]
impl WorkQueue for EmbeddedQueue {
    async fn declare(&self) -> Result<(), TransportError> {
        Ok(())
    }

    async fn publish(&self, stream: Stream, payload: &[u8]) -> Result<(), TransportError> {
        let q = &self.queues[stream_index(stream)];
        {
            let mut state = q.state.lock().map_err(|_| poisoned())?;
            let id = state.next_id;
            state.next_id += 1;
            state.ready.push_back((id, payload.into(), false));
        }
        q.ready.notify_one();
        Ok(())
    }

    async fn consume(&self, stream: Stream, prefetch: u16) -> Result<Deliveries, TransportError> {
        let handle = Handle { queues: self.queues.clone(), index: stream_index(stream) };
        let permits = Arc::new(Semaphore::new(prefetch.max(1) as usize));
        let deliveries = futures::stream::unfold((handle, permits), |(handle, permits)| async move {
            let permit = permits.clone().acquire_owned().await.ok()?;
            loop {
                let notified = handle.get().ready.notified();
                let next = {
                    let Ok(mut state) = handle.get().state.lock() else { return None };
                    let next = state.ready.pop_front();
                    if let Some((id, payload, _)) = &next {
                        state.unacked.insert(*id, payload.clone());
                    }
                    next
                };
                match next {
                    Some((id, payload, redelivered)) => {
                        drop(notified);
                        let acker = EmbeddedAcker { handle: handle.clone(), id, permit: Mutex::new(Some(permit)) };
                        let delivery = Delivery { payload: payload.to_vec(), redelivered, acker: Box::new(acker) };
                        return Some((Ok(delivery), (handle, permits)));
                    }
                    None => notified.await,
                }
            }
        });
        Ok(Box::pin(deliveries))
    }
}

/// How long the embedded log keeps a message, as the Kafka topics do.
pub const LOG_RETENTION: Duration = Duration::from_secs(25 * 60);
/// At most this many messages are kept per topic, whatever their age.
pub const LOG_MAX_MESSAGES: usize = 100_000;

#[derive(Default)]
struct TopicLog {
    state: Mutex<TopicState>,
    appended: Notify,
}

#[derive(Default)]
struct TopicState {
    /// Offset of `messages[0]`.
    base: u64,
    messages: VecDeque<(Instant, Arc<[u8]>)>,
}

impl TopicState {
    fn end(&self) -> u64 {
        self.base + self.messages.len() as u64
    }
}

/// An in-process append-only log with broadcast readers.
#[derive(Clone, Default)]
pub struct EmbeddedLog {
    topics: Arc<[TopicLog; 2]>,
}

impl EmbeddedLog {
    /// An empty log pair (jobs, solutions).
    pub fn new() -> Self {
        Self::default()
    }
}

fn topic_index(topic: Topic) -> usize {
    match topic {
        Topic::Job => 0,
        Topic::Solution => 1,
    }
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn declare(&self) -> Result<(), TransportError> {
        Ok(())
    }

    async fn produce(&self, topic: Topic, _key: &str, payload: &[u8]) -> Result<(), TransportError> {
        let log = &self.topics[topic_index(topic)];
        {
            let mut state = log.state.lock().map_err(|_| poisoned())?;
            let now = Instant::now();
            state.messages.push_back((now, payload.into()));
            while state.messages.len() > LOG_MAX_MESSAGES
                || state.messages.front().is_some_and(|(at, _)| now.duration_since(*at) > LOG_RETENTION)
            {
                state.messages.pop_front();
                state.base += 1;
            }
        }
        log.appended.notify_waiters();
        Ok(())
    }

    async fn tail(&self, topic: Topic) -> Result<Tail, TransportError> {
        let topics = self.topics.clone();
        let index = topic_index(topic);
        let start = topics[index].state.lock().map_err(|_| poisoned())?.end();
        let tail = futures::stream::unfold((topics, start), move |(topics, mut cursor)| async move {
            loop {
                let log = &topics[index];
                let mut notified = Box::pin(log.appended.notified());
                // Register before looking, so an append between the look and the wait is not missed.
                notified.as_mut().enable();
                let next = {
                    let Ok(state) = log.state.lock() else { return None };
                    if cursor < state.base {
                        tracing::warn!(
                            topic = topic.name(),
                            skipped = state.base - cursor,
                            "embedded log reader fell behind retention"
                        );
                        cursor = state.base;
                    }
                    state.messages.get((cursor - state.base) as usize).map(|(_, m)| m.clone())
                };
                match next {
                    Some(message) => {
                        drop(notified);
                        cursor += 1;
                        return Some((Ok(message.to_vec()), (topics, cursor)));
                    }
                    None => notified.await,
                }
            }
        });
        Ok(Box::pin(tail))
    }
}
