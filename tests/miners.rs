//! A miner's view of its own workers (`/api/v1/miners/{address}`), the share
//! export for payouts (`/api/v1/shares`) and public miner stats, from real worker
//! connections through the whole pipeline, on both kinds of backends.

mod support;

use eligo::store::NewSolution;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use support::backends::{Backends, Kind};
use support::http::{get, get_with, until, Response};
use support::server::{job, solution, welcome, Server};
use support::solver;
use support::ws::Client;

on_both!(
    a_miner_sees_its_own_workers_and_the_shares_match_the_stored_rows,
    public_miner_stats_serve_one_address_at_a_rate
);

const ALICE: &str = "aleo1alice";
const BOB: &str = "aleo1bob";

/// A worker `hardware_id` (caption `rig`) welcomed with payout `address`.
async fn worker_of(server: &Server, hardware_id: &str, address: &str) -> Client {
    let mut worker = Client::connect(server.running.worker_addr.expect("worker server")).await;
    let mut hello = welcome(hardware_id);
    hello["address"] = json!(address);
    worker.send(&hello).await;
    worker
}

/// Sends a solution with an id and returns its verdict.
async fn judged(worker: &mut Client, task: &str, nonce: u64, target: u64) -> Value {
    let mut frame = solution(task, nonce, target);
    frame["id"] = json!(nonce);
    worker.send(&frame).await;
    loop {
        let answer = worker.recv("the ack and verdict").await;
        if answer["type"] == "verdict" {
            assert_eq!(answer["id"], json!(nonce));
            return answer;
        }
        assert_eq!(answer["status"], "accepted", "{answer}");
    }
}

/// The three windows of a count, as the API writes them.
fn windows(n: u64) -> Value {
    json!({ "15m": n, "1h": n, "24h": n })
}

/// A worker of a miner's answer, by hardware id.
fn worker_in<'a>(miner: &'a Value, hardware_id: &str) -> &'a Value {
    miner["workers"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["hardware_id"] == hardware_id))
        .unwrap_or_else(|| panic!("{hardware_id} is listed: {miner:#}"))
}

/// What the shares of a range say, as `address → (valid, target sum)`.
fn shares_of(lines: &[Value]) -> BTreeMap<String, (u64, String)> {
    lines
        .iter()
        .map(|l| {
            let address = l["address"].as_str().expect("address").to_string();
            let sum = l["solution_target_sum"].as_str().expect("the sum as a string").to_string();
            (address, (l["valid"].as_u64().expect("valid"), sum))
        })
        .collect()
}

