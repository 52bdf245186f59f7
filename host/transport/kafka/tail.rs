//! The reader of one or more topics: where it is in each partition, and
//! reopening there when the cluster was lost or a quiet reader finds it fell
//! behind. One consumer for several topics sends one fetch per wait for them all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use crate::transport::log_throttle::{self};
use crate::transport::{Topic, TransportError};

use super::producer::Shared;
use super::settings::{KafkaSettings, QuietContext};
use super::{blocking, config_error, refused, unavailable, METADATA_TIMEOUT, WATERMARK_TIMEOUT};

/// How long a tail may read nothing before it asks the cluster whether it is
/// missing something (see [`TailReader::stalled`]).
pub(super) const STALL_CHECK: Duration = Duration::from_secs(10);

/// Longest wait between two such checks: the wait doubles up to this while
/// reopening does not make the reader deliver anything.
const STALL_CHECK_MAX: Duration = Duration::from_secs(300);

/// Longest wait for a dropped tail consumer to close before the reader goes on
/// (it then finishes closing in the background).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The next offset to read, by topic and partition.
pub(super) type Positions = BTreeMap<(&'static str, i32), i64>;

/// The reader of one or more topics. It remembers where it is in each partition, so that when
/// it lost the cluster (every broker down: a restart) it opens a new consumer at
/// exactly those offsets once the cluster answers again: a librdkafka consumer
/// left to reconnect by itself was seen never to fetch again. The same reopen
/// happens when a quiet reader finds the cluster holding messages it should have
/// read long ago (see [`TailReader::stalled`]), whatever the reason.
pub(super) struct TailReader {
    pub(super) consumer: Option<StreamConsumer<QuietContext>>,
    pub(super) positions: Positions,
    /// The topics it reads.
    pub(super) topics: Vec<Topic>,
    /// Their names joined by `+`, for logs and metrics.
    pub(super) name: String,
    pub(super) shared: Arc<Shared>,
    /// High watermarks of the last stall check, if the reader was behind them.
    pub(super) behind: Option<Positions>,
    /// Quiet time before the next stall check.
    pub(super) check_every: Duration,
}

impl TailReader {
    /// The next message's topic and payload; an error only if the stream must end.
    pub(super) async fn next(&mut self) -> Result<(Topic, Vec<u8>), TransportError> {
        loop {
            let Some(consumer) = &self.consumer else {
                self.reopen().await;
                continue;
            };
            // `recv` is cancellation safe: a message is only taken off the queue
            // when it is returned.
            let error = match tokio::time::timeout(self.check_every, consumer.recv()).await {
                Ok(Ok(message)) => {
                    // Only the assigned topics are fetched.
                    let Some(topic) = self.topics.iter().copied().find(|t| t.name() == message.topic()) else {
                        continue;
                    };
                    self.positions.insert((topic.name(), message.partition()), message.offset() + 1);
                    self.behind = None;
                    self.check_every = STALL_CHECK;
                    return Ok((topic, message.payload().unwrap_or_default().to_vec()));
                }
                Ok(Err(error)) => Some(error),
                Err(_quiet) => None,
            };
            let Some(error) = error else {
                if self.stalled().await {
                    self.restart("stalled").await;
                    // Reopening again soon only helps if this one did: a record
                    // that is never delivered (a transaction marker) keeps a
                    // partition "behind" for good.
                    self.check_every = (self.check_every * 2).min(STALL_CHECK_MAX);
                }
                continue;
            };
            if let KafkaError::MessageConsumptionFatal(code) = error {
                return Err(unavailable(format!("reading topic `{}`: fatal error {code}", self.name)));
            }
            consumer.context().throttle.log(tracing::Level::WARN, "tail", &format!("reading `{}`: {error}", self.name));
            self.shared.recover(None, &error).await;
            if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
                self.restart("all_brokers_down").await;
            }
        }
    }

    /// Called after `check_every` without a message: whether the consumer stopped
    /// fetching. The high watermarks are read through the producer, another client
    /// with its own connections. The reader is stalled if offsets that were below
    /// a high watermark at the previous check are still not delivered now, a whole
    /// quiet period later; one check is never enough (a message produced just
    /// before it would look missing). A check the cluster does not answer
    /// concludes nothing.
    async fn stalled(&mut self) -> bool {
        let producer = self.shared.producer.load_full();
        let partitions: Vec<(&'static str, i32)> = self.positions.keys().copied().collect();
        let highs = blocking(move || {
            let client = producer.producer.client();
            partitions
                .into_iter()
                .map(|(t, p)| client.fetch_watermarks(t, p, WATERMARK_TIMEOUT).map(|(_, high)| ((t, p), high)))
                .collect::<Result<Positions, KafkaError>>()
        })
        .await;
        let Ok(Ok(highs)) = highs else {
            self.behind = None;
            return false;
        };
        let positions = &self.positions;
        if let Some((&(topic, partition), &high)) =
            highs.iter().find(|&(p, &high)| positions.get(p).is_some_and(|&at| at > high))
        {
            let at = positions.get(&(topic, partition)).copied().unwrap_or_default();
            let line = format!(
                "partition {partition} of `{topic}` ends at {high}, before the reader's offset {at}: \
                 the broker made it anew; reading it from its beginning"
            );
            log_throttle::librdkafka().log(tracing::Level::WARN, "tail", &line);
            self.behind = None;
            return true;
        }
        let first_behind = |highs: &Positions| {
            highs.iter().find(|&(p, &high)| positions.get(p).is_some_and(|&at| at < high)).map(|(&p, &high)| (p, high))
        };
        let stalled = self.behind.as_ref().and_then(first_behind);
        let behind_now = first_behind(&highs).is_some();
        self.behind = behind_now.then_some(highs);
        if let Some(((topic, partition), high)) = stalled {
            let at = self.positions.get(&(topic, partition)).copied().unwrap_or_default();
            let quiet = 2 * self.check_every.as_secs();
            log_throttle::librdkafka().log(
                tracing::Level::WARN,
                "tail",
                &format!(
                    "the reader of `{}` read nothing for {quiet}s while partition {partition} of `{topic}` held \
                     offsets {at}..{high}; reopening it there",
                    self.name
                ),
            );
        }
        stalled.is_some()
    }

    /// Drops the consumer, so that the next call reopens at the positions, and
    /// counts why. Destroying a consumer blocks until its threads end, which
    /// librdkafka may make wait on an unreachable broker: past [`CLOSE_TIMEOUT`]
    /// the reader goes on and the old consumer finishes closing in the background.
    pub(super) async fn restart(&mut self, reason: &'static str) {
        crate::metrics::add("eligo_kafka_tail_reopens_total", &[("topic", &self.name), ("reason", reason)], 1);
        self.behind = None;
        if let Some(old) = self.consumer.take() {
            let closing = tokio::task::spawn_blocking(move || drop(old));
            if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
                let line = format!("the old reader of `{}` is still closing; reopening anyway", self.name);
                log_throttle::librdkafka().log(tracing::Level::WARN, "tail", &line);
            }
        }
    }

    /// Opens a new consumer at the remembered offsets, retrying until the
    /// cluster answers.
    async fn reopen(&mut self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let (settings, positions) = (self.shared.settings.clone(), self.positions.clone());
            let topics: Vec<&'static str> = self.topics.iter().map(|t| t.name()).collect();
            match blocking(move || open_tail(&settings, &topics, &positions))
                .await
                .map_err(OpenError::from)
                .and_then(|o| o)
            {
                Ok((consumer, positions)) => {
                    tracing::info!(topic = %self.name, "Kafka reader reopened at the offsets it had reached");
                    self.consumer = Some(consumer);
                    // Keeps the offsets of partitions this metadata did not list.
                    self.positions.extend(positions);
                    return;
                }
                Err(error) => {
                    let throttle = log_throttle::librdkafka();
                    let line = format!("reopening the reader of `{}`: {error}", self.name);
                    throttle.log(tracing::Level::WARN, "tail", &line);
                    // A broker that came back empty lacks the topic: nobody else
                    // declares it while no produce reaches it.
                    if let OpenError::MissingTopic(_) = error {
                        self.shared.redeclare().await;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// A consumer assigned every partition of `topics`: at `positions` where known
/// (from its beginning where a known position is past its end), else at the
/// partition's current end. Returns the offsets it starts from.
///
/// The end offsets are read here rather than left to `Offset::End`, which
/// librdkafka resolves later, when it starts fetching: a message produced between
/// `tail` returning and that lookup would be skipped.
pub(super) fn open_tail(
    settings: &KafkaSettings,
    topics: &[&'static str],
    positions: &Positions,
) -> Result<(StreamConsumer<QuietContext>, Positions), OpenError> {
    let consumer: StreamConsumer<QuietContext> =
        settings.tail_config().create_with_context(QuietContext::of(settings)).map_err(|e| config_error(&e))?;
    let mut assignment = TopicPartitionList::new();
    let mut starts = Positions::new();
    for &topic in topics {
        for partition in partitions_of(&consumer, topic)? {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
                .map_err(|e| unavailable(format!("end of `{topic}` partition {partition}: {e}")))?;
            let offset = match positions.get(&(topic, partition)) {
                Some(&known) if known <= high => known,
                // Past the end: the partition was made anew (a broker that lost its
                // state). Everything in it was produced since: read it all. Not every
                // broker answers such a fetch with "out of range" for
                // `auto.offset.reset` to apply.
                Some(_) => low,
                None => high,
            };
            starts.insert((topic, partition), offset);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(offset))
                .map_err(|e| refused(format!("assigning `{topic}` partition {partition}: {e}")))?;
        }
    }
    consumer.assign(&assignment).map_err(|e| refused(format!("assigning {topics:?}: {e}")))?;
    Ok((consumer, starts))
}

/// The partitions of `topic`, as the cluster's metadata lists them.
fn partitions_of(consumer: &StreamConsumer<QuietContext>, topic: &str) -> Result<Vec<i32>, OpenError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| unavailable(format!("metadata of topic `{topic}`: {e}")))?;
    let partitions: Vec<i32> = match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(found) if found.error().is_none() => found.partitions().iter().map(|p| p.id()).collect(),
        Some(found) => {
            let why = found.error().map(|e| RDKafkaErrorCode::from(e).to_string()).unwrap_or_default();
            return Err(OpenError::MissingTopic(unavailable(format!("topic `{topic}`: {why}"))));
        }
        None => return Err(OpenError::MissingTopic(unavailable(format!("topic `{topic}` is missing")))),
    };
    if partitions.is_empty() {
        return Err(OpenError::MissingTopic(unavailable(format!("topic `{topic}` has no partitions yet"))));
    }
    Ok(partitions)
}

/// Why a tail could not be opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum OpenError {
    /// The cluster answers but lacks the topic (a broker that lost its state).
    #[error("{0}")]
    MissingTopic(TransportError),
    /// Anything else: unreachable, misconfigured.
    #[error("{0}")]
    Other(#[from] TransportError),
}

impl From<OpenError> for TransportError {
    fn from(error: OpenError) -> Self {
        match error {
            OpenError::MissingTopic(e) | OpenError::Other(e) => e,
        }
    }
}
