//! Compiled plugins kept between starts and reloads.
//!
//! Compiling a component is the dear part of loading it: a Python or JavaScript
//! component, which carries its interpreter, takes 16–19 s. The machine code
//! wasmtime made for it is kept in a folder of eligo's own (`[plugins] cache_dir`,
//! by default `plugin-cache` in the data directory) and loaded from there the
//! next time the same bytes are loaded by an engine of the same settings.
//!
//! Loading precompiled code is `unsafe` in wasmtime: the code is run as it is,
//! unchecked, so whoever can write it can run anything inside eligo. It is
//! therefore taken only from this folder, which eligo makes (mode 0700) and
//! alone writes, never from the plugin folder; and every entry carries the
//! SHA-256 of its code, checked before the code is handed to wasmtime, so a
//! damaged entry is compiled afresh rather than run.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use wasmtime::component::Component;
use wasmtime::Engine;

/// What an entry starts with: the format, then the SHA-256 of the code after it.
const MAGIC: &[u8] = b"eligo compiled plugin v1\n";
/// The extension of an entry.
const EXTENSION: &str = "cwasm";
/// Entries kept at most: a Python or JavaScript one is tens of megabytes.
const KEEP_NEWEST: usize = 32;
/// Entries not used for this long are removed.
const UNUSED_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// How a loaded plugin's code was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compiled {
    /// Compiled at this load (and written to the cache, if there is one).
    Fresh,
    /// Taken from the cache of compiled plugins.
    Cache,
}

impl Compiled {
    /// As reported: `fresh` or `cache`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compiled::Fresh => "fresh",
            Compiled::Cache => "cache",
        }
    }
}

/// The folder of compiled plugins of one engine.
pub(crate) struct ComponentCache {
    dir: PathBuf,
    /// Digest of everything about the engine that changes the code it makes.
    engine_key: [u8; 32],
}

/// Feeds a [`std::hash::Hash`] into SHA-256: the engine's compatibility hash is
/// only offered as a `Hash`, and std's hashers are not stable across releases.
struct Sha256Hasher(Sha256);

impl std::hash::Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl ComponentCache {
    /// Opens (making it, mode 0700) the folder `dir` for an engine whose settings
    /// that change code generation are spelled out in `settings`.
    pub(crate) fn open(dir: &Path, engine: &Engine, settings: &str) -> std::io::Result<Self> {
        make_private_dir(dir)?;
        let mut hasher = Sha256Hasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        hasher.0.update(settings.as_bytes());
        let cache = ComponentCache { dir: dir.to_path_buf(), engine_key: hasher.0.finalize().into() };
        cache.prune();
        Ok(cache)
    }

    /// The entry of `wasm` for this engine.
    fn path_of(&self, wasm: &[u8]) -> PathBuf {
        let mut key = Sha256::new();
        key.update(MAGIC);
        key.update(self.engine_key);
        key.update(Sha256::digest(wasm));
        self.dir.join(format!("{}.{EXTENSION}", hex::encode(key.finalize())))
    }

    /// The component compiled from `wasm`, if a sound entry is kept; a damaged
    /// or incompatible one is removed.
    pub(crate) fn get(&self, engine: &Engine, wasm: &[u8]) -> Option<Component> {
        let path = self.path_of(wasm);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read a compiled plugin: compiling afresh");
                return None;
            }
        };
        let code = match checked_code(&bytes) {
            Ok(code) => code,
            Err(why) => {
                tracing::warn!(file = %path.display(), why, "a compiled plugin in the cache is damaged: compiling afresh");
                let _ = std::fs::remove_file(&path);
                return None;
            }
        };
        // SAFETY: the code was written by `put` of an engine with the same
        // compatibility hash and settings (they are in the entry's name), into a
        // folder only eligo's user can write, and its digest was just checked:
        // these are the very bytes wasmtime produced.
        match unsafe { Component::deserialize(engine, code) } {
            Ok(component) => {
                // Its modification time says when it was last used, for pruning.
                if let Ok(file) = std::fs::File::options().append(true).open(&path) {
                    let _ = file.set_modified(SystemTime::now());
                }
                Some(component)
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %format!("{e:#}"),
                    "wasmtime refused a compiled plugin from the cache: compiling afresh");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Keeps `component`, compiled from `wasm`: written under a temporary name,
    /// then renamed, so that a reader never sees half an entry.
    pub(crate) fn put(&self, component: &Component, wasm: &[u8]) {
        let path = self.path_of(wasm);
        let written = component.serialize().map_err(|e| format!("{e:#}")).and_then(|code| {
            let temporary = self.dir.join(format!(".{}.{}.tmp", std::process::id(), rand::random::<u64>()));
            let write = || -> std::io::Result<()> {
                let mut file = private_file(&temporary)?;
                file.write_all(MAGIC)?;
                file.write_all(&Sha256::digest(&code))?;
                file.write_all(&code)?;
                file.sync_all()?;
                std::fs::rename(&temporary, &path)
            };
            write().map_err(|e| {
                let _ = std::fs::remove_file(&temporary);
                e.to_string()
            })
        });
        match written {
            Ok(()) => self.prune(),
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "could not keep a compiled plugin"),
        }
    }

    /// Removes entries unused for a week, and all but the newest few; and
    /// temporary files a crash left behind.
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let now = SystemTime::now();
        let mut kept = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else { continue };
            let age = now.duration_since(modified).unwrap_or_default();
            let is_entry = path.extension().is_some_and(|e| e == EXTENSION);
            let is_stale_temporary = path.extension().is_some_and(|e| e == "tmp") && age > Duration::from_secs(3600);
            if is_stale_temporary || (is_entry && age > UNUSED_FOR) {
                let _ = std::fs::remove_file(&path);
            } else if is_entry {
                kept.push((modified, path));
            }
        }
        kept.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        for (_, path) in kept.into_iter().skip(KEEP_NEWEST) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The code of an entry, if its header and digest hold.
fn checked_code(bytes: &[u8]) -> Result<&[u8], &'static str> {
    let rest = bytes.strip_prefix(MAGIC).ok_or("it does not start as an entry of this eligo")?;
    if rest.len() < 32 {
        return Err("it is cut short");
    }
    let (digest, code) = rest.split_at(32);
    if Sha256::digest(code).as_slice() != digest {
        return Err("its code does not match its digest");
    }
    Ok(code)
}

/// Makes `dir` if missing, readable and writable by eligo's user alone.
#[cfg(unix)]
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    // A folder made earlier, by hand or under another umask, is made private
    // too; one eligo's user does not own cannot be, and is not used.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Makes `dir` if missing.
#[cfg(not(unix))]
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Creates a new file readable and writable by eligo's user alone.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::File::options();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::checked_code;

    #[test]
    fn an_entry_is_taken_only_whole_and_unchanged() {
        let code = b"machine code".to_vec();
        let mut entry = super::MAGIC.to_vec();
        entry.extend_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(&code));
        entry.extend_from_slice(&code);
        assert_eq!(checked_code(&entry), Ok(&code[..]));
        let mut flipped = entry.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(checked_code(&flipped).is_err(), "a changed byte");
        assert!(checked_code(&entry[..entry.len() - 1]).is_err(), "cut short");
        assert!(checked_code(&code).is_err(), "no header");
    }
}
