//! The wasmtime engine every plugin runs on, and the limits of each call.
//! Loading a plugin on it ([`PluginEngine::load`]) is in `load.rs`, so that this
//! file, which every loaded plugin leans on, leans on no plugin.

use super::bindings::{v0_1, Policy as PolicyWorld};
use super::host_state::HostState;
use crate::config::Limits;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

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
