//! Guest bindings for the `eligo:policy@0.1.0` world, generated once and shared by
//! every plugin in this workspace.
//!
//! A plugin implements [`Guest`] and exports it with
//! `eligo_plugin_sdk::export!(MyPolicy with_types_in eligo_plugin_sdk);`.
//! Hooks a plugin does not list in its `info().hooks` are never called by the host,
//! so their bodies may return anything; [`unused`] helpers make that explicit.

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
    pub_export_macro: true,
    default_bindings_module: "eligo_plugin_sdk",
});

pub use eligo::policy::host::log;
pub use eligo::policy::types::*;
pub use exports::eligo::policy::decisions::Guest;

/// Answers for hooks a plugin does not declare. The host never calls them; these
/// exist so a plugin need not spell out a body for each.
pub mod unused {
    use super::*;

    /// `admit-connection` for a plugin that does not implement it.
    pub fn admit_connection() -> Result<(), Reason> {
        Ok(())
    }

    /// `admit-worker` for a plugin that does not implement it.
    pub fn admit_worker() -> Result<WorkerAdmission, Reason> {
        Ok(WorkerAdmission { profile: WorkerProfile { tags: Vec::new(), limits: Vec::new() }, state: 0 })
    }

    /// `admit-job` for a plugin that does not implement it.
    pub fn admit_job(job: JobSubmission, state: Vec<u8>) -> Result<JobAdmission, Reason> {
        Ok(JobAdmission { job, state })
    }

    /// `offer-job` for a plugin that does not implement it: everyone, states unchanged.
    pub fn offer_job(workers: Workers) -> JobOffer {
        JobOffer { workers: (0..workers.states.len() as u32).collect(), states: workers.states }
    }

    /// `validate-solution` for a plugin that does not implement it.
    pub fn validate_solution() -> Result<(), Reason> {
        Ok(())
    }

    /// `offer-solution` for a plugin that does not implement it: every node.
    pub fn offer_solution(nodes: &[NodeView]) -> Vec<u32> {
        (0..nodes.len() as u32).collect()
    }
}
