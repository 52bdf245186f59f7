//! The container files, checked without Docker (none on the build machines):
//! `compose.yaml` parses and names every role and backend with health checks,
//! every eligo setting it and the `Dockerfile` give is one eligo knows (checked
//! by `eligo config check` itself), and the image runs as a non-root user.

mod support;

use std::collections::BTreeMap;
use support::{config_check, root};
use yaml_rust2::{Yaml, YamlLoader};

fn compose() -> Yaml {
    let text = std::fs::read_to_string(root().join("compose.yaml")).expect("reading compose.yaml");
    YamlLoader::load_from_str(&text).expect("compose.yaml is YAML").pop().expect("one document")
}

fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec().map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// `${VAR:?message}` and `${VAR}` as compose fills them, with a stand-in value.
fn interpolate(value: &str) -> String {
    match value.find("${") {
        Some(start) => {
            let end = value[start..].find('}').map_or(value.len(), |e| start + e + 1);
            format!("{}stand-in{}", &value[..start], interpolate(&value[end..]))
        }
        None => value.to_string(),
    }
}

#[test]
fn compose_names_every_role_and_backend_with_health_checks() {
    let doc = compose();
    let services = doc["services"].as_hash().expect("services");
    let names: Vec<&str> = services.keys().filter_map(Yaml::as_str).collect();
    for backend in ["kafka", "rabbitmq", "postgres"] {
        assert!(names.contains(&backend), "compose has {backend}: {names:?}");
    }
    let kafka = &doc["services"]["kafka"];
    assert!(kafka["environment"]["KAFKA_PROCESS_ROLES"].as_str().is_some_and(|r| r.contains("controller")), "KRaft");
    let mut roles_run = Vec::new();
    for (name, service) in services {
        let name = name.as_str().expect("service name");
        assert!(!service["healthcheck"]["test"].is_badvalue(), "{name} has a health check");
        if service["image"].as_str() != Some("eligo:latest") {
            continue;
        }
        let command = strings(&service["command"]);
        assert_eq!(command.first().map(String::as_str), Some("serve"), "{name}: {command:?}");
        let roles = command.iter().skip_while(|a| *a != "--roles").nth(1).unwrap_or_else(|| panic!("{name}: --roles"));
        assert_eq!(roles, name, "each eligo container runs the role it is named after");
        roles_run.push(roles.clone());
        for backend in ["kafka", "rabbitmq", "postgres"] {
            assert_eq!(
                service["depends_on"][backend]["condition"].as_str(),
                Some("service_healthy"),
                "{name} waits for a healthy {backend}"
            );
        }
        // The settings this container gets must be settings eligo knows.
        let env: BTreeMap<String, String> = service["environment"]
            .as_hash()
            .expect("environment")
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), interpolate(v.as_str()?))))
            .collect();
        let (ok, report) = config_check(&command[1..], &env);
        assert!(ok, "{name}: eligo config check refuses what compose gives it:\n{report}");
        assert!(report.contains("(env ELIGO_KAFKA_BOOTSTRAP_SERVERS)"), "{report}");
        assert!(!report.contains("eligo:eligo@"), "passwords are masked: {report}");
    }
    roles_run.sort();
    assert_eq!(
        roles_run,
        ["job-processor", "node-server", "presence-processor", "solution-processor", "worker-server"]
    );
}

#[test]
fn the_image_runs_eligo_as_a_non_root_user_with_the_plugins_as_a_volume() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("reading the Dockerfile");
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    let stages: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(stages.len() >= 2 && stages[0].contains(" AS build"), "multi-stage: {stages:?}");
    let last_stage = lines.iter().rposition(|l| l.starts_with("FROM ")).expect("a final stage");
    let runtime = &lines[last_stage..];
    let user = runtime.iter().find_map(|l| l.strip_prefix("USER ")).expect("the runtime stage sets USER");
    assert!(!["root", "0", "0:0"].contains(&user), "runs as {user}");
    assert!(runtime.iter().any(|l| l.starts_with("VOLUME") && l.contains("/plugins")), "plugins are a volume");
    assert!(runtime.iter().any(|l| l.starts_with("HEALTHCHECK")), "a health check");
    assert!(runtime.iter().any(|l| l.starts_with("ENTRYPOINT") && l.contains("eligo")));

    // The image's ENV settings are settings eligo knows.
    let joined = text.replace("\\\n", " ");
    let env: BTreeMap<String, String> = joined
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ENV "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    assert!(env.contains_key("ELIGO_PLUGINS_DIR"), "{env:?}");
    let (ok, report) = config_check(&[], &env);
    assert!(ok, "eligo config check refuses the image's settings:\n{report}");
    assert!(report.contains("admin.token is unset"), "the open admin port is warned about: {report}");
}
