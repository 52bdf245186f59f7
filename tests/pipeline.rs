//! The whole pipeline, as nodes and workers see it, over the original protocol.
//! Every case runs twice: on the embedded backends and on the networked ones
//! (RabbitMQ and PostgreSQL of this machine, librdkafka's mock Kafka cluster).

mod support;

use async_trait::async_trait;
use eligo::config::Config;
use eligo::store::{
    Inserted, NewJob, NewSolution, Page, Paged, Settlement, SolutionFilter, Store, StoreError, StoredJob,
    StoredSolution, WorkerConnection, WorkerFilter,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::backends::{Backends, Kind};
use support::server::{assert_node_quiet, assert_worker_quiet, challenge, job, solution, welcome, Server};
use support::solver;
use support::ws::{Client, Next};

on_both!(
    a_job_goes_node_to_worker_and_its_solution_back,
    the_original_rules_hold,
    a_node_that_reconnects_gets_what_was_found_while_it_was_away,
    bad_frames_get_precise_errors_and_the_connection_stays,
    oversized_input_is_refused_with_its_limit_and_the_server_stays,
    a_flood_of_frames_is_dropped_then_closed_and_others_are_served,
    a_processor_failing_between_commit_and_ack_loses_and_duplicates_nothing,
    worker_connections_are_recorded,
    invalid_solutions_are_stored_with_the_reason_and_not_delivered,
    shutting_down_closes_connections_with_1001,
    an_empty_plugin_folder_applies_the_builtin_seed_rules,
    the_admin_endpoints_report_health_plugins_and_metrics,
    a_batch_handles_each_message_as_it_would_alone,
    solutions_and_jobs_with_an_id_are_acknowledged_and_judged,
    presence_waits_in_the_queue_while_the_store_is_down,
);

async fn shutting_down_closes_connections_with_1001(kind: Kind) {
    let server = Server::start(kind, &["seed-rules"]).await;
    let mut worker = server.worker("hw-1").await;
    let mut node = server.node().await;
    node.send(&job(60, 1)).await;
    worker.recv("job 60").await;
    let Server { running, backends } = server;
    let stopping = tokio::spawn(running.stop());
    for client in [&mut worker, &mut node] {
        match client.next_within(Duration::from_secs(10)).await {
            Next::Closed(1001, reason) => assert!(reason.contains("shutting down"), "{reason}"),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    stopping.await.expect("stops");
    let rows = backends.store.worker_connections("hw-1", "rig").await.expect("rows");
    assert!(rows.iter().all(|r| r.disconnected_at.is_some()), "a graceful stop records the disconnect: {rows:?}");
    backends.finish().await;
}

async fn an_empty_plugin_folder_applies_the_builtin_seed_rules(kind: Kind) {
    let server = Server::start(kind, &[]).await;
    let reports = server.running.plugins.reports();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].key, eligo::plugin::BUILTIN_KEY);
    let mut worker = server.worker("hw-1").await;
    let mut node = server.node().await;
    node.send(&job(70, 1)).await;
    worker.recv("job 70").await;
    node.send_queued(&job(69, 1), "69").await;
    assert_worker_quiet(&mut server.node().await, &mut worker, &job(71, 1), "a stale height, as the seed rules say")
        .await;

    // Dropping a plugin in replaces the built-in rules.
    let dir = server.backends.dir().join("policies");
    std::fs::copy(support::plugin_path("tag-router"), dir.join("50-tag-router.wasm")).expect("copy");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.running.plugins.reports()[0].key != "50-tag-router" {
        assert!(tokio::time::Instant::now() < deadline, "the dropped-in plugin never replaced the built-in rules");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

async fn the_admin_endpoints_report_health_plugins_and_metrics(kind: Kind) {
    let server = Server::start(kind, &["seed-rules", "pow-check"]).await;
    let admin = server.running.admin_addr.expect("admin server");
    let get = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(admin).await.expect("admin connect");
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.expect("request");
        let mut body = String::new();
        stream.read_to_string(&mut body).await.expect("response");
        body
    };
    assert!(get("/healthz").await.ends_with("ok"));
    let plugins = get("/plugins").await;
    assert!(plugins.contains("\"name\":\"seed-rules\"") && plugins.contains("\"name\":\"pow-check\""), "{plugins}");
    assert!(plugins.contains("eligo:policy@0.2.0"), "{plugins}");
    let mut node = server.node().await;
    node.send_text("nope").await;
    node.recv("an error frame").await;
    let metrics = get("/metrics").await;
    assert!(metrics.contains("eligo_bad_frames_total{role=\"node\"}"), "{metrics}");
    let status = get("/status").await;
    assert!(status.contains("\"nodes\":1"), "{status}");
    server.stop().await;
}

async fn a_job_goes_node_to_worker_and_its_solution_back(kind: Kind) {
    let server = Server::start(kind, &["seed-rules", "pow-check"]).await;
    let mut worker = server.worker("hw-1").await;
    let mut node = server.node().await;
    node.send(&job(100, 500)).await;
    let work = worker.recv("the job").await;
    assert_eq!(work["epoch_challenge"], challenge(100), "the worker gets the challenge as the node sent it");
    assert_eq!(work.as_object().map(|o| o.len()), Some(2), "exactly task_id and epoch_challenge: {work}");
    let task_id = work["task_id"].as_str().expect("task_id").to_string();
    assert_eq!(task_id.len(), 36, "a uuid");

    let (nonce, reached) = solver::solve(&work["epoch_challenge"], 500, 0);
    let sent = solution(&task_id, nonce, reached);
    worker.send(&sent).await;
    let got = node.recv("the solution").await;
    assert_eq!(got, sent["solution"], "the node gets the worker's solution object verbatim");

    // The processor records the broadcast just after producing it: wait for that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let stored = loop {
        let stored = server.backends.store.broadcast_solutions_at(100).await.expect("read back");
        if !stored.is_empty() || tokio::time::Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stored.len(), 1);
    let (stored_job, stored_solution) = &stored[0];
    assert_eq!(stored_job.task_id, task_id);
    assert_eq!(stored_solution.unique_key, nonce.to_string());
    assert!(stored_solution.valid && stored_solution.checked, "validated by pow-check: {stored_solution:?}");
    assert_eq!((stored_solution.hardware_id.as_str(), stored_solution.caption.as_str()), ("hw-1", "rig"));
    server.stop().await;
}

async fn the_original_rules_hold(kind: Kind) {
    let server = Server::start(kind, &["seed-rules"]).await;
    let mut worker = server.worker("hw-1").await;
    let mut a = server.node().await;
    let mut c = server.node().await;

    a.send(&job(10, 100)).await;
    let work10 = worker.recv("job 10").await;
    let task10 = work10["task_id"].as_str().expect("task").to_string();
    // Acknowledged, so that C's job is queued after them.
    a.send_queued(&job(9, 100), "9").await;
    a.send_queued(&job(10, 100), "10 again").await;
    let work11 = assert_worker_quiet(&mut c, &mut worker, &job(11, 1), "stale and repeated heights are not sent").await;
    let task11 = work11["task_id"].as_str().expect("task").to_string();
    assert_ne!(task10, task11);

    // Below node A's target: nobody gets it.
    let below = worker.send_judged(&solution(&task10, 1, 50), "1").await;
    assert_eq!(below["valid"], true, "the seed rules route it, they do not judge it: {below}");
    let above = assert_node_quiet(&mut worker, &mut a, &work10, 100, "a solution below the job's target").await;

    // Node B waits on height 10 with a lower target: it catches up at once on what
    // was found above it (solution 1, and the marker above A's target).
    let mut b = server.node().await;
    b.send(&job(10, 40)).await;
    let caught_up: std::collections::BTreeSet<u64> = [b.recv("a stored solution").await, b.recv("the other").await]
        .iter()
        .map(|got| got["partial_solution"]["nonce"].as_u64().expect("a nonce"))
        .collect();
    assert_eq!(caught_up, [1, above].into(), "the stored solutions meeting B's target");

    // Meets both targets: A and B get it, C (waiting on height 11) does not.
    worker.send_judged(&solution(&task10, 2, 150), "2").await;
    assert_eq!(a.recv("solution 2").await["partial_solution"]["nonce"], 2);
    assert_eq!(b.recv("solution 2").await["partial_solution"]["nonce"], 2);
    assert_node_quiet(&mut worker, &mut c, &work11, 1, "a solution for another height").await;

    // The same nonce again is a duplicate: nobody gets it twice.
    let again = worker.send_judged(&solution(&task10, 2, 150), "2 again").await;
    assert_eq!(again["valid"], false, "{again}");
    let marker = assert_node_quiet(&mut worker, &mut a, &work10, 100, "a duplicate").await;
    assert_eq!(b.recv("the marker, not the duplicate").await["partial_solution"]["nonce"], marker);
    server.stop().await;
}

async fn a_node_that_reconnects_gets_what_was_found_while_it_was_away(kind: Kind) {
    let server = Server::start(kind, &["seed-rules"]).await;
    let mut worker = server.worker("hw-1").await;
    let mut node = server.node().await;
    node.send(&job(30, 5)).await;
    let work = worker.recv("job 30").await;
    let task = work["task_id"].as_str().expect("task").to_string();
    node.close().await;

    worker.send(&solution(&task, 77, 9)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.backends.store.broadcast_solutions_at(30).await.expect("read").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the solution was never broadcast");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut again = server.node().await;
    again.send(&job(30, 5)).await;
    assert_eq!(again.recv("the solution found while away").await["partial_solution"]["nonce"], 77);
    assert_node_quiet(&mut worker, &mut again, &work, 5, "it comes once").await;
    server.stop().await;
}

/// A node that comes back to a height where more was found than its queue holds
/// gets all of it, paced by how fast it reads, and is not closed as too slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_larger_than_the_node_queue_arrives_whole() {
    let server = Server::start_configured(Backends::new(Kind::Embedded).await, &["seed-rules"], None, |config| {
        config.node.outbox = 16;
    })
    .await;
    let mut worker = server.worker("hw-1").await;
    let mut node = server.node().await;
    node.send(&job(40, 1)).await;
    let work = worker.recv("job 40").await;
    let task = work["task_id"].as_str().expect("task").to_string();
    node.close().await;
    const FOUND: u64 = 200;
    for nonce in 1..=FOUND {
        worker.send(&solution(&task, nonce, 1)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.backends.store.broadcast_solutions_at(40).await.expect("read").len() < FOUND as usize {
        assert!(tokio::time::Instant::now() < deadline, "the solutions were never all broadcast");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = server.node().await;
    again.send(&job(40, 1)).await;
    let mut got = std::collections::BTreeSet::new();
    while got.len() < FOUND as usize {
        match again.next_within(Duration::from_secs(10)).await {
            Next::Frame(frame) => assert!(got.insert(frame["partial_solution"]["nonce"].as_u64().expect("a nonce"))),
            other => panic!("after {} of {FOUND} solutions: {other:?}", got.len()),
        }
    }
    assert_node_quiet(&mut worker, &mut again, &work, 1, "each once, and the connection stays").await;
    server.stop().await;
}

async fn bad_frames_get_precise_errors_and_the_connection_stays(kind: Kind) {
    let server = Server::start(kind, &["seed-rules"]).await;
    let mut node = server.node().await;
    node.send_text("{not json").await;
    let error = node.recv("an error frame").await;
    assert_eq!(error["type"], "error");
    assert!(error["error"].as_str().unwrap_or_default().contains("not valid JSON"), "{error}");
    node.send(&json!({ "epoch_challenge": {}, "proof_target": 1 })).await;
    let error = node.recv("an error frame").await;
    assert!(error["error"].as_str().unwrap_or_default().contains("block_height"), "{error}");

    let mut worker = server.worker("hw-1").await;
    node.send(&job(5, 1)).await;
    let task = worker.recv("the job after the bad frames").await["task_id"].as_str().expect("task").to_string();
    worker.send(&json!({ "task_id": task, "solution_target": 1 })).await;
    let error = worker.recv("an error frame").await;
    assert!(error["error"].as_str().unwrap_or_default().contains("solution"), "{error}");

    let mut bad = Client::connect(server.running.worker_addr.expect("worker server")).await;
    bad.send(&json!({ "ip": "1.2.3.4" })).await;
    match bad.next_within(Duration::from_secs(10)).await {
        Next::Closed(3000, reason) => assert!(reason.contains("bad welcome"), "{reason}"),
        other => panic!("expected close 3000, got {other:?}"),
    }
    server.stop().await;
}

async fn oversized_input_is_refused_with_its_limit_and_the_server_stays(kind: Kind) {
    let server = Server::start(kind, &["seed-rules"]).await;
    let worker_addr = server.running.worker_addr.expect("worker server");
    let mut node = server.node().await;
    let mut worker = server.worker("hw-1").await;
    node.send(&job(7, 1)).await;
    let task = worker.recv("job 7").await["task_id"].as_str().expect("task").to_string();

    // A field over its limit: an error frame that names it; the connection stays.
    let mut big = solution(&task, 1, 1);
    big["solution"]["padding"] = json!("x".repeat(20_000));
    worker.send(&big).await;
    let error = worker.recv("an error frame").await["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("`solution`") && error.contains("16384"), "{error}");
    worker.send(&solution(&task, 2, 1)).await;
    assert_eq!(node.recv("the solution within limits").await["partial_solution"]["nonce"], 2);

    // A message over the limit: closed with 1009 and the limit, from either role.
    worker.send_text_refusable("x".repeat(1 << 20)).await;
    match worker.next_within(Duration::from_secs(10)).await {
        Next::Closed(1009, reason) => assert!(reason.contains("65536"), "{reason}"),
        other => panic!("expected close 1009, got {other:?}"),
    }
    let mut flooding_node = server.node().await;
    flooding_node.send_text_refusable(format!("{{\"epoch_challenge\":\"{}\"}}", "y".repeat(100_000))).await;
    match flooding_node.next_within(Duration::from_secs(10)).await {
        Next::Closed(1009, reason) => assert!(reason.contains("over the limit"), "{reason}"),
        other => panic!("expected close 1009, got {other:?}"),
    }

    // A welcome field wider than its column is refused before it reaches the table.
    let mut wide = Client::connect(worker_addr).await;
    let mut welcome = welcome("hw-wide");
    welcome["caption"] = json!("c".repeat(300));
    wide.send(&welcome).await;
    match wide.next_within(Duration::from_secs(10)).await {
        Next::Closed(3000, reason) => assert!(reason.contains("`caption`") && reason.contains("255"), "{reason}"),
        other => panic!("expected close 3000, got {other:?}"),
    }

    // The server carries on.
    let mut after = server.worker("hw-2").await;
    node.send(&job(8, 1)).await;
    after.recv("a job after the refusals").await;
    server.stop().await;
}

/// A node that stops reading is closed with 1008 once its outbox is full, and
/// says so; a node that reads gets every solution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_reading_is_closed_with_1008_and_the_others_get_everything() {
    let backends = Backends::new(Kind::Embedded).await;
    let server = Server::start_configured(backends, &["seed-rules"], None, |config| {
        config.node.outbox = 64;
        // Small batches: a node that reads gets solutions a few at a time.
        config.processor.max_batch = 16;
    })
    .await;
    let mut worker = server.worker("hw-1").await;
    let node_addr = server.running.node_addr.expect("node server");
    let mut slow = Client::connect_slow(node_addr).await;
    let mut reader = server.node().await;
    slow.send(&job(40, 1)).await;
    reader.send(&job(40, 1)).await;
    let task = worker.recv("job 40").await["task_id"].as_str().expect("task id").to_owned();

    const SENT: u64 = 1_000;
    // Read as a node keeping up does, all along.
    let reading = tokio::spawn(async move {
        let mut delivered = std::collections::HashSet::new();
        while delivered.len() < SENT as usize {
            let got = reader.recv("every solution, for the node that reads").await;
            delivered.insert(got["partial_solution"]["nonce"].as_u64().unwrap_or_default());
        }
        delivered.len()
    });
    for nonce in 1..=SENT {
        let mut big = solution(&task, nonce, 1);
        // Big enough that a few fill the slow node's socket buffers.
        big["solution"]["proof.w"] = json!({ "x": "p".repeat(12_000) });
        worker.send(&big).await;
        if nonce % 100 == 0 {
            // Under the worker's frame budget.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(reading.await.expect("reader"), SENT as usize);
    // The slow node reads at last: what was queued, then the close with its reason.
    let mut before_close = 0;
    loop {
        match slow.next_within(Duration::from_secs(10)).await {
            Next::Frame(_) => before_close += 1,
            Next::Closed(code, reason) => {
                assert_eq!(code, 1008, "{reason}");
                assert!(reason.contains("too slow"), "{reason}");
                break;
            }
            Next::Quiet => panic!("the slow node was never closed ({before_close} frames)"),
        }
    }
    assert!(before_close < SENT, "closed before the end: {before_close} of {SENT} reached it");
    server.stop().await;
}

/// A worker that reads slowly skips only jobs superseded by newer ones: what it
/// gets is in height order and ends with the newest job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_loses_only_jobs_superseded_by_newer_ones() {
    let backends = Backends::new(Kind::Embedded).await;
    let server = Server::start_configured(backends, &["seed-rules"], None, |config| {
        config.worker.outbox = 4;
        // Jobs big enough that a few dozen outgrow any socket buffer.
        config.node.socket.max_message_bytes = 512 * 1024;
        config.node.socket.max_object_field_bytes = 400 * 1024;
    })
    .await;
    let mut slow = Client::connect_slow(server.running.worker_addr.expect("worker server")).await;
    slow.send(&welcome("slow")).await;
    let mut fast = server.worker("fast").await;
    let mut node = server.node().await;
    const JOBS: i64 = 60;
    let big = |height: i64| json!({ "epoch_challenge": { "e": height, "pad": "j".repeat(200_000) }, "proof_target": 1, "block_height": height });
    for height in 1..=JOBS {
        node.send(&big(height)).await;
        // The fast worker keeps up (and so paces the node).
        let got = fast.recv("every job, for a worker that reads").await;
        assert_eq!(got["epoch_challenge"]["e"], height);
    }
    let mut heights = Vec::new();
    loop {
        match slow.next_within(Duration::from_secs(2)).await {
            Next::Frame(work) => heights.push(work["epoch_challenge"]["e"].as_i64().unwrap_or_default()),
            Next::Quiet => break,
            Next::Closed(code, reason) => panic!("a slow worker is not closed: {code} {reason}"),
        }
    }
    assert!(heights.windows(2).all(|w| w[0] < w[1]), "in height order: {heights:?}");
    assert_eq!(heights.last(), Some(&JOBS), "the newest job always arrives: {heights:?}");
    assert!(heights.len() < JOBS as usize, "some superseded jobs were skipped: {heights:?}");
    server.stop().await;
}

/// Over a cap, the upgrade is refused with the limit in the answer; a place
/// comes back when a connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_a_cap_are_refused_with_the_limit() {
    use eligo::config::ConnectionLimits;
    let backends = Backends::new(Kind::Embedded).await;
    let server = Server::start_configured(backends, &["seed-rules"], None, |config| {
        // Tests connect from 127.0.0.1, exempt from the per-IP cap by default.
        config.worker.connections =
            ConnectionLimits { max: 0, max_per_ip: 2, per_ip_exempt: vec![], ..Default::default() };
        config.node.connections =
            ConnectionLimits { max: 1, max_per_ip: 0, per_ip_exempt: vec![], ..Default::default() };
    })
    .await;
    let worker_addr = server.running.worker_addr.expect("worker server");
    let first = server.worker("hw-1").await;
    let mut second = server.worker("hw-2").await;
    let refused = Client::refused(worker_addr).await;
    assert_eq!(refused, (429, "too many worker connections from 127.0.0.1 (limit 2)".to_owned()));

    let mut node = server.node().await;
    let refused = Client::refused(server.running.node_addr.expect("node server")).await;
    assert_eq!(refused, (503, "too many node connections (limit 1); try again later".to_owned()));

    first.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut third = loop {
        match Client::try_connect(worker_addr).await {
            Ok(mut client) => {
                client.send(&welcome("hw-3")).await;
                break client;
            }
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("the closed connection's place never came back: {e}"),
        }
    };
    node.send(&job(7, 1)).await;
    third.recv("the job, on the place that came back").await;
    second.recv("the job, on a connection under the cap").await;
    server.stop().await;
}

async fn a_flood_of_frames_is_dropped_then_closed_and_others_are_served(kind: Kind) {
    let server = Server::start_configured(Backends::new(kind).await, &["seed-rules"], None, |config| {
        config.node.socket.frames_per_second = 5;
        config.node.socket.frame_burst = 10;
    })
    .await;
    let mut node = server.node().await;
    let mut worker = server.worker("hw-1").await;
    // Within the burst: served as usual.
    node.send(&job(1, 1)).await;
    worker.recv("job 1").await;

    let mut flooding = server.node().await;
    for i in 0..5_000 {
        flooding.send_text_refusable(format!("{{\"flood\": {i}}}")).await;
    }
    let mut saw_dropped = false;
    let reason = loop {
        match flooding.next_within(Duration::from_secs(10)).await {
            Next::Frame(frame) => {
                let error = frame["error"].as_str().unwrap_or_default().to_string();
                saw_dropped |= error.contains("too many frames") && error.contains("dropped");
            }
            Next::Closed(1008, reason) => break reason,
            other => panic!("expected error frames, then close 1008, got {other:?}"),
        }
    };
    assert!(saw_dropped, "frames over the budget are answered as dropped before the close");
    assert!(reason.contains("too many frames") && reason.contains("5 frames per second"), "{reason}");

    // The other node is not held to the flooder's budget.
    node.send(&job(2, 1)).await;
    worker.recv("job 2 from the well-behaved node").await;
    server.stop().await;
}

/// Sockets that never finish their request hold a place under the caps until
/// the handshake timeout drops them; then real clients come in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handshake_counts_toward_the_caps_and_is_dropped_on_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start_configured(Backends::new(Kind::Embedded).await, &["seed-rules"], None, |config| {
        config.worker.connections.max = 2;
        config.worker.connections.handshake_timeout_secs = 2;
    })
    .await;
    let worker_addr = server.running.worker_addr.expect("worker server");
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut socket = tokio::net::TcpStream::connect(worker_addr).await.expect("connect");
        // A request that never ends: one header, and nothing after.
        socket.write_all(b"GET / HTTP/1.1\r\nHost: eligo\r\n").await.expect("a first line");
        slow.push(socket);
    }
    let started = std::time::Instant::now();
    let refused = Client::refused(worker_addr).await;
    assert_eq!(refused, (503, "too many worker connections (limit 2); try again later".to_owned()));
    for socket in &mut slow {
        // Keep trickling, as slowloris does: it does not buy more time.
        let _ = socket.write_all(b"X-a: b\r\n").await;
    }
    for mut socket in slow {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            other => panic!("a socket that never finished its request was kept: {other:?}"),
        }
    }
    let dropped_after = started.elapsed();
    assert!(dropped_after < Duration::from_secs(5), "dropped after {dropped_after:?}, the timeout is 2 s");
    let mut worker = server.worker("hw-after").await;
    let mut node = server.node().await;
    node.send(&job(3, 1)).await;
    worker.recv("a job, once the slow sockets are gone").await;
    server.stop().await;
}

