//! The rules of the Python system eligo replaces, as a plugin (the default policy).
//!
//! - A worker is sent a job only if its height is greater than the last height sent
//!   on that connection: stale and repeated heights are not sent.
//! - A node waits on each `(block_height, proof_target)` it submits for 20 minutes
//!   and receives a solution at that height whose `solution_target` is at least that
//!   `proof_target`.
//!
//! Settings (`<key>.toml`): `wait_minutes` (default 20), how long a node waits
//! on a job it submitted.
//!
//! State: a worker's state word is the last height sent (as `i64` bits, `i64::MIN`
//! when nothing was sent). A node's state blob is a list of 24-byte waits
//! `(height: i64, target: u64, expires_ms: u64)`, little-endian.

use eligo_plugin_sdk::serde::Deserialize;
use eligo_plugin_sdk::*;

/// How long a node waits for solutions to a job it submitted, unless configured.
pub const WAIT_MS: u64 = 20 * 60 * 1000;

/// What an operator can set.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, crate = "eligo_plugin_sdk::serde")]
pub struct Config {
    /// How long a node waits on a job it submitted, in minutes.
    pub wait_minutes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config { wait_minutes: WAIT_MS / 60_000 }
    }
}

static CONFIG: Settings<Config> = Settings::new();
/// State word of a worker that was sent nothing yet.
pub const NOTHING_SENT: u64 = i64::MIN as u64;
const WAIT_LEN: usize = 24;

/// One `(height, target)` a node waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wait {
    pub height: i64,
    pub target: u64,
    pub expires_ms: u64,
}

/// Reads a node's waits; a trailing partial record (never written by this plugin) is ignored.
pub fn decode_waits(state: &[u8]) -> Vec<Wait> {
    state
        .chunks_exact(WAIT_LEN)
        .map(|c| Wait {
            height: i64::from_le_bytes(c[0..8].try_into().unwrap_or_default()),
            target: u64::from_le_bytes(c[8..16].try_into().unwrap_or_default()),
            expires_ms: u64::from_le_bytes(c[16..24].try_into().unwrap_or_default()),
        })
        .collect()
}

/// Writes a node's waits.
pub fn encode_waits(waits: &[Wait]) -> Vec<u8> {
    let mut out = Vec::with_capacity(waits.len() * WAIT_LEN);
    for w in waits {
        out.extend_from_slice(&w.height.to_le_bytes());
        out.extend_from_slice(&w.target.to_le_bytes());
        out.extend_from_slice(&w.expires_ms.to_le_bytes());
    }
    out
}

/// The seed rules.
pub struct SeedRules;

impl Policy for SeedRules {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "seed-rules".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::AdmitWorker, Hook::AdmitJob, Hook::OfferJob, Hook::OfferSolution],
        }
    }

    fn configure(settings: String) -> Result<(), Reason> {
        CONFIG.configure(&settings)?;
        if CONFIG.get().wait_minutes == 0 {
            return Err("wait_minutes must be at least 1: a node would never receive a solution".into());
        }
        Ok(())
    }

    fn admit_worker(_: Welcome, _: TimestampMs) -> Result<WorkerAdmission, Reason> {
        Ok(WorkerAdmission { profile: WorkerProfile { tags: Vec::new(), limits: Vec::new() }, state: NOTHING_SENT })
    }

    fn admit_job(job: JobSubmission, state: Vec<u8>, now: TimestampMs) -> Result<JobAdmission, Reason> {
        let mut waits: Vec<Wait> = decode_waits(&state).into_iter().filter(|w| w.expires_ms >= now).collect();
        let expires_ms = now.saturating_add(CONFIG.get().wait_minutes.saturating_mul(60_000));
        // Every matching wait is renewed (a state written by another version may hold repeats).
        let mut renewed = false;
        for w in waits.iter_mut().filter(|w| w.height == job.block_height && w.target == job.proof_target) {
            w.expires_ms = expires_ms;
            renewed = true;
        }
        if !renewed {
            waits.push(Wait { height: job.block_height, target: job.proof_target, expires_ms });
        }
        Ok(JobAdmission { state: encode_waits(&waits), job })
    }

    fn offer_job(job: Job, _: Vec<WorkerProfile>, workers: Workers, _: TimestampMs) -> JobOffer {
        let height = job.block_height;
        // Sized for the worst case up front: growing a vector in wasm costs a copy each time.
        let mut chosen = Vec::with_capacity(workers.states.len());
        for (i, &state) in workers.states.iter().enumerate() {
            if height > state as i64 {
                chosen.push(i as u32);
            }
        }
        // One state for every chosen worker: the height they now have.
        JobOffer { workers: chosen, states: vec![height as u64] }
    }

    fn offer_solution(job: Job, solution: Solution, nodes: Vec<NodeView>, now: TimestampMs) -> Vec<u32> {
        nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                decode_waits(&n.state).iter().any(|w| {
                    w.height == job.block_height && solution.solution_target >= w.target && w.expires_ms >= now
                })
            })
            .map(|(i, _)| i as u32)
            .collect()
    }
}

export_policy!(SeedRules);
