//! The plugin runtime against the real plugins built from `plugins/`: fixture
//! cases, contract checks, limits and hot reload.

mod support;

use eligo::authoring::runner;
use eligo::plugin::{
    Job, JobSubmission, Limits, LoadError, NodeState, PluginEngine, PluginHost, Policy, PolicySet, Welcome, WorkerState,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{plugin_bytes, plugin_path, root};

fn engine() -> PluginEngine {
    PluginEngine::new(Limits::default()).expect("engine")
}

fn submission(height: i64) -> JobSubmission {
    JobSubmission { block_height: height, proof_target: 1, epoch_challenge: "{}".into() }
}

fn welcome(hardware: &str, caption: &str) -> Welcome {
    Welcome {
        ip: "10.0.0.1".into(),
        address: "aleo1xyz".into(),
        hardware: hardware.into(),
        hardware_id: "hw-1".into(),
        caption: caption.into(),
    }
}

#[test]
fn every_shipped_plugin_passes_its_fixture_cases() {
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("plugins")).expect("plugins/") {
        let dir = entry.expect("entry").path();
        let cases = dir.join("cases.json");
        if !cases.is_file() {
            continue;
        }
        let name = dir.file_name().and_then(|n| n.to_str()).expect("name").to_string();
        runner::assert_cases(plugin_path(&name), &cases);
        checked += 1;
    }
    assert!(checked >= 4, "expected fixture cases for every plugin, found {checked}");
}

#[test]
fn a_plugin_built_against_another_contract_version_is_refused_with_both_versions_named() {
    let mut bytes = plugin_bytes("seed-rules");
    let from = b"eligo:policy/decisions@0.2.0";
    let to = b"eligo:policy/decisions@0.9.0";
    let mut patched = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            patched += 1;
        }
        i += 1;
    }
    assert!(patched > 0, "the component names its exported interface");
    match engine().load("old", &bytes) {
        Err(LoadError::IncompatibleVersion { found, expected }) => {
            assert_eq!(found, "eligo:policy/decisions@0.9.0");
            assert_eq!(expected, "eligo:policy/decisions@0.2.0");
        }
        Err(other) => panic!("expected a version refusal, got: {other}"),
        Ok(_) => panic!("a plugin of another contract version was loaded"),
    }
}

#[test]
fn truncated_and_foreign_files_are_refused() {
    let bytes = plugin_bytes("seed-rules");
    let half = &bytes[..bytes.len() / 2];
    assert!(matches!(engine().load("half", half), Err(LoadError::Invalid(_))));
    assert!(matches!(engine().load("text", b"hello"), Err(LoadError::Invalid(_))));
    // What `cargo build` leaves before the module is made a component: said so.
    let core = std::fs::read(root().join("target/wasm/wasm32-unknown-unknown/release/seed_rules.wasm"))
        .expect("the core module `cargo xtask plugins` built");
    match engine().load("core", &core) {
        Err(e @ LoadError::CoreModule) => assert!(e.to_string().contains("cargo component build"), "{e}"),
        Err(other) => panic!("expected a core-module refusal, got {other}"),
        Ok(_) => panic!("a core module loaded"),
    }
}

/// Each misbehaviour fails closed, within the deadline (plus scheduling slack),
/// and the plugin keeps answering afterwards.
#[test]
fn loops_memory_bombs_and_traps_fail_closed_and_the_host_keeps_serving() {
    let limits = Limits { deadline_ms: 100, ..Limits::default() };
    let engine = PluginEngine::new(limits).expect("engine");
    let plugin = engine.load("misbehave", &plugin_bytes("testing-misbehave")).expect("loads");
    for (height, kind) in [(1, "deadline|fuel"), (2, "memory"), (3, "trap"), (4, "bad_output")] {
        let started = Instant::now();
        let decision = plugin.admit_job(&submission(height), &[], 0);
        let elapsed = started.elapsed();
        let error = decision.expect_err("a misbehaving call must not succeed");
        assert!(kind.split('|').any(|k| k == error.kind()), "height {height}: expected {kind}, got {error}");
        assert!(elapsed < Duration::from_secs(2), "height {height} took {elapsed:?}");
        let after = plugin.admit_job(&submission(5), &[], 0).expect("the plugin still answers");
        assert_eq!(after.expect_err("refuses"), "misbehave refuses everything");
    }
    assert!(eligo::metrics::get("eligo_plugin_failures_total", &[("plugin", "misbehave"), ("kind", "trap")]) >= 1);
}

