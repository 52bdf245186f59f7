//! A proof-of-work validator.
//!
//! A solution is valid when `sha256(epoch_challenge ‖ nonce)` (the challenge as the
//! compact, key-sorted JSON text the host passes, the nonce as 8 little-endian bytes)
//! reaches the job's `proof_target`, and the solution does not claim more than it
//! reaches. What a digest reaches is `u64::MAX / max(1, first 8 bytes of the digest,
//! big-endian)`, so finding a solution takes about `proof_target` hashes.
//!
//! Settings (`<key>.toml`), the difficulty rule:
//! - `min_target` (default 0): a floor; a solution must reach at least this,
//!   whatever its job asks;
//! - `ignore_job_target` (default false): check only `min_target`, not the job's
//!   `proof_target` (a pool that sets one difficulty for all);
//! - `check_claim` (default true): refuse a solution claiming a `solution_target`
//!   above what its proof of work reaches.

use eligo_plugin_sdk::serde::Deserialize;
use eligo_plugin_sdk::*;
use sha2::{Digest, Sha256};

/// The difficulty rule.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, crate = "eligo_plugin_sdk::serde")]
pub struct Config {
    /// Every solution must reach at least this target.
    pub min_target: u64,
    /// Check `min_target` only, not the job's `proof_target`.
    pub ignore_job_target: bool,
    /// Refuse a `solution_target` above what the proof of work reaches.
    pub check_claim: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { min_target: 0, ignore_job_target: false, check_claim: true }
    }
}

static CONFIG: Settings<Config> = Settings::new();

/// The target a solution for `job` must reach under `config`.
pub fn required_target(config: &Config, job_target: u64) -> u64 {
    if config.ignore_job_target {
        config.min_target
    } else {
        job_target.max(config.min_target)
    }
}

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

impl Policy for PowCheck {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "pow-check".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::ValidateSolution],
        }
    }

    fn configure(settings: String) -> Result<(), Reason> {
        CONFIG.configure(&settings)
    }

    fn validate_solution(job: Job, solution: Solution) -> Result<(), Reason> {
        let config = CONFIG.get();
        let nonce: u64 = solution
            .unique_key
            .parse()
            .map_err(|_| format!("nonce {:?} is not an unsigned 64-bit integer", solution.unique_key))?;
        let reached = reached_target(&job.epoch_challenge, nonce);
        let required = required_target(config, job.proof_target);
        if reached < required {
            return Err(format!("proof of work reaches target {reached}, the job needs {required}"));
        }
        if config.check_claim && solution.solution_target > reached {
            return Err(format!(
                "solution claims target {}, its proof of work reaches {reached}",
                solution.solution_target
            ));
        }
        Ok(())
    }
}

export_policy!(PowCheck);
