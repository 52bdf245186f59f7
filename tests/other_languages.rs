//! A policy written in Python (`examples/python-policy`, built with
//! componentize-py from PyPI) loads under the deny-all WASI eligo offers,
//! passes its cases, sees nothing of the machine, and decides in a running server.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::backends::{Backends, Kind};
use support::server::{job, solution, welcome, Server};

/// componentize-py: `ELIGO_COMPONENTIZE_PY`, the venv scripts/test makes, or the PATH.
fn componentize_py() -> PathBuf {
    let venv = support::root().join("target/venv/bin/componentize-py");
    let found = std::env::var_os("ELIGO_COMPONENTIZE_PY").map(PathBuf::from).or_else(|| venv.is_file().then_some(venv));
    let tool = found.unwrap_or_else(|| PathBuf::from("componentize-py"));
    let works = Command::new(&tool).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(works, "componentize-py is missing: `pip install componentize-py` (scripts/test puts it in target/venv)");
    tool
}

/// Builds the example into a component (in this test's folder).
fn build(dir: &std::path::Path) -> PathBuf {
    let out = dir.join("py-min-target.wasm");
    let example = support::root().join("examples/python-policy");
    let status = Command::new(componentize_py())
        .arg("-d")
        .arg(support::root().join("wit"))
        .args(["-w", "policy", "componentize", "-p"])
        .arg(&example)
        .arg("app")
        .arg("-o")
        .arg(&out)
        .status()
        .expect("running componentize-py");
    assert!(status.success(), "componentize-py failed");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_policy_loads_passes_its_cases_and_decides_in_a_running_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let component = build(tmp.path());
    let size = std::fs::metadata(&component).expect("built").len();

    let started = Instant::now();
    let file = eligo::plugin::runner::CaseFile::read(&support::root().join("examples/python-policy/cases.json"))
        .expect("cases");
    let (plugin, _) = file.load(&component, std::path::Path::new("cases.json"), None).expect("loads");
    let loaded_in = started.elapsed();
    assert_eq!(eligo::plugin::Policy::contract(&plugin), "eligo:policy@0.2.0");
    let outcomes = eligo::plugin::runner::run_cases(Arc::new(plugin), &file);
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.mismatches.is_empty()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    println!("python policy: {size} bytes, loaded in {loaded_in:?}");

    // In a server: a solution under its job's target is invalid and reaches no node.
    let server = Server::start_on(Backends::new(Kind::Embedded).await, &[], None).await;
    let policies = server.backends.dir().join("policies");
    std::fs::copy(&component, policies.join("20-py-min-target.wasm")).expect("drop it in");
    for _ in 0..600 {
        if server.running.plugins.reports().iter().any(|r| r.name == "py-min-target") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        server.running.plugins.reports().iter().any(|r| r.name == "py-min-target"),
        "loaded: {:?}, failed: {:?}",
        server.running.plugins.reports(),
        server.running.plugins.failures()
    );
    let mut worker = support::ws::Client::connect(server.running.worker_addr.expect("workers")).await;
    worker.send(&welcome("hw-py")).await;
    let mut node = server.node().await;
    node.send(&job(50, 5)).await;
    let task = worker.recv("the job").await["task_id"].as_str().expect("task").to_string();
    worker.send(&solution(&task, 1, 3)).await;
    worker.send(&solution(&task, 2, 7)).await;
    let got = node.recv("the valid solution").await;
    assert_eq!(got["partial_solution"]["nonce"], 2, "{got}");
    node.assert_quiet("the invalid one never comes").await;
    server.stop().await;
}
