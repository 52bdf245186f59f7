//! The `eligo` command as a plugin author and an operator use it.

mod support;

use std::process::Command;
use support::{plugin_path, root};

fn eligo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_eligo")).args(args).output().expect("running eligo")
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn plugin_test_passes_shipped_cases_and_fails_on_a_mismatch() {
    for plugin in ["seed-rules", "pow-check", "tag-router", "testing-misbehave"] {
        let cases = root().join("plugins").join(plugin).join("cases.json");
        let out = eligo(&[
            "plugin",
            "test",
            plugin_path(plugin).to_str().expect("a UTF-8 path"),
            cases.to_str().expect("a UTF-8 path"),
        ]);
        assert!(out.status.success(), "{plugin}: {}", text(&out));
        assert!(text(&out).contains(" passed, 0 failed"), "{}", text(&out));
    }
    // The seed rules' cases run against the tag router: they must not pass.
    let cases = root().join("plugins/seed-rules/cases.json");
    let out = eligo(&[
        "plugin",
        "test",
        plugin_path("tag-router").to_str().expect("a UTF-8 path"),
        cases.to_str().expect("a UTF-8 path"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("FAIL"), "{}", text(&out));
}

#[test]
fn plugin_run_prints_the_decision_and_its_cost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input.json");
    std::fs::write(
        &input,
        r#"{"job": {"task_id": "t", "block_height": 7, "proof_target": 1, "epoch_challenge": "{}"},
            "profiles": [{"tags": [], "limits": []}],
            "workers": {"profiles": [0, 0], "states": [6, 7]}}"#,
    )
    .expect("write");
    let out = eligo(&[
        "plugin",
        "run",
        plugin_path("seed-rules").to_str().expect("a UTF-8 path"),
        "offer-job",
        input.to_str().expect("a UTF-8 path"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(printed["decision"], serde_json::json!({ "workers": [0], "states": [7] }));
    assert!(printed["cost"]["fuel"].as_u64().unwrap_or(0) > 0);
    assert!(printed["cost"]["micros"].as_f64().is_some());
}

#[test]
fn plugin_check_reports_what_the_server_would_load_and_refuses_garbage() {
    let out = eligo(&["plugin", "check", plugin_path("pow-check").to_str().expect("a UTF-8 path")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("\"validate-solution\""), "{}", text(&out));
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("bad.wasm");
    std::fs::write(&garbage, b"not wasm").expect("write");
    let out = eligo(&["plugin", "check", garbage.to_str().expect("a UTF-8 path")]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not a valid WebAssembly component"), "{}", text(&out));
}

#[test]
fn help_documents_every_serve_setting_with_its_environment_variable() {
    let out = eligo(&["serve", "--help"]);
    assert!(out.status.success());
    let help = text(&out);
    for setting in [
        "--node-listen",
        "ELIGO_NODE_LISTEN",
        "--amqp-url",
        "--kafka-properties",
        "--postgres-url",
        "--plugins-dir",
        "--roles",
    ] {
        assert!(help.contains(setting), "serve --help lacks {setting}:\n{help}");
    }
}

#[test]
fn without_a_command_eligo_serves_and_takes_serve_settings() {
    let out = eligo(&["--help"]);
    assert!(out.status.success());
    let help = text(&out);
    assert!(help.contains("serve") && help.contains("--node-listen"), "{help}");
    // A bad value is reported as serve would report it, not as an unknown argument.
    let out = eligo(&["--node-listen", "nowhere"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("invalid value 'nowhere'"), "{}", text(&out));
}

#[test]
fn a_bad_configuration_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("eligo.toml");
    std::fs::write(&file, "[node]\nlisten = \"not an address\"\n").expect("write");
    let out = eligo(&["serve", "--config", file.to_str().expect("a UTF-8 path")]);
    assert!(!out.status.success());
    assert!(text(&out).contains("invalid configuration"), "{}", text(&out));
}

#[test]
fn the_configuration_example_in_the_readme_is_valid() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let start = readme.find("```toml\n").expect("a toml block in the README") + "```toml\n".len();
    let end = start + readme[start..].find("```").expect("the end of the block");
    let config: eligo::config::Config = toml::from_str(&readme[start..end]).expect("the README's example parses");
    assert_eq!(config.roles.len(), 5);
    assert!(config.amqp.is_some() && config.kafka.is_some() && config.postgres.is_some());
    assert_eq!(config.plugins.limits.deadline_ms, 1000);
    let file = tempfile::tempdir().expect("tempdir");
    let path = file.path().join("eligo.toml");
    std::fs::write(&path, &readme[start..end]).expect("write");
    let out = eligo(&[
        "migrate",
        "--config",
        path.to_str().expect("a UTF-8 path"),
        "--postgres-url",
        "postgres://nobody@127.0.0.1:1/none",
    ]);
    assert!(!out.status.success(), "an unreachable database is an error");
    assert!(text(&out).contains("PostgreSQL at postgres://nobody@127.0.0.1:1/none"), "{}", text(&out));
}

#[test]
fn config_check_says_where_each_value_came_from_and_masks_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("eligo.toml");
    std::fs::write(&file, "[node]\nlisten = \"127.0.0.1:9101\"\n[postgres]\nurl = \"postgres://u:hunter2@db/eligo\"\n")
        .expect("config file");
    let out = Command::new(env!("CARGO_BIN_EXE_eligo"))
        .args(["config", "check", "--config", file.to_str().expect("utf-8"), "--worker-listen", "127.0.0.1:9102"])
        .env("ELIGO_ADMIN_TOKEN", "t0ps3cret")
        .env("ELIGO_INSTANCE", "rig-7")
        .output()
        .expect("running eligo");
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let line = |key: &str| {
        report
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("{key}: {report}"))
    };
    assert!(line("node.listen").ends_with("(file)"), "{report}");
    assert!(line("worker.listen").ends_with("(flag --worker-listen)"), "{report}");
    assert!(line("instance").ends_with("(env ELIGO_INSTANCE)"), "{report}");
    assert!(line("admin.listen").ends_with("(default)"), "{report}");
    assert!(line("postgres.url").contains("u:***@db"), "{report}");
    assert!(line("admin.token").contains("***"), "{report}");
    assert!(!report.contains("hunter2") && !report.contains("t0ps3cret"), "secrets never printed: {report}");
    assert!(report.contains("configuration ok"), "{report}");
}

#[test]
fn config_check_masks_every_secret_kafka_property() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("eligo.toml");
    std::fs::write(
        &file,
        "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n\
         properties = { \"sasl.mechanism\" = \"PLAIN\", \"sasl.jaas.config\" = \"jaas-hunter2\", \
         \"ssl.key.pem\" = \"pem-hunter2\", \"ssl.key.password\" = \"key-hunter2\", \"sasl.password\" = \"sasl-hunter2\" }\n",
    )
    .expect("config file");
    let out = Command::new(env!("CARGO_BIN_EXE_eligo"))
        .args(["config", "check", "--config", file.to_str().expect("utf-8")])
        .current_dir(dir.path())
        .output()
        .expect("running eligo");
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(!report.contains("hunter2"), "secrets never printed: {report}");
    for name in ["sasl.jaas.config", "ssl.key.pem", "ssl.key.password", "sasl.password"] {
        assert!(report.contains(&format!("kafka.properties.\"{name}\"")), "{name} listed: {report}");
    }
    assert!(report.contains("\"PLAIN\""), "what is not secret is shown: {report}");
}

#[test]
fn plugin_replay_refuses_an_absurd_since_without_panicking() {
    let out = eligo(&["plugin", "replay", "candidate.wasm", "--since", "999999999999h"]);
    assert_eq!(out.status.code(), Some(1), "an error, not a panic (101): {}", text(&out));
    assert!(text(&out).contains("too long a duration"), "{}", text(&out));
    assert!(!text(&out).contains("panicked"), "{}", text(&out));
}

#[test]
fn config_check_fails_on_an_unknown_key_a_misspelt_variable_or_an_unreachable_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[node]\nlisten = \"127.0.0.1:9101\"\noutbx = 5\n").expect("config file");
    let unknown_key = eligo(&["config", "check", "--config", file.to_str().expect("utf-8")]);
    assert!(!unknown_key.status.success());
    assert!(text(&unknown_key).contains("unknown field `outbx`"), "{}", text(&unknown_key));

    let misspelt = Command::new(env!("CARGO_BIN_EXE_eligo"))
        .args(["config", "check"])
        .current_dir(dir.path())
        .env("ELIGO_POSTGRESS_URL", "postgres://x")
        .output()
        .expect("running eligo");
    assert!(!misspelt.status.success());
    assert!(text(&misspelt).contains("ELIGO_POSTGRESS_URL is not an eligo setting"), "{}", text(&misspelt));

    // Port 1 on the loopback: nothing listens there.
    let unreachable = Command::new(env!("CARGO_BIN_EXE_eligo"))
        .args(["config", "check", "--connect", "--postgres-url", "postgres://postgres@127.0.0.1:1/test"])
        .current_dir(dir.path())
        .output()
        .expect("running eligo");
    let report = text(&unreachable);
    assert!(!unreachable.status.success(), "{report}");
    assert!(report.contains("store: FAILED") && report.contains("problem: store:"), "{report}");
    assert!(report.contains("queue: embedded"), "{report}");
}

