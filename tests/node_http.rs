//! Nodes over HTTP: a job POSTed reaches WebSocket workers, and its solutions
//! come back on a stream of server-sent events and at a signed webhook, on the
//! embedded and the networked backends.

mod support;

use eligo::config::{Config, WebhookConfig};
use eligo::transport::{Deliveries, Stream, TransportError, WorkQueue};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use support::backends::{Backends, Kind};
use support::process::spawn_with;
use support::server::{job, welcome, Server};
use support::sse::{SseEvent, SseStream};
use support::webhook::{Receiver, SECRET};
use support::ws::Client;

/// How long anything here may take on a busy machine.
const WAIT: Duration = Duration::from_secs(60);

/// A server with the seed rules and the webhook `test` pointing at `receiver`.
async fn server_with_hook(kind: Kind, receiver: &Receiver, configure: impl FnOnce(&mut Config)) -> Server {
    let url = receiver.url();
    Server::start_configured(Backends::new(kind).await, &["seed-rules"], None, |config| {
        config.node.webhooks.insert("test".into(), WebhookConfig { url, secret: SECRET.into() });
        configure(config);
    })
    .await
}

/// What a POST answered: status, body, `Retry-After`.
struct Posted {
    status: u16,
    body: Value,
    retry_after: Option<String>,
}

async fn post_to(node: std::net::SocketAddr, body: &str, headers: &[(&str, &str)]) -> Posted {
    let mut request = reqwest::Client::new()
        .post(format!("http://{node}/api/v1/jobs"))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the POST is answered");
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    Posted { status, body, retry_after }
}

async fn post(server: &Server, body: &Value, headers: &[(&str, &str)]) -> Posted {
    post_to(server.running.node_addr.expect("node server"), &body.to_string(), headers).await
}

/// A job at `height` (target 500) naming the webhook `test`.
fn job_with_hook(height: i64) -> Value {
    let mut body = job(height, 500);
    body["callback"] = json!("test");
    body
}

/// Sends one valid solution to the job `work` from nonce `from` on; its nonce.
async fn solve_from(worker: &mut Client, work: &Value, from: u64) -> u64 {
    let task = work["task_id"].as_str().expect("task id");
    let (nonce, reached) = support::solver::solve(&work["epoch_challenge"], 500, from);
    worker.send(&support::server::solution(task, nonce, reached)).await;
    nonce
}

fn nonce_of(solution: &Value) -> u64 {
    solution["partial_solution"]["nonce"].as_u64().unwrap_or_else(|| panic!("a solution object: {solution}"))
}

fn nonce_in(event: &SseEvent) -> u64 {
    assert_eq!(event.event, "solution", "{event:?}");
    nonce_of(&serde_json::from_str(&event.data).expect("JSON data"))
}

/// The live view of the HTTP node `id` in `/api/v1/nodes`.
async fn node_view(server: &Server, id: &str) -> Value {
    let nodes =
        support::http::get(server.running.admin_addr.expect("admin"), "/api/v1/nodes?limit=500").await.ok_json();
    let items = nodes["items"].as_array().cloned().unwrap_or_default();
    items.into_iter().find(|n| n["http"]["id"] == id).unwrap_or(Value::Null)
}

async fn a_posted_job_reaches_a_worker_and_its_solution_comes_back_by_stream_and_webhook(kind: Kind) {
    let receiver = Receiver::start(200).await;
    let server = server_with_hook(kind, &receiver, |_| {}).await;
    let mut worker = server.worker("hw-http").await;
    let posted = post(&server, &job_with_hook(100), &[]).await;
    assert_eq!(posted.status, 202, "{}", posted.body);
    assert_eq!((posted.body["status"].as_str(), posted.body["block_height"].as_i64()), (Some("accepted"), Some(100)));
    let node = posted.body["node"].as_str().expect("a node id").to_string();
    assert_eq!(posted.body["events"], format!("/api/v1/nodes/{node}/solutions"));
    let url =
        format!("http://{}{}", server.running.node_addr.expect("node"), posted.body["events"].as_str().unwrap_or(""));
    let mut stream = SseStream::open(&url, &[]).await;

    let work = worker.recv("the POSTed job").await;
    assert_eq!(work["epoch_challenge"]["seed"], "s100", "{work}");
    let nonce = solve_from(&mut worker, &work, 0).await;

    let event = stream.next_within(WAIT).await.expect("the solution on the stream");
    assert_eq!(nonce_in(&event), nonce);
    assert!(event.id.as_deref().is_some_and(|id| id.parse::<u64>().is_ok()), "a numbered event: {event:?}");
    let got = receiver.until(WAIT, |r| !r.is_empty()).await;
    assert_eq!(got.len(), 1, "one webhook request: {got:?}");
    assert!(got[0].verified, "the signature checks out with the secret");
    assert!(got[0].id.starts_with("msg_"), "{:?}", got[0].id);
    assert_eq!(nonce_of(&got[0].body), nonce, "the webhook carries what the stream does");
    assert_eq!(got[0].body.to_string(), event.data, "the same object, byte for byte");

    // The HTTP node is listed with the socket nodes.
    let view = node_view(&server, &node).await;
    assert_eq!((view["transport"].as_str(), view["jobs_submitted"].as_u64()), (Some("http"), Some(1)), "{view}");
    assert_eq!((view["http"]["webhook"].as_str(), view["solutions_delivered"].as_u64()), (Some("test"), Some(1)));
    server.stop().await;
    receiver.stop().await;
}