/// One IP opening sockets faster than its allowance gets 429 before its request
/// is read; the exempt IPs (loopback by default) are not limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_attempts_over_the_rate_of_an_ip_are_answered_429() {
    let server = Server::start_configured(Backends::new(Kind::Embedded).await, &["seed-rules"], None, |config| {
        config.node.connections.per_ip_exempt = vec![];
        config.node.connections.attempts_per_ip_per_second = 3;
    })
    .await;
    let node_addr = server.running.node_addr.expect("node server");
    // Ten attempts at once. The allowance is a burst of three, refilled at three a
    // second: however slowly this machine opens them, at least three get through
    // and no more than three per second they took, started or not.
    let started = std::time::Instant::now();
    let attempts = futures::future::join_all((0..10).map(|_| Client::attempt(node_addr))).await;
    let took = started.elapsed();
    let (open, refused): (Vec<_>, Vec<_>) = attempts.into_iter().partition(Result::is_ok);
    let mut open: Vec<Client> = open.into_iter().flatten().collect();
    assert!(open.len() >= 3, "the burst of three gets through; {} of 10 did", open.len());
    // Whenever the ten took under 2.3 s, this bound is below ten: some were refused.
    let most = 3 + 3 * took.as_secs_f64().ceil() as usize;
    assert!(open.len() <= most, "{} of 10 got through in {took:?}: at most {most}", open.len());
    for refusal in refused {
        let refusal = refusal.err().expect("a refusal");
        assert_eq!(refusal, (429, "too many node connection attempts from 127.0.0.1 (limit 3 a second)".to_owned()));
    }
    // A second later the allowance has refilled.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    open.push(Client::connect(node_addr).await);
    // The worker server keeps its defaults: loopback is exempt.
    for i in 0..20 {
        server.worker(&format!("hw-{i}")).await;
    }
    server.stop().await;
}

