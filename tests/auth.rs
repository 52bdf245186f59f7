//! The shipped `auth` policy in a running server: bearer tokens and the mutual
//! pre-shared-key challenge, configured by a settings file that is reloaded
//! while the server runs.

mod support;

use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::Duration;
use support::backends::{Backends, Kind};
use support::server::{job, welcome, Server};
use support::ws::{Client, Next};

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A server with `auth` (settings `settings`, TOML) in front of the seed rules.
async fn server_with(settings: &str) -> Server {
    server_configured(settings, |_| {}).await
}

async fn server_configured(settings: &str, configure: impl FnOnce(&mut eligo::config::Config)) -> Server {
    let backends = Backends::new(Kind::Embedded).await;
    let dir = backends.dir().join("policies");
    std::fs::create_dir_all(&dir).expect("policies dir");
    std::fs::write(dir.join("10-auth.toml"), settings).expect("settings");
    Server::start_configured(backends, &["auth", "seed-rules"], None, configure).await
}

/// Replaces the auth settings and waits until the server has reloaded them.
async fn reconfigure(server: &Server, settings: &str) {
    let before = server.running.plugins.history().len();
    let dir = server.backends.dir().join("policies");
    std::fs::write(dir.join("10-auth.toml"), settings).expect("settings");
    reloaded_after(server, before).await;
    assert!(server.running.plugins.failures().is_empty(), "{:?}", server.running.plugins.failures());
}

