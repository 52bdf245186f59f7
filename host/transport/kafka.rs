//! Kafka through rdkafka (librdkafka): the production [`EventLog`], plus
//! [`MockKafka`], librdkafka's in-process mock cluster for tests and local runs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use super::log_throttle::{self, LogThrottle};
use super::{EventLog, Tail, Topic, TransportError};

const BROKER: &str = "Kafka";

/// Longest wait for a metadata or watermark answer (connect, tail).
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for [`EventLog::declare`]: creating topics is best effort.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long topics keep data: jobs and solutions are useless after ~20 minutes.
const RETENTION_MS: &str = "1500000";

/// Partitions the mock cluster gives each topic (what its auto-creation uses too).
const MOCK_PARTITIONS: i32 = 4;

/// Least time between two re-declarations of missing topics, and between two
/// probes of the cluster after produces timed out.
const REDECLARE_EVERY: Duration = Duration::from_secs(5);

/// How long a tail may read nothing before it asks the cluster whether it is
/// missing something (see [`TailReader::stalled`]).
const STALL_CHECK: Duration = Duration::from_secs(10);

/// Longest wait between two such checks: the wait doubles up to this while
/// reopening does not make the reader deliver anything.
const STALL_CHECK_MAX: Duration = Duration::from_secs(300);

/// Longest wait for one partition's high watermark during a stall check.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for a dropped tail consumer to close before the reader goes on
/// (it then finishes closing in the background).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to reach Kafka.
///
/// `properties` are librdkafka settings passed verbatim to every client this module
/// creates (producer, tail readers, admin), after and thus over its own defaults:
/// `security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`,
/// `ssl.ca.location`, `client.id`, … (see librdkafka's CONFIGURATION.md).
#[derive(Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Further librdkafka properties, verbatim.
    pub properties: BTreeMap<String, String>,
    /// `message.timeout.ms`: how long a produce may take, retries included, before
    /// it fails with [`TransportError::Unavailable`]. Default 30 s.
    pub message_timeout: Duration,
    /// `fetch.wait.max.ms` of tail readers: how long the broker may hold a fetch
    /// that found no data. Default 10 ms, because librdkafka's mock cluster never
    /// answers a waiting fetch early (each hop would cost up to this much); raise it
    /// (say to 100–500 ms) against a real cluster to cut idle fetch traffic.
    pub fetch_wait_max: Duration,
}

impl KafkaSettings {
    /// Settings for the given `bootstrap.servers`, with the defaults above.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
            message_timeout: Duration::from_secs(30),
            fetch_wait_max: Duration::from_millis(10),
        }
    }

    /// Adds (or replaces) one librdkafka property.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// The configuration every client starts from; the caller adds its own
    /// defaults, then [`Self::apply_properties`] puts the user's over them.
    fn base_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers).set("client.id", "eligo");
        config
    }

    fn apply_properties(&self, config: &mut ClientConfig) {
        for (key, value) in &self.properties {
            config.set(key, value);
        }
    }

    fn producer_config(&self) -> ClientConfig {
        let mut config = self.base_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", millis(self.message_timeout));
        self.apply_properties(&mut config);
        config
    }

    /// A new idempotent producer.
    fn producer(&self) -> Result<FutureProducer<QuietContext>, TransportError> {
        self.producer_config().create_with_context(QuietContext::default()).map_err(|e| config_error(&e))
    }

    fn tail_config(&self) -> ClientConfig {
        let mut config = self.base_config();
        config
            // librdkafka only assigns partitions within a group, so a reader needs a
            // group id; a fresh one that never commits leaves no state on the broker.
            .set("group.id", format!("eligo-tail-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // The assigned offset is out of range when retention deleted it (the
            // oldest kept is the nearest to it) or when the broker lost the topic
            // and it was declared again (what was produced since is all there is):
            // either way, read from the oldest offset the broker has.
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", millis(self.fetch_wait_max));
        self.apply_properties(&mut config);
        config
    }

    fn admin_config(&self) -> ClientConfig {
        let mut config = self.base_config();
        self.apply_properties(&mut config);
        config
    }
}

/// Hides secrets: settings end up in logs.
impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(key, value)| (key.as_str(), if crate::config::is_secret_key(key) { "***" } else { value.as_str() }))
            .collect();
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &properties)
            .field("message_timeout", &self.message_timeout)
            .field("fetch_wait_max", &self.fetch_wait_max)
            .finish()
    }
}