#[test]
fn a_plugin_that_exceeds_its_output_bound_in_a_batch_call_fails_closed() {
    let plugin = engine().load("misbehave", &plugin_bytes("testing-misbehave")).expect("loads");
    let job = Job { task_id: "t".into(), block_height: 4, proof_target: 1, epoch_challenge: "{}".into() };
    let none = eligo::plugin::Workers { profiles: Vec::new(), states: Vec::new() };
    let error = plugin.offer_job(&job, &[], &none, 0).expect_err("4 million deliveries for no worker");
    assert!(matches!(error.kind(), "memory" | "bad_output"), "got {error}");
}

#[test]
fn a_plugin_failing_in_a_set_denies_rather_than_allows() {
    let engine = engine();
    let seed: Arc<dyn Policy> = Arc::new(engine.load("seed", &plugin_bytes("seed-rules")).expect("seed"));
    let bad: Arc<dyn Policy> = Arc::new(engine.load("bad", &plugin_bytes("testing-misbehave")).expect("bad"));
    let set = PolicySet::new(vec![
        eligo::plugin::loaded_policy("10-seed".into(), std::path::Path::new(""), "", seed),
        eligo::plugin::loaded_policy("20-bad".into(), std::path::Path::new(""), "", bad),
    ]);
    let mut node = NodeState::default();
    let refusal = set.admit_job(&submission(3), &mut node, 0).expect_err("a trapping plugin refuses");
    assert_eq!(refusal.plugin, "20-bad");
    assert!(refusal.reason.contains("failed closed"), "{refusal}");
    assert!(node.state_of("10-seed").is_empty(), "a refused job leaves the node's state alone");
}

#[test]
fn tag_router_caps_each_job_and_rotates_who_gets_it() {
    let engine = engine();
    let router: Arc<dyn Policy> = Arc::new(engine.load("router", &plugin_bytes("tag-router")).expect("router"));
    let set = PolicySet::new(vec![eligo::plugin::loaded_policy("router".into(), std::path::Path::new(""), "", router)]);
    let mut workers: Vec<WorkerState> =
        (0..300).map(|_| set.admit_worker(&welcome("NVIDIA H100", "+dc1"), 0).expect("admitted")).collect();
    let mut first = None;
    for height in [1_i64, 2] {
        let job = Job {
            task_id: format!("t{height}"),
            block_height: height,
            proof_target: 1 << 21,
            epoch_challenge: "{}".into(),
        };
        let mut refs: Vec<&mut WorkerState> = workers.iter_mut().collect();
        let chosen = set.offer_job(&job, &mut refs, 0);
        assert_eq!(chosen.len(), 256, "at most 256 workers get a job");
        match &first {
            None => first = Some(chosen),
            Some(f) => assert_ne!(f, &chosen, "the next height goes to a different selection"),
        }
    }
}

