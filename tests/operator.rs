//! The operator's view: the JSON API on the admin port, its OpenAPI document,
//! the admin token, and the live events behind the dashboard. Run on both kinds
//! of backends, as an operator would query either deployment.

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use support::backends::{Backends, Kind};
use support::http::{first_event, get, get_with, until};
use support::server::{Server, Solved};

on_both!(the_api_follows_a_job_and_its_solutions_through_the_pipeline);

async fn the_api_follows_a_job_and_its_solutions_through_the_pipeline(kind: Kind) {
    let server = Server::start(kind, &["seed-rules", "pow-check"]).await;
    let admin = server.running.admin_addr.expect("admin server");
    let (worker, _node, Solved { task, good, bad }) = server.solve_one_job("hw-api", 700).await;

    // One job by task id: both solutions with their verdicts, and where they went.
    let detail = until(admin, &format!("/api/v1/jobs/{task}"), |j| {
        j["solutions"].as_array().is_some_and(|s| s.len() == 2 && s.iter().all(|s| s["status"] != "unchecked"))
    })
    .await;
    assert_eq!((detail["block_height"].as_i64(), detail["proof_target"].as_u64()), (Some(700), Some(500)));
    assert_eq!(detail["delivered_to_workers"], 1, "{detail:#}");
    let by_key = |key: u64| {
        detail["solutions"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["unique_key"].as_str().and_then(|k| k.parse::<u64>().ok()) == Some(key)))
            .cloned()
    };
    let valid = by_key(good).expect("the valid solution is listed");
    assert_eq!((valid["status"].as_str(), valid["hardware_id"].as_str()), (Some("valid"), Some("hw-api")));
    let invalid = by_key(bad).expect("the invalid solution is listed");
    assert_eq!(invalid["status"], "invalid");
    assert!(invalid["invalid_reason"].as_str().is_some_and(|r| r.contains("pow-check")), "{invalid:#}");
    let valid =
        until(admin, &format!("/api/v1/solutions?nonce={good}"), |p| p["items"][0]["delivered_to_nodes"] == 1).await;
    assert_eq!(valid["items"].as_array().map(Vec::len), Some(1), "one solution per nonce");
    assert_eq!(valid["items"][0]["solution"]["partial_solution"]["nonce"], good, "the solution as the worker sent it");

    // The same job by height, and in the listing.
    let at_height = get(admin, "/api/v1/heights/700").await.ok_json();
    assert_eq!(at_height["task_id"], task.as_str());
    let jobs = get(admin, "/api/v1/jobs?limit=10").await.ok_json();
    assert_eq!(jobs["items"][0]["task_id"], task.as_str());
    assert_eq!(jobs["next"], Value::Null, "one job: one page");
    let by_worker = get(admin, "/api/v1/solutions?hardware_id=hw-api&limit=1").await.ok_json();
    assert_eq!(by_worker["items"].as_array().map(Vec::len), Some(1));
    let rest = get(admin, &format!("/api/v1/solutions?hardware_id=hw-api&limit=1&before={}", by_worker["next"])).await;
    assert_eq!(rest.ok_json()["items"].as_array().map(Vec::len), Some(1), "the second page holds the other one");

    // Who is connected now, and what each policy made of them.
    let workers = get(admin, "/api/v1/workers").await.ok_json();
    assert_eq!(workers["total"], 1);
    let w = &workers["items"][0];
    assert_eq!(
        (w["hardware_id"].as_str(), w["caption"].as_str(), w["jobs_received"].as_u64()),
        (Some("hw-api"), Some("rig"), Some(1))
    );
    assert!(w["connected_at"].is_string() && w["outbox_depth"].is_u64(), "{w:#}");
    let policies: Vec<&str> =
        w["policies"].as_array().expect("policies").iter().filter_map(|p| p["plugin"].as_str()).collect();
    assert_eq!(policies, ["10-seed-rules", "20-pow-check"]);
    assert!(w["policies"][0]["admitted"].as_bool().unwrap_or(false));
    let nodes = get(admin, "/api/v1/nodes").await.ok_json();
    assert_eq!(nodes["total"], 1);
    assert_eq!(nodes["items"][0]["recent_heights"], serde_json::json!([700]));
    assert_eq!(
        (nodes["items"][0]["jobs_submitted"].as_u64(), nodes["items"][0]["solutions_delivered"].as_u64()),
        (Some(1), Some(1))
    );
    // The row is written after the fact, once the presence processor has the event.
    let open = until(admin, "/api/v1/workers/connections?open=true&hardware_id=hw-api", |o| {
        o["items"].as_array().is_some_and(|items| !items.is_empty())
    })
    .await;
    assert_eq!(open["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(open["items"][0]["disconnected_at"], Value::Null);

    let plugins = get(admin, "/api/v1/plugins").await.ok_json();
    assert_eq!(plugins["active"].as_array().map(Vec::len), Some(2));
    assert!(plugins["reloads"][0]["loaded"].as_array().is_some_and(|l| l.len() == 2), "{plugins:#}");
    let summary = get(admin, "/api/v1/summary").await.ok_json();
    assert_eq!((summary["workers_connected"].as_u64(), summary["nodes_connected"].as_u64()), (Some(1), Some(1)));
    assert_eq!(summary["recent_jobs"][0]["task_id"], task.as_str());
    assert!(summary["totals"]["solutions_published"].as_u64() >= Some(2), "{summary:#}");

    // The last minutes, second by second: the connections now, the solutions that passed.
    let series = until(admin, "/api/v1/series", |s| {
        let last = |key: &str| s[key].as_array().and_then(|v| v.last().cloned()).unwrap_or(Value::Null);
        let solutions: f64 =
            s["solutions_per_second"].as_array().map_or(0.0, |v| v.iter().filter_map(Value::as_f64).sum());
        last("workers") == 1.0 && last("nodes") == 1.0 && solutions >= 1.5
    })
    .await;
    let samples = series["at"].as_array().map_or(0, Vec::len);
    for (column, values) in series.as_object().expect("columns") {
        if let Some(values) = values.as_array() {
            assert_eq!(values.len(), samples, "{column}: one value per sample");
        }
    }
    assert_eq!((series["interval_seconds"].as_u64(), series["capacity"].as_u64()), (Some(1), Some(900)));
    let latest = series["at"][samples - 1].as_i64().expect("a time");
    let since = get(admin, &format!("/api/v1/series?since={latest}")).await.ok_json();
    assert!(since["at"].as_array().is_some_and(|at| !at.is_empty() && at.iter().all(|t| t.as_i64() >= Some(latest))));

    // Wrong requests get a JSON error that says what is wrong.
    let missing = get(admin, "/api/v1/jobs/no-such-task").await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().is_some_and(|e| e.contains("no-such-task")));
    let bad = get(admin, "/api/v1/jobs?limit=many").await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().is_some_and(|e| e.contains("limit")), "{}", bad.body);

    worker.close().await;
    let gone = until(admin, "/api/v1/workers", |w| w["total"] == 0).await;
    assert_eq!(gone["items"], serde_json::json!([]));
    until(admin, "/api/v1/workers/connections?open=false&hardware_id=hw-api", |p| {
        p["items"].as_array().is_some_and(|i| i.len() == 1)
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_api_path_and_each_answers() {
    let server = Server::start(Kind::Embedded, &["seed-rules"]).await;
    let admin = server.running.admin_addr.expect("admin server");
    let doc = get(admin, "/api/v1/openapi.json").await.ok_json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc:#}");
    let paths: BTreeSet<&str> = doc["paths"].as_object().expect("paths").keys().map(String::as_str).collect();
    let expected = [
        "/api/v1/heights/{block_height}",
        "/api/v1/jobs",
        "/api/v1/jobs/{task_id}",
        "/api/v1/miners/{address}",
        "/api/v1/nodes",
        "/api/v1/plugins",
        "/api/v1/series",
        "/api/v1/shares",
        "/api/v1/solutions",
        "/api/v1/summary",
        "/api/v1/workers",
        "/api/v1/workers/connections",
    ];
    assert_eq!(paths, expected.into_iter().collect(), "the document and the routes agree");
    for path in paths {
        let concrete =
            path.replace("{block_height}", "1").replace("{task_id}", "none").replace("{address}", "aleo1none");
        let answer = get(admin, &concrete).await;
        let described = doc["paths"][path]["get"]["responses"].as_object().expect("responses");
        assert!(
            described.contains_key(&answer.status.to_string()),
            "{concrete} answered {} ({})",
            answer.status,
            answer.body
        );
        answer.json();
    }
    assert!(doc["components"]["schemas"]["WorkerView"]["properties"]["policies"].is_object(), "types are described");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_admin_token_guards_everything_but_health_and_metrics() {
    let server = Server::start_configured(Backends::new(Kind::Embedded).await, &[], None, |c| {
        c.admin.token = Some("s3cret-token".into());
    })
    .await;
    let admin = server.running.admin_addr.expect("admin server");
    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(get(admin, "/readyz").await.status, 200);
    assert_eq!(get(admin, "/metrics").await.status, 200);
    for path in ["/", "/status", "/plugins", "/api/v1/jobs", "/api/v1/openapi.json", "/api/v1/events"] {
        let refused = get(admin, path).await;
        assert_eq!(refused.status, 401, "{path} without the token");
        assert!(refused.head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{}", refused.head);
        assert!(refused.json()["error"].as_str().is_some_and(|e| e.contains("token")));
    }
    let wrong = get_with(admin, "/api/v1/jobs", &[("Authorization", "Bearer not-it")]).await;
    assert_eq!((wrong.status, wrong.json()["error"].as_str()), (401, Some("the admin token is wrong")));
    assert_eq!(get_with(admin, "/api/v1/jobs", &[("Authorization", "Bearer s3cret-token")]).await.status, 200);
    assert_eq!(get(admin, "/api/v1/jobs?token=s3cret-token").await.status, 200);
    let page = get(admin, "/?token=s3cret-token").await;
    assert!(page.status == 200 && page.body.contains("<title>eligo</title>"), "the dashboard with the token");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_stream_sends_summaries() {
    let server = Server::start(Kind::Embedded, &["seed-rules"]).await;
    let admin = server.running.admin_addr.expect("admin server");
    let _worker = server.worker("hw-events").await;
    let event = first_event(admin, "/api/v1/events").await;
    assert_eq!(event.status, 200);
    assert!(event.head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{}", event.head);
    assert!(event.body.contains("event: summary"), "{}", event.body);
    let data = event.body.lines().find_map(|l| l.strip_prefix("data: ")).expect("a data line");
    let summary: Value = serde_json::from_str(data).expect("the event is JSON");
    assert!(summary["totals"].is_object() && summary["latency"].is_object(), "{summary:#}");
    server.stop().await;
}

/// `/readyz` is 503 while a plugin failed to load (its decisions are refused,
/// so this process should get no traffic); `/healthz` stays 200, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_refused_while_a_plugin_failed_to_load() {
    let server = Server::start_configured(Backends::new(Kind::Embedded).await, &["seed-rules"], None, |c| {
        std::fs::write(c.plugins.dir.join("90-broken.wasm"), b"not a component").expect("writing a broken plugin");
        c.plugins.start_with_failed = true;
    })
    .await;
    let admin = server.running.admin_addr.expect("admin server");
    let ready = get(admin, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.starts_with("not ready\nplugins: failed to load"), "{}", ready.body);
    assert!(ready.body.contains("90-broken.wasm") && ready.body.contains("store: ok"), "{}", ready.body);
    assert_eq!(get(admin, "/healthz").await.status, 200);
    // Mended in place (hot reload): ready again.
    std::fs::remove_file(server.backends.dir().join("policies/90-broken.wasm")).expect("removing it");
    support::http::readyz_until(admin, 200).await;
    server.stop().await;
}

/// After SIGTERM (here `stop`), `/readyz` is 503 at once and the process serves
/// on for `shutdown_delay_seconds` — a new worker is still welcomed — before its
/// connections are closed with 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_is_not_ready_first_and_serves_on_for_the_delay() {
    let server = Server::start_configured(Backends::new(Kind::Embedded).await, &["seed-rules"], None, |c| {
        c.shutdown_delay_seconds = 5;
    })
    .await;
    let admin = server.running.admin_addr.expect("admin server");
    assert_eq!(get(admin, "/readyz").await.status, 200);
    let worker_addr = server.running.worker_addr.expect("worker server");
    let stopping = tokio::spawn(server.stop());
    let draining = support::http::readyz_until(admin, 503).await;
    assert_eq!(draining.body, "not ready\ndraining: shutting down\n");
    let mut late = support::ws::Client::connect(worker_addr).await;
    late.send(&serde_json::json!({ "ip": "1.1.1.1", "address": "a", "hardware": "cpu",
                                    "hardware_id": "hw-late", "caption": "c" }))
        .await;
    match late.next_within(std::time::Duration::from_secs(30)).await {
        support::ws::Next::Closed(code, reason) => assert_eq!(code, 1001, "closed by the drain: {reason}"),
        other => panic!("expected the drain to close the late worker with 1001, got {other:?}"),
    }
    stopping.await.expect("stopped");
}