async fn a_resumed_stream_gets_what_it_missed_once(kind: Kind) {
    let server = Server::start(kind, &["seed-rules"]).await;
    let mut worker = server.worker("hw-resume").await;
    let posted = post(&server, &job(110, 500), &[]).await;
    assert_eq!(posted.status, 202, "{}", posted.body);
    let node = posted.body["node"].as_str().expect("node").to_string();
    let url = format!("http://{}/api/v1/nodes/{node}/solutions", server.running.node_addr.expect("node"));
    let work = worker.recv("the job").await;

    let mut stream = SseStream::open(&url, &[]).await;
    let first = solve_from(&mut worker, &work, 0).await;
    let event = stream.next_within(WAIT).await.expect("the first solution");
    assert_eq!(nonce_in(&event), first);
    let seen = event.id.clone().expect("an id");
    drop(stream);

    // Two found while no stream is open; a second job of the same node, named by its id.
    let second = solve_from(&mut worker, &work, first + 1).await;
    let third = solve_from(&mut worker, &work, second + 1).await;
    let again = post(&server, &job(110, 500), &[("eligo-node", &node)]).await;
    assert_eq!((again.status, again.body["node"].as_str()), (202, Some(node.as_str())), "{}", again.body);
    for _ in 0..600 {
        if node_view(&server, &node).await["solutions_delivered"].as_u64() >= Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut resumed = SseStream::open(&url, &[("last-event-id", &seen)]).await;
    let missed = [resumed.next_within(WAIT).await, resumed.next_within(WAIT).await];
    let mut missed: Vec<u64> = missed.iter().map(|e| nonce_in(e.as_ref().expect("a missed solution"))).collect();
    // In the order the node was given them, which a catch-up may have changed.
    missed.sort_unstable();
    assert_eq!(missed, vec![second, third], "what it missed");
    // The next event is the next solution: nothing it had seen came again.
    let fourth = solve_from(&mut worker, &work, third + 1).await;
    let next = resumed.next_within(WAIT).await.expect("the next live solution");
    assert_eq!(nonce_in(&next), fourth, "no repeat before it: {next:?}");

    // An unknown id is a 404; so is a node named that is not alive here.
    let unknown =
        format!("http://{}/api/v1/nodes/{}/solutions", server.running.node_addr.expect("node"), "0".repeat(32));
    assert_eq!(SseStream::request(&unknown, &[]).await.status(), 404);
    let named = post(&server, &job(111, 500), &[("eligo-node", &"f".repeat(32))]).await;
    assert_eq!(named.status, 404, "{}", named.body);
    server.stop().await;
}

async fn a_receiver_down_for_a_while_gets_each_solution_once(kind: Kind) {
    let receiver = Receiver::start(503).await;
    let server = server_with_hook(kind, &receiver, |_| {}).await;
    let mut worker = server.worker("hw-down").await;
    let posted = post(&server, &job_with_hook(120), &[]).await;
    assert_eq!(posted.status, 202, "{}", posted.body);
    let work = worker.recv("the job").await;
    let mut sent = Vec::new();
    let mut from = 0;
    for _ in 0..3 {
        let nonce = solve_from(&mut worker, &work, from).await;
        sent.push(nonce);
        from = nonce + 1;
    }
    // Each is attempted and refused, then retried.
    let failed = receiver.until(WAIT, |r| r.iter().filter(|r| r.answered == 503).count() >= 4).await;
    assert!(failed.len() >= 4, "attempts while down: {failed:?}");
    receiver.answer(200);
    let delivered = receiver.until(WAIT, |_| receiver.delivered().len() >= 3).await;
    assert!(delivered.iter().all(|r| r.verified), "every attempt is signed");
    // A fourth solution, after the others: once it is in, the three are in
    // exactly once each.
    let fourth = solve_from(&mut worker, &work, from).await;
    sent.push(fourth);
    receiver.until(WAIT, |_| receiver.delivered().iter().any(|r| nonce_of(&r.body) == fourth)).await;
    let mut delivered: Vec<u64> = receiver.delivered().iter().map(|r| nonce_of(&r.body)).collect();
    delivered.sort_unstable();
    sent.sort_unstable();
    assert_eq!(delivered, sent, "each solution delivered exactly once");
    // Every attempt of one solution carries the same webhook-id.
    let received = receiver.received();
    for nonce in &sent {
        let ids: std::collections::HashSet<&str> =
            received.iter().filter(|r| nonce_of(&r.body) == *nonce).map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), 1, "one webhook-id per solution: {ids:?}");
    }
    server.stop().await;
    receiver.stop().await;
}