#[test]
fn composition_needs_every_plugin_to_offer_and_keeps_state_only_on_delivery() {
    let engine = engine();
    let seed: Arc<dyn Policy> = Arc::new(engine.load("seed", &plugin_bytes("seed-rules")).expect("seed"));
    let router: Arc<dyn Policy> = Arc::new(engine.load("router", &plugin_bytes("tag-router")).expect("router"));
    let set = PolicySet::new(vec![
        eligo::plugin::loaded_policy("10-seed".into(), std::path::Path::new(""), "", seed),
        eligo::plugin::loaded_policy("20-router".into(), std::path::Path::new(""), "", router),
    ]);
    let mut cpu = set.admit_worker(&welcome("EPYC", ""), 0).expect("cpu");
    let mut gpu = set.admit_worker(&welcome("RTX 4090", ""), 0).expect("gpu");
    let heavy = Job { task_id: "h".into(), block_height: 10, proof_target: 1 << 20, epoch_challenge: "{}".into() };
    let chosen = set.offer_job(&heavy, &mut [&mut cpu, &mut gpu], 0);
    assert_eq!(chosen, vec![1], "seed-rules offers both, the router only the GPU");
    assert_eq!(gpu.state_of("10-seed"), Some(10));
    assert_eq!(cpu.state_of("10-seed"), Some(i64::MIN as u64), "the CPU worker did not get height 10");
    let light = Job { task_id: "l".into(), block_height: 10, proof_target: 5, epoch_challenge: "{}".into() };
    assert_eq!(set.offer_job(&light, &mut [&mut cpu, &mut gpu], 0), vec![0], "height 10 is new to the CPU worker only");
}

#[test]
fn run_hook_reports_the_decision_and_its_cost() {
    let plugin = eligo::plugin::load_file(plugin_path("seed-rules")).expect("loads");
    let input = serde_json::json!({
        "job": { "task_id": "t", "block_height": 5, "proof_target": 1, "epoch_challenge": "{}" },
        "profiles": [ { "tags": [], "limits": [] } ],
        "workers": { "profiles": [0, 0], "states": [4, 5] },
    });
    let (decision, cost) = runner::run_hook(&plugin, "offer-job", input).expect("runs");
    assert_eq!(decision, serde_json::json!({ "workers": [0], "states": [5] }));
    assert!(cost.fuel > 0 && cost.memory_bytes > 0);
    let error = runner::run_hook(&plugin, "offer-jobs", serde_json::json!({})).expect_err("unknown hook");
    assert!(error.to_string().contains("unknown hook"));
}

