//! What decides in place of a plugin that failed to load and has no earlier
//! version to keep serving: nothing is admitted, offered or valid.
//!
//! Leaving the failed plugin out would be failing open: a validator that did not
//! load would let every solution through unchecked, an authentication plugin
//! every client in. So a failed plugin's place is held by a policy that refuses
//! every decision, until a version of it loads or its file is removed.

use super::bindings::{
    ConnectionRequest, Job, JobAdmission, JobOffer, JobSubmission, NodeView, PluginInfo, Solution, Welcome,
    WorkerAdmission, WorkerProfile, Workers,
};
use super::policy::{Decision, Policy, Verdict};

/// What a refused client or solution is told. The load error itself is for the
/// operator (`/plugins`, the log): it names files and may say more than a client
/// should learn.
const REASON: &str = "this plugin failed to load: eligo refuses in its place until it loads";

/// Refuses every decision in place of a plugin that failed to load.
pub(crate) struct StandIn {
    info: PluginInfo,
}

impl StandIn {
    /// A stand-in for the plugin `key`.
    pub(crate) fn new(key: &str) -> Self {
        StandIn {
            info: PluginInfo {
                name: format!("{key} (failed to load: refuses everything)"),
                version: String::new(),
                hooks: super::wasm::HOOKS.to_vec(),
            },
        }
    }
}

impl Policy for StandIn {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    fn admit_connection(&self, _: &ConnectionRequest, _: u64) -> Decision<Verdict<()>> {
        Ok(Err(REASON.into()))
    }

    fn admit_worker(&self, _: &Welcome, _: u64) -> Decision<Verdict<WorkerAdmission>> {
        Ok(Err(REASON.into()))
    }

    fn admit_job(&self, _: &JobSubmission, _: &[u8], _: u64) -> Decision<Verdict<JobAdmission>> {
        Ok(Err(REASON.into()))
    }

    fn offer_job(&self, _: &Job, _: &[WorkerProfile], _: &Workers, _: u64) -> Decision<JobOffer> {
        Ok(JobOffer { workers: Vec::new(), states: Vec::new() })
    }

    fn validate_solution(&self, _: &Job, _: &Solution) -> Decision<Verdict<()>> {
        Ok(Err(REASON.into()))
    }

    fn offer_solution(&self, _: &Job, _: &Solution, _: &[NodeView], _: u64) -> Decision<Vec<u32>> {
        Ok(Vec::new())
    }

    fn check_challenge(&self, _: &ConnectionRequest, _: &str, _: Option<&str>, _: u64) -> Decision<Verdict<()>> {
        Ok(Err(REASON.into()))
    }
}