#[test]
fn cli_errors_are_their_cause_chain_with_a_backtrace_only_on_request() {
    let missing = |backtrace: &str| {
        Command::new(env!("CARGO_BIN_EXE_eligo"))
            .args(["plugin", "check", "no-such-plugin.wasm"])
            .env("RUST_BACKTRACE", "1")
            .env("ELIGO_BACKTRACE", backtrace)
            .output()
            .expect("running eligo")
    };
    let out = missing("0");
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out);
    assert!(report.starts_with("error: reading no-such-plugin.wasm\n"), "{report}");
    assert!(report.contains("caused by: No such file or directory"), "{report}");
    assert!(!report.to_lowercase().contains("backtrace"), "RUST_BACKTRACE alone adds nothing: {report}");
    assert!(report.lines().count() <= 3, "{report}");
    let asked = text(&missing("1"));
    assert!(asked.lines().count() > 3, "ELIGO_BACKTRACE=1 adds the backtrace: {asked}");
}

/// An installed `eligo` says what it is and where it came from, and gives the
/// shell completions and manual pages a packager or user installs.
#[test]
fn version_names_the_commit_and_completions_and_manual_pages_are_generated() {
    let out = eligo(&["--version"]);
    assert!(out.status.success(), "{}", text(&out));
    let version = text(&out);
    assert!(version.starts_with(&format!("eligo {} (commit ", env!("CARGO_PKG_VERSION"))), "{version}");
    let commit = version.split("(commit ").nth(1).unwrap_or_default().trim_end().trim_end_matches(')');
    let hex = commit.trim_end_matches("-modified");
    assert!(hex == "unknown" || (hex.len() == 12 && hex.chars().all(|c| c.is_ascii_hexdigit())), "{version}");

    let out = eligo(&["completions", "bash"]);
    assert!(out.status.success(), "{}", text(&out));
    let script = String::from_utf8_lossy(&out.stdout);
    for word in ["_eligo()", "serve", "plugin", "--worker-listen"] {
        assert!(script.contains(word), "the bash completions lack {word}");
    }
    assert!(!eligo(&["completions", "tcsh"]).status.success(), "an unknown shell is an error");

    let dir = tempfile::tempdir().expect("tempdir");
    let out = eligo(&["man", dir.path().to_str().expect("a UTF-8 path")]);
    assert!(out.status.success(), "{}", text(&out));
    let main = std::fs::read_to_string(dir.path().join("eligo.1")).expect("eligo.1");
    assert!(main.starts_with(".ie") || main.contains(".TH eligo"), "{}", &main[..main.len().min(200)]);
    assert!(main.contains("plugin"), "the main page lists the subcommands");
    let serve = std::fs::read_to_string(dir.path().join("eligo-serve.1")).expect("a page per subcommand");
    assert!(
        serve.contains("worker\\-listen") || serve.contains("worker-listen"),
        "serve's page documents its settings"
    );
    assert!(dir.path().join("eligo-plugin-test.1").exists(), "nested subcommands have pages too");
}