async fn a_miner_sees_its_own_workers_and_the_shares_match_the_stored_rows(kind: Kind) {
    let server = Server::start(kind, &["seed-rules", "pow-check"]).await;
    let admin = server.running.admin_addr.expect("admin server");
    let started = chrono::Utc::now() - chrono::Duration::seconds(5);
    // Two workers of Alice, one of Bob; then a job.
    let mut a1 = worker_of(&server, "hw-a1", ALICE).await;
    let mut a2 = worker_of(&server, "hw-a2", ALICE).await;
    let mut b1 = worker_of(&server, "hw-b1", BOB).await;
    until(admin, "/api/v1/workers", |w| w["total"] == 3).await;
    let mut node = server.node().await;
    node.send(&job(900, 500)).await;
    let work = a1.recv("the job").await;
    assert_eq!(a2.recv("the job").await, work);
    assert_eq!(b1.recv("the job").await, work);
    let task = work["task_id"].as_str().expect("task id").to_string();
    let challenge = &work["epoch_challenge"];

    // Valid, invalid and duplicate solutions, each judged before the next.
    let (g1, r1) = solver::solve(challenge, 500, 0);
    let (g2, r2) = solver::solve(challenge, 500, g1 + 1);
    let (g3, r3) = solver::solve(challenge, 500, g2 + 1);
    let (f1, _) = solver::fail(challenge, 500, 0);
    let (f2, _) = solver::fail(challenge, 500, f1 + 1);
    assert_eq!(judged(&mut a1, &task, g1, r1).await["valid"], true);
    assert_eq!(judged(&mut a1, &task, f1, 500).await["valid"], false);
    assert_eq!(judged(&mut a2, &task, g2, r2).await["valid"], true);
    let duplicate = judged(&mut a2, &task, g1, r1).await;
    assert!(duplicate["reason"].as_str().is_some_and(|r| r.contains("duplicate")), "{duplicate}");
    assert_eq!(judged(&mut a2, &task, f2, 500).await["valid"], false);
    assert_eq!(judged(&mut b1, &task, g3, r3).await["valid"], true);
    // A row from before addresses were kept, of one of Alice's rigs: counted for no one.
    let store = &server.backends.store;
    let old = NewSolution {
        unique_key: "424242424242".into(),
        hardware_id: "hw-a1".into(),
        caption: "rig".into(),
        task_id: task.clone(),
        solution: "{}".into(),
        solution_target: 1 << 40,
        address: None,
    };
    store.insert_solution(&old).await.expect("an old row");
    store.set_validation(&old.unique_key, true, true, None).await.expect("its verdict");

    // Alice: her two rigs online, and the stored rows of her address, counted by verdict.
    let path = format!("/api/v1/miners/{ALICE}");
    let alice = until(admin, &path, |m| m["workers_online"] == 2).await;
    assert_eq!(alice["address"], ALICE);
    let mut stored = BTreeMap::new();
    for hw in ["hw-a1", "hw-a2"] {
        let rows = get(admin, &format!("/api/v1/solutions?hardware_id={hw}")).await.ok_json();
        for row in rows["items"].as_array().expect("items").iter().filter(|r| r["address"] == ALICE) {
            *stored.entry((hw, row["status"].as_str().unwrap_or("?").to_string())).or_insert(0u64) += 1;
        }
    }
    let count = |hw: &str, status: &str| stored.get(&(hw, status.to_string())).copied().unwrap_or(0);
    assert_eq!((count("hw-a1", "valid"), count("hw-a1", "invalid")), (1, 1), "{stored:?}");
    assert_eq!((count("hw-a2", "valid"), count("hw-a2", "invalid")), (1, 1), "the duplicate is not stored");
    for hw in ["hw-a1", "hw-a2"] {
        let w = worker_in(&alice, hw);
        assert_eq!((w["caption"].as_str(), w["online"].as_bool()), (Some("rig"), Some(true)), "{w:#}");
        assert_eq!(w["valid"], windows(count(hw, "valid")), "{hw}");
        assert_eq!(w["invalid"], windows(count(hw, "invalid")), "{hw}");
        assert_eq!(w["unchecked"], windows(0));
        assert!(w["last_solution_at"].is_string() && w["connected_since"].is_string(), "{w:#}");
    }
    assert_eq!(alice["workers"].as_array().map(Vec::len), Some(2), "only Alice's rigs: {alice:#}");
    assert_eq!((alice["valid"].clone(), alice["invalid"].clone()), (windows(2), windows(2)), "the old row is no one's");
    assert!(alice["last_solution_at"].is_string() && alice["as_of"].is_string());
    let bob = get(admin, &format!("/api/v1/miners/{BOB}")).await.ok_json();
    assert_eq!((bob["valid"].clone(), bob["invalid"].clone()), (windows(1), windows(0)));
    assert_eq!(bob["workers"].as_array().map(Vec::len), Some(1));
    let nobody = get(admin, "/api/v1/miners/aleo1nobody").await.ok_json();
    assert_eq!((nobody["workers"].clone(), nobody["last_solution_at"].clone()), (json!([]), Value::Null));
    assert_eq!(nobody["valid"], windows(0));

    // A rig that leaves is offline, still listed with its solutions of the day.
    a2.close().await;
    let alice = until(admin, &path, |m| m["workers_online"] == 1).await;
    let gone = worker_in(&alice, "hw-a2");
    assert_eq!((gone["online"].clone(), gone["connected_since"].clone()), (json!(false), Value::Null));
    assert_eq!(gone["valid"], windows(1));

    // The share export: valid solutions and their targets, per address, in JSON and CSV.
    let range = format!(
        "since={}&until={}",
        started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        (chrono::Utc::now() + chrono::Duration::seconds(5)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    let shares = get(admin, &format!("/api/v1/shares?{range}")).await.ok_json();
    let expected: BTreeMap<String, (u64, String)> = [
        (ALICE.to_string(), (2, (u128::from(r1) + u128::from(r2)).to_string())),
        (BOB.to_string(), (1, r3.to_string())),
    ]
    .into();
    assert_eq!(shares_of(shares["shares"].as_array().expect("shares")), expected, "{shares:#}");
    let csv = get_with(admin, &format!("/api/v1/shares?{range}"), &[("Accept", "text/csv")]).await;
    assert_eq!(csv.status, 200, "{}", csv.body);
    assert!(csv.head.to_ascii_lowercase().contains("content-type: text/csv"), "{}", csv.head);
    let mut lines = csv.body.lines();
    assert_eq!(lines.next(), Some("address,valid,solution_target_sum"));
    let from_csv: BTreeMap<String, (u64, String)> = lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields[0].to_string(), (fields[1].parse().expect("a count"), fields[2].to_string()))
        })
        .collect();
    assert_eq!(from_csv, expected);
    // An offset is a time zone like any other (its `+` written %2B in a query).
    let until = started.with_timezone(&chrono::FixedOffset::east_opt(3600).expect("an offset")).to_rfc3339();
    let before =
        get(admin, &format!("/api/v1/shares?since=2020-01-01T00:00:00Z&until={}", until.replace('+', "%2B"))).await;
    assert_eq!(before.ok_json()["shares"], json!([]), "nothing before the run");

    // A range it cannot read is a 400 that says why.
    for (query, says) in [
        ("", "since is required"),
        ("since=yesterday", "RFC 3339"),
        ("since=2025-01-01T00:00:00Z&until=2025-01-01", "until"),
        ("since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z", "before"),
    ] {
        let refused = get(admin, &format!("/api/v1/shares?{query}")).await;
        assert_eq!(refused.status, 400, "{query}: {}", refused.body);
        assert!(refused.json()["error"].as_str().is_some_and(|e| e.contains(says)), "{query}: {}", refused.body);
    }
    drop((a1, b1, node));
    server.stop().await;
}

