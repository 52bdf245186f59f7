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
//!
//! A plugin that fails to load with no earlier version to keep serving is not
//! left out: a refusing stand-in takes its place (see `stand_in.rs`), and the
//! built-in fallback serves only while the folder holds no plugin file at all.
//!
//! Compiling takes seconds (a Python component, tens of them), and the admin
//! API reads the folder's state on every request: so a rescan compiles holding
//! no lock a request takes. Rescans are serialised by a lock of their own.

use super::engine::PluginEngine;
use super::report::PluginReport;
use super::set::{hook_names, LoadedPolicy, PluginKey, PolicySet};
use super::shadow::{Shadow, ShadowReport};
use super::signature::{read_if_present, Beside, TrustedKeys};
use super::stand_in::StandIn;
use super::Policy;
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
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
    /// Whether an earlier version of the plugin keeps serving. When none does,
    /// an active plugin's place is held by a stand-in that refuses everything.
    pub previous_serves: bool,
}

/// A plugin file being compiled now; the version before it (if any) serves meanwhile.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Compiling {
    /// The key, as `/plugins` lists it (`shadow/` for a candidate).
    pub key: String,
    /// The file.
    pub file: String,
    /// Since when, RFC 3339.
    pub since: String,
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
    /// What the folder holds: taken briefly, by rescans and by every request
    /// that reports on plugins; never held across a compile.
    state: Mutex<DirState>,
    /// Held for a whole rescan, so that rescans do not interleave; no request
    /// handler takes it.
    rescanning: Mutex<()>,
    generation: tokio::sync::watch::Sender<u64>,
    /// Serves while the folder holds no plugin file at all.
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
    /// What a rescan is compiling now, by key as listed.
    compiling: BTreeMap<String, Compiling>,
}
/// The plugins of one folder.
#[derive(Default)]
struct Folder {
    /// Loaded plugins by key, with the fingerprint of the bytes and settings they came from.
    loaded: BTreeMap<String, (String, LoadedPolicy)>,
    /// Files that failed to load, with the fingerprint refused (none if unreadable).
    failures: BTreeMap<String, (Option<String>, LoadFailure)>,
}

impl Folder {
    /// The keys that failed with no version loaded: a stand-in refuses in their place.
    fn stand_in_keys(&self) -> BTreeSet<String> {
        self.failures.keys().filter(|k| !self.loaded.contains_key(*k)).cloned().collect()
    }
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
    /// reported, not fatal here ([`active_failures`](Self::active_failures) tells the
    /// caller): the host serves what did load, and refuses in place of what did not.
    pub fn open(engine: PluginEngine, dir: impl Into<PathBuf>) -> std::io::Result<Arc<Self>> {
        Self::open_with_fallback(engine, dir, None)
    }

    /// Like [`open`](Self::open), with a policy that serves whenever the folder
    /// holds no plugin file (eligo uses the built-in seed rules). It never
    /// serves in place of a plugin that failed to load.
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
            rescanning: Mutex::new(()),
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

    /// Reports on the active plugins (not the stand-ins of failed ones: those are
    /// listed by [`failures`](Self::failures)).
    pub fn reports(&self) -> Vec<PluginReport> {
        self.current().reports().into_iter().filter(|r| !r.stand_in).collect()
    }

    /// Files that failed to load at the last attempt (candidates of `shadow/` too).
    pub fn failures(&self) -> Vec<LoadFailure> {
        let state = self.lock_state();
        state.active.failures.values().chain(state.candidates.failures.values()).map(|(_, f)| f.clone()).collect()
    }

    /// Files of the folder itself (not of `shadow/`) that failed to load at the
    /// last attempt: what start-up refuses to start with.
    pub fn active_failures(&self) -> Vec<LoadFailure> {
        self.lock_state().active.failures.values().map(|(_, f)| f.clone()).collect()
    }

    /// The files a rescan is compiling now.
    pub fn compiling(&self) -> Vec<Compiling> {
        self.lock_state().compiling.values().cloned().collect()
    }

    /// The folder's state. A rescan that panicked left nothing half-applied that
    /// a reader could trip on (each change is one insert or remove), so a
    /// poisoned lock is taken as it is.
    fn lock_state(&self) -> std::sync::MutexGuard<'_, DirState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The candidates of `shadow/`: what each shadows, how often it agreed, and
    /// samples of where it did not.
    pub fn shadows(&self) -> Vec<ShadowReport> {
        let active = self.current();
        let state = self.lock_state();
        state
            .shadows
            .iter()
            .map(|(key, shadow)| shadow.report(active.policies().iter().any(|p| &*p.key == key)))
            .collect()
    }

    /// The latest reloads that changed something (loaded, removed or refused a
    /// file), oldest first.
    pub fn history(&self) -> Vec<Reload> {
        self.lock_state().history.iter().cloned().collect()
    }

