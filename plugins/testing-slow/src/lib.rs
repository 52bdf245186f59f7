//! TEST FIXTURE — never deploy. A policy that admits every worker and offers
//! every job to every worker, after spending a set amount of work in each
//! `admit-worker` and `offer-job` call: what a slow policy (an allow-list look-up,
//! a signature check, an interpreter under load) costs the rest of the server.
//!
//! Settings: `spin = N` runs N rounds of a small loop per call (about 1 ns each
//! when compiled by wasmtime; calibrate with `eligo plugin bench` or by timing).

use eligo_plugin_sdk::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// Rounds of work per slow call, from the settings.
static SPIN: AtomicU64 = AtomicU64::new(0);

fn spin() {
    let mut n: u64 = 0;
    for _ in 0..SPIN.load(Ordering::Relaxed) {
        n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    std::hint::black_box(n);
}

/// The slow policy.
pub struct Slow;

impl Policy for Slow {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "testing-slow".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::AdmitWorker, Hook::OfferJob],
        }
    }

    fn configure(settings: String) -> Result<(), Reason> {
        let settings: serde_json::Value = serde_json::from_str(&settings).map_err(|e| e.to_string())?;
        match settings.get("spin") {
            None => Ok(()),
            Some(spin) => {
                let spin = spin.as_u64().ok_or("spin must be a whole number of rounds")?;
                SPIN.store(spin, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    fn admit_connection(_: ConnectionRequest, _: TimestampMs) -> Result<(), Reason> {
        Ok(())
    }

    fn admit_worker(_: Welcome, _: TimestampMs) -> Result<WorkerAdmission, Reason> {
        spin();
        Ok(WorkerAdmission { profile: WorkerProfile { tags: Vec::new(), limits: Vec::new() }, state: 0 })
    }

    fn admit_job(job: JobSubmission, state: Vec<u8>, _: TimestampMs) -> Result<JobAdmission, Reason> {
        Ok(JobAdmission { job, state })
    }

    fn offer_job(_: Job, _: Vec<WorkerProfile>, workers: Workers, _: TimestampMs) -> JobOffer {
        spin();
        JobOffer { workers: (0..workers.states.len() as u32).collect(), states: vec![0] }
    }

    fn validate_solution(_: Job, _: Solution) -> Result<(), Reason> {
        Ok(())
    }

    fn offer_solution(_: Job, _: Solution, nodes: Vec<NodeView>, _: TimestampMs) -> Vec<u32> {
        (0..nodes.len() as u32).collect()
    }
}

export_policy!(Slow);
