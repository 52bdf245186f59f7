//! The plugin runtime: the `eligo:policy` contract on the host side, the wasmtime
//! engine that runs plugins under limits, composition of several plugins, the
//! plugin folder with hot reload, and the runner for plugin unit tests.
//!
//! Reading order: [`Policy`] (what a policy decides), [`PluginEngine`] (how a
//! plugin is compiled and limited), [`WasmPlugin`] (one loaded plugin),
//! [`PolicySet`] (several composed), [`PluginHost`] (a folder, hot-reloaded).

mod bindings;
mod cache;
mod dir;
mod engine;
mod host_state;
mod limits;
mod load;
mod native;
mod policy;
mod pool;
mod report;
mod set;
mod shadow;
pub mod signature;
mod stand_in;
mod wasm;

pub use bindings::{
    ConnectionRequest, Hook, Job, JobAdmission, JobOffer, JobSubmission, Level, NodeView, PluginInfo, Role, Solution,
    Welcome, WorkerAdmission, WorkerProfile, Workers, DECISIONS_INTERFACE, WIT_VERSION,
};
pub use cache::Compiled;
pub use dir::{loaded_policy, Compiling, LoadFailure, PluginHost, Reload, RescanSummary, Settings, Trust, WatchGuard};
pub use engine::{LoadError, PluginEngine};
pub(crate) use host_state::truncate;
pub use limits::Limits;
pub use native::{NativeSeedRules, BUILTIN_KEY, NOTHING_SENT, WAIT_MS};
pub use policy::{check_indices, check_job_offer};
pub use policy::{Decision, Policy, PolicyError, Reason, Verdict};
pub use pool::{Batched, Deciding, DecisionPool, Lane, PoolError};
pub use report::PluginReport;
pub use set::{hook_names, LoadedPolicy, NodeState, PluginKey, PolicySet, Refusal, Validation, WorkerState};
pub use shadow::{Disagreement, Shadow, ShadowReport};
pub use wasm::HOOKS as ALL_HOOKS;
pub use wasm::{Cost, Exports, WasmPlugin, NO_SETTINGS};

/// Milliseconds since the Unix epoch: the `now` passed to plugins.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Loads one plugin file with default limits: the helper for plugin authors'
/// `#[test]`s (see the README). Its settings are the `.toml` beside it, as in the
/// server, if there is one.
pub fn load_file(path: impl AsRef<std::path::Path>) -> anyhow::Result<WasmPlugin> {
    load_file_configured(path, None).map(|(plugin, _)| plugin)
}

/// Loads one plugin file with default limits and the settings of the TOML file
/// `settings`, or, when `None`, of the `.toml` beside the plugin if there is one.
/// Says which settings it used.
pub fn load_file_configured(
    path: impl AsRef<std::path::Path>,
    settings: Option<&std::path::Path>,
) -> anyhow::Result<(WasmPlugin, Settings)> {
    let path = path.as_ref();
    let beside = path.with_extension("toml");
    let settings = match settings {
        Some(file) => Settings::from_file(file).map_err(anyhow::Error::msg)?,
        None if beside.is_file() => Settings::from_file(&beside).map_err(anyhow::Error::msg)?,
        None => Settings::none(),
    };
    load_file_with(path, settings)
}

/// Loads one plugin file with default limits and the given settings.
pub fn load_file_with(path: &std::path::Path, settings: Settings) -> anyhow::Result<(WasmPlugin, Settings)> {
    use anyhow::Context;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let engine = PluginEngine::new(Limits::default())?;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin");
    let plugin = engine
        .load_with_settings(name, &bytes, &settings.json)
        .with_context(|| format!("loading {}", path.display()))?;
    Ok((plugin, settings))
}