/// The default budget (1,000 frames/s, burst 2,000) against floods at 200× and
/// 20× it, as one burst: closed with 1008 and the budget within seconds, and
/// answered with a handful of error frames, not one per frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_at_any_rate_is_closed_and_answered_a_handful_of_times() {
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start(Kind::Embedded, &["seed-rules"]).await;
    for count in [200_000, 20_000] {
        let mut flooding = server.node().await;
        let started = std::time::Instant::now();
        let flood = flooding.flood(Message::text("{}"), count).await;
        let took = started.elapsed();
        match &flood.end {
            Next::Closed(1008, reason) => {
                assert!(reason.contains("too many frames") && reason.contains("1000 frames per second"), "{reason}")
            }
            other => panic!("a flood of {count} frames: expected close 1008, got {other:?} after {} sent", flood.sent),
        }
        // Error frames: within the allowance of 10 a second (burst 10).
        let allowed = 10 + 10 * (took.as_secs() as usize + 1);
        assert!(flood.frames.len() <= allowed, "{} error frames in {took:?}", flood.frames.len());
        println!("flood of {count}: {} sent, {} error frames, closed after {took:?}", flood.sent, flood.frames.len());
    }
    // Others are served throughout.
    let (mut node, mut worker) = (server.node().await, server.worker("hw-beside").await);
    node.send(&job(5, 1)).await;
    worker.recv("a job while floods were closed").await;
    // Pings have a budget of their own (10 a second, burst 20).
    let mut pinging = server.node().await;
    let flood = pinging.flood(Message::Ping(vec![1, 2, 3].into()), 10_000).await;
    match &flood.end {
        Next::Closed(1008, reason) => assert!(reason.contains("too many pings"), "{reason}"),
        other => panic!("a ping flood: expected close 1008, got {other:?}"),
    }
    server.stop().await;
}

