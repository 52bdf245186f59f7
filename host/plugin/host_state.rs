//! What a plugin's store holds: its memory limiter and the `host` imports.

use super::bindings::eligo::policy::{host, types};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

/// Per-store data of one plugin instance.
pub struct HostState {
    pub(crate) plugin: Arc<str>,
    pub(crate) memory: MemoryLimiter,
    pub(crate) log: Arc<LogBudget>,
    /// WASI for a plugin that imports it, made at its first WASI call.
    wasi: Option<(WasiCtx, ResourceTable)>,
}

impl HostState {
    pub(crate) fn new(plugin: Arc<str>, memory_bytes: usize, log: Arc<LogBudget>) -> Self {
        HostState { plugin, memory: MemoryLimiter::new(memory_bytes), log, wasi: None }
    }
}

/// WASI that denies everything a policy must not depend on: no files (no
/// preopened folder), no network (every address refused, no name lookup), no
/// environment or arguments, stdio closed, and clocks frozen at zero (time is an
/// argument of the hooks). Randomness is left: it is no channel out. This is
/// what lets components from other languages (whose runtimes import WASI) load.
fn deny_all_wasi() -> WasiCtx {
    WasiCtx::builder().wall_clock(FrozenClock).monotonic_clock(FrozenClock).allow_ip_name_lookup(false).build()
}

/// A clock that always reads zero.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (ctx, table) = self.wasi.get_or_insert_with(|| (deny_all_wasi(), ResourceTable::new()));
        WasiCtxView { ctx, table }
    }
}

/// Caps linear memory and remembers the peak and whether growth was refused.
pub struct MemoryLimiter {
    cap: usize,
    pub(crate) peak: usize,
    pub(crate) refused: bool,
}

impl MemoryLimiter {
    fn new(cap: usize) -> Self {
        MemoryLimiter { cap, peak: 0, refused: false }
    }

    /// The cap in bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.refused = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A token bucket for one plugin's log lines, shared by all its instances.
pub struct LogBudget {
    per_second: u32,
    state: Mutex<(f64, Instant)>,
    /// Lines dropped because the budget was spent.
    pub dropped: AtomicU64,
}

impl LogBudget {
    /// A budget of `per_second` lines a second, with a burst of as many.
    pub fn new(per_second: u32) -> Self {
        LogBudget { per_second, state: Mutex::new((per_second as f64, Instant::now())), dropped: AtomicU64::new(0) }
    }

    fn take(&self) -> bool {
        let Ok(mut state) = self.state.lock() else { return false };
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second as f64).min(self.per_second as f64);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Longest log line kept from a plugin; the rest is cut.
const MAX_LOG_LINE: usize = 1024;

impl host::Host for HostState {
    fn log(&mut self, level: types::Level, message: String) {
        if !self.log.take() {
            return;
        }
        let message = truncate(&message, MAX_LOG_LINE);
        let plugin = &*self.plugin;
        match level {
            types::Level::Debug => tracing::debug!(plugin, "{message}"),
            types::Level::Info => tracing::info!(plugin, "{message}"),
            types::Level::Warn => tracing::warn!(plugin, "{message}"),
            types::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl types::Host for HostState {}

// A 0.1.0 plugin logs through the same budget.
impl super::bindings::v0_1::eligo::policy::host::Host for HostState {
    fn log(&mut self, level: types::Level, message: String) {
        host::Host::log(self, level, message)
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
