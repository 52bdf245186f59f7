//! The plugin folder: drop-in loading and hot reload.
//!
//! Every `*.wasm` file in the folder is a plugin; its file stem is its key and
//! composition follows the keys' order (prefix files with numbers to order them).
//! A watcher notices changes, waits until the folder has been quiet for the
//! debounce period (editors and `cp` write in several steps), then compiles what
//! changed on its own thread and swaps the new set in atomically. Calls in flight
//! finish on the set they started with; a file that fails to load leaves the
//! previous version of that plugin serving.
//!
//! A plugin's settings come from `<key>.toml` beside `<key>.wasm`, or from the
//! `[plugins.config.<key>]` table of eligo's configuration (never both). A change
//! of either reloads the plugin like a change of its file; settings it refuses
//! leave the previous version serving.

use super::engine::PluginEngine;
use super::report::PluginReport;
use super::set::{hook_names, LoadedPolicy, PluginKey, PolicySet};
use super::shadow::{Shadow, ShadowReport};
use super::signature::{Beside, TrustedKeys};
use super::Policy;
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// A plugin file that could not be loaded, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadFailure {
    /// The file.
    pub file: String,
    /// Why it was refused.
    pub error: String,
}

/// What a rescan changed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RescanSummary {
    /// Keys (re)loaded.
    pub loaded: Vec<String>,
    /// Keys whose file disappeared.
    pub removed: Vec<String>,
    /// Files that failed to load.
    pub failed: Vec<LoadFailure>,
}

/// The plugins of one folder, kept current.
pub struct PluginHost {
    engine: PluginEngine,
    dir: PathBuf,
    active: ArcSwap<PolicySet>,
    state: Mutex<DirState>,
    generation: tokio::sync::watch::Sender<u64>,
    /// Serves while the folder holds no plugin that loads.
    fallback: Option<LoadedPolicy>,
    /// What eligo's configuration says of the plugins: reloadable.
    trust: Mutex<Trust>,
}

/// What eligo's configuration says of the plugins, replaced on a configuration reload.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// Settings by key (`[plugins.config.<key>]`).
    pub configured: BTreeMap<String, serde_json::Value>,
    /// The keys a plugin must be signed by (`[plugins] trusted_keys`); none: no signature needed.
    pub keys: TrustedKeys,
}

#[derive(Default)]
struct DirState {
    /// The plugins that decide.
    active: Folder,
    /// The candidates of `shadow/`, each shadowing the active plugin of its key.
    candidates: Folder,
    /// The running shadow of each loaded candidate, by key.
    shadows: BTreeMap<String, Arc<Shadow>>,
    /// The latest reloads that changed something, oldest first.
    history: std::collections::VecDeque<Reload>,
}
/// The plugins of one folder.
#[derive(Default)]
struct Folder {
    /// Loaded plugins by key, with the fingerprint of the bytes and settings they came from.
    loaded: BTreeMap<String, (String, LoadedPolicy)>,
    /// Files that failed to load, with the fingerprint refused (none if unreadable).
    failures: BTreeMap<String, (Option<String>, LoadFailure)>,
}

/// The subfolder of candidates.
pub const SHADOW_DIR: &str = "shadow";

/// A rescan that changed something, as the operator's API lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Reload {
    /// When, RFC 3339.
    pub at: String,
    /// What changed.
    #[serde(flatten)]
    pub changes: RescanSummary,
}

/// Reloads remembered for the operator.
const RELOAD_HISTORY: usize = 50;

impl PluginHost {
    /// Loads every plugin in `dir` (creating it if missing). Failures are logged and
    /// reported, not fatal: the host serves what did load.
    pub fn open(engine: PluginEngine, dir: impl Into<PathBuf>) -> std::io::Result<Arc<Self>> {
        Self::open_with_fallback(engine, dir, None)
    }

    /// Like [`open`](Self::open), with a policy that serves whenever the folder
    /// holds no plugin that loads (eligo uses the built-in seed rules).
    pub fn open_with_fallback(
        engine: PluginEngine,
        dir: impl Into<PathBuf>,
        fallback: Option<LoadedPolicy>,
    ) -> std::io::Result<Arc<Self>> {
        Self::open_configured(engine, dir, fallback, BTreeMap::new())
    }

    /// Like [`open_with_fallback`](Self::open_with_fallback), with settings by
    /// plugin key from eligo's own configuration.
    pub fn open_configured(
        engine: PluginEngine,
        dir: impl Into<PathBuf>,
        fallback: Option<LoadedPolicy>,
        configured: BTreeMap<String, serde_json::Value>,
    ) -> std::io::Result<Arc<Self>> {
        Self::open_trusting(engine, dir, fallback, Trust { configured, keys: TrustedKeys::default() })
    }

