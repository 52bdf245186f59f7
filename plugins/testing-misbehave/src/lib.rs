//! TEST FIXTURE — never deploy. A plugin that misbehaves on demand, so the host's
//! limits can be tested against a real component:
//!
//! | `block_height` of the job (or the worker's caption) | what the plugin does |
//! |---|---|
//! | 1 / `loop`  | loops forever |
//! | 2 / `oom`   | allocates until memory runs out |
//! | 3 / `trap`  | traps (`unreachable`) |
//! | 4 / `huge`  | returns an output larger than the host accepts (a state blob of 1 MiB, or 4 million deliveries) |
//! | anything else | refuses, with the reason "misbehave refuses everything" |
//!
//! Settings: `configure = "loop" | "oom" | "trap" | "refuse"` misbehaves in
//! `configure` itself; `spin = N` makes `configure` busy for N loop iterations
//! first (a slow start-up, as an interpreter's); `connections = "admit"` admits
//! every connection (so its refusal of jobs can be seen); any other settings are taken.

use eligo_plugin_sdk::*;

const REFUSAL: &str = "misbehave refuses everything";

fn misbehave(what: &str) -> String {
    match what {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "oom" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "trap" => core::arch::wasm32::unreachable(),
        "huge" => "x".repeat(8 << 20),
        _ => REFUSAL.to_string(),
    }
}

/// Set by `connections = "admit"`.
static ADMIT_CONNECTIONS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn by_height(height: i64) -> &'static str {
    match height {
        1 => "loop",
        2 => "oom",
        3 => "trap",
        4 => "huge",
        _ => "refuse",
    }
}

/// The misbehaving plugin.
pub struct Misbehave;

impl Policy for Misbehave {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "testing-misbehave".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![
                Hook::AdmitConnection,
                Hook::AdmitWorker,
                Hook::AdmitJob,
                Hook::OfferJob,
                Hook::ValidateSolution,
                Hook::OfferSolution,
            ],
        }
    }

    fn configure(settings: String) -> Result<(), Reason> {
        let settings: serde_json::Value = serde_json::from_str(&settings).map_err(|e| e.to_string())?;
        if let Some(spins) = settings.get("spin").and_then(|v| v.as_u64()) {
            let mut n: u64 = 0;
            for _ in 0..spins {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        let admit = settings.get("connections").and_then(|v| v.as_str()) == Some("admit");
        ADMIT_CONNECTIONS.store(admit, std::sync::atomic::Ordering::Relaxed);
        match settings.get("configure").and_then(|v| v.as_str()) {
            Some(what) => Err(misbehave(what)),
            None => Ok(()),
        }
    }

    fn admit_connection(request: ConnectionRequest, _: TimestampMs) -> Result<(), Reason> {
        if ADMIT_CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        Err(misbehave(request.credential.as_deref().unwrap_or("refuse")))
    }

    fn admit_worker(welcome: Welcome, _: TimestampMs) -> Result<WorkerAdmission, Reason> {
        Err(misbehave(&welcome.caption))
    }

    fn admit_job(job: JobSubmission, _: Vec<u8>, _: TimestampMs) -> Result<JobAdmission, Reason> {
        if by_height(job.block_height) == "huge" {
            return Ok(JobAdmission { job, state: vec![7; 1 << 20] });
        }
        Err(misbehave(by_height(job.block_height)))
    }

    fn offer_job(job: Job, _: Vec<WorkerProfile>, workers: Workers, _: TimestampMs) -> JobOffer {
        if by_height(job.block_height) == "huge" {
            return JobOffer { workers: (0..4_000_000u32).collect(), states: vec![0; 4_000_000] };
        }
        misbehave(by_height(job.block_height));
        std::hint::black_box(workers);
        JobOffer { workers: Vec::new(), states: Vec::new() }
    }

    fn validate_solution(job: Job, _: Solution) -> Result<(), Reason> {
        Err(misbehave(by_height(job.block_height)))
    }

    fn offer_solution(job: Job, _: Solution, _: Vec<NodeView>, _: TimestampMs) -> Vec<u32> {
        misbehave(by_height(job.block_height));
        Vec::new()
    }
}

export_policy!(Misbehave);
