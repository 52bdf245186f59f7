//! Loading plugins: start-ups under their own limits, the cache of compiled
//! plugins, compiles that leave the admin API answering, plugins that failed to
//! load refused in their place, and a server that will not start with one
//! unless told to.

mod support;

use eligo::plugin::{
    Compiled, Job, JobSubmission, Limits, NativeSeedRules, NodeState, PluginEngine, PluginHost, Policy, Solution,
    Validation, Welcome,
};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use support::{plugin_bytes, plugin_path};

/// A start-up of `spins` loop iterations in `configure`.
fn spinning(spins: u64) -> String {
    format!(r#"{{"spin":{spins}}}"#)
}

fn submission(height: i64) -> JobSubmission {
    JobSubmission { block_height: height, proof_target: 1, epoch_challenge: "{}".into() }
}

fn welcome() -> Welcome {
    Welcome {
        ip: "10.0.0.1".into(),
        address: "aleo1xyz".into(),
        hardware: "cpu".into(),
        hardware_id: "hw-1".into(),
        caption: "c".into(),
    }
}

fn job() -> Job {
    Job { task_id: "t".into(), block_height: 7, proof_target: u64::MAX, epoch_challenge: "{}".into() }
}

/// A solution that does not reach its job's target: pow-check refuses it.
fn weak_solution() -> Solution {
    Solution {
        task_id: "t".into(),
        hardware_id: "h".into(),
        caption: "c".into(),
        solution: "{}".into(),
        solution_target: 1,
        unique_key: "1".into(),
    }
}

#[test]
fn a_slow_start_up_loads_under_the_load_limits_and_a_looping_call_is_still_stopped_by_fuel() {
    let limits =
        Limits { deadline_ms: 20, fuel: 1_000_000, load_deadline_ms: 30_000, load_fuel: 0, ..Limits::default() };
    let engine = PluginEngine::new(limits).expect("engine");
    let started = Instant::now();
    let plugin = engine
        .load_with_settings("slow", &plugin_bytes("testing-misbehave"), &spinning(200_000_000))
        .expect("a start-up longer than a call's limits loads under the load limits");
    assert!(started.elapsed() > Duration::from_millis(20), "the start-up really outlasted a call's deadline");

    let started = Instant::now();
    let error = plugin.admit_job(&submission(1), &[], 0).expect_err("a call that loops forever");
    assert_eq!(error.kind(), "fuel", "{error}");
    assert!(started.elapsed() < Duration::from_secs(2), "stopped promptly: {:?}", started.elapsed());
    // The trapped instance is dropped: the next call makes a new one, whose
    // `configure` spins again, under the load limits again.
    let after = plugin.admit_job(&submission(5), &[], 0).expect("a fresh instance answers");
    assert_eq!(after.expect_err("refuses"), "misbehave refuses everything");
}

#[test]
fn with_fuel_off_the_deadlines_stop_a_looping_call_and_a_start_up_too_slow_for_its_load_deadline() {
    let limits = Limits { deadline_ms: 50, fuel: 0, load_deadline_ms: 30_000, ..Limits::default() };
    let engine = PluginEngine::new(limits).expect("engine");
    let plugin =
        engine.load_with_settings("slow", &plugin_bytes("testing-misbehave"), &spinning(50_000_000)).expect("loads");
    let started = Instant::now();
    let error = plugin.admit_job(&submission(1), &[], 0).expect_err("a call that loops forever");
    assert_eq!(error.to_string(), "plugin ran past its deadline of 50 ms");
    assert!(started.elapsed() < Duration::from_secs(2), "stopped promptly: {:?}", started.elapsed());

    let impatient = PluginEngine::new(Limits { deadline_ms: 50, fuel: 0, load_deadline_ms: 20, ..Limits::default() })
        .expect("engine");
    let started = Instant::now();
    let refused = impatient
        .load_with_settings("slow", &plugin_bytes("testing-misbehave"), &spinning(50_000_000_000))
        .err()
        .expect("a start-up past the load deadline is refused");
    assert!(refused.to_string().contains("load deadline of 20 ms"), "{refused}");
    assert!(started.elapsed() < Duration::from_secs(5), "stopped promptly: {:?}", started.elapsed());

    let frugal =
        PluginEngine::new(Limits { fuel: 1_000_000, load_fuel: 2_000_000, ..Limits::default() }).expect("engine");
    let refused = frugal
        .load_with_settings("slow", &plugin_bytes("testing-misbehave"), &spinning(200_000_000))
        .err()
        .expect("a start-up past the load fuel is refused");
    assert!(refused.to_string().contains("load fuel of 2000000"), "{refused}");
}

/// The `.cwasm` entries of a cache folder.
fn entries(cache: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(cache)
        .expect("the cache folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    found.sort();
    found
}

fn cached_engine(cache: &Path, limits: Limits) -> PluginEngine {
    let mut engine = PluginEngine::new(limits).expect("engine");
    engine.use_cache(cache).expect("cache");
    engine
}

#[test]
fn a_second_load_comes_from_the_cache_and_a_damaged_entry_is_compiled_afresh() {
    let data = tempfile::tempdir().expect("tempdir");
    let cache = data.path().join("plugin-cache");
    let bytes = plugin_bytes("seed-rules");

    let first = cached_engine(&cache, Limits::default()).load("seed", &bytes).expect("loads");
    assert_eq!(first.compiled(), Compiled::Fresh);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache).expect("cache").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "only eligo's user may read or write compiled code");
    }
    let kept = entries(&cache);
    assert_eq!(kept.len(), 1, "{kept:?}");

    // Another engine of the same settings (a restart): from the cache, and it decides.
    let again = cached_engine(&cache, Limits::default()).load("seed", &bytes).expect("loads");
    assert_eq!(again.compiled(), Compiled::Cache);
    assert!(again.admit_worker(&welcome(), 0).expect("decides").is_ok());

    // An engine that makes other code (fuel off) does not take that entry.
    let unmetered = cached_engine(&cache, Limits { fuel: 0, ..Limits::default() }).load("seed", &bytes).expect("loads");
    assert_eq!(unmetered.compiled(), Compiled::Fresh);
    assert_eq!(entries(&cache).len(), 2);

    // Damage the code in the middle of the entry: compiled afresh, never run.
    let mut damaged = std::fs::read(&kept[0]).expect("entry");
    let middle = damaged.len() / 2;
    for byte in &mut damaged[middle..middle + 64] {
        *byte = 0xcc;
    }
    std::fs::write(&kept[0], &damaged).expect("damage");
    let repaired = cached_engine(&cache, Limits::default()).load("seed", &bytes).expect("loads");
    assert_eq!(repaired.compiled(), Compiled::Fresh, "a damaged entry is not loaded");
    assert!(repaired.admit_worker(&welcome(), 0).expect("decides").is_ok());
    // …and rewritten: the next load takes it again.
    let after = cached_engine(&cache, Limits::default()).load("seed", &bytes).expect("loads");
    assert_eq!(after.compiled(), Compiled::Cache);

    // A cut-short entry too.
    let whole = std::fs::read(&kept[0]).expect("entry");
    std::fs::write(&kept[0], &whole[..whole.len() / 3]).expect("cut");
    let recut = cached_engine(&cache, Limits::default()).load("seed", &bytes).expect("loads");
    assert_eq!(recut.compiled(), Compiled::Fresh);

    // What the operator sees at /plugins.
    let folder = tempfile::tempdir().expect("tempdir");
    std::fs::write(folder.path().join("10-seed.wasm"), &bytes).expect("plugin");
    let host = PluginHost::open(cached_engine(&cache, Limits::default()), folder.path()).expect("open");
    assert_eq!(host.reports()[0].compiled, Some(Compiled::Cache));
    let shown = serde_json::to_value(host.reports()).expect("json");
    assert_eq!(shown[0]["compiled"], "cache");
}

