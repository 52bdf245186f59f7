//! Signed plugins: with `[plugins] trusted_keys` set, a plugin loads only with a
//! valid signature by one of them, over its wasm and its settings file; a
//! refused one is listed with the reason and the previous version keeps
//! serving; trusted keys change with a configuration reload. Also the
//! operator's flow through the real binary: keygen, sign, check.

mod support;

use eligo::plugin::signature::{self, TrustedKeys};
use eligo::plugin::{Limits, PluginEngine, PluginHost, Trust};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::plugin_path;

struct Key {
    secret: ed25519_dalek::SigningKey,
    public: String,
}

fn key(name: &str) -> Key {
    let (secret, public) = signature::generate_key_pair(name);
    Key { secret: signature::parse_secret_key(&secret).expect("a secret key"), public: public.trim().to_string() }
}

fn trusting(keys: &[&Key]) -> Trust {
    let keys: Vec<String> = keys.iter().map(|k| k.public.clone()).collect();
    Trust { keys: TrustedKeys::parse(&keys).expect("keys"), ..Trust::default() }
}

/// Signs `wasm` (and its `.toml`, if any) as `eligo plugin sign` does.
fn sign(wasm: &Path, key: &Key) {
    let bytes = std::fs::read(wasm).expect("wasm");
    let settings = std::fs::read(wasm.with_extension("toml")).ok();
    let sig = signature::sign(&key.secret, "p.wasm", &bytes, settings.as_deref().map(|b| ("p.toml", b)));
    std::fs::write(signature::signature_path(wasm), sig).expect("sig");
}

fn open(dir: &Path, trust: Trust) -> std::sync::Arc<PluginHost> {
    PluginHost::open_trusting(PluginEngine::new(Limits::default()).expect("engine"), dir, None, trust).expect("open")
}

/// The single failure listed, or a panic.
fn only_failure(host: &PluginHost) -> String {
    let failures = host.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    failures[0].error.clone()
}

/// The key and version of the active plugins.
fn serving(host: &PluginHost) -> Vec<(String, String)> {
    host.reports().into_iter().map(|r| (r.key, r.name)).collect()
}

fn install(dir: &Path, plugin: &str, key: &str) -> PathBuf {
    let wasm = dir.join(format!("{key}.wasm"));
    std::fs::copy(plugin_path(plugin), &wasm).expect("copy");
    wasm
}

#[test]
fn only_plugins_signed_by_a_trusted_key_load_and_each_refusal_says_why() {
    let (release, stranger) = (key("release"), key("stranger"));
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = install(dir.path(), "tag-router", "20-router");
    std::fs::write(wasm.with_extension("toml"), "max_workers_per_job = 2\n").expect("settings");

    // Not signed at all.
    let host = open(dir.path(), trusting(&[&release]));
    assert!(serving(&host).is_empty());
    assert!(only_failure(&host).starts_with("not signed"), "{}", only_failure(&host));

    // Signed by the trusted key: loads.
    sign(&wasm, &release);
    let summary = host.rescan();
    assert_eq!(summary.loaded, vec!["20-router"]);
    assert!(host.failures().is_empty());
    let loaded = serving(&host);

    // Settings edited after signing: refused, the signed version keeps serving.
    std::fs::write(wasm.with_extension("toml"), "max_workers_per_job = 200\n").expect("settings");
    host.rescan();
    assert!(only_failure(&host).starts_with("signature does not match: the wasm or its settings changed"));
    assert_eq!(serving(&host), loaded, "the previous version keeps serving");
    std::fs::write(wasm.with_extension("toml"), "max_workers_per_job = 2\n").expect("settings back");
    host.rescan();
    assert!(host.failures().is_empty(), "the signed settings again: it loads");

    // The wasm replaced by another plugin under the same signature.
    std::fs::copy(plugin_path("seed-rules"), &wasm).expect("replace");
    host.rescan();
    assert!(only_failure(&host).starts_with("signature does not match"), "{}", only_failure(&host));
    assert_eq!(serving(&host), loaded, "the previous version keeps serving");

    // Signed, but by a key nobody trusted.
    sign(&wasm, &stranger);
    host.rescan();
    let error = only_failure(&host);
    assert!(error.starts_with("signed by an unknown key") && error.contains(&stranger.public), "{error}");
    assert_eq!(serving(&host), loaded);

    // A candidate in shadow/ needs a signature too.
    let shadow = dir.path().join("shadow");
    std::fs::create_dir(&shadow).expect("shadow/");
    install(&shadow, "tag-router", "20-router");
    host.rescan();
    assert!(host.failures().iter().any(|f| f.file.contains("shadow") && f.error.starts_with("not signed")));
    assert!(host.shadows().is_empty(), "an unsigned candidate does not shadow");
}

#[test]
fn without_trusted_keys_nothing_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    install(dir.path(), "seed-rules", "10-seed");
    let host = open(dir.path(), Trust::default());
    assert_eq!(serving(&host).len(), 1);
    assert!(host.failures().is_empty());
}

