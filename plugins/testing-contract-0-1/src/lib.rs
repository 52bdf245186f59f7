//! TEST FIXTURE — a plugin as it was written against `eligo:policy@0.1.0`, before
//! settings and the challenge existed, bound to the frozen copy of that contract.
//! The host must keep loading it unchanged:
//! - `admit-worker` refuses a worker whose `hardware_id` is `banned`;
//! - `offer-job` offers a job to every worker that was not sent a higher one yet
//!   (state word: the last height sent).

wit_bindgen::generate!({
    path: "../../host/plugin/contract/policy-0.1.0.wit",
    world: "policy",
});

use eligo::policy::types::*;
use exports::eligo::policy::decisions::Guest;

struct OldPolicy;

impl Guest for OldPolicy {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "testing-contract-0-1".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::AdmitWorker, Hook::OfferJob],
        }
    }

    fn admit_connection(_: ConnectionRequest, _: TimestampMs) -> Result<(), Reason> {
        Ok(())
    }

    fn admit_worker(welcome: Welcome, _: TimestampMs) -> Result<WorkerAdmission, Reason> {
        if welcome.hardware_id == "banned" {
            return Err("banned by a 0.1.0 plugin".into());
        }
        Ok(WorkerAdmission { profile: WorkerProfile { tags: vec![], limits: vec![] }, state: i64::MIN as u64 })
    }

    fn admit_job(job: JobSubmission, state: Vec<u8>, _: TimestampMs) -> Result<JobAdmission, Reason> {
        Ok(JobAdmission { job, state })
    }

    fn offer_job(job: Job, _: Vec<WorkerProfile>, workers: Workers, _: TimestampMs) -> JobOffer {
        let chosen = (0..workers.states.len() as u32).filter(|&i| job.block_height > workers.states[i as usize] as i64);
        JobOffer { workers: chosen.collect(), states: vec![job.block_height as u64] }
    }

    fn validate_solution(_: Job, _: Solution) -> Result<(), Reason> {
        Ok(())
    }

    fn offer_solution(_: Job, _: Solution, nodes: Vec<NodeView>, _: TimestampMs) -> Vec<u32> {
        (0..nodes.len() as u32).collect()
    }
}

export!(OldPolicy);
