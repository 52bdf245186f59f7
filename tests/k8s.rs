//! The Kubernetes manifests (`deploy/k8s`), checked offline: every overlay
//! renders with kustomize and validates against the Kubernetes schemas
//! (`kubernetes-validate`), the Prometheus Operator's resources against their
//! CRDs' schemas, the YAML passes `yamllint`, the `PrometheusRule` says what
//! `deploy/prometheus/alerts.yml` says, and each container's command, settings
//! and ports are ones eligo knows (`eligo config check`) and listens on.
//! `scripts/test` installs the tools (into `target/`).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{config_check, root};
use yaml_rust2::{Yaml, YamlLoader};

const OVERLAYS: [&str; 2] = ["networked", "embedded"];
/// The oldest Kubernetes the manifests are meant for.
const KUBERNETES: &str = "1.30.0";

/// A tool `scripts/test` installs under `target/`.
fn installed(path: &str) -> PathBuf {
    let tool = root().join("target").join(path);
    assert!(tool.exists(), "{} is missing: scripts/test installs it", tool.display());
    tool
}

/// Runs `command`; panics with its output unless it succeeds. Returns stdout and stderr.
fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

/// The overlay rendered by `kubectl kustomize`, as text.
fn render(overlay: &str) -> String {
    let dir = root().join("deploy/k8s/overlays").join(overlay);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl (with kustomize built in) is on these machines");
    assert!(out.status.success(), "kustomize {overlay}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The overlay rendered, written to a file of its own.
fn rendered_file(overlay: &str, dir: &Path) -> PathBuf {
    let path = dir.join(format!("{overlay}.yaml"));
    std::fs::write(&path, render(overlay)).expect("writing the rendered manifest");
    path
}

fn documents(text: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(text).expect("YAML")
}

fn str_of(y: &Yaml) -> &str {
    y.as_str().unwrap_or_default()
}

#[test]
fn every_overlay_renders_and_validates_against_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().expect("tempdir");
    for overlay in OVERLAYS {
        let file = rendered_file(overlay, dir.path());
        let report = run(Command::new(installed("venv/bin/kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", KUBERNETES])
            .arg(&file));
        // The CRDs' resources are checked by the next test.
        let unchecked: Vec<&str> = report
            .lines()
            .filter(|l| !l.contains(" passed for resource ") && !l.contains("monitoring.coreos.com"))
            .collect();
        assert!(unchecked.is_empty(), "{overlay}: {unchecked:#?}");
        assert!(report.contains("passed for resource deployment/"), "{report}");
    }
}

#[test]
fn the_prometheus_operator_resources_validate_against_their_crds() {
    let tools = installed("k8s-tools/node_modules").parent().expect("k8s-tools").to_path_buf();
    // Node resolves an ES module's imports beside the module: it runs from there.
    let script = tools.join("check-crs.mjs");
    std::fs::copy(root().join("tests/k8s/check-crs.mjs"), &script).expect("copying the checker");
    let dir = tempfile::tempdir().expect("tempdir");
    for overlay in OVERLAYS {
        let report = run(Command::new("node").arg(&script).arg(rendered_file(overlay, dir.path())));
        assert_eq!(report.trim(), "valid: PrometheusRule/eligo ServiceMonitor/eligo", "{overlay}");
    }
}

#[test]
fn the_yaml_passes_yamllint() {
    run(Command::new(installed("venv/bin/yamllint"))
        .arg("--strict")
        .args(["deploy", "compose.yaml", ".yamllint.yaml"])
        .current_dir(root()));
}

#[test]
fn the_prometheus_rule_holds_the_alert_rules_of_deploy_prometheus() {
    let read = |path: &str| documents(&std::fs::read_to_string(root().join(path)).expect(path)).remove(0);
    let alerts = read("deploy/prometheus/alerts.yml");
    let rule = read("deploy/k8s/base/prometheusrule.yaml");
    assert!(!alerts["groups"].is_badvalue());
    assert_eq!(rule["spec"]["groups"], alerts["groups"], "run scripts/k8s-rules after editing alerts.yml");
}

/// What a container's `env` gives eligo, with stand-ins for what the cluster
/// fills in (secrets, the pod's name) and `ELIGO_CONFIG` pointing at `config`.
fn environment(container: &Yaml, config: &Path) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_vec().into_iter().flatten() {
        let name = str_of(&var["name"]).to_string();
        let value = match (&var["value"], &var["valueFrom"]["secretKeyRef"]["key"], &var["valueFrom"]["fieldRef"]) {
            (Yaml::String(v), _, _) => v.clone(),
            (_, Yaml::String(key), _) => match key.as_str() {
                "amqp-url" => "amqp://eligo:secret@rabbitmq:5672/%2f".into(),
                "postgres-url" => "postgres://eligo:secret@postgres:5432/eligo".into(),
                other => format!("stand-in-{other}"),
            },
            (_, _, fieldref) if !fieldref.is_badvalue() => "eligo-worker-server-0".into(),
            _ => panic!("{name}: no value"),
        };
        env.insert(name, value);
    }
    assert_eq!(env.get("ELIGO_CONFIG").map(String::as_str), Some("/etc/eligo/eligo.toml"));
    env.insert("ELIGO_CONFIG".into(), config.display().to_string());
    env
}

