//! The seed rules written natively: the oracle the `seed-rules` plugin is tested
//! against, and the baseline its speed is measured against.
//!
//! State formats are the plugin's (see `plugins/seed-rules`), so states can be
//! compared as well as decisions.

use super::bindings::{
    ConnectionRequest, Hook, Job, JobAdmission, JobOffer, JobSubmission, NodeView, PluginInfo, Solution, Welcome,
    WorkerAdmission, WorkerProfile, Workers,
};
use super::policy::{Decision, Policy, Verdict};

/// How long a node waits for solutions to a job it submitted.
pub const WAIT_MS: u64 = 20 * 60 * 1000;
/// State word of a worker that was sent nothing yet.
pub const NOTHING_SENT: u64 = i64::MIN as u64;

/// The key the built-in seed rules serve under when no plugin is loaded.
pub const BUILTIN_KEY: &str = "builtin-seed-rules";

/// The seed rules, natively.
pub struct NativeSeedRules {
    info: PluginInfo,
}

impl Default for NativeSeedRules {
    fn default() -> Self {
        NativeSeedRules {
            info: PluginInfo {
                name: "seed-rules (native)".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                hooks: vec![Hook::AdmitWorker, Hook::AdmitJob, Hook::OfferJob, Hook::OfferSolution],
            },
        }
    }
}

/// `(height, target, expires_ms)` triples, 24 little-endian bytes each.
fn waits(state: &[u8]) -> impl Iterator<Item = (i64, u64, u64)> + '_ {
    state.chunks_exact(24).map(|c| {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&c[i..i + 8]);
            b
        };
        (i64::from_le_bytes(word(0)), u64::from_le_bytes(word(8)), u64::from_le_bytes(word(16)))
    })
}

impl NativeSeedRules {
    /// The seed rules as a policy set member, for when the plugin folder is empty.
    pub fn builtin() -> super::LoadedPolicy {
        super::loaded_policy(BUILTIN_KEY.into(), std::path::Path::new(""), "", std::sync::Arc::new(Self::default()))
    }
}

impl Policy for NativeSeedRules {
    fn runs_inline(&self) -> bool {
        true
    }

    fn info(&self) -> &PluginInfo {
        &self.info
    }

    fn admit_connection(&self, _: &ConnectionRequest, _: u64) -> Decision<Verdict<()>> {
        Ok(Ok(()))
    }

    fn admit_worker(&self, _: &Welcome, _: u64) -> Decision<Verdict<WorkerAdmission>> {
        let profile = WorkerProfile { tags: Vec::new(), limits: Vec::new() };
        Ok(Ok(WorkerAdmission { profile, state: NOTHING_SENT }))
    }

    fn admit_job(&self, job: &JobSubmission, state: &[u8], now_ms: u64) -> Decision<Verdict<JobAdmission>> {
        let expires = now_ms.saturating_add(WAIT_MS);
        let mut out = Vec::with_capacity(state.len() + 24);
        let mut refreshed = false;
        for (height, target, mut expires_ms) in waits(state).filter(|w| w.2 >= now_ms) {
            if height == job.block_height && target == job.proof_target {
                expires_ms = expires;
                refreshed = true;
            }
            for word in [height as u64, target, expires_ms] {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        if !refreshed {
            for word in [job.block_height as u64, job.proof_target, expires] {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        Ok(Ok(JobAdmission { job: job.clone(), state: out }))
    }

    fn offer_job(&self, job: &Job, _: &[WorkerProfile], workers: &Workers, _: u64) -> Decision<JobOffer> {
        let height = job.block_height;
        let mut chosen = Vec::with_capacity(workers.states.len());
        for (i, &state) in workers.states.iter().enumerate() {
            if height > state as i64 {
                chosen.push(i as u32);
            }
        }
        Ok(JobOffer { workers: chosen, states: vec![height as u64] })
    }

    fn validate_solution(&self, _: &Job, _: &Solution) -> Decision<Verdict<()>> {
        Ok(Ok(()))
    }

    fn offer_solution(&self, job: &Job, solution: &Solution, nodes: &[NodeView], now_ms: u64) -> Decision<Vec<u32>> {
        Ok(nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                waits(&n.state).any(|(h, t, e)| h == job.block_height && solution.solution_target >= t && e >= now_ms)
            })
            .map(|(i, _)| i as u32)
            .collect())
    }
}
