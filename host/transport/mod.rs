//! The two transports of the pipeline, each behind a small trait:
//!
//! - [`WorkQueue`]: durable, at-least-once work queues (RabbitMQ in production,
//!   [`sqlite_queue::SqliteQueue`] on a bare machine). Nodes' jobs, workers'
//!   solutions and worker servers' presence events enter the pipeline here.
//! - [`EventLog`]: an append-only log read from its end by every server process
//!   (Kafka in production, [`embedded::EmbeddedLog`] on a bare machine). Stored jobs
//!   and validated solutions leave the processors here.
//!
//! The topology is fixed, as in the original system: see [`Stream`] and [`Topic`].

pub mod amqp;
pub mod embedded;
pub mod kafka;
pub mod log_throttle;
pub mod sqlite_queue;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The broker could not be reached or the connection broke.
    #[error("{broker} unavailable: {detail}")]
    Unavailable {
        /// Which broker (`RabbitMQ`, `Kafka`, `embedded queue`, …).
        broker: &'static str,
        /// What happened.
        detail: String,
    },
    /// The broker refused the operation (nack, produce error, …).
    #[error("{broker} refused: {detail}")]
    Refused {
        /// Which broker.
        broker: &'static str,
        /// What it said.
        detail: String,
    },
    /// The transport was shut down.
    #[error("transport closed")]
    Closed,
}

/// The work streams entering the pipeline: an exchange and its one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Jobs from nodes: exchange `job`, queue `job.persist_and_broadcast`.
    Job,
    /// Solutions from workers: exchange `solution`, queue `solution.persist_and_broadcast`.
    Solution,
    /// Worker connections opening and ending: exchange `worker`, queue `worker.persist`.
    Worker,
    /// Solutions owed to a node's webhook, waiting for (another) attempt: exchange
    /// `webhook`, queue `webhook.deliver`. A restart loses none.
    Webhook,
}

impl Stream {
    /// Every stream.
    pub const ALL: [Stream; 4] = [Stream::Job, Stream::Solution, Stream::Worker, Stream::Webhook];

    /// The durable fanout exchange publishers write to.
    pub fn exchange(self) -> &'static str {
        match self {
            Stream::Job => "job",
            Stream::Solution => "solution",
            Stream::Worker => "worker",
            Stream::Webhook => "webhook",
        }
    }

    /// The durable queue the processor consumes.
    pub fn queue(self) -> &'static str {
        match self {
            Stream::Job => "job.persist_and_broadcast",
            Stream::Solution => "solution.persist_and_broadcast",
            Stream::Worker => "worker.persist",
            Stream::Webhook => "webhook.deliver",
        }
    }
}

/// The topics leaving the processors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Stored jobs, for worker servers.
    Job,
    /// Validated solutions, for node servers.
    Solution,
    /// Verdicts on solutions whose workers asked for one, for worker servers.
    Verdict,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 3] = [Topic::Job, Topic::Solution, Topic::Verdict];

    /// The topic's name.
    pub fn name(self) -> &'static str {
        match self {
            Topic::Job => "job",
            Topic::Solution => "solution",
            Topic::Verdict => "verdict",
        }
    }
}

/// Settles one delivered message.
#[async_trait]
pub trait Acker: Send + Sync {
    /// The message is done with; it will not be delivered again.
    async fn ack(&self) -> Result<(), TransportError>;
    /// Acks this delivery and every earlier one of the same consume stream still
    /// unsettled, in one broker operation (AMQP's `multiple`): how a processor
    /// settles a batch.
    async fn ack_through(&self) -> Result<(), TransportError>;
    /// The message could not be handled; deliver it again (to this or another consumer).
    async fn requeue(&self) -> Result<(), TransportError>;
}

/// One message from a [`WorkQueue`]. Dropped unsettled, it is delivered again
/// once the consumer's connection closes.
pub struct Delivery {
    /// The message body.
    pub payload: Vec<u8>,
    /// Whether the broker delivered it before (to a consumer that did not ack).
    pub redelivered: bool,
    /// Settles it.
    pub acker: Box<dyn Acker>,
}

/// Messages consumed from a queue, one unsettled at a time per `prefetch`.
pub type Deliveries = BoxStream<'static, Result<Delivery, TransportError>>;

/// A durable work queue with publisher confirms and manual acks.
#[async_trait]
pub trait WorkQueue: Send + Sync {
    /// Declares the exchanges and queues if missing.
    async fn declare(&self) -> Result<(), TransportError>;
    /// Publishes to the stream's exchange; returns once the broker has confirmed
    /// (persisted) the message.
    async fn publish(&self, stream: Stream, payload: &[u8]) -> Result<(), TransportError>;
    /// Consumes the stream's queue with at most `prefetch` unacked messages.
    async fn consume(&self, stream: Stream, prefetch: u16) -> Result<Deliveries, TransportError>;
    /// Messages of the stream's queue waiting for a consumer: not counting those
    /// out with one and not yet settled. How far behind its processors a queue is.
    async fn ready(&self, stream: Stream) -> Result<u64, TransportError>;
    /// Whether the broker can be used now (what `/readyz` asks): cheap, and
    /// quick to fail while the broker is known to be down.
    async fn check(&self) -> Result<(), TransportError>;
}

/// Messages appended to a topic after the reader started.
pub type Tail = BoxStream<'static, Result<Vec<u8>, TransportError>>;

/// Messages appended to any of several topics after the reader started, each
/// with its topic.
pub type Tails = BoxStream<'static, Result<(Topic, Vec<u8>), TransportError>>;

/// An append-only log with broadcast readers.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Creates the topics if missing.
    async fn declare(&self) -> Result<(), TransportError>;
    /// Appends to a topic; returns once the broker acknowledged it (acks=all).
    async fn produce(&self, topic: Topic, key: &str, payload: &[u8]) -> Result<(), TransportError>;
    /// Reads every message appended to `topic` from now on, in order per key. No
    /// consumer group: each reader sees everything.
    async fn tail(&self, topic: Topic) -> Result<Tail, TransportError>;
    /// Reads every message appended to any of `topics` from now on, each with its
    /// topic, in order per key within a topic: one reader for several topics. By
    /// default the topics' own tails, merged; where a reader costs by itself
    /// (Kafka: a consumer fetches every `fetch.wait.max.ms`), one reader.
    async fn tail_topics(&self, topics: &[Topic]) -> Result<Tails, TransportError> {
        let mut tails = Vec::with_capacity(topics.len());
        for &topic in topics {
            tails.push(self.tail(topic).await?.map(move |m| m.map(|payload| (topic, payload))));
        }
        Ok(futures::stream::select_all(tails).boxed())
    }
    /// Whether the cluster answers now (what `/readyz` asks), within seconds.
    async fn check(&self) -> Result<(), TransportError>;
}
