//! `eligo config check`: the effective configuration, one line per setting,
//! with where each value came from, secrets masked, and what is wrong with it.

use super::{is_secret_key, redact_url, Config};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// Where a setting's value came from; later sources win.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Nobody set it.
    Default,
    /// The configuration file.
    File,
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File => write!(f, "file"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// One setting as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Dotted key, as in the file (`node.listen`, `kafka.properties."sasl.password"`).
    pub key: String,
    /// The value as TOML-like text, secrets masked.
    pub value: String,
    /// Where it came from.
    pub source: Source,
}

/// Every setting of `config`, sorted by key. `file` is the file's parsed text
/// (what it set), `overrides` the keys environment variables and flags set.
pub fn settings(config: &Config, file: Option<&toml::Table>, overrides: &[(&str, Source)]) -> Vec<Setting> {
    let mut effective = BTreeMap::new();
    flatten("", &serde_json::to_value(config).unwrap_or(Value::Null), &mut effective);
    let mut from_file = BTreeMap::new();
    if let Some(table) = file {
        flatten("", &serde_json::to_value(table).unwrap_or(Value::Null), &mut from_file);
    }
    effective
        .into_iter()
        .map(|(key, value)| {
            let overridden = overrides.iter().find(|(k, _)| key == *k || key.starts_with(&format!("{k}.")));
            let source = match overridden {
                Some((_, source)) => source.clone(),
                None if from_file.keys().any(|f| *f == key || key.starts_with(&format!("{f}."))) => Source::File,
                None => Source::Default,
            };
            let value = mask(&key, &value);
            Setting { key, value, source }
        })
        .collect()
}

/// Leaves of a JSON tree by dotted key; arrays and empty objects are leaves.
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let k = if k.contains('.') { format!("\"{k}\"") } else { k.clone() };
                let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), value.clone());
        }
    }
}

/// The value as shown: URLs without their password, secrets as `***`.
fn mask(key: &str, value: &Value) -> String {
    let last = last_segment(key).to_ascii_lowercase();
    let secret = is_secret_key(&last);
    match value {
        Value::Null => "(unset)".into(),
        Value::String(_) if secret => "\"***\"".into(),
        Value::String(s) if last.contains("url") => format!("\"{}\"", redact_url(s)),
        other => other.to_string(),
    }
}

/// The last segment of a dotted key: `sasl.jaas.config` of
/// `kafka.properties."sasl.jaas.config"`, a name quoted for its dots being one
/// segment.
fn last_segment(key: &str) -> &str {
    match key.strip_suffix('"').and_then(|quoted| quoted.rsplit_once('"')) {
        Some((_, name)) => name,
        None => key.rsplit('.').next().unwrap_or(key),
    }
}

/// What is wrong with `config` without contacting anything: problems make
/// `config check` fail; warnings are printed only.
pub fn review(config: &Config) -> (Vec<String>, Vec<String>) {
    let (mut problems, mut warnings) = (Vec::new(), Vec::new());
    if config.roles.is_empty() {
        problems.push("roles is empty: this process would do nothing".into());
    }
    let tls = [("node", &config.node.tls), ("worker", &config.worker.tls), ("admin", &config.admin.tls)];
    for (server, tls) in tls {
        let Some(tls) = tls else { continue };
        for (what, path) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
            if !path.is_file() {
                problems.push(format!("{server}.tls.{what}: {} is not a readable file", path.display()));
            }
        }
    }
    if let Some(listen) = config.admin.listen {
        if !listen.ip().is_loopback() && config.admin.token.as_deref().is_none_or(str::is_empty) {
            warnings.push(format!(
                "admin.listen is {listen}, reachable from other machines, and admin.token is unset: \
                 anyone who can reach it reads the API and the dashboard"
            ));
        }
    }
    for (server, addr) in [("node", config.node.listen), ("worker", config.worker.listen)] {
        if Some(addr) == config.admin.listen {
            problems.push(format!("{server}.listen and admin.listen are both {addr}"));
        }
    }
    for (name, hook) in &config.node.webhooks {
        if let Err(problem) = hook.check() {
            problems.push(format!("node.webhooks.{name}: {problem}"));
        }
    }
    if config.node.listen == config.worker.listen {
        problems.push(format!("node.listen and worker.listen are both {}", config.node.listen));
    }
    if !config.plugins.dir.is_dir() {
        warnings
            .push(format!("plugins.dir {} does not exist yet: it is created at start", config.plugins.dir.display()));
    }
    (problems, warnings)
}