/// Replaces the plugin file while calls run on other threads: no call fails, new
/// decisions follow the new plugin, a half-written file is never loaded, and a
/// broken file leaves the last good plugin serving.
#[test]
fn hot_reload_swaps_plugins_under_load_without_a_failed_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("10-policy.wasm");
    std::fs::write(&file, plugin_bytes("seed-rules")).expect("write");
    let host = PluginHost::open(engine(), dir.path()).expect("open");
    let _watch = host.watch(Duration::from_millis(150)).expect("watch");
    let mut generation = host.generation();
    assert_eq!(host.reports().len(), 1);
    assert_eq!(host.reports()[0].name, "seed-rules");

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (host, stop, calls) = (host.clone(), stop.clone(), calls.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut node = NodeState::default();
                    match host.current().admit_job(&submission(5), &mut node, 0) {
                        Ok(_) => {}
                        Err(r) if r.reason == "misbehave refuses everything" => {}
                        Err(r) => failures.push(r.to_string()),
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect();

    // Write the new plugin in two halves, like a slow copy.
    let new = plugin_bytes("testing-misbehave");
    std::fs::write(&file, &new[..new.len() / 2]).expect("first half");
    std::thread::sleep(Duration::from_millis(40));
    std::fs::write(&file, &new).expect("whole file");
    wait_for(&mut generation, || host.reports().first().is_some_and(|r| r.name == "testing-misbehave"));
    let refusal = host.current().admit_job(&submission(5), &mut NodeState::default(), 0).expect_err("new rules");
    assert_eq!(refusal.reason, "misbehave refuses everything");

    // A broken file: the misbehave plugin keeps serving, the failure is reported.
    std::fs::write(&file, b"\0asm garbage").expect("garbage");
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.failures().is_empty() {
        assert!(Instant::now() < deadline, "the broken file was never reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(host.reports()[0].name, "testing-misbehave");
    assert!(host.failures()[0].error.contains("not a valid WebAssembly component"), "{:?}", host.failures());
    // Refused bytes are not compiled again when the folder is read again.
    let refusals = || eligo::metrics::get("eligo_plugin_failures_total", &[("plugin", "10-policy"), ("kind", "load")]);
    let before = refusals();
    let summary = host.rescan();
    assert!(summary.failed.is_empty() && summary.loaded.is_empty(), "{summary:?}");
    assert_eq!(refusals(), before, "the same broken file was compiled again");
    assert_eq!(host.failures().len(), 1, "the failure is still reported");

    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        let failures = caller.join().expect("caller");
        assert!(failures.is_empty(), "calls failed during reload: {failures:?}");
    }
    assert!(calls.load(Ordering::Relaxed) > 100, "the callers really ran");
}

fn wait_for(generation: &mut tokio::sync::watch::Receiver<u64>, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "the plugin was not reloaded");
        let _ = generation.has_changed();
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn worker_state_survives_a_reload_of_the_same_plugin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("seed.wasm");
    std::fs::write(&file, plugin_bytes("seed-rules")).expect("write");
    let host = PluginHost::open(engine(), dir.path()).expect("open");
    let mut worker = host.current().admit_worker(&welcome("cpu", ""), 0).expect("admitted");
    let job = Job { task_id: "t".into(), block_height: 8, proof_target: 1, epoch_challenge: "{}".into() };
    assert_eq!(host.current().offer_job(&job, &mut [&mut worker], 0), vec![0]);
    // The same rules, rebuilt (different bytes): the height shield must hold across the reload.
    let mut bytes = plugin_bytes("seed-rules");
    // A trailing custom section: same code, different sha256.
    bytes.extend_from_slice(&[0, 10, 5, b'e', b'l', b'i', b'g', b'o', 1, 2, 3, 4]);
    std::fs::write(&file, &bytes).expect("rewrite");
    let summary = host.rescan();
    assert_eq!(summary.loaded, vec!["seed".to_string()], "{summary:?}");
    assert_eq!(host.current().offer_job(&job, &mut [&mut worker], 0), Vec::<usize>::new());
}

/// A plugin folder mounted from a Kubernetes ConfigMap: the kubelet writes each
/// version into a timestamped folder, points `..data` at it by renaming a new
/// symlink over the old, and the plugin files are symlinks through `..data`.
/// An update is one rename in the folder: it reloads like any file change.
#[test]
fn a_plugin_folder_mounted_from_a_config_map_reloads_when_the_map_changes() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("tempdir");
    let version = |name: &str, plugin: &str| {
        let folder = dir.path().join(name);
        std::fs::create_dir(&folder).expect("a version folder");
        std::fs::write(folder.join("10-policy.wasm"), plugin_bytes(plugin)).expect("the plugin");
    };
    version("..2026_12_06_01_00_00.000000001", "seed-rules");
    symlink("..2026_12_06_01_00_00.000000001", dir.path().join("..data")).expect("..data");
    symlink("..data/10-policy.wasm", dir.path().join("10-policy.wasm")).expect("the file's link");
    let host = PluginHost::open(engine(), dir.path()).expect("open");
    let _watch = host.watch(Duration::from_millis(150)).expect("watch");
    let mut generation = host.generation();
    assert_eq!(host.reports().iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["seed-rules"]);

    // The kubelet's update: a new version folder, a new link renamed over `..data`.
    version("..2026_12_06_01_05_00.000000002", "testing-misbehave");
    symlink("..2026_12_06_01_05_00.000000002", dir.path().join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("the swap");
    std::fs::remove_dir_all(dir.path().join("..2026_12_06_01_00_00.000000001")).expect("the old version goes");
    wait_for(&mut generation, || host.reports().first().is_some_and(|r| r.name == "testing-misbehave"));
    assert_eq!(host.reports().len(), 1, "the hidden version folders are not plugins: {:?}", host.reports());
    assert!(host.failures().is_empty(), "{:?}", host.failures());
}