/// librdkafka's log and error callbacks go through a [`LogThrottle`]: while a
/// broker is unreachable every client reports it many times a second.
#[derive(Clone)]
pub struct QuietContext {
    throttle: Arc<LogThrottle>,
}

impl Default for QuietContext {
    fn default() -> Self {
        QuietContext { throttle: log_throttle::librdkafka() }
    }
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        use tracing::Level;
        let level = match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                Level::ERROR
            }
            RDKafkaLogLevel::Warning => Level::WARN,
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => Level::INFO,
            RDKafkaLogLevel::Debug => Level::DEBUG,
        };
        self.throttle.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.throttle.log(tracing::Level::ERROR, "error", &format!("{error}: {reason}"));
    }
}

impl ConsumerContext for QuietContext {}

/// An [`EventLog`] on Kafka.
///
/// One idempotent producer (`acks=all`) is shared by all `produce` calls. Each
/// [`EventLog::tail`] creates a whole librdkafka consumer (threads and connections
/// to every broker): tail each topic once per process and fan out in memory.
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

/// What produces and tails share: the producer and the recovery state.
struct Shared {
    settings: KafkaSettings,
    producer: ArcSwap<CurrentProducer>,
    /// When recovery last acted; held while recovering.
    recovery: tokio::sync::Mutex<Recovered>,
    /// Whether the last produce failed, to log the change of state once.
    failing: AtomicBool,
}

/// When recovery last did what it does at most once per [`REDECLARE_EVERY`].
#[derive(Default)]
struct Recovered {
    /// Declared the topics again.
    declared: Option<Instant>,
    /// Asked the cluster whether it answers, after a produce timed out.
    probed: Option<Instant>,
}