#[test]
fn keys_rotate_by_a_configuration_reload() {
    let (old, new) = (key("2026"), key("2027"));
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = install(dir.path(), "seed-rules", "10-seed");
    sign(&wasm, &old);
    let host = open(dir.path(), trusting(&[&old]));
    assert_eq!(serving(&host).len(), 1);

    // Rotation, step one: both keys trusted, the plugin re-signed by the new one.
    host.reconfigure(trusting(&[&old, &new]));
    assert!(host.failures().is_empty());
    sign(&wasm, &new);
    let summary = host.rescan();
    assert_eq!(summary.loaded, vec!["10-seed"], "re-signed: looked at again");
    // Step two: the old key dropped; what it alone signed is refused from now on.
    let other = install(dir.path(), "tag-router", "20-router");
    sign(&other, &old);
    let summary = host.reconfigure(trusting(&[&new]));
    assert!(summary
        .failed
        .iter()
        .any(|f| f.file.ends_with("20-router.wasm") && f.error.starts_with("signed by an unknown key")));
    assert_eq!(serving(&host).iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["10-seed"]);
    // And trusting nothing again turns signatures off.
    host.reconfigure(Trust::default());
    assert!(host.failures().is_empty());
    assert_eq!(serving(&host).len(), 2);
}

fn eligo(args: &[&str], dir: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_eligo")).args(args).current_dir(dir).output().expect("eligo runs");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

#[test]
fn the_cli_makes_keys_signs_and_checks_as_the_readme_shows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, said) = eligo(&["plugin", "keygen", "release"], dir.path());
    assert!(ok, "{said}");
    let public = std::fs::read_to_string(dir.path().join("release.pub")).expect("release.pub");
    assert!(public.starts_with("ed25519:") && said.contains(public.trim()), "{said}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("release.key")).expect("release.key").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the secret key is readable by its owner only");
    }
    let (again, said) = eligo(&["plugin", "keygen", "release"], dir.path());
    assert!(!again && said.contains("never overwritten"), "{said}");

    let wasm = install(dir.path(), "tag-router", "20-router");
    std::fs::write(wasm.with_extension("toml"), "max_workers_per_job = 3\n").expect("settings");
    let (ok, said) = eligo(&["plugin", "sign", "20-router.wasm", "--key", "release.key"], dir.path());
    assert!(ok && said.contains("20-router.wasm.sig over 20-router.wasm and 20-router.toml"), "{said}");

    let trusted = public.trim();
    let (ok, said) = eligo(&["plugin", "check", "20-router.wasm", "--trusted-key", trusted], dir.path());
    assert!(ok && said.contains("valid: signed by a trusted key"), "{said}");
    let (ok, said) = eligo(&["plugin", "check", "20-router.wasm"], dir.path());
    assert!(ok && said.contains("matches, signed by"), "{said}");

    std::fs::write(wasm.with_extension("toml"), "max_workers_per_job = 30\n").expect("settings changed");
    let (ok, said) = eligo(&["plugin", "check", "20-router.wasm", "--trusted-key", trusted], dir.path());
    assert!(!ok && said.contains("signature does not match"), "{said}");
    let stranger = key("stranger");
    std::fs::write(wasm.with_extension("toml"), "max_workers_per_job = 3\n").expect("settings back");
    let (ok, said) = eligo(&["plugin", "check", "20-router.wasm", "--trusted-key", &stranger.public], dir.path());
    assert!(!ok && said.contains("signed by an unknown key"), "{said}");
}

/// A plain run: the real binary, a plugin signed by a key its configuration does
/// not trust yet (started anyway, `start_with_failed`), then the configuration
/// changed and `kill -HUP`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_takes_new_trusted_keys_on_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies");
    let (old, new) = (key("old"), key("new"));
    let wasm = install(&policies, "seed-rules", "10-seed");
    sign(&wasm, &new);
    let config = dir.path().join("eligo.toml");
    let port = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let admin = port();
    let write_config = |trusted: &Key| {
        let text = format!(
            "data_dir = {:?}\n[node]\nlisten = \"{}\"\n[worker]\nlisten = \"{}\"\n[admin]\nlisten = \"{admin}\"\n\
             [plugins]\ndir = {:?}\ndebounce_ms = 50\nstart_with_failed = true\ntrusted_keys = [\"{}\"]\n",
            dir.path().join("data"),
            port(),
            port(),
            policies,
            trusted.public
        );
        std::fs::write(&config, text).expect("eligo.toml");
    };
    write_config(&old);
    let mut child = Command::new(env!("CARGO_BIN_EXE_eligo"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("eligo serve");
    let plugins_now = || async { support::http::get(admin, "/api/v1/plugins").await.json() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let refused = loop {
        if let Ok(answer) = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::net::TcpStream::connect(admin).await.is_ok()
        })
        .await
        {
            if answer {
                break plugins_now().await;
            }
        }
        assert!(std::time::Instant::now() < deadline, "eligo did not start");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let failed = refused["failed"].to_string();
    assert!(failed.contains("signed by an unknown key"), "{refused:#}");
    // Neither the refused plugin nor the built-in rules serve meanwhile: a stand-in
    // refuses in the plugin's place (the built-in rules never stand in for one).
    assert_eq!(refused["active"].as_array().map(Vec::len), Some(0), "nothing listed as active: {refused:#}");

    write_config(&new);
    let status = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().expect("kill -HUP");
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now = plugins_now().await;
        let active: Vec<String> = now["active"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["key"].as_str().map(String::from))
            .collect();
        if active == ["10-seed"] && now["failed"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the reload never took the new key: {now:#}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(child.try_wait().expect("status").is_none(), "SIGHUP reloads, it does not stop eligo");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}