    /// Like [`open_configured`](Self::open_configured), loading only plugins
    /// signed by one of `trust.keys` when any is given.
    pub fn open_trusting(
        engine: PluginEngine,
        dir: impl Into<PathBuf>,
        fallback: Option<LoadedPolicy>,
        trust: Trust,
    ) -> std::io::Result<Arc<Self>> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let initial = PolicySet::new(fallback.iter().cloned().collect());
        let host = Arc::new(PluginHost {
            engine,
            dir,
            active: ArcSwap::from_pointee(initial),
            state: Mutex::new(DirState::default()),
            generation: tokio::sync::watch::channel(0).0,
            fallback,
            trust: Mutex::new(trust),
        });
        host.rescan();
        Ok(host)
    }

    /// Applies a reloaded configuration: new settings tables and trusted keys.
    /// Every plugin is looked at again; one that no longer passes is listed as
    /// failed and its previous version keeps serving, as on any refused reload.
    pub fn reconfigure(&self, trust: Trust) -> RescanSummary {
        *self.trust.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = trust;
        self.rescan()
    }

    /// The folder watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The engine the plugins run on.
    pub fn engine(&self) -> &PluginEngine {
        &self.engine
    }

    /// The active policies. Cheap; hold the `Arc` for the length of one decision.
    pub fn current(&self) -> Arc<PolicySet> {
        self.active.load_full()
    }

    /// Reports on the active plugins.
    pub fn reports(&self) -> Vec<PluginReport> {
        self.current().reports()
    }

    /// Files that failed to load at the last attempt (candidates of `shadow/` too).
    pub fn failures(&self) -> Vec<LoadFailure> {
        let Ok(state) = self.state.lock() else { return Vec::new() };
        state.active.failures.values().chain(state.candidates.failures.values()).map(|(_, f)| f.clone()).collect()
    }

    /// The candidates of `shadow/`: what each shadows, how often it agreed, and
    /// samples of where it did not.
    pub fn shadows(&self) -> Vec<ShadowReport> {
        let active = self.current();
        let Ok(state) = self.state.lock() else { return Vec::new() };
        state
            .shadows
            .iter()
            .map(|(key, shadow)| shadow.report(active.policies().iter().any(|p| &*p.key == key)))
            .collect()
    }

    /// The latest reloads that changed something (loaded, removed or refused a
    /// file), oldest first.
    pub fn history(&self) -> Vec<Reload> {
        self.state.lock().map(|s| s.history.iter().cloned().collect()).unwrap_or_default()
    }

    /// Counts rescans that changed something; `changed().await` on it to wait for a reload.
    pub fn generation(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Reads the folder and `shadow/` and loads what changed. Synchronous:
    /// compiles on the caller's thread.
    pub fn rescan(&self) -> RescanSummary {
        let mut summary = RescanSummary::default();
        let Ok(mut state) = self.state.lock() else { return summary };
        let state = &mut *state;
        let trust = self.trust.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let active_changed = self.sync(&trust, &self.dir, "", &mut state.active, &mut summary);
        let candidates_changed =
            self.sync(&trust, &self.dir.join(SHADOW_DIR), "shadow/", &mut state.candidates, &mut summary);
        if candidates_changed {
            // A new or changed candidate starts afresh; one left as it was keeps its counts.
            let loaded = &state.candidates.loaded;
            state.shadows.retain(|key, _| loaded.contains_key(key));
            for key in summary.loaded.iter().filter_map(|k| k.strip_prefix("shadow/")) {
                let Some((_, candidate)) = loaded.get(key) else { continue };
                match Shadow::start(candidate.policy.clone(), candidate.report.clone(), key) {
                    Ok(shadow) => {
                        state.shadows.insert(key.to_string(), shadow);
                    }
                    Err(e) => tracing::error!(plugin = %key, error = %e, "could not start a shadow"),
                }
            }
        }
        if active_changed || candidates_changed {
            let mut policies: Vec<LoadedPolicy> = state.active.loaded.values().map(|(_, p)| p.clone()).collect();
            if policies.is_empty() {
                if let Some(fallback) = &self.fallback {
                    tracing::info!(plugin = %fallback.key, "no plugin in the folder: the built-in policy serves");
                    policies.push(fallback.clone());
                }
            }
            for policy in &mut policies {
                policy.shadow = state.shadows.get(&*policy.key).cloned();
            }
            self.active.store(Arc::new(PolicySet::new(policies)));
            self.generation.send_modify(|g| *g += 1);
        }
        if !summary.loaded.is_empty() || !summary.removed.is_empty() || !summary.failed.is_empty() {
            if state.history.len() == RELOAD_HISTORY {
                state.history.pop_front();
            }
            state.history.push_back(Reload { at: chrono::Utc::now().to_rfc3339(), changes: summary.clone() });
        }
        summary
    }

    /// Brings `folder` up to the `*.wasm` files of `dir` (a missing `dir` holds
    /// none); `label` prefixes the keys reported. Whether anything was loaded or removed.
    fn sync(&self, trust: &Trust, dir: &Path, label: &str, folder: &mut Folder, summary: &mut RescanSummary) -> bool {
        let files = match plugin_files(dir) {
            Ok(files) => files,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !label.is_empty() => BTreeMap::new(),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read the plugin folder");
                return false;
            }
        };
        let (loaded_before, removed_before) = (summary.loaded.len(), summary.removed.len());
        let gone: Vec<String> = folder.loaded.keys().filter(|k| !files.contains_key(*k)).cloned().collect();
        for key in gone {
            folder.loaded.remove(&key);
            tracing::info!(plugin = %format!("{label}{key}"), "plugin file removed: unloaded");
            summary.removed.push(format!("{label}{key}"));
        }
        folder.failures.retain(|k, _| files.contains_key(k));
        let keys = trust.keys.required().then(|| trust.keys.fingerprint());
        for (key, path) in files {
            let bytes = match read_settled(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    let failure = LoadFailure { file: path.display().to_string(), error: format!("cannot read: {e}") };
                    folder.failures.insert(key, (None, failure.clone()));
                    summary.failed.push(failure);
                    continue;
                }
            };
            let sha = hex::encode(Sha256::digest(&bytes));
            let settings = self.settings_of(trust, &key, &path);
            // What was loaded, or refused, is the plugin's bytes with its settings,
            // and, when signatures are required, its signature and the keys trusted.
            let mut fingerprint = match &settings {
                Ok(s) => format!("{sha}:{}", hex::encode(Sha256::digest(s.json.as_bytes()))),
                Err(e) => format!("{sha}:{e}"),
            };
            let beside = keys.as_ref().map(|keys| {
                let beside = Beside::read(&path);
                fingerprint = format!("{fingerprint}:{}:{keys}", beside.fingerprint());
                beside
            });
            if folder.loaded.get(&key).is_some_and(|(loaded, _)| *loaded == fingerprint) {
                // Back to what serves (a refused change undone): nothing failed any more.
                folder.failures.remove(&key);
                continue;
            }
            // The same bytes were refused already: compiling them again would fail again.
            if folder.failures.get(&key).is_some_and(|(refused, _)| refused.as_deref() == Some(fingerprint.as_str())) {
                continue;
            }
            let loaded = settings.and_then(|settings| {
                if let Some(beside) = &beside {
                    trust.keys.verify_beside(beside, &bytes).map_err(|e| e.to_string())?;
                }
                let plugin = self.engine.load_with_settings(&key, &bytes, &settings.json).map_err(|e| e.to_string())?;
                let mut loaded = loaded_policy(key.as_str().into(), &path, &sha, Arc::new(plugin));
                loaded.report.settings = settings.source;
                Ok(loaded)
            });
            let shown = format!("{label}{key}");
            match loaded {
                Ok(loaded) => {
                    tracing::info!(plugin = %shown, name = %loaded.report.name, version = %loaded.report.version,
                        contract = %loaded.report.wit, sha256 = %sha, settings = ?loaded.report.settings,
                        hooks = ?loaded.report.hooks, "plugin loaded");
                    folder.failures.remove(&key);
                    folder.loaded.insert(key, (fingerprint, loaded));
                    summary.loaded.push(shown);
                }
                Err(e) => {
                    let keeps = if folder.loaded.contains_key(&key) {
                        "the previous version keeps serving"
                    } else {
                        "not loaded"
                    };
                    tracing::error!(plugin = %shown, file = %path.display(), error = %e, "plugin refused; {keeps}");
                    crate::metrics::plugin_failure(&shown, "load");
                    let failure =
                        LoadFailure { file: path.display().to_string(), error: format!("{e} (sha256 {})", &sha[..12]) };
                    folder.failures.insert(key, (Some(fingerprint), failure.clone()));
                    summary.failed.push(failure);
                }
            }
        }
        summary.loaded.len() > loaded_before || summary.removed.len() > removed_before
    }

    /// The settings of the plugin `key` loaded from `wasm`: its `.toml` beside it,
    /// or its table in eligo's configuration, or none.
    fn settings_of(&self, trust: &Trust, key: &str, wasm: &Path) -> Result<Settings, String> {
        let file = wasm.with_extension("toml");
        let table = trust.configured.get(key);
        // A candidate's own file wins; without one it runs with the active plugin's table.
        let candidate = wasm.parent() != Some(self.dir.as_path());
        match (file.is_file(), table) {
            (true, Some(_)) if !candidate => {
                Err(format!("configured twice, by {} and by [plugins.config.{key}]: keep one", file.display()))
            }
            (true, _) => Settings::from_file(&file),
            (false, Some(table)) => Ok(Settings {
                json: crate::protocol::canonical_json(table),
                source: Some(format!("[plugins.config.{key}]")),
            }),
            (false, None) => Ok(Settings::none()),
        }
    }

    /// Watches the folder and rescans after each burst of changes has been quiet for
    /// `debounce`. Watching stops when the returned guard is dropped.
    pub fn watch(self: &Arc<Self>, debounce: Duration) -> notify::Result<WatchGuard> {
        use notify::Watcher;
        let (tx, rx) = mpsc::channel::<()>();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(());
            }
        })?;
        // Recursive: `shadow/` is watched too, whenever it is made.
        watcher.watch(&self.dir, notify::RecursiveMode::Recursive)?;
        let host = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("eligo-plugin-watch".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Wait for the folder to be quiet: a file being written fires many events.
                    while rx.recv_timeout(debounce).is_ok() {}
                    match host.upgrade() {
                        Some(host) => {
                            host.rescan();
                        }
                        None => return,
                    }
                }
            })
            .map_err(|e| notify::Error::generic(&e.to_string()))?;
        Ok(WatchGuard { _watcher: Box::new(watcher) })
    }
}