/// The statuses of `count` requests for `path` with `headers`.
async fn statuses(admin: SocketAddr, path: &str, headers: &[(&str, &str)], count: usize) -> Vec<Response> {
    let mut answers = Vec::new();
    for _ in 0..count {
        answers.push(get_with(admin, path, headers).await);
    }
    answers
}

async fn public_miner_stats_serve_one_address_at_a_rate(kind: Kind) {
    let server = Server::start_configured(Backends::new(kind).await, &["seed-rules", "pow-check"], None, |c| {
        c.admin.token = Some("s3cret".into());
        c.admin.public_miner_stats = true;
        c.admin.public_miner_stats_per_minute = std::num::NonZeroU32::new(3).expect("not zero");
    })
    .await;
    let admin = server.running.admin_addr.expect("admin server");
    let auth = [("Authorization", "Bearer s3cret")];
    let mut alice = worker_of(&server, "hw-a1", ALICE).await;
    let mut bob = worker_of(&server, "hw-b1", BOB).await;
    let mut node = server.node().await;
    node.send(&job(901, 500)).await;
    let work = alice.recv("the job").await;
    bob.recv("the job").await;
    let task = work["task_id"].as_str().expect("task id").to_string();
    let (good, reached) = solver::solve(&work["epoch_challenge"], 500, 0);
    let (other, other_reached) = solver::solve(&work["epoch_challenge"], 500, good + 1);
    assert_eq!(judged(&mut alice, &task, good, reached).await["valid"], true);
    assert_eq!(judged(&mut bob, &task, other, other_reached).await["valid"], true);
    let path = format!("/api/v1/miners/{ALICE}");
    // With the token: as any admin path, and never counted against the rate.
    for answer in statuses(admin, &path, &auth, 5).await {
        assert_eq!(answer.status, 200, "{}", answer.body);
    }

    // Without the token: Alice's own rows and nothing else, three times a minute.
    let first = get(admin, &path).await.ok_json();
    assert_eq!((first["address"].as_str(), first["valid"]["24h"].as_u64()), (Some(ALICE), Some(1)));
    let listed: Vec<&Value> = first["workers"].as_array().expect("workers").iter().collect();
    assert_eq!(listed.len(), 1, "{first:#}");
    let fields: Vec<&str> = listed[0].as_object().expect("a worker").keys().map(String::as_str).collect();
    let shown =
        ["caption", "connected_since", "hardware_id", "invalid", "last_solution_at", "online", "unchecked", "valid"];
    assert_eq!(fields, shown, "no ip, hardware or instance");
    assert!(!first.to_string().contains(BOB) && !first.to_string().contains("hw-b1"));
    let rest = statuses(admin, &format!("/api/v1/miners/{BOB}"), &[], 3).await;
    assert_eq!(rest.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 200, 429], "one allowance per client");
    let refused = &rest[2];
    let retry: u64 = refused
        .head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after: ").map(str::to_string))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("a Retry-After: {}", refused.head));
    assert!((1..=20).contains(&retry), "one request per 20 s: {retry}");
    assert!(refused.json()["error"].as_str().is_some_and(|e| e.contains("too many requests")), "{}", refused.body);
    assert_eq!(get_with(admin, &path, &auth).await.status, 200, "the token is never rate-limited");

    // The rest of the API still needs the token, the share export too; a wrong one is refused.
    for closed in ["/api/v1/shares?since=2025-01-01T00:00:00Z", "/api/v1/jobs", "/api/v1/openapi.json", "/"] {
        assert_eq!(get(admin, closed).await.status, 401, "{closed} without the token");
    }
    assert_eq!(get_with(admin, &path, &[("Authorization", "Bearer wrong")]).await.status, 401);
    let shares = get_with(admin, "/api/v1/shares?since=2025-01-01T00:00:00Z", &auth).await;
    assert_eq!(shares.ok_json()["shares"].as_array().map(Vec::len), Some(2));
    drop((alice, bob, node));
    server.stop().await;
}
