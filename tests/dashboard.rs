//! The dashboard in a real browser: headless Chromium opens the admin port's
//! page while a worker and a node are connected and a job and its solution have
//! passed, and the page must show them, live. The screenshot is kept as a test
//! artifact at `target/test-artifacts/dashboard.png`.

mod support;

use std::time::Duration;
use support::backends::Kind;
use support::browser::Browser;
use support::server::{Server, Solved};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_connections_jobs_and_solutions_live() {
    let server = Server::start(Kind::Embedded, &["seed-rules", "pow-check"]).await;
    let admin = server.running.admin_addr.expect("admin server");
    let mut browser = Browser::start(1280, 1700).await;
    browser.navigate(&format!("http://{admin}/")).await;
    browser.wait_for_text("#live-text", Duration::from_secs(15), |t| t.starts_with("live")).await;
    browser.wait_for_text("#recent-jobs", Duration::from_secs(5), |t| t.contains("no job yet")).await;

    // A candidate with a floor no solution reaches shadows the proof-of-work check.
    let shadow = server.running.plugins.dir().join("shadow");
    std::fs::create_dir_all(&shadow).expect("shadow/");
    std::fs::write(shadow.join("20-pow-check.toml"), "min_target = 9223372036854775807\n").expect("settings");
    std::fs::copy(support::plugin_path("pow-check"), shadow.join("20-pow-check.wasm")).expect("candidate");
    browser.wait_for_text("#shadows", Duration::from_secs(15), |t| t.contains("shadow/20-pow-check")).await;
    let reloads =
        browser.wait_for_text("#reloads", Duration::from_secs(5), |t| t.contains("shadow/20-pow-check")).await;
    assert!(reloads.contains("loaded 10-seed-rules, 20-pow-check"), "the first load is listed too: {reloads}");

    // Traffic after the page opened: what it shows now came live.
    let (_worker, _node, Solved { task, good, .. }) = server.solve_one_job("rig-7f3a", 4242).await;

    let wait = Duration::from_secs(15);
    browser.wait_for_text("#workers-count", wait, |t| t == "1").await;
    browser.wait_for_text("#nodes-count", wait, |t| t == "1").await;
    let jobs = browser
        .wait_for_text("#recent-jobs", wait, |t| {
            t.contains(&format!("{good} · rig-7f3a · valid")) && t.contains("invalid")
        })
        .await;
    assert!(jobs.contains("4242") && jobs.contains(&task), "the job's height and task id: {jobs}");
    let workers = browser.text("#workers").await;
    assert!(workers.contains("rig-7f3a · rig") && workers.contains("NVIDIA RTX 4090"), "{workers}");
    let nodes = browser.wait_for_text("#nodes", wait, |t| t.contains("4242")).await;
    assert!(nodes.contains("127.0.0.1:"), "{nodes}");
    let plugins = browser.text("#plugins").await;
    assert!(plugins.contains("10-seed-rules") && plugins.contains("20-pow-check"), "{plugins}");
    browser.wait_for_text("#jobs-detail", wait, |t| t.contains("1 in all")).await;
    let latency = browser.wait_for_text("#latency", wait, |t| t.contains("ms") || t.contains("µs")).await;
    assert!(latency.contains("job fan-out"), "{latency}");
    // The candidate refused the valid solution the active check accepted: a disagreement, shown with both answers.
    let shadows = browser.wait_for_text("#shadows", wait, |t| t.contains("needs 9223372036854775807")).await;
    assert!(shadows.contains("validate-solution") && shadows.contains(" %"), "{shadows}");
    assert!(!shadows.contains("100.0 %"), "a disagreement lowers the agreement: {shadows}");
    // The history charts draw the seconds since the server started, the traffic included.
    let connections =
        browser.wait_for_text("#legend-connections", wait, |t| t.contains("workers 1") && t.contains("nodes 1")).await;
    assert!(connections.contains("workers 1"), "{connections}");
    for chart in ["connections", "throughput", "admission", "latency"] {
        let points = browser
            .eval(&format!("Number(document.getElementById('chart-{chart}').dataset.points || 0)"))
            .await
            .as_f64()
            .unwrap_or(0.0);
        assert!(points >= 2.0, "the {chart} chart draws the samples taken so far: {points} points");
    }
    browser.wait_for_text("#legend-throughput", wait, |t| t.contains("jobs") && t.contains("solutions")).await;
    let drawn =
        browser.eval("document.querySelectorAll('#chart-connections path[data-series=\"workers\"]').length").await;
    assert_eq!(drawn, 1, "a line for the workers connected");
    // Whatever a worker names itself is shown as text, never run as markup.
    assert_eq!(browser.eval("document.querySelectorAll('#recent-jobs script, #recent-jobs img').length").await, 0);

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = support::root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    std::fs::write(dir.join("dashboard.png"), &png).expect("saving the screenshot");
    drop(browser);
    server.stop().await;
}
