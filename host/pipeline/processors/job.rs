//! The job processor: consumes the `job` queue in batches, stores each job once
//! per height and produces it to the `job` topic once.
//!
//! A message is acked only after the database commit and the log's delivery
//! report. A message that can never be used (not a job) is recorded in
//! `rejected_message` and acked, never retried forever; any other failure leaves
//! it unacked, to be delivered again. If the process dies between producing and
//! recording the broadcast, the job is produced again on redelivery: worker
//! servers never resend a height, so clients see no duplicate.
//!
//! Jobs of a batch are produced one after another in height order (jobs are few;
//! their order matters, as worker servers skip heights below the last they sent).
//! They all carry one key, so they share one partition and every reader gets them
//! in that order, also when it catches up on several at once (after an outage).
//! Keyed by height they were spread over the partitions, and a reader could get a
//! higher height first: the lower one was then never sent to any worker.

use crate::pipeline::consume::{consume_until, BatchSettings, Retry};
use crate::pipeline::Services;
use crate::protocol::{JobEvent, JobFrame};
use crate::store::{NewJob, Rejected, Settlement};
use crate::transport::{Stream, Topic};
use std::collections::HashSet;
use tokio_util::sync::CancellationToken;

/// The key of every job in the `job` topic (see the module comment).
const JOB_KEY: &str = "job";

/// What became of one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (or found) and produced to the log.
    Broadcast,
    /// Its height was stored and broadcast before: dropped.
    Duplicate,
    /// Not a job: recorded and dropped.
    Rejected(String),
}

/// Consumes the `job` queue until `shutdown`. A batch is the jobs ready at once:
/// jobs come one a block, so waiting `linger_ms` for more would only delay each.
pub async fn run(services: Services, settings: BatchSettings, shutdown: CancellationToken) {
    let settings = BatchSettings { linger_ms: 0, ..settings };
    consume_until(Stream::Job, services, settings, shutdown, |s, p| {
        Box::pin(async move { Ok(process_batch(s, p).await?.iter().map(Outcome::label).collect()) })
    })
    .await
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Broadcast => "broadcast",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected(_) => "rejected",
        }
    }
}

/// Stores and broadcasts one job message.
pub async fn process(services: &Services, payload: &[u8]) -> Result<Outcome, Retry> {
    crate::pipeline::consume::only(process_batch(services, &[payload.to_vec()]).await?)
}

/// Stores and broadcasts a batch of job messages; says what became of each, in
/// order. A failure leaves nothing acked: the batch is retried.
pub async fn process_batch(services: &Services, payloads: &[Vec<u8>]) -> Result<Vec<Outcome>, Retry> {
    let mut outcomes: Vec<Option<Outcome>> = payloads.iter().map(|_| None).collect();
    let mut rejected = Vec::new();
    let mut new = Vec::new();
    let mut message_of = Vec::new();
    // Each height once per batch: a repeat is a duplicate of the first.
    let mut heights = HashSet::new();
    for (i, payload) in payloads.iter().enumerate() {
        let frame = match JobFrame::parse(payload) {
            Ok(frame) => frame,
            Err(e) => {
                rejected.push(Rejected::new("job", payload, e.to_string()));
                outcomes[i] = Some(Outcome::Rejected(e.to_string()));
                continue;
            }
        };
        if !heights.insert(frame.block_height) {
            outcomes[i] = Some(Outcome::Duplicate);
            continue;
        }
        new.push(NewJob {
            task_id: uuid::Uuid::new_v4().to_string(),
            block_height: frame.block_height,
            proof_target: frame.proof_target,
            epoch_challenge: crate::protocol::canonical_json(&serde_json::Value::Object(frame.epoch_challenge)),
        });
        message_of.push(i);
    }
    let stored =
        if new.is_empty() { Vec::new() } else { services.store.insert_jobs(&new).await.map_err(Retry::store)? };
    let mut to_broadcast = Vec::new();
    for (inserted, i) in stored.into_iter().zip(message_of) {
        if inserted.row.broadcast {
            outcomes[i] = Some(Outcome::Duplicate);
        } else {
            outcomes[i] = Some(Outcome::Broadcast);
            to_broadcast.push(inserted.row);
        }
    }
    to_broadcast.sort_by_key(|job| job.block_height);
    for job in &to_broadcast {
        let event = JobEvent {
            task_id: job.task_id.clone(),
            epoch_challenge: serde_json::from_str(&job.epoch_challenge).unwrap_or_default(),
            block_height: job.block_height,
            created_at: job.created_at.to_rfc3339(),
            proof_target: job.proof_target,
        };
        let bytes = serde_json::to_vec(&event).map_err(Retry::from)?;
        services.log.produce(Topic::Job, JOB_KEY, &bytes).await.map_err(Retry::from)?;
        tracing::debug!(task_id = %job.task_id, block_height = job.block_height, "job broadcast");
    }
    let broadcast: Vec<String> = to_broadcast.into_iter().map(|job| job.task_id).collect();
    services
        .store
        .settle(&Settlement { jobs_broadcast: &broadcast, rejected: &rejected, ..Default::default() })
        .await
        .map_err(Retry::store)?;
    for r in &rejected {
        tracing::warn!(reason = %r.reason, "job message rejected");
    }
    Ok(outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Duplicate)).collect())
}
