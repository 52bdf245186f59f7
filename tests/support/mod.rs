//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod backends;
pub mod browser;
pub mod http;
pub mod process;
pub mod server;
#[path = "../../examples/solver/mod.rs"]
pub mod solver;
pub mod sse;
pub mod webhook;
pub mod ws;

/// Generates, for each case `async fn name(kind: Kind)`, one `#[tokio::test]` on
/// the embedded backends and one on the networked ones.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { $crate::$name($crate::Kind::Embedded).await; })*
        }
        mod networked {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { $crate::$name($crate::Kind::Networked).await; })*
        }
    };
}

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A built plugin component; fails with the command that builds them if missing.
pub fn plugin_path(name: &str) -> PathBuf {
    let path = root().join("target/plugins").join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the plugins with `cargo xtask plugins` (scripts/test does)",
        path.display()
    );
    path
}

/// A built example program (`cargo test` builds every example beside the tests);
/// fails with the command that builds it if missing.
pub fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let path = exe.parent().and_then(|deps| deps.parent()).expect("a target dir").join("examples").join(name);
    assert!(path.is_file(), "{} is missing: build it with `cargo build --example {name}`", path.display());
    path
}

/// The bytes of a built plugin component.
pub fn plugin_bytes(name: &str) -> Vec<u8> {
    std::fs::read(plugin_path(name)).expect("reading a built plugin")
}

/// The PostgreSQL the integration tests use: `ELIGO_TEST_POSTGRES_URL`, or the local one.
pub fn postgres_url() -> String {
    std::env::var("ELIGO_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs `eligo config check` with `args` and exactly `env` as eligo's environment.
pub fn config_check(args: &[String], env: &BTreeMap<String, String>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eligo"));
    command.args(["config", "check"]).args(args).current_dir(std::env::temp_dir());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("ELIGO_")) {
        command.env_remove(k);
    }
    let out = command.envs(env).output().expect("running eligo config check");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}