/// Environment variables that look like eligo's (`ELIGO_…`) but are not one of
/// `known`: a misspelt setting that would otherwise be ignored in silence.
pub fn unknown_env(known: &[&str]) -> Vec<String> {
    let mut unknown: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("ELIGO_") && !k.starts_with("ELIGO_TEST_") && !known.contains(&k.as_str()))
        // A webhook's variables carry its name: well-formed ones are read, not unknown.
        .filter(|k| !(k.starts_with(super::WEBHOOK_ENV_PREFIX) && (k.ends_with("_URL") || k.ends_with("_SECRET"))))
        .collect();
    unknown.sort();
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_says_where_it_came_from_and_secrets_are_masked() {
        let text = "[node]\nlisten = \"0.0.0.0:9001\"\n[postgres]\nurl = \"postgres://u:pw@db/eligo\"\n";
        let table: toml::Table = toml::from_str(text).expect("toml");
        let mut config: Config = toml::from_str(text).expect("config");
        config.admin.token = Some("s3cret".into());
        let overrides = [("admin.token", Source::Env("ELIGO_ADMIN_TOKEN".into()))];
        let settings = settings(&config, Some(&table), &overrides);
        let find = |key: &str| settings.iter().find(|s| s.key == key).unwrap_or_else(|| panic!("{key} listed"));
        assert_eq!(find("node.listen").source, Source::File);
        assert_eq!(find("worker.listen").source, Source::Default);
        assert_eq!(find("postgres.max_connections").source, Source::Default, "a default inside a file's table");
        assert_eq!(find("postgres.url").value, "\"postgres://u:***@db/eligo\"");
        assert_eq!((&*find("admin.token").value, &find("admin.token").source), ("\"***\"", &overrides[0].1));
        assert!(!settings.iter().any(|s| s.value.contains("pw@") || s.value.contains("s3cret")));
    }

    #[test]
    fn every_secret_kafka_property_is_masked() {
        let text = "[kafka]\nbootstrap_servers = \"k:9092\"\n[kafka.properties]\n\
                    \"sasl.mechanism\" = \"PLAIN\"\n\"sasl.jaas.config\" = \"jaas-secret\"\n\
                    \"ssl.key.pem\" = \"pem-secret\"\n\"ssl.key.password\" = \"key-secret\"\n\
                    \"sasl.password\" = \"sasl-secret\"\n";
        let table: toml::Table = toml::from_str(text).expect("toml");
        let config: Config = toml::from_str(text).expect("config");
        let settings = settings(&config, Some(&table), &[]);
        for name in ["sasl.jaas.config", "ssl.key.pem", "ssl.key.password", "sasl.password"] {
            let key = format!("kafka.properties.\"{name}\"");
            let setting = settings.iter().find(|s| s.key == key).unwrap_or_else(|| panic!("{key} listed"));
            assert_eq!(setting.value, "\"***\"", "{key}");
        }
        assert!(!settings.iter().any(|s| s.value.contains("-secret")), "{settings:?}");
        let mechanism = settings.iter().find(|s| s.key == "kafka.properties.\"sasl.mechanism\"");
        assert_eq!(mechanism.map(|s| s.value.as_str()), Some("\"PLAIN\""), "what is not secret is shown");
    }

    #[test]
    fn of_the_defaults_only_the_admin_token_is_masked() {
        let config = Config {
            admin: crate::config::AdminConfig { token: Some("t".into()), ..Default::default() },
            ..Default::default()
        };
        let masked: Vec<String> =
            settings(&config, None, &[]).into_iter().filter(|s| s.value == "\"***\"").map(|s| s.key).collect();
        assert_eq!(masked, ["admin.token"]);
    }

    #[test]
    fn clashing_addresses_are_problems_and_an_open_admin_port_is_a_warning() {
        let mut config = Config::default();
        config.worker.listen = config.node.listen;
        config.admin.listen = Some(([0, 0, 0, 0], 8003).into());
        let (problems, warnings) = review(&config);
        assert!(problems.iter().any(|p| p.contains("node.listen and worker.listen")), "{problems:?}");
        assert!(warnings.iter().any(|w| w.contains("admin.token is unset")), "{warnings:?}");
    }
}
