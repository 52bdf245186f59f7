//! The job processor: consumes the `job` queue, stores each job once per height
//! and produces it to the `job` topic once.
//!
//! A message is acked only after the database commit and the log's delivery
//! report. A message that can never be used (not a job) is recorded in
//! `rejected_message` and acked, never retried forever; any other failure leaves
//! it unacked, to be delivered again. If the process dies between producing and
//! recording the broadcast, the job is produced again on redelivery: worker
//! servers never resend a height, so clients see no duplicate.

use super::consume::{consume_until, Retry};
use super::Services;
use crate::protocol::{JobEvent, JobFrame};
use crate::store::NewJob;
use crate::transport::{Stream, Topic};
use tokio_util::sync::CancellationToken;

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

/// Consumes the `job` queue until `shutdown`.
pub async fn run(services: Services, shutdown: CancellationToken) {
    consume_until(Stream::Job, services, shutdown, |s, p| Box::pin(handle(s, p))).await
}

async fn handle(services: Services, payload: Vec<u8>) -> Result<&'static str, Retry> {
    let outcome = process(&services, &payload).await?;
    if let Outcome::Rejected(reason) = &outcome {
        services.store.record_rejected("job", &String::from_utf8_lossy(&payload), reason).await.map_err(Retry::from)?;
        tracing::warn!(%reason, "job message rejected");
    }
    Ok(outcome.label())
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
    let frame = match JobFrame::parse(payload) {
        Ok(frame) => frame,
        Err(e) => return Ok(Outcome::Rejected(e.to_string())),
    };
    let epoch_challenge = serde_json::Value::Object(frame.epoch_challenge);
    let new = NewJob {
        task_id: uuid::Uuid::new_v4().to_string(),
        block_height: frame.block_height,
        proof_target: frame.proof_target,
        epoch_challenge: crate::protocol::canonical_json(&epoch_challenge),
    };
    let stored = services.store.insert_job(&new).await.map_err(Retry::from)?;
    let job = stored.row;
    if job.broadcast {
        return Ok(Outcome::Duplicate);
    }
    let event = JobEvent {
        task_id: job.task_id.clone(),
        epoch_challenge: serde_json::from_str(&job.epoch_challenge).unwrap_or(epoch_challenge),
        block_height: job.block_height,
        created_at: job.created_at.to_rfc3339(),
        proof_target: job.proof_target,
    };
    let bytes = serde_json::to_vec(&event).map_err(Retry::from)?;
    services.log.produce(Topic::Job, &job.block_height.to_string(), &bytes).await.map_err(Retry::from)?;
    services.store.mark_job_broadcast(&job.task_id).await.map_err(Retry::from)?;
    tracing::info!(task_id = %job.task_id, block_height = job.block_height, "job broadcast");
    Ok(Outcome::Broadcast)
}