/// Runs `f` on another thread; panics if it does not answer within `limit`.
fn within<T: Send + 'static>(limit: Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("{what} did not answer within {limit:?} while a compile ran"))
}

#[test]
fn reports_answer_while_a_rescan_compiles_and_the_previous_version_serves_meanwhile() {
    let armed = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = mpsc::channel::<String>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let hook = {
        let armed = armed.clone();
        let (started, release) = (Mutex::new(started_tx), Mutex::new(release_rx));
        move |name: &str| {
            if armed.load(Ordering::SeqCst) {
                let _ = started.lock().expect("started").send(name.to_string());
                let _ = release.lock().expect("release").recv_timeout(Duration::from_secs(60));
            }
        }
    };
    let engine = PluginEngine::new(Limits::default()).expect("engine").with_compile_hook(hook);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("10-policy.wasm");
    std::fs::write(&file, plugin_bytes("seed-rules")).expect("write");
    let host = PluginHost::open(engine, dir.path()).expect("open");
    assert_eq!(host.reports()[0].name, "seed-rules");

    std::fs::write(&file, plugin_bytes("tag-router")).expect("a new version");
    armed.store(true, Ordering::SeqCst);
    let rescan = std::thread::spawn({
        let host = host.clone();
        move || host.rescan()
    });
    let compiling = started_rx.recv_timeout(Duration::from_secs(30)).expect("the compile started");
    assert_eq!(compiling, "10-policy");

    let limit = Duration::from_secs(5);
    let listed = within(limit, "compiling()", {
        let host = host.clone();
        move || host.compiling()
    });
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].key, "10-policy");
    within(limit, "failures()", {
        let host = host.clone();
        move || host.failures()
    });
    within(limit, "history()", {
        let host = host.clone();
        move || host.history()
    });
    within(limit, "shadows()", {
        let host = host.clone();
        move || host.shadows()
    });
    assert_eq!(host.reports()[0].name, "seed-rules", "the previous version serves meanwhile");

    release_tx.send(()).expect("release the compile");
    let summary = rescan.join().expect("rescan");
    assert_eq!(summary.loaded, vec!["10-policy"]);
    assert_eq!(host.reports()[0].name, "tag-router");
    assert!(host.compiling().is_empty());
}

