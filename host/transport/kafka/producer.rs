//! The one producer every `produce` shares, and its recovery: a producer that
//! hit a fatal error, or timed out while the cluster answers, is replaced; a
//! missing topic is declared again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use arc_swap::ArcSwap;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};

use crate::transport::TransportError;

use super::settings::{KafkaSettings, QuietContext};
use super::topics::declare_topics;
use super::{blocking, WATERMARK_TIMEOUT};

/// Least time between two re-declarations of missing topics, and between two
/// probes of the cluster after produces timed out.
const REDECLARE_EVERY: Duration = Duration::from_secs(5);

/// What produces and tails share: the producer and the recovery state.
pub(super) struct Shared {
    pub(super) settings: KafkaSettings,
    pub(super) producer: ArcSwap<CurrentProducer>,
    /// When recovery last acted; held while recovering.
    pub(super) recovery: tokio::sync::Mutex<Recovered>,
    /// Whether the last produce failed, to log the change of state once.
    pub(super) failing: AtomicBool,
}

/// When recovery last did what it does at most once per [`REDECLARE_EVERY`].
#[derive(Default)]
pub(super) struct Recovered {
    /// Declared the topics again.
    pub(super) declared: Option<Instant>,
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
pub(super) struct CurrentProducer {
    pub(super) generation: u64,
    pub(super) producer: FutureProducer<QuietContext>,
}

impl Shared {
    /// After a failed produce or read: replaces the producer if the failure was
    /// fatal to it, or if it timed out while the cluster answers (and nobody
    /// replaced it yet); and if a topic was missing, declares the topics again.
    pub(super) async fn recover(&self, failed: Option<&CurrentProducer>, error: &KafkaError) {
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
    pub(super) async fn redeclare(&self) {
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

    pub(super) fn produce_succeeded(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("Kafka produces succeed again");
        }
    }

    pub(super) fn produce_failed(&self, error: &TransportError) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "Kafka produces fail; the messages stay queued and are retried");
        }
    }
}

/// Whether the cluster answers a metadata request of `producer`'s client now.
pub(super) async fn answers(producer: &CurrentProducer) -> bool {
    let client = producer.producer.clone();
    matches!(blocking(move || client.client().fetch_metadata(None, WATERMARK_TIMEOUT)).await, Ok(Ok(_)))
}