    /// Counts rescans that changed something; `changed().await` on it to wait for a reload.
    pub fn generation(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Reads the folder and `shadow/` and loads what changed. Synchronous:
    /// compiles on the caller's thread, holding no lock a request takes, so
    /// reports answer meanwhile and list the file under [`compiling`](Self::compiling).
    pub fn rescan(&self) -> RescanSummary {
        let _one_at_a_time = self.rescanning.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut summary = RescanSummary::default();
        let stand_ins_before = self.lock_state().active.stand_in_keys();
        let trust = self.trust.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let active_changed = self.sync(&trust, &self.dir, "", |s| &mut s.active, &mut summary);
        let candidates_changed =
            self.sync(&trust, &self.dir.join(SHADOW_DIR), "shadow/", |s| &mut s.candidates, &mut summary);
        let mut state = self.lock_state();
        let state = &mut *state;
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
        let stand_ins = state.active.stand_in_keys();
        if active_changed || candidates_changed || stand_ins != stand_ins_before {
            let mut policies: Vec<LoadedPolicy> = state.active.loaded.values().map(|(_, p)| p.clone()).collect();
            for key in &stand_ins {
                let file = state.active.failures.get(key).map(|(_, f)| f.file.clone()).unwrap_or_default();
                tracing::warn!(plugin = %key, file = %file, "plugin failed to load: every decision it takes part in is refused until it loads");
                policies.push(stand_in(key, &file));
            }
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

    /// Brings the folder `pick` chooses up to the `*.wasm` files of `dir` (a
    /// missing `dir` holds none); `label` prefixes the keys reported. Whether
    /// anything was loaded or removed. Reads and compiles without the state lock,
    /// taking it only to look at and to change the folder.
    fn sync(
        &self,
        trust: &Trust,
        dir: &Path,
        label: &str,
        pick: fn(&mut DirState) -> &mut Folder,
        summary: &mut RescanSummary,
    ) -> bool {
        let files = match plugin_files(dir) {
            Ok(files) => files,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !label.is_empty() => BTreeMap::new(),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read the plugin folder");
                return false;
            }
        };
        let (loaded_before, removed_before) = (summary.loaded.len(), summary.removed.len());
        // What serves and what was refused, as of now: only a rescan changes
        // them, and this is the only one running.
        let (serving, refused) = {
            let mut state = self.lock_state();
            let folder = pick(&mut state);
            let gone: Vec<String> = folder.loaded.keys().filter(|k| !files.contains_key(*k)).cloned().collect();
            for key in gone {
                folder.loaded.remove(&key);
                tracing::info!(plugin = %format!("{label}{key}"), "plugin file removed: unloaded");
                summary.removed.push(format!("{label}{key}"));
            }
            folder.failures.retain(|k, _| files.contains_key(k));
            let serving: BTreeMap<String, String> =
                folder.loaded.iter().map(|(k, (fingerprint, _))| (k.clone(), fingerprint.clone())).collect();
            let refused: BTreeMap<String, Option<String>> =
                folder.failures.iter().map(|(k, (fingerprint, _))| (k.clone(), fingerprint.clone())).collect();
            (serving, refused)
        };
        let keys = trust.keys.required().then(|| trust.keys.fingerprint());
        for (key, path) in files {
            let previous_serves = serving.contains_key(&key);
            let bytes = match read_settled(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    let failure = LoadFailure {
                        file: path.display().to_string(),
                        error: format!("cannot read: {e}"),
                        previous_serves,
                    };
                    pick(&mut self.lock_state()).failures.insert(key, (None, failure.clone()));
                    summary.failed.push(failure);
                    continue;
                }
            };
            let sha = hex::encode(Sha256::digest(&bytes));
            // Read once: the settings the plugin gets are the bytes the signature was checked over.
            let beside = keys.as_ref().map(|_| Beside::read(&path));
            let settings = settings_of(&self.dir, trust, &key, &path, beside.as_ref());
            // What was loaded, or refused, is the plugin's bytes with its settings,
            // and, when signatures are required, its signature and the keys trusted.
            let mut fingerprint = match &settings {
                Ok(s) => format!("{sha}:{}", hex::encode(Sha256::digest(s.json.as_bytes()))),
                Err(e) => format!("{sha}:{e}"),
            };
            if let (Some(beside), Some(keys)) = (&beside, &keys) {
                fingerprint = format!("{fingerprint}:{}:{keys}", beside.fingerprint());
            }
            if serving.get(&key) == Some(&fingerprint) {
                // Back to what serves (a refused change undone): nothing failed any more.
                pick(&mut self.lock_state()).failures.remove(&key);
                continue;
            }
            // The same bytes were refused already: compiling them again would fail again.
            if refused.get(&key).is_some_and(|refused| refused.as_deref() == Some(fingerprint.as_str())) {
                continue;
            }
            let shown = format!("{label}{key}");
            let compiling = Compiling {
                key: shown.clone(),
                file: path.display().to_string(),
                since: chrono::Utc::now().to_rfc3339(),
            };
            self.lock_state().compiling.insert(shown.clone(), compiling);
            let loaded = settings.and_then(|settings| {
                if let Some(beside) = &beside {
                    trust.keys.verify_beside(beside, &bytes).map_err(|e| e.to_string())?;
                }
                let plugin = self.engine.load_with_settings(&key, &bytes, &settings.json).map_err(|e| e.to_string())?;
                let compiled = plugin.compiled();
                let mut loaded = loaded_policy(key.as_str().into(), &path, &sha, Arc::new(plugin));
                loaded.report.settings = settings.source;
                loaded.report.compiled = Some(compiled);
                Ok(loaded)
            });
            let mut state = self.lock_state();
            state.compiling.remove(&shown);
            let folder = pick(&mut state);
            match loaded {
                Ok(loaded) => {
                    tracing::info!(plugin = %shown, name = %loaded.report.name, version = %loaded.report.version,
                        contract = %loaded.report.wit, sha256 = %sha, settings = ?loaded.report.settings,
                        compiled = ?loaded.report.compiled, hooks = ?loaded.report.hooks, "plugin loaded");
                    folder.failures.remove(&key);
                    folder.loaded.insert(key, (fingerprint, loaded));
                    summary.loaded.push(shown);
                }
                Err(e) => {
                    let keeps = if previous_serves {
                        "the previous version keeps serving"
                    } else if label.is_empty() {
                        "not loaded: every decision it takes part in is refused until it loads"
                    } else {
                        "not loaded"
                    };
                    tracing::error!(plugin = %shown, file = %path.display(), error = %e, "plugin refused; {keeps}");
                    crate::metrics::plugin_failure(&shown, "load");
                    let failure = LoadFailure {
                        file: path.display().to_string(),
                        error: format!("{e} (sha256 {})", &sha[..12]),
                        previous_serves,
                    };
                    folder.failures.insert(key, (Some(fingerprint), failure.clone()));
                    summary.failed.push(failure);
                }
            }
        }
        summary.loaded.len() > loaded_before || summary.removed.len() > removed_before
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
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_toml(path, &bytes)
    }

    /// Settings from the bytes of the TOML file `path`, already read (for a
    /// signed plugin: the very bytes its signature was checked over).
    pub fn from_toml(path: &Path, bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("{} is not valid TOML: {e}", path.display()))?;
        let value: serde_json::Value =
            toml::from_str(text).map_err(|e| format!("{} is not valid TOML: {}", path.display(), e.message()))?;
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
        compiled: None,
        stand_in: false,
    };
    LoadedPolicy { key, policy, report, shadow: None }
}

