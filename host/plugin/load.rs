//! Loading a plugin: compiling a component on the [`PluginEngine`], checking which
//! version of the contract it speaks, and making the [`WasmPlugin`] that runs it.
//!
//! Apart from `engine.rs` because a loaded plugin keeps a handle on its engine:
//! with loading in the engine's file, the two files would lean on each other.

use super::bindings::{v0_1, PolicyPre, DECISIONS_INTERFACE};
use super::cache::Compiled;
use super::engine::{LoadError, PluginEngine};
use super::wasm::{Contract, WasmPlugin, NO_SETTINGS};
use wasmtime::component::Component;
use wasmtime::Engine;

impl PluginEngine {
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
        let (component, compiled) = self.compile(name, bytes)?;
        let version = check_contract(&self.engine, &component)?;
        let link = |e: wasmtime::Error| LoadError::Link(format!("{e:#}"));
        let pre = self.linker.instantiate_pre(&component).map_err(link)?;
        let contract = match version {
            Version::V0_1 => Contract::V0_1(v0_1::PolicyPre::new(pre).map_err(link)?),
            Version::Current => Contract::Current(PolicyPre::new(pre).map_err(link)?),
        };
        WasmPlugin::new(self.clone(), name, contract, settings, compiled)
    }

    /// The component of `bytes`: from the cache of compiled plugins if it holds
    /// them, else compiled now (and kept there).
    fn compile(&self, name: &str, bytes: &[u8]) -> Result<(Component, Compiled), LoadError> {
        if let Some(component) = self.cache.as_ref().and_then(|cache| cache.get(&self.engine, bytes)) {
            return Ok((component, Compiled::Cache));
        }
        if let Some(hook) = &self.before_compile {
            hook(name);
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        if let Some(cache) = &self.cache {
            cache.put(&component, bytes);
        }
        Ok((component, Compiled::Fresh))
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
