//! Kafka through rdkafka (librdkafka): the production [`EventLog`], plus
//! [`MockKafka`], librdkafka's in-process mock cluster for tests and local runs.
//!
//! - [`settings`]: where and how to reach the cluster, and the clients' shared context.
//! - `producer`: the shared producer and its recovery from a cluster that lost its state.
//! - `tail`: the reader of one or more topics, with stall detection and reopening at its offsets.
//! - `topics`: creating the topics the cluster lacks.
//! - `mock`: the mock cluster ([`MockKafka`]).

mod mock;
mod producer;
pub mod settings;
mod tail;
mod topics;

pub use mock::MockKafka;
pub use settings::{live_clients, KafkaSettings, QuietContext};

use producer::{CurrentProducer, Recovered, Shared};
use tail::{open_tail, Positions, TailReader, STALL_CHECK};
use topics::declare_topics;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures::StreamExt;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::util::Timeout;

use super::{EventLog, Tail, Tails, Topic, TransportError};

const BROKER: &str = "Kafka";

/// Longest wait for a metadata or watermark answer (connect, tail).
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for one partition's high watermark during a stall check.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

/// An [`EventLog`] on Kafka.
///
/// One idempotent producer (`acks=all`) is shared by all `produce` calls. Each
/// [`EventLog::tail`] or [`EventLog::tail_topics`] creates a whole librdkafka
/// consumer (threads and connections to every broker, and a fetch every
/// `fetch.wait.max.ms` while the topics are quiet): tail each topic once per
/// process, several topics with one `tail_topics`, and fan out in memory.
///
/// librdkafka reconnects by itself; what it does not survive is a broker that
/// lost its state (memory storage, a reset cluster, a deleted topic). So a produce
/// or read that finds its topic missing declares the topics again, and a producer
/// that hit a fatal error (the broker forgot its producer id) is replaced. While
/// the cluster is down, produces fail after `message_timeout` and tails wait.
/// Errors a tail recovers from are logged, not yielded; a fatal one is yielded and
/// ends the stream.
pub struct KafkaLog {
    shared: Arc<Shared>,
}