/// The refusing stand-in for the active plugin `key`, which failed to load from `file`.
fn stand_in(key: &str, file: &str) -> LoadedPolicy {
    let mut loaded = loaded_policy(key.into(), Path::new(file), "", Arc::new(StandIn::new(key)));
    loaded.report.stand_in = true;
    loaded
}

/// The settings of the plugin `key` of the folder `dir` loaded from `wasm`: its `.toml` beside it
/// (the bytes `beside` read, when signatures are checked), or its table in
/// eligo's configuration, or none.
fn settings_of(dir: &Path, trust: &Trust, key: &str, wasm: &Path, beside: Option<&Beside>) -> Result<Settings, String> {
    let file = wasm.with_extension("toml");
    let read = match beside {
        Some(beside) => beside.settings().map(|bytes| bytes.map(<[u8]>::to_vec)).map_err(|e| e.to_string()),
        None => read_if_present(&file).map_err(|e| e.to_string()),
    };
    let bytes = read.map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let table = trust.configured.get(key);
    // A candidate's own file wins; without one it runs with the active plugin's table.
    let candidate = wasm.parent() != Some(dir);
    match (bytes, table) {
        (Some(_), Some(_)) if !candidate => {
            Err(format!("configured twice, by {} and by [plugins.config.{key}]: keep one", file.display()))
        }
        (Some(bytes), _) => Settings::from_toml(&file, &bytes),
        (None, Some(table)) => Ok(Settings {
            json: crate::protocol::canonical_json(table),
            source: Some(format!("[plugins.config.{key}]")),
        }),
        (None, None) => Ok(Settings::none()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// With signatures required, the settings a plugin loads with are those its
    /// signature was checked over, even if the file changed after it was read.
    #[test]
    fn settings_are_parsed_from_the_bytes_read_beside_the_plugin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wasm = dir.path().join("20-router.wasm");
        std::fs::write(&wasm, b"wasm").expect("wasm");
        std::fs::write(wasm.with_extension("toml"), "max_workers_per_job = 2\n").expect("settings");
        let beside = Beside::read(&wasm);
        std::fs::write(wasm.with_extension("toml"), "max_workers_per_job = 200\n").expect("changed after reading");
        let trust = Trust::default();
        let settings = settings_of(dir.path(), &trust, "20-router", &wasm, Some(&beside)).expect("settings");
        assert_eq!(settings.json, r#"{"max_workers_per_job":2}"#);
        let unsigned = settings_of(dir.path(), &trust, "20-router", &wasm, None).expect("settings");
        assert_eq!(unsigned.json, r#"{"max_workers_per_job":200}"#, "without a signature, the file as it is now");
    }
}