/// Floods at 10×, 100× and 1,000× a budget of 100 frames/s (burst 200), paced:
/// each is closed with 1008 within seconds, answered with a handful of error
/// frames, while another client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_at_10_100_and_1000_times_the_budget_are_closed_within_seconds() {
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start_configured(Backends::new(Kind::Embedded).await, &["seed-rules"], None, |config| {
        config.worker.socket.frames_per_second = 100;
        config.worker.socket.frame_burst = 200;
    })
    .await;
    let mut node = server.node().await;
    let mut beside = server.worker("hw-beside").await;
    for (times, height) in [(10u32, 1), (100, 2), (1000, 3)] {
        let mut flooding = server.worker(&format!("hw-flood-{times}")).await;
        let started = std::time::Instant::now();
        let flood = flooding.flood_at(Message::text("{}"), 1_000_000, Some(100 * times)).await;
        let took = started.elapsed();
        match &flood.end {
            Next::Closed(1008, reason) => assert!(reason.contains("100 frames per second (burst 200)"), "{reason}"),
            other => panic!("{times}x the budget: expected close 1008, got {other:?} after {} sent", flood.sent),
        }
        assert!(took < Duration::from_secs(5), "{times}x the budget: closed after {took:?}");
        let errors = flood.frames.iter().filter(|f| f["type"] == "error" || f["type"] == "ack").count();
        assert!(errors <= 10 + 10 * (took.as_secs() as usize + 1) + 1, "{errors} error frames in {took:?}");
        println!(
            "{times}x the budget ({}/s): {} frames sent, {errors} error frames received, closed 1008 after {took:.2?}",
            100 * times,
            flood.sent
        );
        node.send(&job(height, 1)).await;
        beside.recv("a job for the worker beside the flood").await;
    }
    server.stop().await;
}

