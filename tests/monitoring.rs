//! eligo under a real Prometheus, and the monitoring files an operator copies
//! from `deploy/`: the alert rules pass `promtool`, every Grafana and alert
//! query is evaluated by Prometheus against a running eligo, and the systemd
//! unit passes `systemd-analyze verify`.
//!
//! Needs Debian's `prometheus` package (`scripts/test` installs it); its own
//! binary, so the counters Prometheus reads are this test's traffic only.

mod support;

use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::backends::Kind;
use support::http::get;
use support::server::{job, solution, Server};

/// What Grafana puts for `$__rate_interval` at a 1 s scrape interval and this test's zoom.
const RATE_INTERVAL: &str = "1m";

fn tool(name: &str) -> String {
    let found = Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "`{name}` is not installed: scripts/test installs Debian's prometheus package");
    name.to_string()
}

/// A Prometheus scraping `target` every second, with eligo's alert rules loaded.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let rules = support::root().join("deploy/prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: eligo\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("prometheus.yml");
        let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        Prometheus { child, addr, _dir: dir }
    }

    /// `GET /api/v1/<path>?<params>`'s `data`; panics unless Prometheus says "success".
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let query: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
        let answer = get(self.addr, &format!("/api/v1/{path}?{query}")).await;
        let body = answer.json();
        assert_eq!(body["status"], "success", "{path} {params:?}: {}", answer.body);
        body["data"].clone()
    }

    /// The single value of an instant query (at `time`, if given), or `None` for an empty answer.
    async fn value(&self, query: &str, time: Option<f64>) -> Option<f64> {
        let time = time.map(|t| format!("{t:.3}"));
        let mut params = vec![("query", query)];
        if let Some(time) = &time {
            params.push(("time", time));
        }
        let data = self.api("query", &params).await;
        let result = data["result"].as_array()?.first()?.clone();
        result["value"][1].as_str()?.parse().ok()
    }

    /// Waits (up to 60 s: Prometheus starts, then scrapes) until `query` answers `done`.
    async fn until(&self, query: &str, done: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ready = get_quietly(self.addr, "/-/ready").await;
            if ready {
                if let Some(v) = self.value(query, None).await.filter(|v| done(*v)) {
                    return v;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "Prometheus never answered {query} as expected");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `path` answers 200 (false while the server is not up yet).
async fn get_quietly(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return false };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n");
    let mut raw = Vec::new();
    stream.write_all(request.as_bytes()).await.is_ok()
        && stream.read_to_end(&mut raw).await.is_ok()
        && String::from_utf8_lossy(&raw).starts_with("HTTP/1.0 200")
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Every PromQL expression of the Grafana dashboard and the alert rules.
fn deployed_queries() -> Vec<String> {
    let root = support::root();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/eligo.json")).expect("deploy/grafana/eligo.json"),
    )
    .expect("the Grafana dashboard is JSON");
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(|e| e.replace("$__rate_interval", RATE_INTERVAL)))
        .collect();
    assert!(queries.len() >= 10, "the dashboard has its panels: {}", queries.len());
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    let docs = yaml_rust2::YamlLoader::load_from_str(&rules).expect("alerts.yml is YAML");
    for group in docs[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            queries.push(rule["expr"].as_str().expect("expr").to_string());
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_reads_eligos_quantiles_and_rates_and_every_deployed_query() {
    let server = Server::start(Kind::Embedded, &["seed-rules"]).await;
    let admin = server.running.admin_addr.expect("admin server");
    let prometheus = Prometheus::start(admin);
    prometheus.until("up{job=\"eligo\"}", |v| v == 1.0).await;

    // Traffic Prometheus sees: five jobs fanned out to a worker, then solutions
    // at a steady 25 a second for eight seconds.
    let mut worker = server.worker("hw-prom").await;
    let mut node = server.node().await;
    let mut task = String::new();
    for height in 1..=5 {
        node.send(&job(height, 1)).await;
        task = worker.recv("a job").await["task_id"].as_str().expect("task id").to_string();
    }
    let (per_second, seconds) = (25u64, 8u64);
    let started = unix_now();
    let mut ticks = tokio::time::interval(Duration::from_millis(1000 / per_second));
    for nonce in 0..per_second * seconds {
        ticks.tick().await;
        worker.send(&solution(&task, 1_000 + nonce, 1)).await;
    }
    let ended = unix_now();
    let sent = (per_second * seconds) as f64;

    let counted = prometheus.until("eligo_solutions_published_total", |v| v >= sent).await;
    assert_eq!(counted, sent, "every solution sent, counted once");
    // The rate over a window inside the traffic is the rate the test sent at.
    let during = prometheus.value("rate(eligo_solutions_published_total[4s])", Some(ended - 1.5)).await;
    let rate = during.expect("a rate during the traffic");
    assert!((per_second as f64 * 0.5..=per_second as f64 * 1.6).contains(&rate), "sent {per_second}/s, rate {rate}");
    assert!(ended - started >= (seconds - 1) as f64);

    // histogram_quantile over the scraped buckets is eligo's own p99 of the same buckets.
    prometheus.until("sum(eligo_job_fanout_seconds_count)", |v| v == 5.0).await;
    let p99 = prometheus
        .value("histogram_quantile(0.99, sum by (le) (eligo_job_fanout_seconds_bucket))", None)
        .await
        .expect("a fan-out p99");
    let ours = eligo::metrics::Snapshot::now().buckets("eligo_job_fanout_seconds", &[]).quantile(0.99);
    let ours = ours.expect("eligo measured its fan-outs");
    assert!((p99 - ours).abs() <= 1e-9 + ours * 1e-6, "Prometheus {p99} vs eligo {ours}");
    assert!(p99 > 0.0 && p99 < 5.0, "a fan-out p99 of {p99} s");

    // Every query an operator copies from deploy/ is valid PromQL over eligo's series.
    for query in deployed_queries() {
        prometheus.api("query", &[("query", &query)]).await;
    }
    // The alert rules loaded and evaluate without error.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let groups = prometheus.api("rules", &[]).await["groups"].clone();
        let rules: Vec<Value> = groups
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        assert!(rules.len() >= 9, "the rules of deploy/prometheus/alerts.yml are loaded: {groups:#}");
        let errors: Vec<&Value> = rules.iter().filter(|r| r["health"] == "err").collect();
        assert!(errors.is_empty(), "rules that fail to evaluate: {errors:#?}");
        if rules.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the rules were never all evaluated: {groups:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(prometheus);
    server.stop().await;
}

#[test]
fn the_alert_rules_pass_promtool() {
    let rules = support::root().join("deploy/prometheus/alerts.yml");
    let output = Command::new(tool("promtool")).arg("check").arg("rules").arg(&rules).output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.contains("SUCCESS"), "{said}");
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(support::root().join("deploy/systemd/eligo.service")).expect("the unit");
    // `verify` checks that ExecStart's program exists: point it at the eligo this
    // test run built, in place of the installed /usr/local/bin/eligo.
    assert!(unit.contains("ExecStart=/usr/local/bin/eligo serve"), "the unit runs the installed eligo");
    let built = env!("CARGO_BIN_EXE_eligo");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("eligo.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/eligo", built)).expect("writing the unit");
    let output = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "systemd-analyze verify: {said}");
    assert!(!said.contains(&path.display().to_string()), "no warning about the unit: {said}");
    for needed in
        ["LimitNOFILE=", "Restart=on-failure", "DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict"]
    {
        assert!(unit.contains(needed), "the unit sets {needed}");
    }
}
