//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod backends;
pub mod browser;
pub mod http;
pub mod server;
pub mod ws;

use std::path::PathBuf;

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

/// The bytes of a built plugin component.
pub fn plugin_bytes(name: &str) -> Vec<u8> {
    std::fs::read(plugin_path(name)).expect("reading a built plugin")
}

/// The PostgreSQL the integration tests use: `ELIGO_TEST_POSTGRES_URL`, or the local one.
pub fn postgres_url() -> String {
    std::env::var("ELIGO_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}
