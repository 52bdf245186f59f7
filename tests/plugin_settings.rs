//! Plugin settings (`eligo:policy@0.2.0`'s `configure`) and the plugins of the
//! previous contract, against the real plugins built from `plugins/`.

mod support;

use eligo::plugin::{
    Job, JobSubmission, Limits, LoadError, NodeState, PluginEngine, PluginHost, Policy, PolicySet, Solution, Welcome,
    WorkerState,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use support::{plugin_bytes, plugin_path};

fn engine() -> PluginEngine {
    PluginEngine::new(Limits::default()).expect("engine")
}

fn welcome(hardware_id: &str, hardware: &str) -> Welcome {
    Welcome {
        ip: "10.0.0.1".into(),
        address: "aleo1xyz".into(),
        hardware: hardware.into(),
        hardware_id: hardware_id.into(),
        caption: "rig".into(),
    }
}

fn job(height: i64, target: u64) -> Job {
    Job { task_id: format!("t{height}"), block_height: height, proof_target: target, epoch_challenge: "{}".into() }
}

/// How many of `n` connected GPU workers `set` offers a job at `height`.
fn offered(set: &PolicySet, n: usize, height: i64, target: u64) -> usize {
    let mut workers: Vec<WorkerState> =
        (0..n).map(|i| set.admit_worker(&welcome(&format!("w{i}"), "rtx"), 0).expect("admitted")).collect();
    let mut refs: Vec<&mut WorkerState> = workers.iter_mut().collect();
    set.offer_job(&job(height, target), &mut refs, 0).len()
}

/// One loaded plugin as the server composes it.
fn single(plugin: eligo::plugin::WasmPlugin) -> PolicySet {
    PolicySet::new(vec![eligo::plugin::loaded_policy("p".into(), std::path::Path::new(""), "", Arc::new(plugin))])
}

fn set_of(host: &PluginHost) -> Arc<PolicySet> {
    host.current()
}

#[test]
fn a_plugin_of_the_previous_contract_loads_and_decides_unchanged() {
    let plugin = engine().load("old", &plugin_bytes("testing-contract-0-1")).expect("a 0.1.0 plugin loads");
    assert_eq!(plugin.contract(), "eligo:policy@0.1.0");
    assert_eq!(plugin.info().name, "testing-contract-0-1");
    let set = single(plugin);
    let refusal = set.admit_worker(&welcome("banned", "cpu"), 0).expect_err("refused");
    assert_eq!(refusal.reason, "banned by a 0.1.0 plugin");
    let mut worker = set.admit_worker(&welcome("ok", "cpu"), 0).expect("admitted");
    assert_eq!(set.offer_job(&job(10, 1), &mut [&mut worker], 0), vec![0]);
    assert_eq!(set.offer_job(&job(9, 1), &mut [&mut worker], 0), Vec::<usize>::new(), "state kept across calls");
    assert_eq!(set.reports()[0].wit, "eligo:policy@0.1.0");
}

#[test]
fn a_plugin_of_the_previous_contract_refuses_settings_it_cannot_take() {
    match engine().load_with_settings("old", &plugin_bytes("testing-contract-0-1"), r#"{"cap":1}"#) {
        Err(LoadError::Settings(reason)) => assert!(reason.contains("0.1.0") && reason.contains("rebuild"), "{reason}"),
        Err(other) => panic!("expected a settings refusal, got {other}"),
        Ok(_) => panic!("a 0.1.0 plugin took settings"),
    }
}

#[test]
fn shipped_policies_take_their_settings_and_refuse_bad_ones_with_a_reason() {
    let bytes = plugin_bytes("tag-router");
    let capped = engine().load_with_settings("tr", &bytes, r#"{"max_workers_per_job":3}"#).expect("loads");
    assert_eq!(capped.settings(), r#"{"max_workers_per_job":3}"#);
    let set = single(capped);
    assert_eq!(offered(&set, 10, 1, 1), 3, "the configured cap");

    let cases = [
        (r#"{"max_workers_per_jobs":3}"#, "unknown field `max_workers_per_jobs`"),
        (r#"{"max_workers_per_job":0}"#, "max_workers_per_job must be at least 1"),
        (r#"{"max_workers_per_job":"many"}"#, "invalid type"),
        (r#"{"rules":[{"min_target":5,"require_any":[]}]}"#, "requires no tag"),
    ];
    for (settings, expected) in cases {
        match engine().load_with_settings("tr", &bytes, settings) {
            Err(LoadError::Settings(reason)) => assert!(reason.contains(expected), "{settings}: {reason}"),
            Err(other) => panic!("{settings}: expected a settings refusal, got {other}"),
            Ok(_) => panic!("{settings} was taken"),
        }
    }
    // A plugin that takes no settings says so.
    let refused = engine().load_with_settings("tc", &plugin_bytes("testing-contract-0-1"), "{}");
    assert!(refused.is_ok(), "no settings are always fine");
}

#[test]
fn tag_rules_route_jobs_by_the_configured_targets_and_tags() {
    let settings = r#"{"rules":[{"min_target":100,"max_target":200,"require_any":["class:cpu"]}]}"#;
    let plugin = engine().load_with_settings("tr", &plugin_bytes("tag-router"), settings).expect("loads");
    let set = single(plugin);
    assert_eq!(offered(&set, 4, 1, 150), 0, "GPU workers are not class:cpu");
    assert_eq!(offered(&set, 4, 1, 1 << 30), 4, "the default GPU-only rule was replaced");
    assert_eq!(offered(&set, 4, 1, 50), 4, "below the rule");
}

#[test]
fn seed_rules_wait_as_long_as_configured_and_pow_check_applies_its_floor() {
    let plugin =
        engine().load_with_settings("seed", &plugin_bytes("seed-rules"), r#"{"wait_minutes":1}"#).expect("loads");
    let set = single(plugin);
    let mut node = NodeState::default();
    let submission = JobSubmission { block_height: 7, proof_target: 5, epoch_challenge: "{}".into() };
    set.admit_job(&submission, &mut node, 0).expect("admitted");
    let solution = Solution {
        task_id: "t7".into(),
        hardware_id: "h".into(),
        caption: "c".into(),
        solution: "{}".into(),
        solution_target: 9,
        unique_key: "1".into(),
    };
    assert_eq!(set.offer_solution(&job(7, 5), &solution, &[&node], 59_000), vec![0]);
    assert!(set.offer_solution(&job(7, 5), &solution, &[&node], 61_000).is_empty(), "waits one minute, not 20");

    let floor = engine()
        .load_with_settings("pow", &plugin_bytes("pow-check"), r#"{"min_target":18446744073709551615}"#)
        .expect("loads");
    let verdict = floor.validate_solution(&job(7, 1), &solution).expect("decides");
    assert!(verdict.expect_err("under the floor").contains("needs 18446744073709551615"));
}

#[test]
fn settings_files_reload_like_plugin_files_and_a_refused_one_keeps_the_previous_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(plugin_path("tag-router"), dir.path().join("20-tag-router.wasm")).expect("copy");
    let toml = dir.path().join("20-tag-router.toml");
    std::fs::write(&toml, "max_workers_per_job = 2\n").expect("write");
    let host = PluginHost::open(engine(), dir.path()).expect("open");
    assert_eq!(offered(&set_of(&host), 5, 1, 1), 2);
    assert_eq!(host.reports()[0].settings.as_deref(), Some(toml.display().to_string().as_str()));

    std::fs::write(&toml, "max_workers_per_job = 4\n").expect("write");
    let summary = host.rescan();
    assert_eq!(summary.loaded, vec!["20-tag-router"], "a settings change reloads the plugin");
    assert_eq!(offered(&set_of(&host), 5, 1, 1), 4);

    std::fs::write(&toml, "max_workers_per_job = 0\n").expect("write");
    let summary = host.rescan();
    assert_eq!(summary.failed.len(), 1);
    assert!(summary.failed[0].error.contains("max_workers_per_job must be at least 1"), "{:?}", summary.failed);
    assert_eq!(host.failures().len(), 1, "listed under failed");
    assert_eq!(offered(&set_of(&host), 5, 1, 1), 4, "the previous version keeps serving");

    std::fs::write(&toml, "max_workers_per_job = [").expect("write");
    let summary = host.rescan();
    assert!(summary.failed[0].error.contains("not valid TOML"), "{:?}", summary.failed);
    assert_eq!(offered(&set_of(&host), 5, 1, 1), 4);

    std::fs::remove_file(&toml).expect("remove");
    host.rescan();
    assert_eq!(offered(&set_of(&host), 5, 1, 1), 5, "no settings: the defaults (256)");
    assert!(host.failures().is_empty());
}

#[test]
fn settings_from_the_configuration_table_and_not_from_two_places() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(plugin_path("tag-router"), dir.path().join("20-tag-router.wasm")).expect("copy");
    let table = BTreeMap::from([("20-tag-router".to_string(), serde_json::json!({ "max_workers_per_job": 1 }))]);
    let host = PluginHost::open_configured(engine(), dir.path(), None, table).expect("open");
    assert_eq!(offered(&set_of(&host), 3, 1, 1), 1);
    assert_eq!(host.reports()[0].settings.as_deref(), Some("[plugins.config.20-tag-router]"));

    std::fs::write(dir.path().join("20-tag-router.toml"), "max_workers_per_job = 2\n").expect("write");
    let summary = host.rescan();
    assert!(summary.failed[0].error.contains("configured twice"), "{:?}", summary.failed);
    assert_eq!(offered(&set_of(&host), 3, 1, 1), 1, "the previous version keeps serving");
}
