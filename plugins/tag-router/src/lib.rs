//! Routes jobs by worker profile.
//!
//! Profile, derived from the welcome:
//! - `class:gpu` when the `hardware` text names a GPU (gpu, nvidia, rtx, radeon, amd
//!   instinct), `class:cpu` otherwise;
//! - every word of the `caption` that starts with `+` becomes a tag (`+eu` → `eu`);
//! - a caption word `max-target=N` becomes the limit (`max-target`, N).
//!
//! Routing, per job:
//! - a job whose `proof_target` is at least [`HEAVY_TARGET`] goes to `class:gpu` only;
//! - a worker with a `max-target` limit gets only jobs up to that target;
//! - at most [`MAX_WORKERS_PER_JOB`] workers get a job; which ones rotates with the
//!   height so every eligible worker gets its share.
//!
//! Stateless: worker state words are passed through unchanged.

use eligo_plugin_sdk::*;

/// Jobs at or above this target go to GPU workers only.
pub const HEAVY_TARGET: u64 = 1 << 20;
/// How many workers receive one job at most.
pub const MAX_WORKERS_PER_JOB: usize = 256;
const GPU_WORDS: [&str; 5] = ["gpu", "nvidia", "rtx", "radeon", "instinct"];

/// Derives the profile of a worker from its welcome.
pub fn profile(welcome: &Welcome) -> WorkerProfile {
    let hardware = welcome.hardware.to_ascii_lowercase();
    let class = if GPU_WORDS.iter().any(|w| hardware.contains(w)) { "class:gpu" } else { "class:cpu" };
    let mut tags = vec![class.to_string()];
    let mut limits = Vec::new();
    for word in welcome.caption.split_whitespace() {
        if let Some(tag) = word.strip_prefix('+').filter(|t| !t.is_empty()) {
            tags.push(tag.to_string());
        } else if let Some(n) = word.strip_prefix("max-target=").and_then(|n| n.parse::<u64>().ok()) {
            limits.push(("max-target".to_string(), n));
        }
    }
    WorkerProfile { tags, limits }
}

fn eligible(job: &Job, profile: &WorkerProfile) -> bool {
    let heavy_ok = job.proof_target < HEAVY_TARGET || profile.tags.iter().any(|t| t == "class:gpu");
    let limit_ok = profile.limits.iter().all(|(name, value)| name != "max-target" || job.proof_target <= *value);
    heavy_ok && limit_ok
}

/// The router.
pub struct TagRouter;

impl Guest for TagRouter {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "tag-router".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::AdmitWorker, Hook::OfferJob],
        }
    }

    fn admit_connection(_: ConnectionRequest, _: TimestampMs) -> Result<(), Reason> {
        unused::admit_connection()
    }

    fn admit_worker(welcome: Welcome, _: TimestampMs) -> Result<WorkerAdmission, Reason> {
        if welcome.hardware_id.trim().is_empty() {
            return Err("welcome has an empty hardware_id".into());
        }
        Ok(WorkerAdmission { profile: profile(&welcome), state: 0 })
    }

    fn admit_job(job: JobSubmission, state: Vec<u8>, _: TimestampMs) -> Result<JobAdmission, Reason> {
        unused::admit_job(job, state)
    }

    fn offer_job(job: Job, profiles: Vec<WorkerProfile>, workers: Workers, _: TimestampMs) -> JobOffer {
        let verdicts: Vec<bool> = profiles.iter().map(|p| eligible(&job, p)).collect();
        let eligible: Vec<u32> = workers
            .profiles
            .iter()
            .enumerate()
            .filter(|(_, p)| verdicts.get(**p as usize).copied().unwrap_or(false))
            .map(|(i, _)| i as u32)
            .collect();
        if eligible.is_empty() {
            return JobOffer { workers: Vec::new(), states: Vec::new() };
        }
        let take = eligible.len().min(MAX_WORKERS_PER_JOB);
        let start = (job.block_height.unsigned_abs() as usize).wrapping_mul(take) % eligible.len();
        let chosen: Vec<u32> = (0..take).map(|k| eligible[(start + k) % eligible.len()]).collect();
        let states = chosen.iter().map(|&i| workers.states[i as usize]).collect();
        JobOffer { workers: chosen, states }
    }

    fn validate_solution(_: Job, _: Solution) -> Result<(), Reason> {
        unused::validate_solution()
    }

    fn offer_solution(_: Job, _: Solution, nodes: Vec<NodeView>, _: TimestampMs) -> Vec<u32> {
        unused::offer_solution(&nodes)
    }
}

export!(TagRouter with_types_in eligo_plugin_sdk);
