//! Routes jobs by worker profile.
//!
//! Profile, derived from the welcome:
//! - `class:gpu` when the `hardware` text names a GPU (gpu, nvidia, rtx, radeon, amd
//!   instinct), `class:cpu` otherwise;
//! - every word of the `caption` that starts with `+` becomes a tag (`+eu` → `eu`);
//! - a caption word `max-target=N` becomes the limit (`max-target`, N).
//!
//! Routing, per job (every number and word here is a setting, see [`Config`]):
//! - a job whose `proof_target` is at least 1048576 goes to `class:gpu` only (a
//!   tag rule);
//! - a worker with a `max-target` limit gets only jobs up to that target;
//! - at most 256 workers get a job; which ones rotates with the height so every
//!   eligible worker gets its share.
//!
//! Settings (`<key>.toml`):
//! ```toml
//! max_workers_per_job = 256
//! gpu_words = ["gpu", "nvidia", "rtx", "radeon", "instinct"]
//! [[rules]]              # jobs with min_target <= proof_target (<= max_target)
//! min_target = 1048576   # go only to workers with one of these tags
//! require_any = ["class:gpu"]
//! ```
//!
//! Stateless: worker state words are passed through unchanged.

use eligo_plugin_sdk::serde::Deserialize;
use eligo_plugin_sdk::*;

/// Jobs at or above this target go to GPU workers only, unless configured.
pub const HEAVY_TARGET: u64 = 1 << 20;
/// How many workers receive one job at most, unless configured.
pub const MAX_WORKERS_PER_JOB: usize = 256;
const GPU_WORDS: [&str; 5] = ["gpu", "nvidia", "rtx", "radeon", "instinct"];

/// What an operator can set.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, crate = "eligo_plugin_sdk::serde")]
pub struct Config {
    /// How many workers receive one job at most.
    pub max_workers_per_job: usize,
    /// Words of a welcome's `hardware` that make a worker `class:gpu`.
    pub gpu_words: Vec<String>,
    /// Which jobs go only to workers with certain tags.
    pub rules: Vec<Rule>,
}

/// Jobs whose `proof_target` is in `min_target..=max_target` go only to workers
/// with at least one of the tags `require_any`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, crate = "eligo_plugin_sdk::serde")]
pub struct Rule {
    /// Lowest target the rule applies to.
    #[serde(default)]
    pub min_target: u64,
    /// Highest target the rule applies to (none: no upper bound).
    #[serde(default)]
    pub max_target: Option<u64>,
    /// The tags, one of which a worker needs.
    pub require_any: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_workers_per_job: MAX_WORKERS_PER_JOB,
            gpu_words: GPU_WORDS.iter().map(|w| w.to_string()).collect(),
            rules: vec![Rule { min_target: HEAVY_TARGET, max_target: None, require_any: vec!["class:gpu".into()] }],
        }
    }
}

static CONFIG: Settings<Config> = Settings::new();

/// Derives the profile of a worker from its welcome.
pub fn profile(config: &Config, welcome: &Welcome) -> WorkerProfile {
    let hardware = welcome.hardware.to_ascii_lowercase();
    let gpu = config.gpu_words.iter().any(|w| hardware.contains(&w.to_ascii_lowercase()));
    let class = if gpu { "class:gpu" } else { "class:cpu" };
    let mut tags = vec![class.to_string()];
    let mut limits = Vec::new();
    for word in welcome.caption.split_whitespace() {
        if let Some(tag) = word.strip_prefix('+').filter(|t| !t.is_empty()) {
            tags.push(tag.to_string());
        } else if let Some(n) = word.strip_prefix("max-target=").and_then(|n| n.parse::<u64>().ok()) {
            limits.push(("max-target".to_string(), n));
        }
    }
    WorkerProfile { tags, limits }
}

fn eligible(config: &Config, job: &Job, profile: &WorkerProfile) -> bool {
    let target = job.proof_target;
    let rules_ok = config.rules.iter().all(|rule| {
        let applies = target >= rule.min_target && rule.max_target.is_none_or(|max| target <= max);
        !applies || profile.tags.iter().any(|t| rule.require_any.contains(t))
    });
    let limit_ok = profile.limits.iter().all(|(name, value)| name != "max-target" || target <= *value);
    rules_ok && limit_ok
}

/// The router.
pub struct TagRouter;

impl Policy for TagRouter {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "tag-router".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::AdmitWorker, Hook::OfferJob],
        }
    }

    fn configure(settings: String) -> Result<(), Reason> {
        CONFIG.configure(&settings)?;
        let config = CONFIG.get();
        if config.max_workers_per_job == 0 {
            return Err("max_workers_per_job must be at least 1: no job would reach any worker".into());
        }
        if let Some(rule) = config.rules.iter().find(|r| r.require_any.is_empty()) {
            return Err(format!("a rule from target {} requires no tag: list at least one", rule.min_target));
        }
        Ok(())
    }

    fn admit_worker(welcome: Welcome, _: TimestampMs) -> Result<WorkerAdmission, Reason> {
        if welcome.hardware_id.trim().is_empty() {
            return Err("welcome has an empty hardware_id".into());
        }
        Ok(WorkerAdmission { profile: profile(CONFIG.get(), &welcome), state: 0 })
    }

    fn offer_job(job: Job, profiles: Vec<WorkerProfile>, workers: Workers, _: TimestampMs) -> JobOffer {
        let config = CONFIG.get();
        let verdicts: Vec<bool> = profiles.iter().map(|p| eligible(config, &job, p)).collect();
        let eligible: Vec<u32> = workers
            .profiles
            .iter()
            .enumerate()
            .filter(|(_, p)| verdicts.get(**p as usize).copied().unwrap_or(false))
            .map(|(i, _)| i as u32)
            .collect();
        if eligible.is_empty() {
            return JobOffer { workers: Vec::new(), states: Vec::new() };
        }
        let take = eligible.len().min(config.max_workers_per_job);
        let start = (job.block_height.unsigned_abs() as usize).wrapping_mul(take) % eligible.len();
        let chosen: Vec<u32> = (0..take).map(|k| eligible[(start + k) % eligible.len()]).collect();
        let states = chosen.iter().map(|&i| workers.states[i as usize]).collect();
        JobOffer { workers: chosen, states }
    }
}

export_policy!(TagRouter);