/// The port of a `listen` address in `[section]` of the settings.
fn listen_port(settings: &toml::Table, section: &str) -> i64 {
    let listen = settings[section]["listen"].as_str().unwrap_or_else(|| panic!("[{section}] listen"));
    listen.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port")
}

#[test]
fn each_container_runs_what_eligo_knows_and_listens_where_its_ports_say() {
    for overlay in OVERLAYS {
        let docs = documents(&render(overlay));
        let kinds = |kind: &'static str| docs.iter().filter(move |d| str_of(&d["kind"]) == kind);
        let config_map = kinds("ConfigMap")
            .find(|d| str_of(&d["metadata"]["name"]).starts_with("eligo-config-"))
            .expect("eligo.toml as a ConfigMap named by its hash");
        let toml_text = str_of(&config_map["data"]["eligo.toml"]);
        let settings: toml::Table = toml_text.parse().expect("eligo.toml is TOML");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("eligo.toml");
        std::fs::write(&config, toml_text).expect("writing eligo.toml");

        let mut ports_served = Vec::new();
        for workload in kinds("Deployment").chain(kinds("StatefulSet")) {
            let name = str_of(&workload["metadata"]["name"]);
            let pod = &workload["spec"]["template"]["spec"];
            let container = pod["containers"].as_vec().and_then(|c| c.first()).expect("a container");
            let args: Vec<String> =
                container["args"].as_vec().expect("args").iter().map(|a| str_of(a).into()).collect();
            assert_eq!(args.first().map(String::as_str), Some("serve"), "{overlay}/{name}: {args:?}");

            // Its command and settings are ones eligo knows.
            let (ok, report) = config_check(&args[1..], &environment(container, &config));
            assert!(ok, "{overlay}/{name}: eligo config check refuses what the manifest gives it:\n{report}");
            assert!(!report.contains("eligo:secret@"), "passwords are masked: {report}");

            // It listens where its ports say, and has a port for each listener it runs.
            let roles = args.iter().skip_while(|a| *a != "--roles").nth(1).cloned();
            let runs = |role: &str| roles.as_deref().is_none_or(|r| r.split(',').any(|x| x == role));
            let ports: BTreeMap<String, i64> = container["ports"]
                .as_vec()
                .expect("ports")
                .iter()
                .map(|p| (str_of(&p["name"]).to_string(), p["containerPort"].as_i64().expect("a number")))
                .collect();
            for (port, section, role) in [
                ("node", "node", Some("node-server")),
                ("worker", "worker", Some("worker-server")),
                ("admin", "admin", None),
            ] {
                let needed = role.is_none_or(runs);
                assert_eq!(ports.contains_key(port), needed, "{overlay}/{name}: port {port} ({ports:?})");
                if needed {
                    assert_eq!(ports[port], listen_port(&settings, section), "{overlay}/{name}: [{section}] listen");
                }
            }
            let labels = &workload["spec"]["template"]["metadata"]["labels"];
            ports_served.push((labels.clone(), ports));

            // Probed on the admin port; stopped gracefully; confined.
            let probe = |which: &str| {
                (str_of(&container[which]["httpGet"]["path"]), str_of(&container[which]["httpGet"]["port"]))
            };
            assert_eq!(probe("livenessProbe"), ("/healthz", "admin"), "{overlay}/{name}");
            assert_eq!(probe("readinessProbe"), ("/readyz", "admin"), "{overlay}/{name}");
            assert!(!container["lifecycle"]["preStop"].is_badvalue(), "{overlay}/{name}: a preStop");
            // The preStop sleep, eligo's bounded drain (~5 s of connections, 10 s of tasks), and room.
            assert!(pod["terminationGracePeriodSeconds"].as_i64() >= Some(30), "{overlay}/{name}");
            assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true), "{overlay}/{name}");
            let confined = &container["securityContext"];
            assert_eq!(confined["readOnlyRootFilesystem"].as_bool(), Some(true), "{overlay}/{name}");
            assert_eq!(confined["allowPrivilegeEscalation"].as_bool(), Some(false), "{overlay}/{name}");
            assert_eq!(confined["capabilities"]["drop"][0].as_str(), Some("ALL"), "{overlay}/{name}");
            for bound in ["requests", "limits"] {
                for what in ["cpu", "memory"] {
                    assert!(container["resources"][bound][what].as_str().is_some(), "{overlay}/{name}: {bound}.{what}");
                }
            }
        }

        // Every Service reaches pods that have the port it forwards to.
        for service in kinds("Service") {
            let name = str_of(&service["metadata"]["name"]);
            let selector = service["spec"]["selector"].as_hash().expect("a selector");
            let matching: Vec<&BTreeMap<String, i64>> = ports_served
                .iter()
                .filter(|(labels, _)| selector.iter().all(|(k, v)| labels[str_of(k)] == *v))
                .map(|(_, ports)| ports)
                .collect();
            assert!(!matching.is_empty(), "{overlay}: Service {name} selects no pod");
            for port in service["spec"]["ports"].as_vec().expect("ports") {
                let target = str_of(&port["targetPort"]);
                assert!(matching.iter().all(|p| p.contains_key(target)), "{overlay}: Service {name} → {target}");
            }
        }
    }
}
