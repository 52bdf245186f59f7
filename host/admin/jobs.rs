//! A stored job and its solutions, as the operator sees them: the API's job
//! endpoints and the dashboard's summary both show them, so they sit below both.

use super::error::ApiError;
use super::AdminState;
use crate::store::{Page, SolutionFilter, StoredJob, StoredSolution};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

/// A stored job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobOut {
    /// Its id, given by the job processor.
    pub task_id: String,
    /// Its height (one job per height).
    pub block_height: i64,
    /// The target a solution must reach.
    pub proof_target: u64,
    /// As the node sent it.
    #[schema(value_type = Object)]
    pub epoch_challenge: serde_json::Value,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// Whether it was produced to the `job` log (sent on to workers).
    pub broadcast: bool,
}

impl From<StoredJob> for JobOut {
    fn from(j: StoredJob) -> Self {
        JobOut {
            epoch_challenge: serde_json::from_str(&j.epoch_challenge).unwrap_or(serde_json::Value::Null),
            task_id: j.task_id,
            block_height: j.block_height,
            proof_target: j.proof_target,
            created_at: j.created_at,
            broadcast: j.broadcast,
        }
    }
}

/// A job with its solutions.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    /// The job.
    #[serde(flatten)]
    pub job: JobOut,
    /// Worker connections this process queued it to, while it remembers (the latest 1,024 jobs).
    pub delivered_to_workers: Option<u64>,
    /// Its solutions, newest first (at most 500).
    pub solutions: Vec<SolutionOut>,
}

/// What the validators said of a solution.
#[derive(Debug, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SolutionStatus {
    /// Every validating policy accepted it.
    Valid,
    /// A policy refused it; see `invalid_reason`.
    Invalid,
    /// No policy validates solutions, or it is not validated yet.
    Unchecked,
}

/// A stored solution.
#[derive(Debug, Serialize, ToSchema)]
pub struct SolutionOut {
    /// `partial_solution.nonce`: unique.
    pub unique_key: String,
    /// The job it solves.
    pub task_id: String,
    /// The worker's `hardware_id`.
    pub hardware_id: String,
    /// The worker's `caption`.
    pub caption: String,
    /// The payout address of the connection that sent it; absent on rows stored
    /// before eligo kept it.
    pub address: Option<String>,
    /// As the worker sent it.
    #[schema(value_type = Object)]
    pub solution: serde_json::Value,
    /// The target it reaches.
    pub solution_target: u64,
    /// The validators' verdict.
    pub status: SolutionStatus,
    /// Why it is invalid.
    pub invalid_reason: Option<String>,
    /// Whether it was produced to the `solution` log (sent on to nodes).
    pub broadcast: bool,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// Node connections this process queued it to, while it remembers (the latest 4,096 solutions).
    pub delivered_to_nodes: Option<u64>,
}

impl SolutionOut {
    /// The solution as the operator sees it, with how many nodes this process
    /// queued it to.
    pub(super) fn new(s: StoredSolution, state: &AdminState) -> Self {
        let status = match (s.checked, s.valid) {
            (true, true) => SolutionStatus::Valid,
            (true, false) => SolutionStatus::Invalid,
            (false, _) => SolutionStatus::Unchecked,
        };
        SolutionOut {
            delivered_to_nodes: state.nodes.as_ref().and_then(|n| n.solution_deliveries(&s.unique_key)),
            solution: serde_json::from_str(&s.solution).unwrap_or(serde_json::Value::Null),
            unique_key: s.unique_key,
            task_id: s.task_id,
            hardware_id: s.hardware_id,
            caption: s.caption,
            address: s.address,
            solution_target: s.solution_target,
            status,
            invalid_reason: s.invalid_reason,
            broadcast: s.broadcast,
            created_at: s.created_at,
        }
    }
}

/// A job with its solutions (newest first, one page) and delivery counts.
pub(super) async fn job_detail(state: &AdminState, job: StoredJob) -> Result<JobDetail, ApiError> {
    let filter = SolutionFilter { task_id: Some(job.task_id.clone()), ..SolutionFilter::default() };
    let solutions = state.services.store.list_solutions(&filter, Page::new(Page::MAX_LIMIT, None)).await?;
    Ok(JobDetail {
        delivered_to_workers: state.workers.as_ref().and_then(|w| w.job_deliveries(&job.task_id)),
        solutions: solutions.items.into_iter().map(|s| SolutionOut::new(s, state)).collect(),
        job: job.into(),
    })
}
