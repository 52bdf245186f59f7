//! A miner's page in a real browser, at a phone's width: in a binary of its own,
//! since the dashboard's test reads process-wide counters that this one's
//! traffic would add to.

mod support;

use std::time::Duration;
use support::backends::Kind;
use support::browser::Browser;
use support::server::Server;

/// A miner's page on a phone-sized screen: its workers, its counts and its
/// hourly chart, from real solutions. The screenshot is kept at
/// `target/test-artifacts/miner.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miners_page_shows_its_workers_and_hours_on_a_phone() {
    let server = Server::start(Kind::Embedded, &["seed-rules", "pow-check"]).await;
    let admin = server.running.admin_addr.expect("admin server");
    // One valid and one invalid solution of a worker of address aleo1worker.
    let (_worker, _node, _) = server.solve_one_job("rig-phone", 5150).await;
    let mut browser = Browser::start(390, 1100).await;
    browser.navigate(&format!("http://{admin}/miners/aleo1worker")).await;
    let wait = Duration::from_secs(20);
    let workers = browser.wait_for_text("#workers", wait, |t| t.contains("rig-phone")).await;
    assert!(workers.contains("rig-phone · rig"), "{workers}");
    // The counts come from the store once the processor has judged both.
    for _ in 0..40 {
        if browser.text("#valid-1h").await == "1" && browser.text("#invalid-1h").await == "1" {
            break;
        }
        browser.eval("refresh()").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!((browser.text("#valid-1h").await, browser.text("#invalid-1h").await), ("1".into(), "1".into()));
    assert_eq!(browser.text("#online").await, "1");
    assert_eq!(browser.text("#address").await, "aleo1worker");
    let bars = browser.eval("document.querySelectorAll('#hourly rect').length").await.as_f64().unwrap_or(0.0);
    assert_eq!(bars, 48.0, "a valid and an invalid bar for each of 24 hours");
    // Nothing overflows a phone's width.
    let overflow = browser.eval("document.documentElement.scrollWidth > window.innerWidth").await;
    assert_eq!(overflow, false, "no sideways scrolling");
    // Another address's page shows none of these workers.
    browser.navigate(&format!("http://{admin}/miners/aleo1someoneelse")).await;
    let none = browser.wait_for_text("#workers", wait, |t| t.contains("no worker")).await;
    assert!(!none.contains("rig-phone"), "{none}");

    browser.navigate(&format!("http://{admin}/miners/aleo1worker")).await;
    browser.wait_for_text("#workers", wait, |t| t.contains("rig-phone")).await;
    let png = browser.screenshot().await;
    let dir = support::root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    std::fs::write(dir.join("miner.png"), &png).expect("saving the screenshot");
    drop(browser);
    server.stop().await;
}