/// Waits until the plugin history has grown past `before` entries: a reload (or a
/// refused one) happened. A minute, not a few seconds: a busy machine compiles
/// slowly, and a reload that never comes fails the test rather than passing it by.
async fn reloaded_after(server: &Server, before: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.running.plugins.history().len() <= before {
        assert!(tokio::time::Instant::now() < deadline, "the settings were not reloaded within a minute");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn worker_addr(server: &Server) -> std::net::SocketAddr {
    server.running.worker_addr.expect("worker server")
}

/// A worker that presents `query`/`headers` is welcomed and gets the job a node
/// sends (after the current one, which a newly welcomed worker gets first).
async fn works(server: &Server, query: &str, headers: &[(&str, &str)], height: i64) {
    let mut worker = Client::connect_with(worker_addr(server), query, headers).await.expect("admitted");
    worker.send(&welcome("hw-auth")).await;
    let mut node = server.node().await;
    node.send(&job(height, 5)).await;
    let mut seed = worker.recv("the job").await["epoch_challenge"]["seed"].clone();
    if seed != format!("s{height}") {
        seed = worker.recv("the job after the current one").await["epoch_challenge"]["seed"].clone();
    }
    assert_eq!(seed, format!("s{height}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_settings_clients_of_the_original_system_connect_as_before() {
    let server = server_with("").await;
    works(&server, "", &[], 10).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_per_role_and_a_removed_token_stops_opening_connections() {
    let settings = format!("worker_tokens = [\"{}\", \"{}\"]\n", sha256_hex("s3cret"), sha256_hex("other"));
    let server = server_with(&settings).await;
    let addr = worker_addr(&server);

    let (status, body) = Client::connect_with(addr, "", &[]).await.err().expect("refused without a token");
    assert_eq!(status, 401);
    assert!(body.contains("worker connections need a token"), "{body}");
    let (status, body) = Client::connect_with(addr, "token=wrong", &[]).await.err().expect("refused");
    assert_eq!(status, 401);
    // Not which part was wrong: see the test of refusals below.
    assert!(body.contains("unauthorized: the credentials were not accepted"), "{body}");

    works(&server, "", &[("authorization", "Bearer s3cret")], 10).await;
    works(&server, "token=s3cret", &[], 11).await;
    // Nodes have no tokens configured: a node of the original system connects.
    server.node().await;

    reconfigure(&server, &format!("worker_tokens = [\"{}\"]\n", sha256_hex("other"))).await;
    let (status, body) =
        Client::connect_with(addr, "token=s3cret", &[]).await.err().expect("a removed token is refused");
    assert_eq!(status, 401, "{body}");
    works(&server, "token=other", &[], 12).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_store_tokens_rather_than_hashes_are_refused() {
    let server = server_with("").await;
    let dir = server.backends.dir().join("policies");
    let before = server.running.plugins.history().len();
    std::fs::write(dir.join("10-auth.toml"), "worker_tokens = [\"s3cret\"]\n").expect("settings");
    reloaded_after(&server, before).await;
    let failures = server.running.plugins.failures();
    assert!(failures.iter().any(|f| f.error.contains("is not a sha256 hash")), "{failures:?}");
    // The previous version (no tokens) keeps serving.
    works(&server, "", &[], 10).await;
    server.stop().await;
}

/// Opens a worker connection asking for the challenge with `once`: the
/// server's frame, checked to prove the server knows `psk`.
async fn challenged(server: &Server, once: &str, psk: &str) -> (Client, String) {
    let mut worker = Client::connect_with(worker_addr(server), &format!("once={once}"), &[]).await.expect("upgraded");
    let frame = worker.recv("the challenge").await;
    assert_eq!(frame["type"], "challenge");
    assert_eq!(frame["answer"], sha256_hex(&format!("{once}{psk}")), "the server proves it knows the key");
    let server_once = frame["once"].as_str().expect("the server's once").to_string();
    assert!(server_once.len() >= 32, "a fresh random once: {server_once}");
    (worker, server_once)
}

async fn assert_closed_with(worker: &mut Client, code: u16, reason: &str) {
    match worker.next_within(Duration::from_secs(5)).await {
        Next::Closed(c, r) => {
            assert_eq!(c, code, "{r}");
            assert!(r.contains(reason), "{r}");
        }
        other => panic!("expected a close {code}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_psk_challenge_admits_the_right_answer_and_refuses_a_wrong_or_replayed_one() {
    let server = server_with("psk = \"k3y\"\npsk_required = [\"worker\"]\n").await;
    let addr = worker_addr(&server);

    let (status, body) = Client::connect_with(addr, "", &[]).await.err().expect("the challenge is required");
    assert_eq!(status, 401);
    assert!(body.contains("must take the pre-shared-key challenge"), "{body}");

    let (mut worker, server_once) = challenged(&server, "c0ffee", "k3y").await;
    let answer = sha256_hex(&format!("{server_once}k3y"));
    worker.send(&json!({ "type": "answer", "answer": answer })).await;
    worker.send(&welcome("hw-psk")).await;
    let mut node = server.node().await;
    node.send(&job(20, 5)).await;
    assert_eq!(worker.recv("the job").await["epoch_challenge"]["seed"], "s20");

    let (mut wrong, once) = challenged(&server, "beef", "k3y").await;
    wrong.send(&json!({ "type": "answer", "answer": sha256_hex(&format!("{once}not-the-key")) })).await;
    assert_closed_with(&mut wrong, 1008, "unauthorized: the credentials were not accepted").await;

    // The answer that opened the first connection, sent on a new one.
    let (mut replay, _) = challenged(&server, "c0ffee", "k3y").await;
    replay.send(&json!({ "type": "answer", "answer": answer })).await;
    assert_closed_with(&mut replay, 1008, "the credentials were not accepted").await;

    let (mut silent, _) = challenged(&server, "abcd", "k3y").await;
    silent.send(&welcome("hw-skips-the-answer")).await;
    assert_closed_with(&mut silent, 1008, "expected {\"type\":\"answer\"").await;

    // Nodes are not required to take it.
    server.node().await;
    server.stop().await;
}

/// A client that presents a token and takes the challenge is refused the same
/// way whichever part was wrong; an IP that fails too often is refused (429)
/// at the accept for a while, with the right credentials too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_do_not_say_which_part_was_wrong_and_repeated_failures_block_the_ip() {
    let settings = format!("worker_tokens = [\"{}\"]\npsk = \"k3y\"\n", sha256_hex("s3cret"));
    let server = server_configured(&settings, |config| {
        // Tests connect from 127.0.0.1, exempt by default.
        config.worker.connections.per_ip_exempt = vec![];
        config.worker.connections.auth_failures_per_minute = 3;
    })
    .await;
    let addr = worker_addr(&server);
    let refusal = |token: &'static str, key: &'static str| async move {
        let mut worker =
            Client::connect_with(addr, &format!("token={token}&once=c0ffee"), &[]).await.expect("upgraded");
        let frame = worker.recv("the challenge").await;
        let once = frame["once"].as_str().expect("the server's once").to_string();
        worker.send(&json!({ "type": "answer", "answer": sha256_hex(&format!("{once}{key}")) })).await;
        match worker.next_within(Duration::from_secs(5)).await {
            Next::Closed(code, reason) => (code, reason),
            other => panic!("expected a close, got {other:?}"),
        }
    };
    let wrong_token = refusal("wrong", "k3y").await;
    let wrong_key = refusal("s3cret", "not-the-key").await;
    assert_eq!(wrong_token, wrong_key, "the same refusal whichever part was wrong");
    assert_eq!(wrong_token.0, 1008);
    assert!(wrong_token.1.contains("unauthorized: the credentials were not accepted"), "{}", wrong_token.1);

    // The third failure within the minute blocks this IP, the right token included.
    let (status, _) = Client::connect_with(addr, "token=wrong", &[]).await.err().expect("refused");
    assert_eq!(status, 401);
    let (status, body) = Client::connect_with(addr, "token=s3cret", &[]).await.err().expect("blocked");
    assert_eq!(status, 429);
    assert!(body.starts_with("too many failed authentications from 127.0.0.1; try again in"), "{body}");
    // Nodes, another server with its own count, are not blocked.
    server.node().await;
    server.stop().await;
}
