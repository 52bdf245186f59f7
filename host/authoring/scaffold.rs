//! `eligo plugin new`: a plugin crate to start from, which builds with
//! `cargo component` and, inside eligo's `plugins/` workspace, with
//! `cargo xtask plugins`.

use std::path::{Path, PathBuf};

/// Why a plugin crate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name cannot be a crate's.
    #[error("{0:?} is not a plugin name: use lowercase letters, digits and '-', starting with a letter")]
    BadName(String),
    /// Something is in the way.
    #[error("{0} exists already: choose another name or folder")]
    Exists(PathBuf),
    /// A file could not be written.
    #[error("writing {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
}

/// Where the new crate goes and how it finds the contract.
#[derive(Clone, Debug)]
pub enum Layout {
    /// A member of eligo's `plugins/` workspace (the folder given): it uses the
    /// checkout's `wit/` and is built by `cargo xtask plugins` with the others.
    Workspace(PathBuf),
    /// A crate of its own in the folder given, with a copy of the contract in its `wit/`.
    Standalone(PathBuf),
}

/// The contract the scaffold copies into a standalone crate.
const WIT: &str = include_str!("../../wit/policy.wit");
const LIB_RS: &str = include_str!("scaffold/lib.rs.txt");
const CASES_JSON: &str = include_str!("scaffold/cases.json");
const WIT_BINDGEN: &str = r#"{ version = "=0.61.1", default-features = false, features = ["macros", "realloc"] }"#;

/// Makes the plugin crate `name`; returns the files written.
pub fn scaffold(name: &str, layout: &Layout) -> Result<Vec<PathBuf>, ScaffoldError> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    let (dir, wit_path) = match layout {
        Layout::Workspace(plugins) => (plugins.join(name), "../../wit".to_string()),
        Layout::Standalone(dir) => (dir.clone(), "wit".to_string()),
    };
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let lib = name.replace('-', "_");
    let mut files = vec![
        (dir.join("Cargo.toml"), cargo_toml(name, &wit_path, matches!(layout, Layout::Workspace(_)))),
        (
            dir.join("src/lib.rs"),
            LIB_RS.replace("{{name}}", name).replace("{{lib}}", &lib).replace("{{wit}}", &wit_path),
        ),
        (dir.join("cases.json"), CASES_JSON.to_string()),
        (dir.join(".gitignore"), "/target\n".to_string()),
    ];
    if matches!(layout, Layout::Standalone(_)) {
        files.push((dir.join("wit/policy.wit"), WIT.to_string()));
    }
    for (path, text) in &files {
        write(path, text)?;
    }
    let mut written: Vec<PathBuf> = files.into_iter().map(|(p, _)| p).collect();
    if let Layout::Workspace(plugins) = layout {
        let manifest = plugins.join("Cargo.toml");
        add_member(&manifest, name)?;
        written.push(manifest);
    }
    Ok(written)
}

fn cargo_toml(name: &str, wit_path: &str, in_workspace: bool) -> String {
    let (package, deps, profile) = if in_workspace {
        (
            "version.workspace = true\nedition.workspace = true\npublish.workspace = true".to_string(),
            "wit-bindgen.workspace = true\nserde.workspace = true\nserde_json.workspace = true".to_string(),
            String::new(),
        )
    } else {
        (
            "version = \"0.1.0\"\nedition = \"2021\"\npublish = false".to_string(),
            format!(
                "wit-bindgen = {WIT_BINDGEN}\nserde = {{ version = \"1\", features = [\"derive\"] }}\nserde_json = \"1\""
            ),
            "\n# Decisions sit on the fan-out path: speed first; the component stays small.\n[profile.release]\n\
             opt-level = 3\nlto = true\ncodegen-units = 1\npanic = \"abort\"\nstrip = true\n"
                .to_string(),
        )
    };
    format!(
        "[package]\nname = \"{name}\"\ndescription = \"An eligo policy plugin.\"\n{package}\n\n\
         [lib]\n# cdylib: the WebAssembly module; rlib: for `cargo test` on the host.\ncrate-type = [\"cdylib\", \"rlib\"]\n\n\
         [dependencies]\n{deps}\n\n\
         # `cargo component build --release --target wasm32-unknown-unknown` reads this:\n\
         # the contract is eligo's `policy` world.\n\
         [package.metadata.component]\npackage = \"eligo:{name}\"\n\n\
         [package.metadata.component.target]\npath = \"{wit_path}\"\nworld = \"policy\"\n{profile}"
    )
}

fn write(path: &Path, text: &str) -> Result<(), ScaffoldError> {
    let io = |error| ScaffoldError::Io { path: path.to_path_buf(), error };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, text).map_err(io)
}

/// Adds `name` to the `members` of the workspace manifest `manifest`.
fn add_member(manifest: &Path, name: &str) -> Result<(), ScaffoldError> {
    let io = |error| ScaffoldError::Io { path: manifest.to_path_buf(), error };
    let text = std::fs::read_to_string(manifest).map_err(io)?;
    let Some(start) = text.find("members = [") else {
        return Err(io(std::io::Error::other("no `members = [` list to add the plugin to")));
    };
    let Some(end) = text[start..].find(']').map(|i| start + i) else {
        return Err(io(std::io::Error::other("the `members` list is not closed")));
    };
    let list = &text[start..end];
    if list.contains(&format!("\"{name}\"")) {
        return Ok(());
    }
    let separator = if list.trim_end().ends_with('[') || list.trim_end().ends_with(',') { "" } else { ", " };
    let updated = format!("{}{separator}\"{name}\"{}", &text[..end], &text[end..]);
    std::fs::write(manifest, updated).map_err(io)
}

/// Where `eligo plugin new` puts a plugin when no folder is given: in the
/// `plugins/` workspace of the eligo checkout at or above `cwd`, else in `cwd`.
pub fn default_layout(cwd: &Path, name: &str) -> Layout {
    for dir in cwd.ancestors() {
        let manifest = dir.join("plugins/Cargo.toml");
        if dir.join("wit/policy.wit").is_file() && manifest.is_file() {
            return Layout::Workspace(dir.join("plugins"));
        }
    }
    Layout::Standalone(cwd.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_added_once_and_names_checked() {
        let dir = tempfile_dir();
        let manifest = dir.join("Cargo.toml");
        std::fs::write(&manifest, "[workspace]\nmembers = [\"sdk\", \"seed-rules\"]\n").expect("write");
        add_member(&manifest, "my-policy").expect("added");
        add_member(&manifest, "my-policy").expect("added once");
        let text = std::fs::read_to_string(&manifest).expect("read");
        assert_eq!(text, "[workspace]\nmembers = [\"sdk\", \"seed-rules\", \"my-policy\"]\n");
        for bad in ["My", "1x", "a_b", "x-", ""] {
            assert!(matches!(scaffold(bad, &Layout::Standalone(dir.join(bad))), Err(ScaffoldError::BadName(_))));
        }
        std::fs::remove_dir_all(dir).ok();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("eligo-scaffold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