async fn a_gone_receiver_stops_that_nodes_deliveries(kind: Kind) {
    let receiver = Receiver::start(410).await;
    let server = server_with_hook(kind, &receiver, |_| {}).await;
    let mut worker = server.worker("hw-gone").await;
    let posted = post(&server, &job_with_hook(130), &[]).await;
    let node = posted.body["node"].as_str().expect("node").to_string();
    let work = worker.recv("the job").await;
    let first = solve_from(&mut worker, &work, 0).await;
    receiver.until(WAIT, |r| !r.is_empty()).await;
    for _ in 0..600 {
        if node_view(&server, &node).await["http"]["webhook_stopped"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node_view(&server, &node).await["http"]["webhook_stopped"], true);
    // The stream still has both; the webhook was called for the first only.
    let url = format!("http://{}/api/v1/nodes/{node}/solutions", server.running.node_addr.expect("node"));
    let second = solve_from(&mut worker, &work, first + 1).await;
    let mut stream = SseStream::open(&url, &[]).await;
    let got = [stream.next_within(WAIT).await, stream.next_within(WAIT).await];
    let got: Vec<u64> = got.iter().map(|e| nonce_in(e.as_ref().expect("a solution"))).collect();
    assert_eq!(got, vec![first, second]);
    let calls: Vec<u64> = receiver.received().iter().map(|r| nonce_of(&r.body)).collect();
    assert_eq!(calls, vec![first], "nothing after the 410");
    server.stop().await;
    receiver.stop().await;
}

/// A queue whose `job` stream is down: publishes fail as a broker's would.
struct JobQueueDown(Arc<dyn WorkQueue>);

#[async_trait::async_trait]
impl WorkQueue for JobQueueDown {
    async fn declare(&self) -> Result<(), TransportError> {
        self.0.declare().await
    }
    async fn publish(&self, stream: Stream, payload: &[u8]) -> Result<(), TransportError> {
        if stream == Stream::Job {
            return Err(TransportError::Unavailable { broker: "test", detail: "the job queue is down".into() });
        }
        self.0.publish(stream, payload).await
    }
    async fn consume(&self, stream: Stream, prefetch: u16) -> Result<Deliveries, TransportError> {
        self.0.consume(stream, prefetch).await
    }
    async fn ready(&self, stream: Stream) -> Result<u64, TransportError> {
        self.0.ready(stream).await
    }
    async fn check(&self) -> Result<(), TransportError> {
        self.0.check().await
    }
}

async fn each_refusal_has_its_status(kind: Kind) {
    let server = Server::start_configured(Backends::new(kind).await, &["seed-rules"], None, |config| {
        config.node.socket.max_message_bytes = 8 << 10;
    })
    .await;
    let node = server.running.node_addr.expect("node");
    let bad = post_to(node, "{not json", &[]).await;
    assert_eq!((bad.status, bad.body["status"].as_str()), (400, Some("refused")), "{}", bad.body);
    let missing = post(&server, &json!({ "proof_target": 1, "block_height": 5 }), &[]).await;
    assert_eq!(missing.status, 400, "{}", missing.body);
    assert!(missing.body["reason"].as_str().unwrap_or("").contains("epoch_challenge"), "{}", missing.body);
    let mut named = job(5, 1);
    named["callback"] = json!("nope");
    let named = post(&server, &named, &[]).await;
    assert_eq!(named.status, 400);
    assert!(named.body["reason"].as_str().unwrap_or("").contains("no webhook named \"nope\""), "{}", named.body);
    let mut big = job(5, 1);
    big["epoch_challenge"]["pad"] = json!("x".repeat(20 << 10));
    let big = post(&server, &big, &[]).await;
    assert_eq!(big.status, 413, "{}", big.body);
    assert!(big.body["reason"].as_str().unwrap_or("").contains("8192"), "{}", big.body);

    // The same Idempotency-Key answers the first answer, and queues one job.
    let first = post(&server, &job(6, 1), &[("idempotency-key", "k-1")]).await;
    let second = post(&server, &job(6, 1), &[("idempotency-key", "k-1")]).await;
    assert_eq!((first.status, second.status), (202, 202));
    assert_eq!(first.body, second.body, "the first answer again");
    let id = first.body["node"].as_str().expect("node");
    assert_eq!(node_view(&server, id).await["jobs_submitted"], 1, "one job for two POSTs");
    let other = post(&server, &job(6, 1), &[("idempotency-key", "k-2")]).await;
    assert_ne!(other.body["node"], first.body["node"], "another key is another request");
    server.stop().await;

    // Over the rate: 429 with Retry-After.
    let server = Server::start_configured(Backends::new(kind).await, &["seed-rules"], None, |config| {
        // No refill: exactly the burst, however slow the machine.
        config.node.http.jobs_per_second = 0;
        config.node.http.jobs_burst = 2;
        // Loopback is exempt from the per-IP limits by default.
        config.node.connections.per_ip_exempt.clear();
    })
    .await;
    let statuses = [post(&server, &job(7, 1), &[]).await, post(&server, &job(7, 1), &[]).await];
    assert_eq!(statuses.map(|p| p.status), [202, 202]);
    let over = post(&server, &job(7, 1), &[]).await;
    assert_eq!((over.status, over.retry_after.as_deref()), (429, Some("1")), "{}", over.body);
    server.stop().await;

    // The queue unavailable: 503 with Retry-After, and no node is left behind.
    let mut backends = Backends::new(kind).await;
    backends.queue = Arc::new(JobQueueDown(backends.queue.clone()));
    let server = Server::start_on(backends, &["seed-rules"], None).await;
    let down = post(&server, &job(8, 1), &[]).await;
    assert_eq!((down.status, down.retry_after.as_deref()), (503, Some("5")), "{}", down.body);
    assert!(down.body["reason"].as_str().unwrap_or("").contains("the job queue is down"), "{}", down.body);
    assert_eq!(
        server.running.services.store.live_http_nodes(0).await.map(|n| n.len()).ok(),
        Some(1),
        "kept before queueing"
    );
    server.stop().await;
}

async fn admission_and_policies_decide_as_for_a_socket(kind: Kind) {
    // A token policy: 401 without the token, 202 with it.
    let backends = Backends::new(kind).await;
    let dir = backends.dir().join("policies");
    std::fs::create_dir_all(&dir).expect("policies dir");
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"node-secret"));
    std::fs::write(dir.join("10-auth.toml"), format!("node_tokens = [\"{hash}\"]\n")).expect("settings");
    let server = Server::start_on(backends, &["auth", "seed-rules"], None).await;
    let refused = post(&server, &job(9, 1), &[]).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body["reason"].as_str().unwrap_or("").contains("unauthorized"), "{}", refused.body);
    let wrong = post(&server, &job(9, 1), &[("authorization", "Bearer nope")]).await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let admitted = post(&server, &job(9, 1), &[("authorization", "Bearer node-secret")]).await;
    assert_eq!(admitted.status, 202, "{}", admitted.body);
    // The stream asks the same of its request.
    let url = format!(
        "http://{}/api/v1/nodes/{}/solutions",
        server.running.node_addr.expect("node"),
        admitted.body["node"].as_str().unwrap_or("")
    );
    assert_eq!(SseStream::request(&url, &[]).await.status(), 401);
    SseStream::open(&url, &[("authorization", "Bearer node-secret")]).await;
    server.stop().await;

    // A policy refusing the job: 422 naming it.
    let backends = Backends::new(kind).await;
    let dir = backends.dir().join("policies");
    std::fs::create_dir_all(&dir).expect("policies dir");
    std::fs::write(dir.join("10-testing-misbehave.toml"), "connections = \"admit\"\n").expect("settings");
    let server = Server::start_on(backends, &["testing-misbehave"], None).await;
    let refused = post(&server, &job(10, 1), &[]).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    let reason = refused.body["reason"].as_str().unwrap_or("");
    assert!(reason.contains("testing-misbehave") && reason.contains("misbehave refuses everything"), "{reason}");
    server.stop().await;
}

