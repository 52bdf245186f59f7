//! The wasmtime engine every plugin runs on, and the limits of each call.
//! Loading a plugin on it ([`PluginEngine::load`]) is in `load.rs`, so that this
//! file, which every loaded plugin leans on, leans on no plugin.

use super::bindings::{v0_1, Policy as PolicyWorld};
use super::cache::ComponentCache;
use super::host_state::HostState;
use super::limits::Limits;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances for `limits`: a tenth of the call deadline,
/// between 10 and 100 ms. The deadline is a backstop (fuel is the precise
/// limit), so a coarse tick costs nothing in precision that matters, and an idle
/// server wakes ten times a second rather than hundreds.
pub fn epoch_tick(limits: &Limits) -> Duration {
    Duration::from_millis((limits.deadline_ms / 10).clamp(10, 100))
}

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
    /// How often the epoch advances; deadlines are counted in it.
    pub(crate) tick: Duration,
    /// Where compiled plugins are kept between loads, if anywhere.
    pub(crate) cache: Option<Arc<ComponentCache>>,
    /// Called with a plugin's name before it is compiled afresh (tests hold a
    /// compile with it).
    pub(crate) before_compile: Option<BeforeCompile>,
}

/// What [`PluginEngine`]'s `before_compile` calls with a plugin's name.
pub(crate) type BeforeCompile = Arc<dyn Fn(&str) + Send + Sync>;

/// The pooling allocator's sizes: fixed but for the memory cap.
const POOLED_INSTANCES: u32 = 512;

impl PluginEngine {
    /// Builds the engine with the pooling allocator, fuel and epoch interruption.
    pub fn new(limits: Limits) -> anyhow::Result<Self> {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(POOLED_INSTANCES)
            .total_core_instances(POOLED_INSTANCES)
            .total_memories(POOLED_INSTANCES)
            .total_tables(POOLED_INSTANCES)
            .max_memory_size(pooled_memory(&limits));
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
        let tick = epoch_tick(&limits);
        start_epoch_ticker(&engine, tick);
        Ok(PluginEngine { engine, linker: Arc::new(linker), limits, tick, cache: None, before_compile: None })
    }

    /// Keeps compiled plugins in `dir` (made with mode 0700 if missing) and loads
    /// them from there when the same bytes are loaded again. See `cache.rs` for
    /// why code from that folder, and only from it, is trusted. On an error the
    /// engine goes on without a cache.
    pub fn use_cache(&mut self, dir: &Path) -> std::io::Result<()> {
        let cache = ComponentCache::open(dir, &self.engine, &self.codegen_settings())?;
        self.cache = Some(Arc::new(cache));
        Ok(())
    }

    /// Calls `hook` with a plugin's name before each fresh compile, on the
    /// compiling thread: for tests that need a compile to take its time.
    #[doc(hidden)]
    pub fn with_compile_hook(mut self, hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.before_compile = Some(Arc::new(hook));
        self
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Every setting of [`new`](Self::new) that changes the code wasmtime makes,
    /// spelled out for the cache's key. wasmtime's own compatibility hash should
    /// cover them; naming them too costs nothing and survives a wasmtime that
    /// hashes less.
    fn codegen_settings(&self) -> String {
        format!(
            "component-model consume-fuel={} epoch-interruption=true pooling instances={POOLED_INSTANCES} \
             max-memory-size={} target={}-{}",
            self.limits.fuel > 0,
            pooled_memory(&self.limits),
            std::env::consts::ARCH,
            std::env::consts::OS,
        )
    }
}

/// The largest memory the pooling allocator reserves a slot for.
fn pooled_memory(limits: &Limits) -> usize {
    limits.memory_bytes.max(1 << 20)
}

/// Advances the engine's epoch every `tick` until the engine is dropped.
fn start_epoch_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("eligo-epoch".into()).spawn(move || loop {
        std::thread::sleep(tick);
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
