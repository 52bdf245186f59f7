//! The limits of every plugin call and of the making of every instance: the
//! engine's own settings, read from `[plugins.limits]`.

/// Limits applied to every plugin call, and to the making of every instance.
///
/// Fuel is the precise limit of a plugin's own work: it counts what the plugin
/// did, whatever else the machine was doing. The wall-clock deadlines are a
/// backstop for when fuel is off, set with headroom so that a busy host does not
/// trip them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock budget of one call, in milliseconds (epoch interruption). The
    /// epoch ticks every tenth of it (at least 10 ms, at most 100 ms), and a
    /// deadline is rounded up to whole ticks.
    pub deadline_ms: u64,
    /// Fuel (roughly, wasm instructions) one call may use; 0 turns fuel off and
    /// leaves the deadline alone to stop runaway plugins (faster: fuel metering
    /// costs every loop iteration a counter update).
    pub fuel: u64,
    /// Wall-clock budget of making an instance, in milliseconds: instantiation
    /// and `configure` (for Python and JavaScript, the interpreter's start-up),
    /// and `info()` at load. Every new instance runs `configure`, so this applies
    /// to instances made later too. Generous: loading is off the hot path.
    pub load_deadline_ms: u64,
    /// Fuel the making of an instance may use (as `load_deadline_ms`); 0: no
    /// fuel limit on it, the load deadline alone stops it. Ignored when `fuel`
    /// is 0 (fuel off).
    pub load_fuel: u64,
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
            deadline_ms: 1_000,
            fuel: 200_000_000,
            load_deadline_ms: 30_000,
            load_fuel: 0,
            memory_bytes: 32 << 20,
            max_blob_bytes: 256 << 10,
            max_batch: 200_000,
            log_lines_per_second: 50,
            idle_instances: 8,
        }
    }
}
