//! The decisions a policy makes, whether it runs as a WebAssembly plugin or natively.

use super::bindings::{
    ConnectionRequest, Job, JobAdmission, JobOffer, JobSubmission, NodeView, PluginInfo, Solution, Welcome,
    WorkerAdmission, WorkerProfile, Workers,
};

/// A refusal's reason, as the policy gave it.
pub type Reason = String;

/// A policy's answer to an admission or validation: `Ok` to accept, `Err(reason)` to refuse.
pub type Verdict<T> = Result<T, Reason>;

/// Why a policy could not decide. The caller fails closed: deny, skip, invalid.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The plugin trapped (panic, `unreachable`, out-of-bounds access, …).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The call ran past its deadline.
    #[error("plugin ran past its deadline of {0} ms")]
    Deadline(u64),
    /// The call used up its fuel budget.
    #[error("plugin used up its fuel budget of {0}")]
    Fuel(u64),
    /// The plugin tried to grow its memory past the cap.
    #[error("plugin tried to use more than {0} bytes of memory")]
    Memory(usize),
    /// The input is larger than the host passes to a plugin.
    #[error("input too large: {0}")]
    InputTooLarge(String),
    /// The plugin answered, but with something the contract does not allow.
    #[error("plugin answered out of contract: {0}")]
    BadOutput(String),
    /// No instance could be made to run the call.
    #[error("plugin could not be instantiated: {0}")]
    Instantiate(String),
}

impl PolicyError {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyError::Trap(_) => "trap",
            PolicyError::Deadline(_) => "deadline",
            PolicyError::Fuel(_) => "fuel",
            PolicyError::Memory(_) => "memory",
            PolicyError::InputTooLarge(_) => "input_too_large",
            PolicyError::BadOutput(_) => "bad_output",
            PolicyError::Instantiate(_) => "instantiate",
        }
    }
}

/// The result of one call into a policy.
pub type Decision<T> = Result<T, PolicyError>;

/// One policy: the six decisions of the pipeline.
///
/// Implemented by [`WasmPlugin`](super::WasmPlugin) for plugins and by
/// [`NativeSeedRules`](super::NativeSeedRules), the native baseline. A policy holds
/// no per-connection state: the caller passes it in and keeps what comes back.
pub trait Policy: Send + Sync {
    /// Name, version and the hooks this policy implements.
    fn info(&self) -> &PluginInfo;

    /// May this connection open at all?
    fn admit_connection(&self, request: &ConnectionRequest, now_ms: u64) -> Decision<Verdict<()>>;

    /// Admits a worker from its welcome and derives its profile and initial state.
    fn admit_worker(&self, welcome: &Welcome, now_ms: u64) -> Decision<Verdict<WorkerAdmission>>;

    /// Admits a node's job; `state` is the node connection's state blob.
    fn admit_job(&self, job: &JobSubmission, state: &[u8], now_ms: u64) -> Decision<Verdict<JobAdmission>>;

    /// Which rows of `workers` receive `job`; `workers.profiles[i]` indexes `profiles`.
    fn offer_job(&self, job: &Job, profiles: &[WorkerProfile], workers: &Workers, now_ms: u64) -> Decision<JobOffer>;

    /// Is `solution` valid for `job`?
    fn validate_solution(&self, job: &Job, solution: &Solution) -> Decision<Verdict<()>>;

    /// Which of `nodes` receive `solution`.
    fn offer_solution(&self, job: &Job, solution: &Solution, nodes: &[NodeView], now_ms: u64) -> Decision<Vec<u32>>;

    /// This server's answer to a client's challenge `once`. Only called on a
    /// policy with the `challenge` hook.
    fn challenge_answer(&self, _request: &ConnectionRequest, _once: &str) -> Decision<Verdict<String>> {
        Ok(Err("this policy does not take the challenge".into()))
    }

    /// The client's answer to the host's `once` (`None`: it took no challenge):
    /// may the connection go on? Only called on a policy with the `challenge` hook.
    fn check_challenge(
        &self,
        _request: &ConnectionRequest,
        _once: &str,
        _answer: Option<&str>,
        _now_ms: u64,
    ) -> Decision<Verdict<()>> {
        Ok(Ok(()))
    }

    /// Whether its decisions are cheap, bounded host code (the built-in rules)
    /// that may run where they are asked for, not on the decision pool.
    fn runs_inline(&self) -> bool {
        false
    }

    /// The contract it was built against, e.g. `eligo:policy@0.2.0`.
    fn contract(&self) -> &str {
        super::bindings::WIT_VERSION
    }

    /// The settings it runs with, as JSON text (`{}` for none).
    fn settings(&self) -> &str {
        "{}"
    }
}

/// Checks an `offer-job` answer for `workers` candidates: chosen indices in range
/// and unique, and one state per chosen worker or one for all of them.
pub fn check_job_offer(offer: &JobOffer, workers: usize) -> Decision<()> {
    if offer.states.len() != offer.workers.len() && offer.states.len() != 1 {
        return Err(PolicyError::BadOutput(format!(
            "offer-job chose {} workers but gave {} states (one each, or one for all)",
            offer.workers.len(),
            offer.states.len()
        )));
    }
    check_indices(&offer.workers, workers, "worker")
}

/// Checks that a list of chosen indices is within `0..len` and has no repeats.
pub fn check_indices(indices: &[u32], len: usize, what: &str) -> Decision<()> {
    let out_of_range = |i: u32| PolicyError::BadOutput(format!("{what} index {i} out of range 0..{len}"));
    // Plugins usually answer in ascending order: then one pass, no allocation, proves it.
    if indices.windows(2).all(|w| w[0] < w[1]) {
        return match indices.last() {
            Some(&i) if i as usize >= len => Err(out_of_range(i)),
            _ => Ok(()),
        };
    }
    let mut seen = vec![false; len];
    for &i in indices {
        match seen.get_mut(i as usize) {
            Some(s) if !*s => *s = true,
            Some(_) => return Err(PolicyError::BadOutput(format!("{what} index {i} chosen twice"))),
            None => return Err(out_of_range(i)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_indices;

    #[test]
    fn indices_must_be_in_range_and_unique_in_any_order() {
        assert!(check_indices(&[0, 2, 5], 6, "w").is_ok());
        assert!(check_indices(&[5, 0, 2], 6, "w").is_ok());
        assert!(check_indices(&[], 0, "w").is_ok());
        assert!(check_indices(&[0, 6], 6, "w").unwrap_err().to_string().contains("out of range"));
        assert!(check_indices(&[6, 0], 6, "w").unwrap_err().to_string().contains("out of range"));
        assert!(check_indices(&[2, 1, 2], 6, "w").unwrap_err().to_string().contains("twice"));
        assert!(check_indices(&[1, 1], 6, "w").unwrap_err().to_string().contains("twice"));
    }
}