/// A client at its budget, however long, is never closed nor refused a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_its_budget_is_never_refused() {
    let server = Server::start_configured(Backends::new(Kind::Embedded).await, &["seed-rules"], None, |config| {
        config.node.socket.frames_per_second = 5;
        config.node.socket.frame_burst = 10;
    })
    .await;
    let mut node = server.node().await;
    // The burst at once, then the sustained rate for three seconds.
    let mut last_sent = tokio::time::Instant::now();
    for height in 1..=25 {
        if height > 10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        last_sent = tokio::time::Instant::now();
        node.send(
            &json!({ "id": height, "epoch_challenge": { "e": height }, "proof_target": 1, "block_height": height }),
        )
        .await;
    }
    for height in 1..=25 {
        let ack = node.recv("an ack").await;
        assert_eq!(ack, json!({ "type": "ack", "id": height, "status": "accepted" }));
    }
    // One more at the same rate: its ack is next, so no refusal and no close came
    // before it.
    tokio::time::sleep_until(last_sent + Duration::from_millis(200)).await;
    node.send_queued(&job(26, 1), "26").await;
    server.stop().await;
}

async fn worker_connections_are_recorded(kind: Kind) {
    let server = Server::start(kind, &["seed-rules"]).await;
    let worker = server.worker("hw-rows").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = server.backends.store.worker_connections("hw-rows", "rig").await.expect("rows");
        if !rows.is_empty() || tokio::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rows.len(), 1);
    assert!(rows[0].disconnected_at.is_none());
    worker.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = server.backends.store.worker_connections("hw-rows", "rig").await.expect("rows");
        if rows[0].disconnected_at.is_some() {
            assert!(rows[0].disconnected_at >= Some(rows[0].connected_at));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "disconnected_at was never set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

async fn invalid_solutions_are_stored_with_the_reason_and_not_delivered(kind: Kind) {
    let server = Server::start(kind, &["seed-rules", "pow-check"]).await;
    let mut worker = server.worker("hw-1").await;
    let mut node = server.node().await;
    node.send(&job(40, 1000)).await;
    let work = worker.recv("job 40").await;
    let task = work["task_id"].as_str().expect("task").to_string();
    let (bad_nonce, reached) = solver::fail(&work["epoch_challenge"], 1000, 0);
    let verdict = worker.send_judged(&solution(&task, bad_nonce, 1000), "bad").await;
    assert_eq!(verdict["valid"], false, "{verdict}");
    assert_node_quiet(&mut worker, &mut node, &work, 1000, "an invalid solution").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row = server
            .backends
            .store
            .insert_solution(&NewSolution {
                unique_key: bad_nonce.to_string(),
                hardware_id: String::new(),
                caption: String::new(),
                task_id: task.clone(),
                solution: String::new(),
                solution_target: 0,
                address: None,
            })
            .await
            .expect("read back");
        if row.row.checked {
            assert!(!row.created, "the processor stored it");
            assert!(!row.row.valid);
            let reason = row.row.invalid_reason.unwrap_or_default();
            assert!(reason.contains(&format!("reaches target {reached}")), "{reason}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never validated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// Fails the first settlement that records a broadcast, of each kind: the
/// processor has committed and produced, then "dies" before recording the
/// broadcast and acking.
struct FailingOnce {
    inner: Arc<dyn Store>,
    job_failures: AtomicU32,
    solution_failures: AtomicU32,
    /// While set, writing worker presence fails, as with the database down.
    presence_down: std::sync::atomic::AtomicBool,
}

impl FailingOnce {
    fn over(inner: Arc<dyn Store>) -> FailingOnce {
        FailingOnce {
            inner,
            job_failures: AtomicU32::new(0),
            solution_failures: AtomicU32::new(0),
            presence_down: Default::default(),
        }
    }
}

fn injected() -> StoreError {
    StoreError::Corrupt("injected failure: the processor dies here".into())
}

#[async_trait]
impl Store for FailingOnce {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }
    async fn check(&self) -> Result<(), StoreError> {
        self.inner.check().await
    }
    async fn insert_jobs(&self, jobs: &[NewJob]) -> Result<Vec<Inserted<StoredJob>>, StoreError> {
        self.inner.insert_jobs(jobs).await
    }
    async fn jobs_by_task(&self, task_ids: &[String]) -> Result<Vec<StoredJob>, StoreError> {
        self.inner.jobs_by_task(task_ids).await
    }
    async fn latest_broadcast_job(&self) -> Result<Option<StoredJob>, StoreError> {
        self.inner.latest_broadcast_job().await
    }
    async fn insert_solutions(&self, s: &[NewSolution]) -> Result<Vec<Inserted<StoredSolution>>, StoreError> {
        self.inner.insert_solutions(s).await
    }
    async fn settle(&self, settlement: &Settlement<'_>) -> Result<(), StoreError> {
        if !settlement.jobs_broadcast.is_empty() && self.job_failures.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(injected());
        }
        if !settlement.solutions_broadcast.is_empty() && self.solution_failures.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(injected());
        }
        self.inner.settle(settlement).await
    }
    async fn broadcast_solutions_at(&self, h: i64) -> Result<Vec<(StoredJob, StoredSolution)>, StoreError> {
        self.inner.broadcast_solutions_at(h).await
    }
    async fn worker_connected(&self, w: &WorkerConnection) -> Result<i64, StoreError> {
        self.inner.worker_connected(w).await
    }
    async fn worker_disconnected(&self, id: i64) -> Result<(), StoreError> {
        self.inner.worker_disconnected(id).await
    }
    async fn close_connections_of(&self, instance: &str) -> Result<u64, StoreError> {
        self.inner.close_connections_of(instance).await
    }
    async fn save_http_node(&self, id: &str, expires_at_ms: i64, record: &str) -> Result<(), StoreError> {
        self.inner.save_http_node(id, expires_at_ms, record).await
    }
    async fn live_http_nodes(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        self.inner.live_http_nodes(now_ms).await
    }
    async fn record_webhook_delivery(&self, webhook_id: &str, expires_at_ms: i64) -> Result<(), StoreError> {
        self.inner.record_webhook_delivery(webhook_id, expires_at_ms).await
    }
    async fn webhook_delivered(&self, webhook_id: &str) -> Result<bool, StoreError> {
        self.inner.webhook_delivered(webhook_id).await
    }
    async fn record_presence(
        &self,
        connections: &[eligo::store::Presence],
        recoveries: &[eligo::store::Recovery],
    ) -> Result<(), StoreError> {
        if self.presence_down.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.record_presence(connections, recoveries).await
    }
    async fn worker_connections(
        &self,
        hardware_id: &str,
        caption: &str,
    ) -> Result<Vec<eligo::store::WorkerRow>, StoreError> {
        self.inner.worker_connections(hardware_id, caption).await
    }
    async fn list_jobs(&self, page: Page) -> Result<Paged<StoredJob>, StoreError> {
        self.inner.list_jobs(page).await
    }
    async fn job_at_height(&self, h: i64) -> Result<Option<StoredJob>, StoreError> {
        self.inner.job_at_height(h).await
    }
    async fn list_solutions(&self, f: &SolutionFilter, page: Page) -> Result<Paged<StoredSolution>, StoreError> {
        self.inner.list_solutions(f, page).await
    }
    async fn list_worker_connections(
        &self,
        f: &WorkerFilter,
        page: Page,
    ) -> Result<Paged<eligo::store::WorkerRow>, StoreError> {
        self.inner.list_worker_connections(f, page).await
    }
    async fn miner_activity(
        &self,
        address: &str,
        windows: &[chrono::DateTime<chrono::Utc>],
    ) -> Result<eligo::store::MinerActivity, StoreError> {
        self.inner.miner_activity(address, windows).await
    }
    async fn shares(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<eligo::store::Shares>, StoreError> {
        self.inner.shares(since, until).await
    }
}

async fn a_processor_failing_between_commit_and_ack_loses_and_duplicates_nothing(kind: Kind) {
    let backends = Backends::new(kind).await;
    let failing: Arc<dyn Store> = Arc::new(FailingOnce::over(backends.store.clone()));
    let server = Server::start_on(backends, &["seed-rules"], Some(failing.clone())).await;
    let mut worker = server.worker("hw-1").await;
    let mut node = server.node().await;
    node.send(&job(50, 1)).await;
    let work = worker.recv("job 50, produced twice").await;
    let task = work["task_id"].as_str().expect("task").to_string();
    // The second production comes from the retry of the failed batch, which is
    // ahead of any later message.
    assert_worker_quiet(&mut server.node().await, &mut worker, &job(51, 1), "the second production of job 50").await;
    worker.send(&solution(&task, 5, 1)).await;
    assert_eq!(node.recv("the solution, produced twice").await["partial_solution"]["nonce"], 5);
    assert_node_quiet(&mut worker, &mut node, &work, 1, "the second production of the solution").await;
    let job = failing.job_by_task(&task).await.expect("read").expect("stored");
    assert!(job.broadcast, "the retry recorded the broadcast");
    server.stop().await;
}

/// With the store failing, workers are still welcomed and sent work; their
/// connect and disconnect events wait in the queue, and are written once, when
/// the store is back.
async fn presence_waits_in_the_queue_while_the_store_is_down(kind: Kind) {
    let backends = Backends::new(kind).await;
    let failing = Arc::new(FailingOnce::over(backends.store.clone()));
    failing.presence_down.store(true, Ordering::SeqCst);
    let server = Server::start_on(backends, &["seed-rules"], Some(failing.clone() as Arc<dyn Store>)).await;
    let mut node = server.node().await;
    node.send(&job(90, 1)).await;
    let mut gone = server.worker("hw-outage").await;
    gone.recv("the current job, with the store down").await;
    gone.close().await;
    // Still connected when the store comes back.
    let mut staying = server.worker("hw-outage").await;
    staying.recv("the current job, again").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rows = failing.inner.worker_connections("hw-outage", "rig").await.expect("rows");
    assert!(rows.is_empty(), "nothing written while the store is down: {rows:?}");

    failing.presence_down.store(false, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = failing.inner.worker_connections("hw-outage", "rig").await.expect("rows");
        let finished = rows.iter().filter(|r| r.disconnected_at.is_some()).count();
        if rows.len() == 2 && finished == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "after the store came back: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(staying);
    server.stop().await;
}

/// Embedded mode keeps what it accepted across a restart: a job taken by the node
/// server while no processor ran is processed after eligo starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_keeps_accepted_jobs_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
    config.plugins.dir = dir.path().join("policies");
    config.node.listen = ([127, 0, 0, 1], 0).into();
    config.worker.listen = ([127, 0, 0, 1], 0).into();
    config.admin.listen = None;
    config.roles = vec![eligo::config::RoleName::NodeServer];
    let only_nodes = eligo::app::start(&config).await.expect("eligo starts");
    let mut node = Client::connect(only_nodes.node_addr.expect("node server")).await;
    node.send_queued(&job(80, 1), "80").await;
    only_nodes.stop().await;

    config.roles = eligo::config::RoleName::ALL.to_vec();
    let everything = eligo::app::start(&config).await.expect("eligo starts again");
    let mut worker = Client::connect(everything.worker_addr.expect("worker server")).await;
    worker.send(&welcome("hw-restart")).await;
    let work = worker.recv("the job accepted before the restart").await;
    assert_eq!(work["epoch_challenge"], challenge(80));
    everything.stop().await;
}

/// The solution messages of one batch, as a worker server would publish them for
/// the job `task`: valid, a repeat of its nonce, a poison message, one that fails
/// the proof of work, another valid one, and one of an unknown task.
fn mixed_batch(task: &str, epoch_challenge: &Value) -> Vec<Vec<u8>> {
    let (good, _) = solver::solve(epoch_challenge, 1000, 0);
    let (other, _) = solver::solve(epoch_challenge, 1000, good + 1);
    let (bad, _) = solver::fail(epoch_challenge, 1000, 0);
    let message = |task: &str, nonce: u64| {
        json!({ "hardware_id": "hw-batch", "caption": "rig", "task_id": task, "solution_target": 1000,
                "solution": { "partial_solution": { "nonce": nonce } } })
        .to_string()
        .into_bytes()
    };
    vec![
        message(task, good),
        message(task, good),
        b"{ not a solution".to_vec(),
        message(task, bad),
        message(task, other),
        message("00000000-0000-0000-0000-000000000000", other + 1),
    ]
}

/// A job at height 60 stored and broadcast on `server`; returns its task id and
/// the worker's job frame, with the worker that got it and a node waiting for
/// its solutions.
async fn stored_job(server: &Server) -> (String, Value, Client, Client) {
    let mut worker = server.worker("hw-batch").await;
    let mut node = server.node().await;
    node.send(&job(60, 1000)).await;
    let work = worker.recv("job 60").await;
    (work["task_id"].as_str().expect("task").to_string(), work, worker, node)
}

async fn a_batch_handles_each_message_as_it_would_alone(kind: Kind) {
    use eligo::pipeline::processors::solution::{process, process_batch, Outcome};
    let batched = Server::start(kind, &["seed-rules", "pow-check"]).await;
    let (task, work, mut worker, mut node) = stored_job(&batched).await;
    let messages = mixed_batch(&task, &work["epoch_challenge"]);
    let outcomes = process_batch(&batched.running.services, &messages).await.expect("the batch is processed");
    let kinds: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Broadcast => "broadcast",
            Outcome::Duplicate => "duplicate",
            Outcome::Invalid(_) => "invalid",
            Outcome::Rejected(_) => "rejected",
        })
        .collect();
    assert_eq!(kinds, ["broadcast", "duplicate", "rejected", "invalid", "broadcast", "rejected"]);
    // The node gets each valid solution once, and nothing else.
    let mut nonces = vec![
        node.recv("the first valid solution").await["partial_solution"]["nonce"].as_u64(),
        node.recv("the second valid solution").await["partial_solution"]["nonce"].as_u64(),
    ];
    nonces.sort();
    let what = "a duplicate, a poison, an invalid or an unknown task's solution";
    assert_node_quiet(&mut worker, &mut node, &work, 1000, what).await;
    // The same batch once more (a redelivery after a crash): nothing new is delivered.
    let again = process_batch(&batched.running.services, &messages).await.expect("redelivered batch");
    assert!(
        again.iter().all(|o| matches!(o, Outcome::Duplicate | Outcome::Rejected(_) | Outcome::Invalid(_))),
        "{again:?}"
    );
    assert_node_quiet(&mut worker, &mut node, &work, 1000, "the redelivered batch").await;
    batched.stop().await;

    // Each message alone, in the same order, on fresh backends.
    let alone = Server::start(kind, &["seed-rules", "pow-check"]).await;
    let (task, _, _worker, mut node) = stored_job(&alone).await;
    let mut one_by_one = Vec::new();
    for message in mixed_batch(&task, &work["epoch_challenge"]) {
        one_by_one.push(process(&alone.running.services, &message).await.expect("a message alone"));
    }
    assert_eq!(outcomes, one_by_one, "a batch ends as its messages would one by one");
    let mut alone_nonces = vec![
        node.recv("the first valid solution").await["partial_solution"]["nonce"].as_u64(),
        node.recv("the second valid solution").await["partial_solution"]["nonce"].as_u64(),
    ];
    alone_nonces.sort();
    assert_eq!(nonces, alone_nonces);
    alone.stop().await;
}

