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
    let mut browser = Browser::start(1280, 900).await;
    browser.navigate(&format!("http://{admin}/")).await;
    browser.wait_for_text("#live-text", Duration::from_secs(15), |t| t.starts_with("live")).await;
    browser.wait_for_text("#recent-jobs", Duration::from_secs(5), |t| t.contains("no job yet")).await;

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