/// Whether `last` is `None` or older than [`REDECLARE_EVERY`]; if so, it is now.
fn due(last: &mut Option<Instant>) -> bool {
    if last.is_some_and(|at| at.elapsed() < REDECLARE_EVERY) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

/// The current producer and how many were replaced before it.
struct CurrentProducer {
    generation: u64,
    producer: FutureProducer<QuietContext>,
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

impl Shared {
    /// After a failed produce or read: replaces the producer if the failure was
    /// fatal to it, or if it timed out while the cluster answers (and nobody
    /// replaced it yet); and if a topic was missing, declares the topics again.
    async fn recover(&self, failed: Option<&CurrentProducer>, error: &KafkaError) {
        let mut recovered = self.recovery.lock().await;
        if let Some(failed) = failed {
            let why = match failed.producer.client().fatal_error() {
                Some((code, reason)) => Some(format!("it hit a fatal error: {code}: {reason}")),
                // A broker that came back without its producer ids answers
                // UnknownProducerId, and an idempotent producer retries until every
                // message times out. Asked once for the many produces that time out
                // together (each probe waits on the cluster, under this lock), and
                // only while the failed producer is still the current one.
                None if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut)
                    && self.producer.load().generation == failed.generation
                    && due(&mut recovered.probed)
                    && answers(failed).await =>
                {
                    Some("its messages time out while the cluster answers".to_string())
                }
                None => None,
            };
            if let Some(why) = why {
                self.replace_producer(failed.generation, &why);
            }
        }
        let missing_topic = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
        );
        if missing_topic {
            self.topics_lost(&mut recovered, &error.to_string()).await;
        }
    }

    /// A reader found its topic missing.
    async fn redeclare(&self) {
        let mut recovered = self.recovery.lock().await;
        self.topics_lost(&mut recovered, "a reader found its topic missing").await;
    }

    /// The cluster lost a topic: a broker that came back empty. Declares the
    /// topics again and replaces the producer, whose producer id the broker lost
    /// with them: waiting for its messages to time out would hold delivery up
    /// for `message.timeout.ms` (at most once per [`REDECLARE_EVERY`]).
    async fn topics_lost(&self, recovered: &mut Recovered, why: &str) {
        if !due(&mut recovered.declared) {
            return;
        }
        tracing::warn!(error = why, "a Kafka topic is missing; declaring the topics again");
        declare_topics(&self.settings).await;
        let current = self.producer.load_full();
        self.replace_producer(current.generation, "the broker lost its topics, and with them its producer ids");
    }

    /// Replaces the producer of `generation` (unless someone did already). What
    /// the old one still holds is purged: those produces fail now, and their
    /// callers retry on the new producer, rather than waiting for the timeout.
    fn replace_producer(&self, generation: u64, why: &str) {
        let current = self.producer.load_full();
        if current.generation != generation {
            return;
        }
        match self.settings.producer() {
            Ok(producer) => {
                let generation = generation + 1;
                self.producer.store(Arc::new(CurrentProducer { generation, producer }));
                crate::metrics::add("eligo_kafka_producers_replaced_total", &[], 1);
                tracing::warn!(generation, "Kafka producer replaced: {why}");
                tokio::task::spawn_blocking(move || {
                    current.producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight().non_blocking())
                });
            }
            Err(e) => tracing::error!(error = %e, "Kafka producer should be replaced ({why}); cannot create one"),
        }
    }

    fn produce_succeeded(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("Kafka produces succeed again");
        }
    }

    fn produce_failed(&self, error: &TransportError) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "Kafka produces fail; the messages stay queued and are retried");
        }
    }
}

/// Whether the cluster answers a metadata request of `producer`'s client now.
async fn answers(producer: &CurrentProducer) -> bool {
    let client = producer.producer.clone();
    matches!(blocking(move || client.client().fetch_metadata(None, WATERMARK_TIMEOUT)).await, Ok(Ok(_)))
}

/// Creates the topics the cluster lacks, within [`DECLARE_TIMEOUT`]; logs, never fails.
async fn declare_topics(settings: &KafkaSettings) {
    match tokio::time::timeout(DECLARE_TIMEOUT, create_missing_topics(settings)).await {
        Ok(Ok(())) => {}
        // Best effort: on clusters where eligo may not create topics (or on the
        // mock cluster, which does not answer CreateTopics) they exist already or
        // are auto-created by the first produce, with the broker's defaults.
        Ok(Err(error)) => tracing::warn!(%error, "could not create the Kafka topics; continuing"),
        Err(_) => {
            tracing::warn!(timeout_s = DECLARE_TIMEOUT.as_secs(), "creating the Kafka topics timed out; continuing")
        }
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
        let name = topic.name();
        let settings = self.shared.settings.clone();
        // Metadata, watermarks and assign are blocking librdkafka calls.
        let opened = blocking(move || open_tail(&settings, name, &Positions::new())).await?;
        let (consumer, positions) = opened.map_err(TransportError::from)?;
        let reader = TailReader {
            consumer: Some(consumer),
            positions,
            name,
            shared: self.shared.clone(),
            behind: None,
            check_every: STALL_CHECK,
        };
        let stream = futures::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            match reader.next().await {
                Ok(payload) => Some((Ok(payload), Some(reader))),
                Err(error) => Some((Err(error), None)),
            }
        });
        Ok(stream.boxed())
    }
}

/// The next offset to read, by partition.
type Positions = BTreeMap<i32, i64>;