/// The acknowledged protocol: a job and solutions sent with an `id` are answered
/// once each (accepted, or refused with why), and every accepted solution gets its
/// verdict (valid, invalid with the validator's reason, or a duplicate); a frame
/// without an id sees the original protocol.
async fn solutions_and_jobs_with_an_id_are_acknowledged_and_judged(kind: Kind) {
    let server = Server::start(kind, &["seed-rules", "pow-check"]).await;
    let mut worker = server.worker("hw-acks").await;
    let mut node = server.node().await;
    let mut acked_job = job(70, 1000);
    acked_job["id"] = json!("job-70");
    node.send(&acked_job).await;
    assert_eq!(node.recv("the job's ack").await, json!({ "type": "ack", "id": "job-70", "status": "accepted" }));
    let work = worker.recv("job 70").await;
    let task = work["task_id"].as_str().expect("task").to_string();

    let (good, reached) = solver::solve(&work["epoch_challenge"], 1000, 0);
    let (bad, _) = solver::fail(&work["epoch_challenge"], 1000, good + 1);
    let with_id = |nonce: u64, target: u64, id: Value| {
        let mut frame = solution(&task, nonce, target);
        frame["id"] = id;
        frame
    };
    worker.send(&with_id(good, reached, json!(1))).await;
    worker.send(&with_id(bad, 1000, json!("two"))).await;
    worker.send(&with_id(good, reached, json!(3))).await;
    let mut missing_task = with_id(good + 7, reached, json!(4));
    missing_task.as_object_mut().expect("object").remove("task_id");
    worker.send(&missing_task).await;
    worker.send(&with_id(good + 8, reached, json!({ "not": "an id" }))).await;

    let mut answers = std::collections::BTreeMap::new();
    let mut errors = Vec::new();
    while answers.len() < 7 || errors.is_empty() {
        let frame = worker.recv("acks and verdicts").await;
        match frame["type"].as_str() {
            Some("error") => errors.push(frame),
            _ => {
                let key = format!("{}:{}", frame["type"].as_str().unwrap_or("?"), frame["id"]);
                assert!(answers.insert(key, frame.clone()).is_none(), "one answer of each kind per id: {frame}");
            }
        }
    }
    let ack = |id: Value| answers[&format!("ack:{id}")].clone();
    let verdict = |id: Value| answers[&format!("verdict:{id}")].clone();
    for id in [json!(1), json!("two"), json!(3)] {
        assert_eq!(ack(id.clone()), json!({ "type": "ack", "id": id, "status": "accepted" }));
    }
    // 1 and 3 carry the same nonce, published concurrently: whichever is queued
    // first is valid, the other a duplicate.
    let (first, second) = if verdict(json!(1))["valid"] == json!(true) { (1, 3) } else { (3, 1) };
    assert_eq!(verdict(json!(first)), json!({ "type": "verdict", "id": first, "task_id": task, "valid": true }));
    let duplicate = verdict(json!(second));
    assert_eq!(duplicate["valid"], json!(false));
    assert!(duplicate["reason"].as_str().unwrap_or_default().contains("duplicate"), "{duplicate}");
    let invalid = verdict(json!("two"));
    assert_eq!((invalid["valid"].clone(), invalid["task_id"].clone()), (json!(false), json!(task)));
    assert!(invalid["reason"].as_str().unwrap_or_default().contains("reaches target"), "{invalid}");
    let refused = ack(json!(4));
    assert_eq!(refused["status"], "refused");
    assert!(refused["reason"].as_str().unwrap_or_default().contains("task_id"), "{refused}");
    assert!(!answers.contains_key("verdict:4"), "a refused solution is not judged");
    assert_eq!(errors.len(), 1);
    assert!(errors[0]["error"].as_str().unwrap_or_default().contains("`id`"), "{}", errors[0]);
    assert_eq!(node.recv("the valid solution").await["partial_solution"]["nonce"], good);

    // Without an id: the original protocol, no ack, no verdict.
    let (other, other_reached) = solver::solve(&work["epoch_challenge"], 1000, good + 100);
    worker.send(&solution(&task, other, other_reached)).await;
    assert_eq!(node.recv("the solution sent without an id").await["partial_solution"]["nonce"], other);
    // One more with an id: its ack and verdict come next, so nothing came for the
    // one without (its verdict would be ahead of this one's in the `verdict` topic).
    let (marker, marker_reached) = solver::solve(&work["epoch_challenge"], 1000, other + 1);
    let verdict = worker.send_judged(&solution(&task, marker, marker_reached), "marker").await;
    assert_eq!(verdict["valid"], true, "anything for a solution sent without an id comes before: {verdict}");
    server.stop().await;
}
