//! Policies written in Python (`examples/python-policy`, built with
//! componentize-py from PyPI) and JavaScript (`examples/js-policy`, built with
//! componentize-js from npm) load under the deny-all WASI eligo offers, pass
//! their cases, see nothing of the machine, and decide in a running server.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::backends::{Backends, Kind};
use support::server::{job, solution, welcome, Server};

/// A build tool: `$env_var`, else `local` (where scripts/test installs it), else `name` on the PATH.
fn tool(env_var: &str, local: &str, name: &str, install: &str) -> PathBuf {
    let local = support::root().join(local);
    let found = std::env::var_os(env_var).map(PathBuf::from).or_else(|| local.is_file().then_some(local));
    let tool = found.unwrap_or_else(|| PathBuf::from(name));
    let works = Command::new(&tool).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(works, "{name} is missing: `{install}` (scripts/test installs it)");
    tool
}

fn componentize_py() -> PathBuf {
    tool("ELIGO_COMPONENTIZE_PY", "target/venv/bin/componentize-py", "componentize-py", "pip install componentize-py")
}

fn componentize_js() -> PathBuf {
    let local = "target/js-tools/node_modules/.bin/componentize-js";
    tool("ELIGO_COMPONENTIZE_JS", local, "componentize-js", "npm install @bytecodealliance/componentize-js")
}

/// Builds the JavaScript example into a component (in this test's folder), with
/// every WASI feature of the engine turned off: it then imports eligo's contract only.
fn build_js(dir: &std::path::Path) -> PathBuf {
    let out = dir.join("js-min-target.wasm");
    let status = Command::new(componentize_js())
        .arg(support::root().join("examples/js-policy/policy.js"))
        .arg("--wit")
        .arg(support::root().join("wit"))
        .args(["--world-name", "policy", "-d", "stdio", "random", "clocks", "http", "fetch-event", "-o"])
        .arg(&out)
        .status()
        .expect("running componentize-js");
    assert!(status.success(), "componentize-js failed");
    out
}

/// Builds the Python example into a component (in this test's folder).
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
    loads_passes_and_decides(&component, "python-policy", "py-min-target").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_policy_loads_passes_its_cases_and_decides_in_a_running_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let component = build_js(tmp.path());
    println!("javascript policy built in {:?}", started.elapsed());
    // Nothing of the machine to deny: it imports eligo's contract and nothing else.
    let engine = wasmtime::Engine::default();
    let built = wasmtime::component::Component::from_file(&engine, &component).expect("a component");
    let mut imports: Vec<String> = built.component_type().imports(&engine).map(|(name, _)| name.to_string()).collect();
    imports.sort();
    assert_eq!(imports, ["eligo:policy/host@0.2.0", "eligo:policy/types@0.2.0"]);
    loads_passes_and_decides(&component, "js-policy", "js-min-target").await;
}

/// The example `component` (of `examples/<example>`, naming itself `name`)
/// passes its cases, then decides in a running server; prints its size, load
/// time and call time.
async fn loads_passes_and_decides(component: &std::path::Path, example: &str, name: &str) {
    let size = std::fs::metadata(component).expect("built").len();
    let started = Instant::now();
    let cases = support::root().join(format!("examples/{example}/cases.json"));
    let file = eligo::authoring::runner::CaseFile::read(&cases).expect("cases");
    let (plugin, _) = file.load(component, std::path::Path::new("cases.json"), None).expect("loads");
    let loaded_in = started.elapsed();
    assert_eq!(eligo::plugin::Policy::contract(&plugin), "eligo:policy@0.2.0");
    let plugin = Arc::new(plugin);
    let outcomes = eligo::authoring::runner::run_cases(plugin.clone(), &file);
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.mismatches.is_empty()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let sample_job =
        eligo::plugin::Job { task_id: "t".into(), block_height: 1, proof_target: 50, epoch_challenge: "{}".into() };
    let sample_solution = eligo::plugin::Solution {
        task_id: "t".into(),
        hardware_id: "h".into(),
        caption: "c".into(),
        solution: "{}".into(),
        solution_target: 100,
        unique_key: "1".into(),
    };
    let calls = 200u32;
    let started = Instant::now();
    for _ in 0..calls {
        let verdict =
            eligo::plugin::Policy::validate_solution(&*plugin, &sample_job, &sample_solution).expect("decides");
        assert!(verdict.is_ok(), "{verdict:?}");
    }
    let per_call = started.elapsed() / calls;
    println!("{name}: {size} bytes, loaded in {loaded_in:?}, validate-solution {per_call:?} a call");

    // In a server: a solution under its job's target is invalid and reaches no node.
    let server = Server::start_on(Backends::new(Kind::Embedded).await, &[], None).await;
    let policies = server.backends.dir().join("policies");
    std::fs::copy(component, policies.join(format!("20-{name}.wasm"))).expect("drop it in");
    // Compiling a plugin that carries an interpreter takes tens of seconds in a debug build.
    for _ in 0..1800 {
        if server.running.plugins.reports().iter().any(|r| r.name == name) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        server.running.plugins.reports().iter().any(|r| r.name == name),
        "loaded: {:?}, failed: {:?}",
        server.running.plugins.reports(),
        server.running.plugins.failures()
    );
    let mut worker = support::ws::Client::connect(server.running.worker_addr.expect("workers")).await;
    worker.send(&welcome("hw-lang")).await;
    let mut node = server.node().await;
    node.send(&job(50, 5)).await;
    let task = worker.recv("the job").await["task_id"].as_str().expect("task").to_string();
    let invalid = worker.send_judged(&solution(&task, 1, 3), "1").await;
    assert_eq!(invalid["valid"], false, "{invalid}");
    // Judged before the valid one was sent, and of the same job: the invalid one
    // would come first.
    worker.send(&solution(&task, 2, 7)).await;
    let got = node.recv("the valid solution").await;
    assert_eq!(got["partial_solution"]["nonce"], 2, "the invalid one never comes: {got}");
    server.stop().await;
}
