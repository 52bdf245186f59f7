//! The solution processor: consumes the `solution` queue, stores each solution
//! once per nonce, asks the validators, and produces valid (or, with no
//! validator, unchecked) solutions to the `solution` topic once.
//!
//! Acks follow the job processor's rules (see [`super::job_processor`]). A
//! solution produced twice after a crash is delivered once per node connection:
//! node servers remember what each connection got.

use super::consume::{consume_until, Retry};
use super::Services;
use crate::plugin::{Job, Solution, Validation};
use crate::protocol::{canonical_json, SolutionEvent, SolutionMessage};
use crate::store::{NewSolution, StoredJob, StoredSolution};
use crate::transport::{Stream, Topic};
use tokio_util::sync::CancellationToken;

/// What became of one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Valid or unchecked: produced to the log.
    Broadcast,
    /// Its nonce was stored and broadcast before: dropped.
    Duplicate,
    /// A validator refused it: stored with the reason, not broadcast.
    Invalid(String),
    /// Not usable (not a solution, no nonce, unknown task): recorded and dropped.
    Rejected(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Broadcast => "broadcast",
            Outcome::Duplicate => "duplicate",
            Outcome::Invalid(_) => "invalid",
            Outcome::Rejected(_) => "rejected",
        }
    }
}

/// Consumes the `solution` queue until `shutdown`.
pub async fn run(services: Services, shutdown: CancellationToken) {
    consume_until(Stream::Solution, services, shutdown, |s, p| Box::pin(handle(s, p))).await
}

async fn handle(services: Services, payload: Vec<u8>) -> Result<&'static str, Retry> {
    let outcome = process(&services, &payload).await?;
    match &outcome {
        Outcome::Rejected(reason) => {
            let payload = String::from_utf8_lossy(&payload);
            services.store.record_rejected("solution", &payload, reason).await.map_err(Retry::from)?;
            tracing::warn!(%reason, "solution message rejected");
        }
        Outcome::Invalid(reason) => tracing::info!(%reason, "solution invalid"),
        _ => {}
    }
    Ok(outcome.label())
}

/// The policies' view of a stored job.
pub fn job_view(job: &StoredJob) -> Job {
    Job {
        task_id: job.task_id.clone(),
        block_height: job.block_height,
        proof_target: job.proof_target,
        epoch_challenge: job.epoch_challenge.clone(),
    }
}

/// The event node servers receive for a stored solution of a stored job.
pub fn solution_event(job: &StoredJob, solution: &StoredSolution) -> SolutionEvent {
    SolutionEvent {
        task_id: solution.task_id.clone(),
        solution_target: solution.solution_target,
        solution: serde_json::from_str(&solution.solution).unwrap_or(serde_json::Value::Null),
        solution_height: job.block_height,
        unique_key: solution.unique_key.clone(),
        hardware_id: solution.hardware_id.clone(),
        caption: solution.caption.clone(),
        proof_target: job.proof_target,
        epoch_challenge: serde_json::from_str(&job.epoch_challenge).unwrap_or(serde_json::Value::Null),
    }
}

/// Stores, validates and broadcasts one solution message.
pub async fn process(services: &Services, payload: &[u8]) -> Result<Outcome, Retry> {
    let message: SolutionMessage = match serde_json::from_slice(payload) {
        Ok(m) => m,
        Err(e) => return Ok(Outcome::Rejected(format!("not a solution message: {e}"))),
    };
    let Some(unique_key) = message.unique_key() else {
        return Ok(Outcome::Rejected("solution has no partial_solution.nonce".into()));
    };
    let new = NewSolution {
        unique_key,
        hardware_id: message.hardware_id.clone(),
        caption: message.caption.clone(),
        task_id: message.task_id.clone(),
        solution: canonical_json(&serde_json::Value::Object(message.solution.clone())),
        solution_target: message.solution_target,
    };
    let mut solution = services.store.insert_solution(&new).await.map_err(Retry::from)?.row;
    if solution.broadcast {
        return Ok(Outcome::Duplicate);
    }
    let Some(job) = services.store.job_by_task(&solution.task_id).await.map_err(Retry::from)? else {
        return Ok(Outcome::Rejected(format!("unknown task_id {}", solution.task_id)));
    };
    if !solution.checked {
        let view = Solution {
            task_id: solution.task_id.clone(),
            hardware_id: solution.hardware_id.clone(),
            caption: solution.caption.clone(),
            solution: solution.solution.clone(),
            solution_target: solution.solution_target,
            unique_key: solution.unique_key.clone(),
        };
        let (valid, checked, reason) = match services.plugins.current().validate_solution(&job_view(&job), &view) {
            Validation::Unchecked => (false, false, None),
            Validation::Valid => (true, true, None),
            Validation::Invalid(refusal) => (false, true, Some(refusal.to_string())),
        };
        services
            .store
            .set_validation(&solution.unique_key, valid, checked, reason.as_deref())
            .await
            .map_err(Retry::from)?;
        solution.valid = valid;
        solution.checked = checked;
        solution.invalid_reason = reason;
    }
    if solution.checked && !solution.valid {
        return Ok(Outcome::Invalid(solution.invalid_reason.unwrap_or_default()));
    }
    let bytes = serde_json::to_vec(&solution_event(&job, &solution)).map_err(Retry::from)?;
    services.log.produce(Topic::Solution, &solution.unique_key, &bytes).await.map_err(Retry::from)?;
    services.store.mark_solution_broadcast(&solution.unique_key).await.map_err(Retry::from)?;
    tracing::info!(unique_key = %solution.unique_key, task_id = %solution.task_id, "solution broadcast");
    Ok(Outcome::Broadcast)
}
