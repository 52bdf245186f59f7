//! `[plugins]`: the plugin folder and how its plugins run. The limits of one
//! call are the plugin engine's own ([`crate::plugin::Limits`]).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::plugin::Limits;

/// The policy plugins.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// The folder of `*.wasm` plugins, watched for changes.
    pub dir: PathBuf,
    /// Quiet time after a change before reloading, in milliseconds.
    pub debounce_ms: u64,
    /// Limits of every plugin call.
    pub limits: Limits,
    /// While the folder holds no plugin file at all, apply the original system's
    /// rules (built in, natively) rather than admitting and offering everything.
    /// They never stand in for a plugin that failed to load.
    pub builtin_seed_rules: bool,
    /// Settings by plugin key (`[plugins.config.20-tag-router]`), handed to the
    /// plugin's `configure`. A `<key>.toml` beside the plugin file does the same
    /// and is reloaded when it changes; a plugin may have one or the other.
    pub config: std::collections::BTreeMap<String, serde_json::Value>,
    /// Public keys (`ed25519:<base64>`, from `eligo plugin keygen`) a plugin must
    /// be signed by to load; empty: no signature needed. Reloaded on SIGHUP.
    pub trusted_keys: Vec<String>,
    /// Threads that run the policies' decisions, apart from the threads that
    /// serve sockets and HTTP; 0 is one per core.
    pub decision_threads: usize,
    /// Start even when a plugin of the folder fails to load (it is reported at
    /// `/healthz` and `/plugins`, and every decision it would take part in is
    /// refused until it loads). Off: eligo refuses to start, naming the file.
    pub start_with_failed: bool,
    /// Where compiled plugins are kept between starts; default `plugin-cache`
    /// in `data_dir`. Only eligo writes there (mode 0700).
    pub cache_dir: Option<PathBuf>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: PathBuf::from("policies"),
            debounce_ms: 250,
            limits: Limits::default(),
            builtin_seed_rules: true,
            config: Default::default(),
            trusted_keys: Vec::new(),
            decision_threads: 0,
            start_with_failed: false,
            cache_dir: None,
        }
    }
}

impl PluginsConfig {
    /// The folder of compiled plugins: `cache_dir`, or `plugin-cache` in `data_dir`.
    pub fn cache_dir(&self, data_dir: &std::path::Path) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| data_dir.join("plugin-cache"))
    }
}