/// Keeps a plugin folder watched; dropping it stops the watching.
pub struct WatchGuard {
    _watcher: Box<dyn notify::Watcher + Send>,
}

/// A plugin's settings, as it receives them, and where they came from.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A JSON object as compact text with sorted keys: what `configure` gets.
    pub json: String,
    /// The file or configuration table they came from; `None` when there were none.
    pub source: Option<String>,
}

impl Settings {
    /// No settings: `configure` gets `{}`.
    pub fn none() -> Self {
        Settings { json: super::wasm::NO_SETTINGS.to_string(), source: None }
    }

    /// Reads a TOML file of settings (a plugin's `<key>.toml`).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let value: serde_json::Value =
            toml::from_str(&text).map_err(|e| format!("{} is not valid TOML: {}", path.display(), e.message()))?;
        Ok(Settings { json: crate::protocol::canonical_json(&value), source: Some(path.display().to_string()) })
    }
}

/// Wraps a policy for a [`PolicySet`], with its report.
pub fn loaded_policy(key: PluginKey, path: &Path, sha256: &str, policy: Arc<dyn Policy>) -> LoadedPolicy {
    let info = policy.info();
    let report = PluginReport {
        key: key.to_string(),
        file: path.display().to_string(),
        name: info.name.clone(),
        version: info.version.clone(),
        wit: policy.contract().to_string(),
        settings: None,
        sha256: sha256.to_string(),
        loaded_at: chrono::Utc::now().to_rfc3339(),
        hooks: hook_names(&info.hooks),
    };
    LoadedPolicy { key, policy, report, shadow: None }
}

/// `*.wasm` files of `dir` by key (file stem). Hidden files are skipped.
fn plugin_files(dir: &Path) -> std::io::Result<BTreeMap<String, PathBuf>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
        if path.extension().is_some_and(|e| e == "wasm") && !stem.starts_with('.') && path.is_file() {
            files.insert(stem.to_string(), path);
        }
    }
    Ok(files)
}

/// Reads a file whose size and modification time stay the same across the read,
/// so a file still being written is not taken.
fn read_settled(path: &Path) -> std::io::Result<Vec<u8>> {
    for _ in 0..20 {
        let before = std::fs::metadata(path)?;
        let bytes = std::fs::read(path)?;
        let after = std::fs::metadata(path)?;
        if before.len() == after.len()
            && before.modified().ok() == after.modified().ok()
            && bytes.len() as u64 == after.len()
        {
            return Ok(bytes);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(std::io::Error::other("the file kept changing while it was read"))
}