impl KafkaLog {
    /// Creates the producer and checks the cluster answers (a metadata request,
    /// at most 10 s), so a misconfigured deployment stops at startup.
    pub async fn connect(settings: KafkaSettings) -> Result<Self, TransportError> {
        let producer = settings.producer()?;
        let probe = producer.clone();
        let servers = settings.bootstrap_servers.clone();
        blocking(move || probe.client().fetch_metadata(None, METADATA_TIMEOUT))
            .await?
            .map_err(|e| unavailable(format!("no metadata from {servers}: {e}")))?;
        let shared = Shared {
            settings,
            producer: ArcSwap::from_pointee(CurrentProducer { generation: 0, producer }),
            recovery: tokio::sync::Mutex::new(Recovered::default()),
            failing: AtomicBool::new(false),
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// The settings this log was connected with.
    pub fn settings(&self) -> &KafkaSettings {
        &self.shared.settings
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn declare(&self) -> Result<(), TransportError> {
        declare_topics(&self.shared.settings).await;
        Ok(())
    }

    /// A metadata request of the current producer's client, within
    /// [`WATERMARK_TIMEOUT`].
    async fn check(&self) -> Result<(), TransportError> {
        let client = self.shared.producer.load().producer.clone();
        blocking(move || client.client().fetch_metadata(None, WATERMARK_TIMEOUT))
            .await?
            .map(|_| ())
            .map_err(|e| unavailable(format!("no metadata from {}: {e}", self.shared.settings.bootstrap_servers)))
    }

    async fn produce(&self, topic: Topic, key: &str, payload: &[u8]) -> Result<(), TransportError> {
        let current = self.shared.producer.load_full();
        let record = FutureRecord::to(topic.name()).key(key).payload(payload);
        // The queue timeout only bounds waiting for room in a full local queue; the
        // delivery itself is bounded by `message.timeout.ms`.
        match current.producer.send(record, Timeout::After(self.shared.settings.message_timeout)).await {
            Ok(_) => {
                self.shared.produce_succeeded();
                Ok(())
            }
            Err((error, _message)) => {
                self.shared.recover(Some(&current), &error).await;
                let error = produce_error(topic, error);
                self.shared.produce_failed(&error);
                Err(error)
            }
        }
    }

    async fn tail(&self, topic: Topic) -> Result<Tail, TransportError> {
        Ok(reading(self.tail_reader(&[topic]).await?, |(_, payload)| payload))
    }

    /// One consumer for all of `topics`.
    async fn tail_topics(&self, topics: &[Topic]) -> Result<Tails, TransportError> {
        Ok(reading(self.tail_reader(topics).await?, |message| message))
    }
}

impl KafkaLog {
    /// A reader of `topics` from their ends.
    async fn tail_reader(&self, topics: &[Topic]) -> Result<TailReader, TransportError> {
        let names: Vec<&'static str> = topics.iter().map(|t| t.name()).collect();
        let (settings, opening) = (self.shared.settings.clone(), names.clone());
        // Metadata, watermarks and assign are blocking librdkafka calls.
        let opened = blocking(move || open_tail(&settings, &opening, &Positions::new())).await?;
        let (consumer, positions) = opened.map_err(TransportError::from)?;
        Ok(TailReader {
            consumer: Some(consumer),
            positions,
            topics: topics.to_vec(),
            name: names.join("+"),
            shared: self.shared.clone(),
            behind: None,
            check_every: STALL_CHECK,
        })
    }
}

/// `reader`'s messages as `pick` makes them, until its first error.
fn reading<T: Send + 'static>(
    reader: TailReader,
    pick: fn((Topic, Vec<u8>)) -> T,
) -> futures::stream::BoxStream<'static, Result<T, TransportError>> {
    let stream = futures::stream::unfold(Some(reader), move |reader| async move {
        let mut reader = reader?;
        match reader.next().await {
            Ok(message) => Some((Ok(pick(message)), Some(reader))),
            Err(error) => Some((Err(error), None)),
        }
    });
    stream.boxed()
}

/// Runs a blocking librdkafka call off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, TransportError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| unavailable(format!("blocking Kafka call failed: {e}")))
}

/// Delivery failures the cluster may recover from are [`TransportError::Unavailable`];
/// the rest (too large, not authorized, …) are refusals.
fn produce_error(topic: Topic, error: KafkaError) -> TransportError {
    use RDKafkaErrorCode as C;
    let detail = format!("producing to `{}`: {error}", topic.name());
    match error.rdkafka_error_code() {
        Some(
            C::MessageTimedOut
            | C::QueueFull
            | C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::Resolve
            | C::RequestTimedOut
            | C::NetworkException
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::BrokerNotAvailable
            | C::OperationTimedOut
            // A broker that lost its state: the topic is declared again and the
            // producer replaced (see `Shared::recover`), so a retry can succeed.
            | C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::Fatal
            | C::UnknownProducerId
            | C::OutOfOrderSequenceNumber
            | C::InvalidProducerEpoch
            // Purged from a producer that was replaced: retried on the new one.
            | C::PurgeQueue
            | C::PurgeInflight,
        ) => unavailable(detail),
        _ => refused(detail),
    }
}

/// A bad librdkafka property. Its value is left out: it may be a password.
fn config_error(error: &KafkaError) -> TransportError {
    let detail = match error {
        KafkaError::ClientConfig(_, description, key, _value) => format!("property `{key}`: {description}"),
        other => other.to_string(),
    };
    refused(format!("client configuration: {detail}"))
}

fn unavailable(detail: String) -> TransportError {
    TransportError::Unavailable { broker: BROKER, detail }
}

fn refused(detail: String) -> TransportError {
    TransportError::Refused { broker: BROKER, detail }
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}
