//! Process-wide counters and gauges, rendered in the Prometheus text format.
//!
//! Deliberately small: a name plus sorted labels identifies a series; values are
//! atomics, so recording is a map look-up and an add.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

type Series = BTreeMap<(String, Vec<(String, String)>), Arc<AtomicI64>>;

fn registry() -> &'static Mutex<Series> {
    static REGISTRY: OnceLock<Mutex<Series>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The value cell of a series, created at zero.
pub fn series(name: &str, labels: &[(&str, &str)]) -> Arc<AtomicI64> {
    let key = (name.to_string(), labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    let Ok(mut registry) = registry().lock() else { return Arc::new(AtomicI64::new(0)) };
    registry.entry(key).or_default().clone()
}

/// Adds `n` to a counter or gauge.
pub fn add(name: &str, labels: &[(&str, &str)], n: i64) {
    series(name, labels).fetch_add(n, Ordering::Relaxed);
}

/// Reads a series (0 if it was never recorded).
pub fn get(name: &str, labels: &[(&str, &str)]) -> i64 {
    series(name, labels).load(Ordering::Relaxed)
}

/// Counts a plugin call that failed closed, or a plugin that failed to load.
pub fn plugin_failure(plugin: &str, kind: &str) {
    add("eligo_plugin_failures_total", &[("plugin", plugin), ("kind", kind)], 1);
}

/// Every series, in the Prometheus text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    let Ok(registry) = registry().lock() else { return out };
    for ((name, labels), value) in registry.iter() {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('"', "\\\""))).collect();
        let _ = if labels.is_empty() {
            writeln!(out, "{name} {}", value.load(Ordering::Relaxed))
        } else {
            writeln!(out, "{name}{{{}}} {}", labels.join(","), value.load(Ordering::Relaxed))
        };
    }
    out
}