#[test]
fn a_plugin_that_failed_to_load_is_refused_in_its_place_and_the_fallback_never_stands_in() {
    let engine = PluginEngine::new(Limits::default()).expect("engine");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(plugin_path("seed-rules"), dir.path().join("10-seed.wasm")).expect("seed");
    let pow = plugin_bytes("pow-check");
    let broken = dir.path().join("20-pow-check.wasm");
    std::fs::write(&broken, &pow[..pow.len() / 2]).expect("truncated");
    let host =
        PluginHost::open_with_fallback(engine.clone(), dir.path(), Some(NativeSeedRules::builtin())).expect("open");

    let failed = host.active_failures();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].file.ends_with("20-pow-check.wasm") && !failed[0].previous_serves, "{failed:?}");
    let active: Vec<String> = host.reports().into_iter().map(|r| r.key).collect();
    assert_eq!(active, ["10-seed"], "the stand-in is not listed as active, the built-in rules are not there");
    match host.current().validate_solution(&job(), &weak_solution()) {
        Validation::Invalid(refusal) => assert_eq!(refusal.plugin, "20-pow-check", "{refusal}"),
        other => panic!("a validator that failed to load let a solution through: {other:?}"),
    }
    let refusal = host.current().admit_worker(&welcome(), 0).expect_err("no worker admitted");
    assert_eq!(refusal.plugin, "20-pow-check");
    assert!(host.current().admit_job(&submission(5), &mut NodeState::default(), 0).is_err());

    // Mended: the plugin itself decides.
    std::fs::write(&broken, &pow).expect("whole");
    let summary = host.rescan();
    assert_eq!(summary.loaded, vec!["20-pow-check"]);
    assert!(host.failures().is_empty());
    match host.current().validate_solution(&job(), &weak_solution()) {
        Validation::Invalid(refusal) => {
            assert_eq!(refusal.plugin, "20-pow-check");
            assert!(refusal.reason.contains("proof of work"), "pow-check's own reason: {refusal}");
        }
        other => panic!("pow-check accepted a weak solution: {other:?}"),
    }
    assert!(host.current().admit_worker(&welcome(), 0).is_ok());

    // A folder holding only a broken file: refused, not the built-in rules.
    let lonely = tempfile::tempdir().expect("tempdir");
    std::fs::write(lonely.path().join("10-seed.wasm"), b"\0asm garbage").expect("garbage");
    let host = PluginHost::open_with_fallback(engine, lonely.path(), Some(NativeSeedRules::builtin())).expect("open");
    assert!(host.reports().is_empty(), "{:?}", host.reports());
    assert!(host.current().admit_worker(&welcome(), 0).is_err(), "the built-in rules would have admitted it");
    // With no plugin file at all, the built-in rules serve.
    std::fs::remove_file(lonely.path().join("10-seed.wasm")).expect("remove");
    host.rescan();
    assert_eq!(host.reports().first().map(|r| r.key.as_str()), Some(eligo::plugin::BUILTIN_KEY));
    assert!(host.current().admit_worker(&welcome(), 0).is_ok());
}

