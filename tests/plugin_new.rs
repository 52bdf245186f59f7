//! The README's "Writing a plugin", followed start to finish: `eligo plugin new`
//! scaffolds a crate, `cargo component` (or `cargo xtask plugins` inside the
//! workspace) builds it, `eligo plugin check` and `eligo plugin test` accept
//! it, its own `#[test]` passes, and a running server hot-loads it and lets it
//! decide.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::backends::{Backends, Kind};
use support::server::{job, Server};
use support::ws::{Client, Next};

fn eligo() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_eligo"))
}

/// Runs `command`, panicking with its output if it fails; returns its stdout.
fn run(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed ({}):\n{stdout}\n{stderr}", out.status);
    stdout
}

/// Where a route's scaffolded crate builds, kept between runs so dependencies
/// compile once. One per route: both build a crate named `my-policy`, and
/// `cargo xtask` leaves a core module where `cargo component` leaves a component.
fn scaffold_target(route: &str) -> PathBuf {
    support::root().join("target/scaffold").join(route)
}

/// The scaffolded plugin decides in a running server: hot-loaded from its file,
/// it refuses a worker without a hardware_id with its own reason and admits
/// others, which then get jobs.
async fn hot_loads_and_decides(component: &Path) {
    let server = Server::start_on(Backends::new(Kind::Embedded).await, &[], None).await;
    let policies = server.backends.dir().join("policies");
    let before = server.running.plugins.history().len();
    std::fs::copy(component, policies.join("50-my-policy.wasm")).expect("drop the plugin in");
    for _ in 0..200 {
        if server.running.plugins.reports().iter().any(|r| r.name == "my-policy") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.running.plugins.history().len() > before, "the server reloaded");
    let reports = server.running.plugins.reports();
    assert!(reports.iter().any(|r| r.name == "my-policy" && r.wit == "eligo:policy@0.2.0"), "{reports:?}");

    let addr = server.running.worker_addr.expect("worker server");
    let mut refused = Client::connect(addr).await;
    refused
        .send(&serde_json::json!({ "ip": "1", "address": "a", "hardware": "cpu", "hardware_id": "", "caption": "c" }))
        .await;
    match refused.next_within(Duration::from_secs(5)).await {
        Next::Closed(3000, reason) => assert!(reason.contains("welcome has an empty hardware_id"), "{reason}"),
        other => panic!("expected the plugin to refuse the welcome, got {other:?}"),
    }
    let mut worker = server.worker("hw-new").await;
    let mut node = server.node().await;
    node.send(&job(30, 5)).await;
    assert_eq!(worker.recv("the job").await["epoch_challenge"]["seed"], "s30");
    server.stop().await;
}

/// `eligo plugin check` and `eligo plugin test` (with the case file's settings) accept it.
fn check_and_test(component: &Path, cases: &Path) {
    let report = run(Command::new(eligo()).args(["plugin", "check"]).arg(component), "eligo plugin check");
    assert!(report.contains("\"name\": \"my-policy\""), "{report}");
    let tested = run(Command::new(eligo()).args(["plugin", "test"]).arg(component).arg(cases), "eligo plugin test");
    assert!(tested.contains("2 passed, 0 failed") && tested.contains("config:"), "{tested}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plugin_builds_with_cargo_component_passes_its_tests_and_hot_loads() {
    let has_component =
        Command::new("cargo").args(["component", "--version"]).output().is_ok_and(|o| o.status.success());
    assert!(
        has_component,
        "cargo-component is not installed: `cargo install --locked cargo-component` (scripts/test does)"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let crate_dir = tmp.path().join("my-policy");
    let made = run(Command::new(eligo()).args(["plugin", "new", "my-policy", "--dir"]).arg(&crate_dir), "plugin new");
    assert!(made.contains("cargo component build --release --target wasm32-unknown-unknown"), "{made}");
    for file in ["Cargo.toml", "src/lib.rs", "cases.json", "wit/policy.wit"] {
        assert!(crate_dir.join(file).is_file(), "{file} scaffolded");
    }
    let lib = std::fs::read_to_string(crate_dir.join("src/lib.rs")).expect("lib.rs");
    for hook in ["fn info", "fn configure", "fn admit_connection", "fn admit_worker", "fn admit_job", "fn offer_job"] {
        assert!(lib.contains(hook), "the scaffold implements {hook}");
    }
    for hook in ["fn validate_solution", "fn offer_solution", "fn challenge_answer", "fn check_challenge"] {
        assert!(lib.contains(hook), "the scaffold implements {hook}");
    }

    run(
        Command::new("cargo")
            .args(["component", "build", "--release", "--target", "wasm32-unknown-unknown"])
            .current_dir(&crate_dir)
            .env("CARGO_TARGET_DIR", scaffold_target("component")),
        "cargo component build",
    );
    let component = scaffold_target("component").join("wasm32-unknown-unknown/release/my_policy.wasm");
    check_and_test(&component, &crate_dir.join("cases.json"));
    // The crate's own #[test], which runs its cases through eligo's runner.
    let tested = run(
        Command::new("cargo")
            .args(["test", "--lib"])
            .current_dir(&crate_dir)
            .env("CARGO_TARGET_DIR", scaffold_target("component"))
            .env("ELIGO", eligo()),
        "cargo test in the new crate",
    );
    assert!(tested.contains("cases_pass ... ok"), "{tested}");
    hot_loads_and_decides(&component).await;
}

/// Copies the plugin workspace and its contracts into `to`, as a checkout has them.
fn copy_workspace(to: &Path) {
    let root = support::root();
    let copy = |from: &Path, to: &Path| {
        run(Command::new("cp").arg("-r").arg(from).arg(to), "copying the workspace");
    };
    std::fs::create_dir_all(to.join("plugins")).expect("dir");
    std::fs::create_dir_all(to.join("host/plugin")).expect("dir");
    copy(&root.join("wit"), &to.join("wit"));
    // The frozen 0.1.0 contract one fixture plugin is built against.
    copy(&root.join("host/plugin/contract"), &to.join("host/plugin/contract"));
    for entry in std::fs::read_dir(root.join("plugins")).expect("plugins/") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|n| n != "target") {
            copy(&path, &to.join("plugins"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plugin_in_the_workspace_builds_with_xtask_without_touching_the_lock_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let checkout = tmp.path().join("eligo");
    copy_workspace(&checkout);
    let made = run(Command::new(eligo()).args(["plugin", "new", "my-policy"]).current_dir(&checkout), "plugin new");
    assert!(made.contains("cargo xtask plugins"), "{made}");
    let manifest = std::fs::read_to_string(checkout.join("plugins/Cargo.toml")).expect("manifest");
    assert!(manifest.contains("\"my-policy\"]"), "joined the workspace: {manifest}");

    let out = tmp.path().join("out");
    let workspace = checkout.join("plugins");
    run(
        Command::new("cargo")
            .args(["xtask", "plugins", "--workspace"])
            .arg(&workspace)
            .arg("--out")
            .arg(&out)
            .arg("--target-dir")
            .arg(scaffold_target("workspace"))
            .current_dir(support::root()),
        "cargo xtask plugins",
    );
    let component = out.join("my-policy.wasm");
    check_and_test(&component, &workspace.join("my-policy/cases.json"));
    hot_loads_and_decides(&component).await;
}