/// One topic's reader. It remembers where it is in each partition, so that when
/// it lost the cluster (every broker down: a restart) it opens a new consumer at
/// exactly those offsets once the cluster answers again: a librdkafka consumer
/// left to reconnect by itself was seen never to fetch again. The same reopen
/// happens when a quiet reader finds the cluster holding messages it should have
/// read long ago (see [`TailReader::stalled`]), whatever the reason.
struct TailReader {
    consumer: Option<StreamConsumer<QuietContext>>,
    positions: Positions,
    name: &'static str,
    shared: Arc<Shared>,
    /// High watermarks of the last stall check, if the reader was behind them.
    behind: Option<Positions>,
    /// Quiet time before the next stall check.
    check_every: Duration,
}

impl TailReader {
    /// The next message's payload; an error only if the stream must end.
    async fn next(&mut self) -> Result<Vec<u8>, TransportError> {
        loop {
            let Some(consumer) = &self.consumer else {
                self.reopen().await;
                continue;
            };
            // `recv` is cancellation safe: a message is only taken off the queue
            // when it is returned.
            let error = match tokio::time::timeout(self.check_every, consumer.recv()).await {
                Ok(Ok(message)) => {
                    self.positions.insert(message.partition(), message.offset() + 1);
                    self.behind = None;
                    self.check_every = STALL_CHECK;
                    return Ok(message.payload().unwrap_or_default().to_vec());
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
        let (name, partitions): (&'static str, Vec<i32>) = (self.name, self.positions.keys().copied().collect());
        let highs = blocking(move || {
            let client = producer.producer.client();
            partitions
                .into_iter()
                .map(|p| client.fetch_watermarks(name, p, WATERMARK_TIMEOUT).map(|(_, high)| (p, high)))
                .collect::<Result<Positions, KafkaError>>()
        })
        .await;
        let Ok(Ok(highs)) = highs else {
            self.behind = None;
            return false;
        };
        let positions = &self.positions;
        if let Some((&partition, &high)) =
            highs.iter().find(|&(p, &high)| positions.get(p).is_some_and(|&at| at > high))
        {
            let at = positions.get(&partition).copied().unwrap_or_default();
            let line = format!(
                "partition {partition} of `{name}` ends at {high}, before the reader's offset {at}: \
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
        if let Some((partition, high)) = stalled {
            let at = self.positions.get(&partition).copied().unwrap_or_default();
            let quiet = 2 * self.check_every.as_secs();
            log_throttle::librdkafka().log(
                tracing::Level::WARN,
                "tail",
                &format!(
                    "the reader of `{name}` read nothing for {quiet}s while partition {partition} held \
                     offsets {at}..{high}; reopening it there"
                ),
            );
        }
        stalled.is_some()
    }

    /// Drops the consumer, so that the next call reopens at the positions, and
    /// counts why. Destroying a consumer blocks until its threads end, which
    /// librdkafka may make wait on an unreachable broker: past [`CLOSE_TIMEOUT`]
    /// the reader goes on and the old consumer finishes closing in the background.
    async fn restart(&mut self, reason: &'static str) {
        crate::metrics::add("eligo_kafka_tail_reopens_total", &[("topic", self.name), ("reason", reason)], 1);
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
            let (settings, name, positions) = (self.shared.settings.clone(), self.name, self.positions.clone());
            match blocking(move || open_tail(&settings, name, &positions))
                .await
                .map_err(OpenError::from)
                .and_then(|o| o)
            {
                Ok((consumer, positions)) => {
                    tracing::info!(topic = self.name, "Kafka reader reopened at the offsets it had reached");
                    self.consumer = Some(consumer);
                    // Keeps the offsets of partitions this metadata did not list.
                    self.positions.extend(positions);
                    return;
                }
                Err(error) => {
                    let throttle = log_throttle::librdkafka();
                    throttle.log(tracing::Level::WARN, "tail", &format!("reopening the reader of `{name}`: {error}"));
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

/// A consumer assigned every partition of `topic`: at `positions` where known
/// (from its beginning where a known position is past its end), else at the
/// partition's current end. Returns the offsets it starts from.
///
/// The end offsets are read here rather than left to `Offset::End`, which
/// librdkafka resolves later, when it starts fetching: a message produced between
/// `tail` returning and that lookup would be skipped.
fn open_tail(
    settings: &KafkaSettings,
    topic: &str,
    positions: &Positions,
) -> Result<(StreamConsumer<QuietContext>, Positions), OpenError> {
    let consumer: StreamConsumer<QuietContext> =
        settings.tail_config().create_with_context(QuietContext::default()).map_err(|e| config_error(&e))?;
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
    let mut assignment = TopicPartitionList::new();
    let mut starts = Positions::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
            .map_err(|e| unavailable(format!("end of `{topic}` partition {partition}: {e}")))?;
        let offset = match positions.get(&partition) {
            Some(&known) if known <= high => known,
            // Past the end: the partition was made anew (a broker that lost its
            // state). Everything in it was produced since: read it all. Not every
            // broker answers such a fetch with "out of range" for
            // `auto.offset.reset` to apply.
            Some(_) => low,
            None => high,
        };
        starts.insert(partition, offset);
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(offset))
            .map_err(|e| refused(format!("assigning `{topic}` partition {partition}: {e}")))?;
    }
    consumer.assign(&assignment).map_err(|e| refused(format!("assigning `{topic}`: {e}")))?;
    Ok((consumer, starts))
}

/// Why a tail could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
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

/// Creates the topics the cluster lacks, with the pipeline's retention.
async fn create_missing_topics(settings: &KafkaSettings) -> Result<(), TransportError> {
    let admin: AdminClient<QuietContext> =
        settings.admin_config().create_with_context(QuietContext::default()).map_err(|e| config_error(&e))?;
    // Asking first avoids CreateTopics altogether when the topics exist, which is
    // every start but the first (and always on the mock cluster).
    let (admin, existing) = blocking(move || {
        let names = admin
            .inner()
            .fetch_metadata(None, DECLARE_TIMEOUT)
            .map(|m| m.topics().iter().filter(|t| t.error().is_none()).map(|t| t.name().to_owned()).collect());
        (admin, names)
    })
    .await?;
    let existing: Vec<String> = existing.map_err(|e| unavailable(format!("listing topics: {e}")))?;
    let missing: Vec<NewTopic<'_>> = Topic::ALL
        .into_iter()
        .filter(|t| !existing.iter().any(|e| e == t.name()))
        // -1: the broker's default partition count and replication factor.
        .map(|t| NewTopic::new(t.name(), -1, TopicReplication::Fixed(-1)).set("retention.ms", RETENTION_MS))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let options = AdminOptions::new().request_timeout(Some(DECLARE_TIMEOUT));
    let results =
        admin.create_topics(&missing, &options).await.map_err(|e| refused(format!("creating topics: {e}")))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(refused(format!("creating topic `{topic}`: {code}"))),
        }
    }
    Ok(())
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

/// librdkafka's in-process mock Kafka cluster (one broker on a random port of
/// 127.0.0.1, memory only) with topics `job` and `solution` of 4 partitions.
///
/// The cluster is not `Send`, so a dedicated thread owns it until this handle is
/// dropped; the handle only exposes its address. Drop every client using it
/// (logs, tails) before dropping the handle: librdkafka may abort when a cluster
/// disappears under its clients. Limits: no SASL/TLS, and at most ~5 MiB per
/// partition (older data silently vanishes).
pub struct MockKafka {
    bootstrap_servers: String,
    /// Dropping it tells the owning thread to destroy the cluster.
    commands: Option<mpsc::Sender<MockCommand>>,
    thread: Option<JoinHandle<()>>,
}

/// Fault injection, run by the thread that owns the cluster.
enum MockCommand {
    BrokerDown(mpsc::Sender<Result<(), TransportError>>),
    BrokerUp(mpsc::Sender<Result<(), TransportError>>),
    FailProduces(RDKafkaRespErr, usize, mpsc::Sender<Result<(), TransportError>>),
}

impl MockKafka {
    /// Starts the cluster and creates the topics.
    pub fn start() -> Result<Self, TransportError> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, TransportError>>();
        let (commands, command_rx) = mpsc::channel::<MockCommand>();
        let thread = std::thread::Builder::new()
            .name("kafka-mock".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(cluster) => cluster,
                    Err(e) => {
                        let _ = ready_tx.send(Err(unavailable(format!("starting the mock cluster: {e}"))));
                        return;
                    }
                };
                for topic in Topic::ALL {
                    if let Err(e) = cluster.create_topic(topic.name(), MOCK_PARTITIONS, 1) {
                        let _ = ready_tx.send(Err(refused(format!("creating mock topic `{}`: {e}", topic.name()))));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Until the handle's drop ends `recv`.
                while let Ok(command) = command_rx.recv() {
                    let mock_error = |e: KafkaError| unavailable(format!("mock cluster: {e}"));
                    match command {
                        MockCommand::BrokerDown(done) => {
                            let _ = done.send(cluster.broker_down(-1).map_err(mock_error));
                        }
                        MockCommand::BrokerUp(done) => {
                            let _ = done.send(cluster.broker_up(-1).map_err(mock_error));
                        }
                        MockCommand::FailProduces(error, count, done) => {
                            cluster.request_errors(RDKafkaApiKey::Produce, &vec![error; count]);
                            let _ = done.send(Ok(()));
                        }
                    }
                }
                drop(cluster);
            })
            .map_err(|e| unavailable(format!("spawning the mock cluster thread: {e}")))?;
        let bootstrap_servers = match ready_rx.recv() {
            Ok(ready) => ready?,
            Err(_) => return Err(unavailable("the mock cluster thread died while starting".into())),
        };
        Ok(Self { bootstrap_servers, commands: Some(commands), thread: Some(thread) })
    }

    /// Takes the broker down: its connections are closed and new ones refused,
    /// its topics and data kept, as a broker restart that keeps its state.
    pub fn broker_down(&self) -> Result<(), TransportError> {
        self.command(MockCommand::BrokerDown)
    }

    /// Brings the broker back after [`Self::broker_down`].
    pub fn broker_up(&self) -> Result<(), TransportError> {
        self.command(MockCommand::BrokerUp)
    }

    /// The next `count` produce requests fail with `error`: with
    /// `RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH` an idempotent producer hits the
    /// fatal error a broker that forgot its producer ids causes.
    pub fn fail_produces(&self, error: RDKafkaRespErr, count: usize) -> Result<(), TransportError> {
        self.command(|done| MockCommand::FailProduces(error, count, done))
    }

    fn command(
        &self,
        command: impl FnOnce(mpsc::Sender<Result<(), TransportError>>) -> MockCommand,
    ) -> Result<(), TransportError> {
        let (done, result) = mpsc::channel();
        let sent = self.commands.as_ref().map(|commands| commands.send(command(done)));
        match (sent, result.recv()) {
            (Some(Ok(())), Ok(outcome)) => outcome,
            _ => Err(unavailable("the mock cluster thread is gone".into())),
        }
    }

    /// The cluster's `bootstrap.servers` (`127.0.0.1:<port>`).
    pub fn bootstrap_servers(&self) -> String {
        self.bootstrap_servers.clone()
    }

    /// [`KafkaSettings`] for this cluster.
    pub fn settings(&self) -> KafkaSettings {
        KafkaSettings::new(self.bootstrap_servers())
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_as_logged_show_no_secret_property() {
        let settings = KafkaSettings::new("k:9092")
            .with("sasl.mechanism", "PLAIN")
            .with("sasl.password", "pw-1")
            .with("sasl.jaas.config", "pw-2")
            .with("ssl.key.pem", "pw-3")
            .with("ssl.key.password", "pw-4");
        let logged = format!("{settings:?}");
        assert!(!logged.contains("pw-"), "{logged}");
        assert!(logged.contains("PLAIN"), "{logged}");
    }
}