/// `eligo serve` on a folder holding a good plugin and a truncated one.
struct Serve {
    dir: tempfile::TempDir,
    admin: std::net::SocketAddr,
}

impl Serve {
    fn new(start_with_failed: bool) -> Serve {
        let dir = tempfile::tempdir().expect("tempdir");
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).expect("policies");
        std::fs::copy(plugin_path("seed-rules"), policies.join("10-seed-rules.wasm")).expect("seed");
        let pow = plugin_bytes("pow-check");
        std::fs::write(policies.join("20-pow-check.wasm"), &pow[..pow.len() / 2]).expect("truncated");
        let admin = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
        let config = format!(
            "data_dir = {:?}\n[node]\nlisten = \"127.0.0.1:0\"\n[worker]\nlisten = \"127.0.0.1:0\"\n\
             [admin]\nlisten = \"{admin}\"\n[plugins]\ndir = {:?}\nstart_with_failed = {start_with_failed}\n",
            dir.path().join("data"),
            policies,
        );
        std::fs::write(dir.path().join("eligo.toml"), config).expect("eligo.toml");
        Serve { dir, admin }
    }

    fn spawn(&self) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_eligo"))
            .args(["serve", "--config"])
            .arg(self.dir.path().join("eligo.toml"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("eligo serve")
    }
}

#[test]
fn eligo_refuses_to_start_when_a_plugin_fails_to_load() {
    let serve = Serve::new(false);
    let mut child = serve.spawn();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("eligo did not stop with a plugin that failed to load");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("20-pow-check.wasm") && stderr.contains("failed to load"), "{stderr}");
    assert!(stderr.contains("start_with_failed"), "says how to start anyway: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_start_with_failed_eligo_starts_names_the_failure_at_healthz_and_the_fallback_does_not_serve() {
    let serve = Serve::new(true);
    let mut child = serve.spawn();
    // The pipe is drained, so eligo never blocks writing its log.
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || std::io::copy(&mut { stderr }, &mut std::io::sink()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let health = loop {
        if tokio::net::TcpStream::connect(serve.admin).await.is_ok() {
            break support::http::get(serve.admin, "/healthz").await;
        }
        if let Some(status) = child.try_wait().expect("status") {
            panic!("eligo stopped ({status}) though told to start with failed plugins");
        }
        assert!(Instant::now() < deadline, "eligo did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health.status, 200, "a liveness check: {}", health.body);
    assert!(health.body.starts_with("ok") && health.body.contains("20-pow-check.wasm"), "{}", health.body);

    let plugins = support::http::get(serve.admin, "/plugins").await.ok_json();
    let active: Vec<&str> =
        plugins["active"].as_array().expect("active").iter().filter_map(|p| p["key"].as_str()).collect();
    assert_eq!(active, ["10-seed-rules"], "no built-in rules in place of the failed plugin: {plugins:#}");
    let failed = &plugins["failed"][0];
    assert!(failed["file"].as_str().is_some_and(|f| f.ends_with("20-pow-check.wasm")), "{plugins:#}");
    assert_eq!(failed["previous_serves"], false, "{plugins:#}");
    let summary = support::http::get(serve.admin, "/api/v1/summary").await.ok_json();
    assert!(summary.to_string().contains("20-pow-check.wasm"), "the dashboard lists it: {summary:#}");
    let _ = child.kill();
    let _ = child.wait();
}
