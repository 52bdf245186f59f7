//! Shadow rollout: a candidate in `shadow/` answers copies of the active plugin's
//! calls, never decides, and is reported with how often it agreed.

mod support;

use eligo::plugin::{Job, Limits, PluginEngine, PluginHost, PolicySet, ShadowReport, Welcome, WorkerState};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::backends::{Backends, Kind};
use support::plugin_path;
use support::server::{job, Server};

fn engine() -> PluginEngine {
    PluginEngine::new(Limits::default()).expect("engine")
}

fn welcome(i: usize, caption: &str) -> Welcome {
    Welcome {
        ip: "10.0.0.1".into(),
        address: "a".into(),
        hardware: "rtx".into(),
        hardware_id: format!("w{i}"),
        caption: caption.into(),
    }
}

/// Offers one job to `n` newly admitted workers; how many got it.
fn offer(set: &PolicySet, n: usize, caption: &str) -> usize {
    let mut workers: Vec<WorkerState> = (0..n).filter_map(|i| set.admit_worker(&welcome(i, caption), 0).ok()).collect();
    let mut refs: Vec<&mut WorkerState> = workers.iter_mut().collect();
    let job = Job { task_id: "t".into(), block_height: 1, proof_target: 1, epoch_challenge: "{}".into() };
    set.offer_job(&job, &mut refs, 0).len()
}

/// The report of the only candidate once it has answered `calls` calls.
async fn answered(host: &PluginHost, calls: u64) -> ShadowReport {
    for _ in 0..200 {
        let reports = host.shadows();
        if reports.first().is_some_and(|r| r.calls >= calls) {
            return reports.into_iter().next().expect("a candidate");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the candidate did not answer {calls} calls: {:?}", host.shadows());
}

fn install(dir: &Path, plugin: &str, as_file: &str, settings: Option<&str>) {
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::copy(plugin_path(plugin), dir.join(format!("{as_file}.wasm"))).expect("copy");
    if let Some(settings) = settings {
        std::fs::write(dir.join(format!("{as_file}.toml")), settings).expect("settings");
    }
}

#[tokio::test]
async fn a_candidate_answers_every_call_never_decides_and_its_disagreements_are_sampled() {
    let dir = tempfile::tempdir().expect("tempdir");
    install(dir.path(), "tag-router", "20-router", Some("max_workers_per_job = 2\n"));
    install(&dir.path().join("shadow"), "tag-router", "20-router", Some("max_workers_per_job = 3\n"));
    let host = PluginHost::open(engine(), dir.path()).expect("open");

    assert_eq!(offer(&host.current(), 5, "rig"), 2, "the active plugin decides");
    // Five welcomes (they agree: same profile) and one offer-job (it does not).
    let report = answered(&host, 6).await;
    assert!(report.shadowing && report.shadows == "20-router", "{report:?}");
    assert_eq!((report.agreed, report.disagreed, report.failed, report.dropped), (5, 1, 0, 0), "{report:?}");
    assert!(report.mean_call_micros > 0.0);
    let sample = &report.samples[0];
    assert_eq!(sample.hook, "offer-job");
    assert_eq!(sample.active.as_array().map(Vec::len), Some(2), "{sample:?}");
    assert_eq!(sample.shadow.as_array().map(Vec::len), Some(3), "{sample:?}");
    assert!(sample.input["workers"]["states"].is_array(), "the input is kept: {sample:?}");
}

#[tokio::test]
async fn a_candidate_that_fails_is_counted_and_the_active_plugin_is_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    install(dir.path(), "tag-router", "20-router", None);
    install(&dir.path().join("shadow"), "testing-misbehave", "20-router", None);
    let host = PluginHost::open(engine(), dir.path()).expect("open");
    assert_eq!(offer(&host.current(), 3, "trap"), 3, "the active plugin admits and offers");
    let report = answered(&host, 4).await;
    assert_eq!(report.disagreed, 4, "{report:?}");
    assert!(report.failed >= 3, "the trapped welcomes: {report:?}");
    assert!(report.samples.iter().any(|s| s.shadow["failed_closed"] == "trap"), "{:?}", report.samples);
}

#[tokio::test]
async fn promoting_a_candidate_is_moving_its_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shadow = dir.path().join("shadow");
    install(dir.path(), "tag-router", "20-router", Some("max_workers_per_job = 2\n"));
    install(&shadow, "tag-router", "20-router", Some("max_workers_per_job = 3\n"));
    let host = PluginHost::open(engine(), dir.path()).expect("open");
    assert_eq!(offer(&host.current(), 5, "rig"), 2);

    for file in ["20-router.wasm", "20-router.toml"] {
        std::fs::rename(shadow.join(file), dir.path().join(file)).expect("move");
    }
    let summary = host.rescan();
    assert!(summary.removed.contains(&"shadow/20-router".to_string()), "{summary:?}");
    assert!(host.shadows().is_empty());
    assert_eq!(offer(&host.current(), 5, "rig"), 3, "the candidate decides now");
}

#[tokio::test]
async fn a_candidate_for_a_key_nobody_has_is_listed_and_gets_no_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    install(dir.path(), "seed-rules", "10-seed", None);
    install(&dir.path().join("shadow"), "tag-router", "20-router", None);
    let host = PluginHost::open(engine(), dir.path()).expect("open");
    offer(&host.current(), 3, "rig");
    let reports = host.shadows();
    assert_eq!(reports.len(), 1);
    assert!(!reports[0].shadowing);
    assert_eq!(reports[0].calls, 0);
    let _: Arc<PolicySet> = host.current();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_loads_a_candidate_dropped_into_shadow_and_reports_it() {
    let server = Server::start_on(Backends::new(Kind::Embedded).await, &["seed-rules"], None).await;
    let policies = server.backends.dir().join("policies");
    // The server copies the seed rules in as 10-seed-rules; its candidate is the same plugin.
    install(&policies.join("shadow"), "seed-rules", "10-seed-rules", None);
    for _ in 0..200 {
        if !server.running.plugins.shadows().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut worker = server.worker("hw-shadow").await;
    let mut node = server.node().await;
    node.send(&job(40, 5)).await;
    worker.recv("the job").await;

    let admin = server.running.admin_addr.expect("admin server");
    let mut report = serde_json::Value::Null;
    for _ in 0..200 {
        report = support::http::get(admin, "/api/v1/plugins").await.ok_json();
        if report["shadows"][0]["calls"].as_u64() >= Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let shadow = &report["shadows"][0];
    assert_eq!(shadow["shadows"], "10-seed-rules", "{report}");
    assert_eq!(shadow["name"], "seed-rules");
    // admit-worker, admit-job and offer-job at least; the same plugin agrees on every one.
    assert!(shadow["calls"].as_u64() >= Some(3), "{report}");
    assert_eq!(shadow["agreed"], shadow["calls"], "{report}");
    let legacy = support::http::get(admin, "/plugins").await.ok_json();
    assert_eq!(legacy["shadows"][0]["shadows"], "10-seed-rules", "{legacy}");
    let metrics = support::http::get(admin, "/metrics").await.body;
    assert!(metrics.contains("eligo_shadow_calls_total{plugin=\"10-seed-rules\""), "{metrics}");
    server.stop().await;
}
