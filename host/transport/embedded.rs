//! The in-process event log, for running on a bare machine.
//!
//! It keeps recent messages and lets every reader see each one appended after it
//! started, as Kafka does for eligo. It does not outlive the process, and need
//! not: what it carries is stored first, and after a restart worker servers load
//! the current job and nodes catch up from the database.

use super::{EventLog, Tail, Topic, TransportError};
use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

fn poisoned() -> TransportError {
    TransportError::Unavailable { broker: "embedded log", detail: "internal lock poisoned".into() }
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
    topics: Arc<[TopicLog; 3]>,
}

impl EmbeddedLog {
    /// An empty log of every topic.
    pub fn new() -> Self {
        Self::default()
    }
}

fn topic_index(topic: Topic) -> usize {
    match topic {
        Topic::Job => 0,
        Topic::Solution => 1,
        Topic::Verdict => 2,
    }
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn declare(&self) -> Result<(), TransportError> {
        Ok(())
    }

    /// In this process: there whenever the process is.
    async fn check(&self) -> Result<(), TransportError> {
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
