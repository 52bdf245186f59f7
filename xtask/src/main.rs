//! `cargo xtask plugins`: builds every plugin under `plugins/` from source into a
//! WebAssembly component in `target/plugins/`.
//!
//! The plugins are core modules for `wasm32-unknown-unknown`, wrapped into components
//! here with `wit-component`, so no `wasm-tools` or `cargo component` install is
//! needed. The wasm target comes from rustup when it can be had; otherwise Debian's
//! Rust toolchain (which ships the std sources to build it) is installed and used.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";
const DEBIAN_PACKAGES: [&str; 4] = ["rustc-web", "cargo-web", "rust-web-src", "lld-22"];
const DEBIAN_LINKER: &str = "/usr/lib/llvm-22/bin/wasm-ld";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("plugins") => {
            let root = root();
            let flag =
                |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(PathBuf::from);
            let workspace = flag("--workspace").unwrap_or_else(|| root.join("plugins"));
            // Another workspace (a copy, a test's) builds apart, not over the checkout's artifacts.
            let target_dir = flag("--target-dir").unwrap_or_else(|| {
                if workspace == root.join("plugins") {
                    root.join("target/wasm")
                } else {
                    workspace.join("target")
                }
            });
            let out_dir = flag("--out").unwrap_or_else(|| root.join("target/plugins"));
            build_plugins(&workspace, &target_dir, &out_dir)
        }
        Some("componentize") if args.len() == 3 => componentize(Path::new(&args[1]), Path::new(&args[2])),
        _ => {
            eprintln!(
                "usage:\n  cargo xtask plugins [--workspace DIR] [--out DIR] [--target-dir DIR]\n      build every plugin of plugins/ (or DIR) into target/plugins/ (or DIR)\n  \
                 cargo xtask componentize <core.wasm> <out.wasm>   wrap one core module into a component"
            );
            std::process::exit(2)
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// How the wasm core modules get compiled.
enum Toolchain {
    Rustup,
    Debian,
}

fn build_plugins(workspace: &Path, target_dir: &Path, out_dir: &Path) -> Result<()> {
    let toolchain = pick_toolchain()?;
    lock_new_members(workspace, &toolchain)?;
    let mut cargo = cargo_command(&toolchain);
    cargo
        .current_dir(workspace)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--target-dir")
        .arg(target_dir);
    if matches!(toolchain, Toolchain::Debian) {
        cargo.arg("-Zbuild-std=std,panic_abort");
    }
    eprintln!(
        "xtask: building plugins ({})",
        if matches!(toolchain, Toolchain::Rustup) { "rustup target" } else { "Debian toolchain" }
    );
    let status = cargo.status().context("running cargo for the plugins")?;
    if !status.success() {
        bail!("building the plugins failed ({status})");
    }

    std::fs::create_dir_all(out_dir)?;
    for name in plugin_crates(workspace)? {
        let core = target_dir.join(TARGET).join("release").join(format!("{}.wasm", name.replace('-', "_")));
        let out = out_dir.join(format!("{name}.wasm"));
        componentize(&core, &out)?;
    }
    Ok(())
}

/// The cargo that builds the plugins with `toolchain`.
fn cargo_command(toolchain: &Toolchain) -> Command {
    match toolchain {
        Toolchain::Rustup => Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())),
        Toolchain::Debian => {
            let mut c = Command::new("/usr/bin/cargo");
            c.env("PATH", "/usr/bin:/bin")
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTDOC", "/usr/bin/rustdoc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", DEBIAN_LINKER)
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("CARGO");
            c
        }
    }
}

/// A plugin crate added to the workspace (by `eligo plugin new`, or by copying
/// one) is not in `plugins/Cargo.lock` yet, and `--locked` would refuse to build.
/// The lock file gets the new members, and only them: every dependency keeps
/// its locked version.
fn lock_new_members(workspace: &Path, toolchain: &Toolchain) -> Result<()> {
    let lock = std::fs::read_to_string(workspace.join("Cargo.lock")).unwrap_or_default();
    let locked = |name: &str| lock.contains(&format!("name = \"{name}\"\n"));
    let mut members = plugin_crates(workspace)?;
    members.push("eligo-plugin-sdk".into());
    let new: Vec<&String> = members.iter().filter(|m| !locked(m)).collect();
    if new.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: adding {} to plugins/Cargo.lock (dependencies keep their locked versions)",
        new.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    );
    let status = cargo_command(toolchain)
        .current_dir(workspace)
        .args(["update", "--workspace"])
        .status()
        .context("running cargo update for new plugin crates")?;
    if !status.success() {
        bail!("adding the new plugin crates to plugins/Cargo.lock failed ({status})");
    }
    Ok(())
}

/// The plugin crates of the plugins workspace: every member but the shared SDK.
fn plugin_crates(workspace: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(workspace)? {
        let path = entry?.path();
        let is_plugin = path.join("Cargo.toml").is_file() && path.join("src/lib.rs").is_file();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if is_plugin && name != "sdk" {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn pick_toolchain() -> Result<Toolchain> {
    if let Ok(forced) = std::env::var("ELIGO_WASM_TOOLCHAIN") {
        return match forced.as_str() {
            "rustup" => Ok(Toolchain::Rustup),
            "debian" => ensure_debian().map(|_| Toolchain::Debian),
            other => bail!("ELIGO_WASM_TOOLCHAIN={other}: expected rustup or debian"),
        };
    }
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if let Ok(out) = installed {
        if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == TARGET) {
            return Ok(Toolchain::Rustup);
        }
        eprintln!("xtask: adding the {TARGET} target with rustup");
        let added = Command::new("rustup").args(["target", "add", TARGET]).status();
        if matches!(added, Ok(s) if s.success()) {
            return Ok(Toolchain::Rustup);
        }
        eprintln!("xtask: rustup could not add {TARGET}; falling back to Debian's toolchain");
    }
    ensure_debian()?;
    Ok(Toolchain::Debian)
}

fn ensure_debian() -> Result<()> {
    if Path::new("/usr/bin/rustc").exists() && Path::new(DEBIAN_LINKER).exists() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian's Rust toolchain: {}", DEBIAN_PACKAGES.join(" "));
    let update = Command::new("apt-get").args(["update", "-qq"]).status().context("running apt-get")?;
    if !update.success() {
        bail!("apt-get update failed");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(DEBIAN_PACKAGES)
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("could not install {}: install them or the rustup target {TARGET}", DEBIAN_PACKAGES.join(" "));
    }
    Ok(())
}

/// Wraps a core module (with the component-type section wit-bindgen embeds) into a component.
fn componentize(core: &Path, out: &Path) -> Result<()> {
    let module = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .with_context(|| format!("{} carries no component type: was it built with wit-bindgen?", core.display()))?
        .validate(true)
        .encode()
        .with_context(|| format!("componentizing {}", core.display()))?;
    // Write then rename, so the server watching a plugin folder never sees half a file.
    let partial = out.with_extension("wasm.partial");
    std::fs::write(&partial, &component)?;
    std::fs::rename(&partial, out)?;
    eprintln!("xtask: {} ({} bytes)", out.display(), component.len());
    Ok(())
}
