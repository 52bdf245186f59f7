//! A proof-of-work validator.
//!
//! A solution is valid when `sha256(epoch_challenge ‖ nonce)` (the challenge as the
//! compact, key-sorted JSON text the host passes, the nonce as 8 little-endian bytes)
//! reaches the job's `proof_target`, and the solution does not claim more than it
//! reaches. What a digest reaches is `u64::MAX / max(1, first 8 bytes of the digest,
//! big-endian)`, so finding a solution takes about `proof_target` hashes.

use eligo_plugin_sdk::*;
use sha2::{Digest, Sha256};

/// The target a nonce reaches for a challenge.
pub fn reached_target(epoch_challenge: &str, nonce: u64) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(epoch_challenge.as_bytes());
    hasher.update(nonce.to_le_bytes());
    let digest = hasher.finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::MAX / u64::from_be_bytes(head).max(1)
}

/// The validator.
pub struct PowCheck;

impl Guest for PowCheck {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "pow-check".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::ValidateSolution],
        }
    }

    fn admit_connection(_: ConnectionRequest, _: TimestampMs) -> Result<(), Reason> {
        unused::admit_connection()
    }

    fn admit_worker(_: Welcome, _: TimestampMs) -> Result<WorkerAdmission, Reason> {
        unused::admit_worker()
    }

    fn admit_job(job: JobSubmission, state: Vec<u8>, _: TimestampMs) -> Result<JobAdmission, Reason> {
        unused::admit_job(job, state)
    }

    fn offer_job(_: Job, _: Vec<WorkerProfile>, workers: Workers, _: TimestampMs) -> JobOffer {
        unused::offer_job(workers)
    }

    fn validate_solution(job: Job, solution: Solution) -> Result<(), Reason> {
        let nonce: u64 = solution
            .unique_key
            .parse()
            .map_err(|_| format!("nonce {:?} is not an unsigned 64-bit integer", solution.unique_key))?;
        let reached = reached_target(&job.epoch_challenge, nonce);
        if reached < job.proof_target {
            return Err(format!("proof of work reaches target {reached}, the job needs {}", job.proof_target));
        }
        if solution.solution_target > reached {
            return Err(format!(
                "solution claims target {}, its proof of work reaches {reached}",
                solution.solution_target
            ));
        }
        Ok(())
    }

    fn offer_solution(_: Job, _: Solution, nodes: Vec<NodeView>, _: TimestampMs) -> Vec<u32> {
        unused::offer_solution(&nodes)
    }
}

export!(PowCheck with_types_in eligo_plugin_sdk);
