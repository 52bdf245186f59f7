//! Creating the topics the cluster lacks, with the pipeline's retention.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use std::time::Duration;

use crate::transport::{Topic, TransportError};

use super::settings::{KafkaSettings, QuietContext};
use super::{blocking, config_error, refused, unavailable};

/// Longest wait for [`EventLog::declare`]: creating topics is best effort.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long topics keep data: jobs and solutions are useless after ~20 minutes.
const RETENTION_MS: &str = "1500000";

/// Creates the topics the cluster lacks, within [`DECLARE_TIMEOUT`]; logs, never fails.
pub(super) async fn declare_topics(settings: &KafkaSettings) {
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

/// Creates the topics the cluster lacks, with the pipeline's retention.
async fn create_missing_topics(settings: &KafkaSettings) -> Result<(), TransportError> {
    let admin: AdminClient<QuietContext> =
        settings.admin_config().create_with_context(QuietContext::of(settings)).map_err(|e| config_error(&e))?;
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
