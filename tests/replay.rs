//! Replay: a candidate plugin over the history a running server recorded, on
//! both stores, through the library and through `eligo plugin replay`.

mod support;

use eligo::authoring::replay::{self, History, Range};
use eligo::plugin::{Limits, PluginEngine, PluginHost};
use eligo::store::{Page, SolutionFilter, WorkerFilter};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use support::backends::{Backends, Kind};
use support::plugin_path;
use support::server::{job, Server};

on_both!(a_replay_shows_what_a_candidate_would_have_changed);

/// A floor no solution reaches: the candidate refuses every solution.
const FLOOR: &str = "min_target = 9223372036854775807\n";

fn engine() -> PluginEngine {
    PluginEngine::new(Limits::default()).expect("engine")
}

/// Polls `done` every 50 ms for up to 20 s.
async fn until<F, Fut>(what: &str, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A history: three workers (one named `banned`), a job at height 1, then a
/// fourth worker and a job at height 2 with a valid and an invalid solution.
/// Returns the backends (the server stopped) and its plugin folder.
async fn record_history(kind: Kind) -> (Backends, std::path::PathBuf) {
    let server = Server::start(kind, &["seed-rules", "pow-check"]).await;
    let mut workers = Vec::new();
    for name in ["hw-a", "hw-b", "banned"] {
        workers.push(server.worker(name).await);
    }
    let mut node = server.node().await;
    node.send(&job(1, 500)).await;
    for worker in &mut workers {
        worker.recv("the job at height 1").await;
    }
    // A fourth worker arrives while job 1 is current (the server offers it then),
    // and solves job 2: one valid solution, one invalid.
    let mut late = server.worker("hw-c").await;
    late.recv("the current job, on arrival").await;
    support::server::solve(&mut late, &mut node, 2).await;
    for worker in &mut workers {
        worker.recv("the job at height 2").await;
    }
    let store = server.backends.store.clone();
    until("both solutions judged", || async {
        let page = store.list_solutions(&SolutionFilter::default(), Page::new(10, None)).await.expect("solutions");
        page.items.len() == 2 && page.items.iter().all(|s| s.checked)
    })
    .await;
    until("four worker rows", || async {
        let rows = store.list_worker_connections(&WorkerFilter::default(), Page::new(10, None)).await.expect("rows");
        rows.items.len() == 4
    })
    .await;
    let dir = server.running.plugins.dir().to_path_buf();
    server.running.stop().await;
    (server.backends, dir)
}

async fn a_replay_shows_what_a_candidate_would_have_changed(kind: Kind) {
    let (backends, policies) = record_history(kind).await;
    let history = History::read(&*backends.store, &Range::All).await.expect("the history");
    assert_eq!((history.welcomes.len(), history.jobs.len(), history.solutions.len()), (4, 2, 2));
    let active = PluginHost::open(engine(), &policies).expect("the active plugins").current();

    // A stricter proof-of-work check in place of the active one.
    let floor = engine().load_with_settings(
        "floor",
        &support::plugin_bytes("pow-check"),
        r#"{"min_target":9223372036854775807}"#,
    );
    let floor = eligo::plugin::loaded_policy(
        "20-pow-check".into(),
        Path::new("floor.wasm"),
        "",
        Arc::new(floor.expect("loads")),
    );
    let (a, c, replaced) = replay::with_candidate(&active, floor);
    let report = replay::replay(&history, &a, &c, "20-pow-check", replaced).expect("replayed");
    assert!(report.replaced);
    let stored_valid = history.solutions.iter().filter(|s| s.valid).count();
    assert_eq!(report.solutions.valid_by_active, stored_valid, "the active plugins decide again as they did");
    assert_eq!(
        (report.solutions.replayed, report.solutions.valid_to_invalid, report.solutions.invalid_to_valid),
        (2, 1, 0)
    );
    assert!(report.solutions.flips[0].candidate.contains("needs 9223372036854775807"), "{:?}", report.solutions.flips);
    assert_eq!((report.jobs.replayed, report.jobs.changed, report.welcomes.flipped), (2, 0, 0), "{report:#?}");
    assert_eq!(report.jobs.offers_by_active, report.jobs.offers_by_candidate);
    assert!(report.jobs.offers_by_active >= 4, "both jobs reached the workers connected: {report:#?}");

    // A gate added in front: it refuses `banned` and offers no job to anyone.
    let gate = engine().load("gate", &support::plugin_bytes("testing-contract-0-1")).expect("loads");
    let gate = eligo::plugin::loaded_policy("05-gate".into(), Path::new("gate.wasm"), "", Arc::new(gate));
    let (a, c, replaced) = replay::with_candidate(&active, gate);
    let report = replay::replay(&history, &a, &c, "05-gate", replaced).expect("replayed");
    assert!(!report.replaced, "a new key is added");
    assert_eq!(report.welcomes.flipped, 1);
    assert_eq!(report.welcomes.flips[0].hardware_id, "banned");
    assert!(report.welcomes.flips[0].candidate.contains("banned by a 0.1.0 plugin"), "{:?}", report.welcomes.flips);
    assert_eq!(report.jobs.changed, 2);
    assert_eq!(report.jobs.workers_lost, report.jobs.offers_by_active - report.jobs.offers_by_candidate);
    assert!(report.not_replayed.is_empty(), "{:?}", report.not_replayed);

    // A candidate deciding only what the store keeps no input for is named, not guessed at.
    let auth = engine().load("auth", &support::plugin_bytes("auth")).expect("loads");
    let auth = eligo::plugin::loaded_policy("01-auth".into(), Path::new("auth.wasm"), "", Arc::new(auth));
    let (a, c, replaced) = replay::with_candidate(&active, auth);
    let report = replay::replay(&history, &a, &c, "01-auth", replaced).expect("replayed");
    assert!(report.not_replayed.iter().any(|h| h.starts_with("admit-connection")), "{:?}", report.not_replayed);
    assert_eq!((report.welcomes.flipped, report.jobs.changed, report.solutions.valid_to_invalid), (0, 0, 0));

    // The same through the command an operator types, with its summary and JSON.
    let floor_settings = backends.dir().join("floor.toml");
    std::fs::write(&floor_settings, FLOOR).expect("settings");
    let mut args: Vec<String> = vec![
        "plugin".into(),
        "replay".into(),
        plugin_path("pow-check").display().to_string(),
        "--against".into(),
        "20-pow-check".into(),
        "--settings".into(),
        floor_settings.display().to_string(),
        "--plugins-dir".into(),
        policies.display().to_string(),
    ];
    if kind == Kind::Embedded {
        args.extend(["--data-dir".into(), backends.dir().display().to_string()]);
    }
    let run = |extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_eligo"))
            .args(&args)
            .args(extra)
            .envs(backends.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("ELIGO_CONFIG")
            .output()
            .expect("eligo runs");
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), said)
    };
    let (ok, summary, said) = run(&[]);
    assert!(ok, "{said}");
    assert!(summary.contains("replayed 4 welcomes, 2 jobs (heights 1..2), 2 solutions"), "{said}");
    assert!(summary.contains("solutions  1 of 2 change validity: 1 valid → invalid, 0 invalid → valid"), "{said}");
    assert!(summary.contains("jobs       0 of 2 reach other workers"), "{said}");
    println!("{summary}");
    let (ok, json, said) = run(&["--json", "--heights", "2..2"]);
    assert!(ok, "{said}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {said}"));
    assert_eq!((json["jobs"]["replayed"].as_u64(), json["solutions"]["valid_to_invalid"].as_u64()), (Some(1), Some(1)));
    let (ok, _, said) = run(&["--heights", "9..1"]);
    assert!(!ok && said.contains("not a height range"), "{said}");
    backends.finish().await;
}