on_both!(
    a_posted_job_reaches_a_worker_and_its_solution_comes_back_by_stream_and_webhook,
    a_resumed_stream_gets_what_it_missed_once,
    a_receiver_down_for_a_while_gets_each_solution_once,
    a_gone_receiver_stops_that_nodes_deliveries,
    each_refusal_has_its_status,
    admission_and_policies_decide_as_for_a_socket,
    a_process_killed_between_accept_and_delivery_loses_no_webhook,
);

/// `kill -9` of the whole server after a job was accepted and a solution found,
/// its webhook still failing: after the restart the webhook gets that solution,
/// and the node (kept in the store) gets the solutions found after it.
async fn a_process_killed_between_accept_and_delivery_loses_no_webhook(kind: Kind) {
    let backends = Backends::new(kind).await;
    let receiver = Receiver::start(500).await;
    let url = receiver.url();
    let env = [("ELIGO_NODE_WEBHOOKS_TEST_URL", url.as_str()), ("ELIGO_NODE_WEBHOOKS_TEST_SECRET", SECRET)];
    let roles = "node-server,worker-server,job-processor,solution-processor,presence-processor";
    let mut first = spawn_with(&backends, "killed", roles, true, &env);
    let mut worker = Client::connect(first.worker).await;
    worker.send(&welcome("hw-kill-hook")).await;
    let posted = post_to(first.node, &job_with_hook(140).to_string(), &[]).await;
    assert_eq!(posted.status, 202, "{}", posted.body);
    let node = posted.body["node"].as_str().expect("node").to_string();
    let work = worker.recv("the job").await;
    let before = solve_from(&mut worker, &work, 0).await;
    let failing = receiver.until(WAIT, |r| !r.is_empty()).await;
    assert_eq!(nonce_of(&failing[0].body), before, "attempted, and failed");
    first.kill_now();

    receiver.answer(200);
    let second = spawn_with(&backends, "killed", roles, true, &env);
    let delivered = receiver.until(WAIT, |_| receiver.delivered().iter().any(|r| nonce_of(&r.body) == before)).await;
    let delivered: Vec<_> = delivered.into_iter().filter(|r| r.answered == 200).collect();
    assert!(delivered.iter().any(|r| nonce_of(&r.body) == before), "delivered after the restart: {delivered:?}");
    assert!(delivered.iter().all(|r| r.verified && r.id == failing[0].id), "signed, under its first id: {delivered:?}");

    // The node outlived the kill: a solution found now reaches its webhook and its stream.
    let mut worker = Client::connect(second.worker).await;
    worker.send(&welcome("hw-kill-hook")).await;
    let work = worker.recv("the job again").await;
    assert_eq!(work["epoch_challenge"]["seed"], "s140", "{work}");
    let after = solve_from(&mut worker, &work, before + 1).await;
    receiver.until(WAIT, |_| receiver.delivered().iter().any(|r| nonce_of(&r.body) == after)).await;
    assert!(receiver.delivered().iter().any(|r| nonce_of(&r.body) == after), "the node was kept");
    let stream = format!("http://{}/api/v1/nodes/{node}/solutions", second.node);
    let mut stream = SseStream::open(&stream, &[]).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(nonce_in(&stream.next_within(WAIT).await.expect("the node's solutions")));
    }
    got.sort_unstable();
    assert_eq!(got, vec![before, after], "its stream has both");
    drop(second);
    receiver.stop().await;
    backends.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_listener_describes_its_http_api() {
    let server = Server::start(Kind::Embedded, &["seed-rules"]).await;
    let doc = support::http::get(server.running.node_addr.expect("node"), "/api/v1/openapi.json").await.ok_json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc:#}");
    let paths: Vec<&str> = doc["paths"].as_object().expect("paths").keys().map(String::as_str).collect();
    assert_eq!(paths, ["/api/v1/jobs", "/api/v1/nodes/{id}/solutions"]);
    let post = &doc["paths"]["/api/v1/jobs"]["post"];
    for status in ["202", "400", "401", "403", "404", "413", "422", "429", "503"] {
        assert!(post["responses"][status].is_object(), "POST answers {status} described");
    }
    assert!(doc["components"]["schemas"]["JobRequest"]["properties"]["callback"].is_object(), "{doc:#}");
    // The socket still answers at every other path, as the original server.
    let mut node = server.node().await;
    node.send(&job(150, 500)).await;
    server.stop().await;
}
