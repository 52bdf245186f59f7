//! The wasmtime engine every plugin runs on, and the limits of each call.

use super::bindings::{v0_1, Policy as PolicyWorld, PolicyPre, DECISIONS_INTERFACE};
use super::host_state::HostState;
use super::wasm::{Contract, WasmPlugin, NO_SETTINGS};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Limits applied to every plugin call.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock budget of one call, in milliseconds (epoch interruption).
    pub deadline_ms: u64,
    /// Fuel (roughly, wasm instructions) one call may use; 0 turns fuel off and
    /// leaves the deadline alone to stop runaway plugins (faster: fuel metering
    /// costs every loop iteration a counter update).
    pub fuel: u64,
    /// Linear memory one plugin instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Largest string or state blob passed to or accepted from a plugin, in bytes.
    pub max_blob_bytes: usize,
    /// Most workers or nodes passed to one `offer-*` call.
    pub max_batch: usize,
    /// Log lines per second a plugin may write before they are dropped.
    pub log_lines_per_second: u32,
    /// Idle instances kept per plugin for reuse.
    pub idle_instances: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 100,
            fuel: 200_000_000,
            memory_bytes: 32 << 20,
            max_blob_bytes: 256 << 10,
            max_batch: 200_000,
            log_lines_per_second: 50,
            idle_instances: 8,
        }
    }
}

/// How often the epoch advances; deadlines are rounded up to it.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a valid WebAssembly component (or the file was cut short).
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// The bytes are a core WebAssembly module: built, but not made a component.
    #[error("a core WebAssembly module, not a component: build it with `cargo component build`, or wrap it with `cargo xtask componentize <module> <out>`")]
    CoreModule,
    /// The component is built against another version of the contract.
    #[error("built against {found}; this eligo speaks {expected} (and 0.1.0): rebuild the plugin against wit/ of this eligo")]
    IncompatibleVersion {
        /// What the plugin exports.
        found: String,
        /// What this host expects.
        expected: &'static str,
    },
    /// The component does not export the policy interface at all.
    #[error("exports no {expected} interface (exports: {found}): is this an eligo policy plugin?")]
    NotAPolicy {
        /// What the component exports.
        found: String,
        /// What this host expects.
        expected: &'static str,
    },
    /// The component imports something the host does not provide.
    #[error("imports something eligo does not provide (plugins get eligo:policy/host and a deny-all WASI 0.2): {0}")]
    Link(String),
    /// The component instantiated but its `info` call failed.
    #[error("its info() call failed: {0}")]
    Info(String),
    /// The plugin refused the settings it was given.
    #[error("it refused its settings: {0}")]
    Settings(String),
}

/// The engine, linker and limits shared by all plugins of a host.
///
/// Built once; compiling and instantiating plugins goes through it. An epoch ticker
/// thread runs for as long as the engine lives, so deadlines are enforced without
/// the callers doing anything.
#[derive(Clone)]
pub struct PluginEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<HostState>>,
    pub(crate) limits: Limits,
}

impl PluginEngine {
    /// Builds the engine with the pooling allocator, fuel and epoch interruption.
    pub fn new(limits: Limits) -> anyhow::Result<Self> {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(512)
            .total_core_instances(512)
            .total_memories(512)
            .total_tables(512)
            .max_memory_size(limits.memory_bytes.max(1 << 20));
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(limits.fuel > 0)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        PolicyWorld::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        v0_1::Policy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        // Offered to plugins that import it; a pure plugin never touches it.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        start_epoch_ticker(&engine);
        Ok(PluginEngine { engine, linker: Arc::new(linker), limits })
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compiles, checks and pre-instantiates a plugin with no settings. `name` is
    /// how logs and metrics call it (usually its file name).
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<WasmPlugin, LoadError> {
        self.load_with_settings(name, bytes, NO_SETTINGS)
    }

    /// Like [`load`](Self::load), handing the plugin `settings` (a JSON object as
    /// text) through `configure`; a plugin that refuses them does not load.
    pub fn load_with_settings(&self, name: &str, bytes: &[u8], settings: &str) -> Result<WasmPlugin, LoadError> {
        // A core module's preamble: magic, then version 1 (a component's layer is 1).
        if bytes.starts_with(b"\0asm\x01\0\0\0") {
            return Err(LoadError::CoreModule);
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let version = check_contract(&self.engine, &component)?;
        let link = |e: wasmtime::Error| LoadError::Link(format!("{e:#}"));
        let pre = self.linker.instantiate_pre(&component).map_err(link)?;
        let contract = match version {
            Version::V0_1 => Contract::V0_1(v0_1::PolicyPre::new(pre).map_err(link)?),
            Version::Current => Contract::Current(PolicyPre::new(pre).map_err(link)?),
        };
        WasmPlugin::new(self.clone(), name, contract, settings)
    }
}

/// The contract versions this host binds.
enum Version {
    V0_1,
    Current,
}

/// Which version of the contract a component exports; refuses one whose policy
/// interface is missing or of a version this host does not know.
fn check_contract(engine: &Engine, component: &Component) -> Result<Version, LoadError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
    if exports.iter().any(|e| e == DECISIONS_INTERFACE) {
        return Ok(Version::Current);
    }
    if exports.iter().any(|e| e == v0_1::DECISIONS_INTERFACE) {
        return Ok(Version::V0_1);
    }
    let unversioned = DECISIONS_INTERFACE.split('@').next().unwrap_or(DECISIONS_INTERFACE);
    match exports.iter().find(|e| e.split('@').next() == Some(unversioned)) {
        Some(found) => Err(LoadError::IncompatibleVersion { found: found.clone(), expected: DECISIONS_INTERFACE }),
        None => Err(LoadError::NotAPolicy { found: exports.join(", "), expected: DECISIONS_INTERFACE }),
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("eligo-epoch".into()).spawn(move || loop {
        std::thread::sleep(EPOCH_TICK);
        match weak.upgrade() {
            Some(engine) => engine.increment_epoch(),
            None => return,
        }
    });
    if let Err(e) = spawned {
        // Without the ticker a looping plugin is still stopped by its fuel budget.
        tracing::error!(error = %e, "could not start the plugin epoch ticker; deadlines fall back to fuel");
    }
}
