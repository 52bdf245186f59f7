//! `eligo plugin`: the policy author's runner over the same plugin runtime the server
//! uses, so that what a plugin decides here is what it decides in production.

use crate::authoring::{replay, runner};
use crate::plugin::{self, signature};
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

// clap also reads this doc as `eligo plugin`'s about, but the `Plugin` variant's own,
// applied after, wins: --help does not show it.
/// `eligo plugin`'s subcommands.
// Parsed once per command line: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum PluginCommand {
    /// Calls one hook of a plugin and prints the decision and what it cost.
    ///
    /// The input is the hook's arguments as JSON, e.g. for offer-job:
    /// {"job": {...}, "profiles": [...], "workers": [{"profile": 0, "state": 0}], "now": 0}
    Run {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// info, admit-connection, admit-worker, admit-job, offer-job, validate-solution or offer-solution.
        hook: String,
        /// The JSON input file; `-` for standard input.
        input: PathBuf,
        /// The plugin's settings.
        #[command(flatten)]
        settings: SettingsArg,
    },
    /// Runs fixture cases against a plugin; exits non-zero on a mismatch.
    Test {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// The case file (JSON; see the README).
        cases: PathBuf,
        /// The plugin's settings.
        #[command(flatten)]
        settings: SettingsArg,
    },
    /// Starts a new plugin crate: every hook with a comment on what it decides,
    /// a cases.json and a #[test] that runs it.
    ///
    /// Inside an eligo checkout the crate joins the plugins/ workspace (built by
    /// `cargo xtask plugins`); elsewhere, or with --dir, it is a crate of its own
    /// with a copy of the contract. Both build with
    /// `cargo component build --release --target wasm32-unknown-unknown`.
    New {
        /// The plugin's name: lowercase letters, digits and '-'.
        name: String,
        /// The folder of the new crate (default: plugins/<name> in an eligo
        /// checkout, else ./<name>).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Loads a plugin as the server would and prints what it reports, with its
    /// signature: checked against --trusted-key as a server with those
    /// `trusted_keys` would (refused: non-zero exit), else against the key it names.
    Check {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// The plugin's settings.
        #[command(flatten)]
        settings: SettingsArg,
        /// A public key the plugin must be signed by (`ed25519:…`); repeat for several.
        #[arg(long = "trusted-key", value_name = "KEY")]
        trusted_keys: Vec<String>,
    },
    /// Replays the recorded history (from the store of eligo's configuration)
    /// through the candidate and through the active plugins: which workers each
    /// job would reach, which solutions would change validity, which welcomes
    /// would be refused.
    Replay {
        /// The candidate plugin component (.wasm).
        candidate: PathBuf,
        /// The key of the active plugin it would replace (default: the
        /// candidate's file stem); a key no active plugin has adds it.
        #[arg(long)]
        against: Option<String>,
        /// Only what happened in this last stretch: 90s, 30m, 2h, 7d, 2w, "1h 30m".
        #[arg(long, value_name = "DURATION", conflicts_with = "heights")]
        since: Option<String>,
        /// Only the jobs of these heights and their solutions: FROM..TO.
        #[arg(long, value_name = "FROM..TO")]
        heights: Option<String>,
        /// The candidate's settings (TOML); default: the .toml beside it, if any.
        #[arg(long = "settings", value_name = "FILE")]
        settings: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The server settings the report is made against.
        #[command(flatten)]
        server: crate::cli::serve_args::ServeArgs,
    },
    /// Writes a new Ed25519 key pair for signing plugins: <NAME>.key (secret,
    /// readable by you only) and <NAME>.pub (what `[plugins] trusted_keys` lists).
    Keygen {
        /// The key's name, e.g. `release-2026`.
        name: String,
        /// The folder to write both files to.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Signs a plugin: writes <PLUGIN>.sig, covering the wasm and the settings
    /// file beside it (<key>.toml), if there is one. Changing either later
    /// invalidates the signature.
    Sign {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// The secret key file (from `eligo plugin keygen`).
        #[arg(long, value_name = "SECRET")]
        key: PathBuf,
    },
}

/// The settings a plugin command hands the plugin.
#[derive(clap::Args)]
pub struct SettingsArg {
    /// The plugin's settings (TOML). Without it, the `.toml` beside the plugin
    /// file is used if there is one, as the server does; else none (`{}`).
    #[arg(long = "config", value_name = "FILE")]
    file: Option<PathBuf>,
}

/// How a plugin command names the settings it used.
fn settings_used(settings: &plugin::Settings) -> String {
    settings.source.clone().unwrap_or_else(|| "none ({})".into())
}

/// Runs one `eligo plugin` subcommand. `plugin test` with a failing case is a
/// failure exit code, not an error: the cases' report says what failed.
pub fn run(command: PluginCommand) -> Result<ExitCode> {
    match command {
        PluginCommand::Run { plugin, hook, input, settings } => run_hook(plugin, hook, input, settings),
        PluginCommand::Test { plugin, cases: cases_file, settings } => test_cases(plugin, cases_file, settings),
        PluginCommand::New { name, dir } => new_plugin(name, dir),
        PluginCommand::Check { plugin, settings, trusted_keys } => check(plugin, settings, trusted_keys),
        PluginCommand::Replay { candidate, against, since, heights, settings, json, server } => {
            replay_command(candidate, against, since, heights, settings, json, server)
        }
        PluginCommand::Keygen { name, dir } => keygen(name, dir),
        PluginCommand::Sign { plugin, key } => sign(plugin, key),
    }
}

/// `plugin run`: one hook on one input, with what it cost.
fn run_hook(plugin: PathBuf, hook: String, input: PathBuf, settings: SettingsArg) -> Result<ExitCode> {
    let (plugin, settings) = plugin::load_file_configured(&plugin, settings.file.as_deref())?;
    let text = if input.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(&input).with_context(|| format!("reading {}", input.display()))?
    };
    let input = serde_json::from_str(&text).context("the input is not JSON")?;
    let (decision, cost) = runner::run_hook(&plugin, &hook, input)?;
    let out = serde_json::json!({
        "config": settings_used(&settings),
        "decision": decision,
        "cost": { "micros": cost.elapsed.as_secs_f64() * 1e6, "fuel": cost.fuel, "memory_bytes": cost.memory_bytes },
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// `plugin test`: every case of a case file; a failed case is a failure exit code.
fn test_cases(plugin: PathBuf, cases_file: PathBuf, settings: SettingsArg) -> Result<ExitCode> {
    let cases = runner::CaseFile::read(&cases_file)?;
    let (plugin, settings) = cases.load(&plugin, &cases_file, settings.file.as_deref())?;
    println!("config: {}", settings_used(&settings));
    let outcomes = runner::run_cases(Arc::new(plugin), &cases);
    let failed = outcomes.iter().filter(|o| !o.mismatches.is_empty()).count();
    for o in &outcomes {
        if o.mismatches.is_empty() {
            println!("ok    {}", o.name);
        } else {
            println!("FAIL  {}", o.name);
            for m in &o.mismatches {
                println!("        {m}");
            }
        }
    }
    println!("{} passed, {} failed", outcomes.len() - failed, failed);
    if failed > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `plugin new`: a plugin's project, and what to run next.
fn new_plugin(name: String, dir: Option<PathBuf>) -> Result<ExitCode> {
    use crate::authoring::scaffold::{default_layout, scaffold, Layout};
    let layout = match dir {
        Some(dir) => Layout::Standalone(dir),
        None => default_layout(&std::env::current_dir().context("reading the current folder")?, &name),
    };
    let files = scaffold(&name, &layout)?;
    for file in &files {
        println!("wrote {}", file.display());
    }
    let lib = name.replace('-', "_");
    match &layout {
        Layout::Workspace(plugins) => println!(
            "\nnext:\n  cargo xtask plugins                      # builds target/plugins/{name}.wasm\n  \
             eligo plugin test target/plugins/{name}.wasm {}/{name}/cases.json\n  \
             cp target/plugins/{name}.wasm policies/50-{name}.wasm   # a running server loads it",
            plugins.display()
        ),
        Layout::Standalone(dir) => println!(
            "\nnext:\n  cd {}\n  cargo component build --release --target wasm32-unknown-unknown\n  \
             eligo plugin test target/wasm32-unknown-unknown/release/{lib}.wasm cases.json\n  \
             cp target/wasm32-unknown-unknown/release/{lib}.wasm <policies>/50-{name}.wasm",
            dir.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `plugin check`: what the server would report of the plugin, and its signature.
fn check(plugin: PathBuf, settings: SettingsArg, trusted_keys: Vec<String>) -> Result<ExitCode> {
    let path = plugin;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let signature = check_signature(&path, &bytes, &trusted_keys)?;
    let (plugin, settings) = plugin::load_file_configured(&path, settings.file.as_deref())?;
    let mut report = plugin::loaded_policy(plugin.name().into(), &path, &sha256(&bytes), Arc::new(plugin)).report;
    report.settings = Some(settings_used(&settings));
    let mut shown = serde_json::to_value(&report)?;
    shown["signature"] = serde_json::Value::String(signature.clone().unwrap_or_else(|e| e));
    println!("{}", serde_json::to_string_pretty(&shown)?);
    if let Err(refused) = signature {
        eprintln!("refused: {refused}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `plugin replay`: a candidate over the recorded history, beside the active plugins.
fn replay_command(
    candidate: PathBuf,
    against: Option<String>,
    since: Option<String>,
    heights: Option<String>,
    settings: Option<PathBuf>,
    json: bool,
    server: crate::cli::serve_args::ServeArgs,
) -> Result<ExitCode> {
    let range = match (since, heights) {
        (Some(since), _) => replay::Range::Since(before(chrono::Utc::now(), &since)?),
        (None, Some(heights)) => {
            let (from, to) = parse_heights(&heights)?;
            replay::Range::Heights(from, to)
        }
        (None, None) => replay::Range::All,
    };
    let config = server.config()?;
    let report = super::process::runtime()?.block_on(replay_history(&config, &candidate, against, settings, range))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.summary());
    }
    Ok(ExitCode::SUCCESS)
}

/// `plugin keygen`: a new signing key pair; never overwrites one.
fn keygen(name: String, dir: PathBuf) -> Result<ExitCode> {
    let (secret, public) = signature::generate_key_pair(&name);
    let secret_file = dir.join(format!("{name}.key"));
    let public_file = dir.join(format!("{name}.pub"));
    for file in [&secret_file, &public_file] {
        anyhow::ensure!(!file.exists(), "{} exists: keys are never overwritten", file.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_secret(&secret_file, &secret)?;
    std::fs::write(&public_file, &public).with_context(|| format!("writing {}", public_file.display()))?;
    println!("wrote {} (secret: keep it where plugins are signed, not on the servers)", secret_file.display());
    println!("wrote {}", public_file.display());
    println!("\ntrust it in eligo.toml:\n  [plugins]\n  trusted_keys = [\"{}\"]", public.trim());
    Ok(ExitCode::SUCCESS)
}

/// `plugin sign`: a signature over the plugin and its settings file.
fn sign(plugin: PathBuf, key: PathBuf) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&key).with_context(|| format!("reading {}", key.display()))?;
    let secret = signature::parse_secret_key(&text).with_context(|| format!("reading {}", key.display()))?;
    let bytes = std::fs::read(&plugin).with_context(|| format!("reading {}", plugin.display()))?;
    let settings_file = signature::settings_path(&plugin);
    let settings =
        signature::read_if_present(&settings_file).with_context(|| format!("reading {}", settings_file.display()))?;
    let name = |p: &std::path::Path| p.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let covered = settings.as_deref().map(|bytes| (name(&settings_file), bytes));
    let sig = signature::sign(&secret, &name(&plugin), &bytes, covered.as_ref().map(|(n, b)| (n.as_str(), *b)));
    let sig_file = signature::signature_path(&plugin);
    std::fs::write(&sig_file, sig).with_context(|| format!("writing {}", sig_file.display()))?;
    match &covered {
        Some((settings, _)) => println!("wrote {} over {} and {settings}", sig_file.display(), name(&plugin)),
        None => println!("wrote {} over {} (no settings file beside it)", sig_file.display(), name(&plugin)),
    }
    println!("signed by {}", signature::public_key_text(&secret.verifying_key()));
    Ok(ExitCode::SUCCESS)
}

/// The plugin's signature as `check` reports it: `Ok` with what was verified,
/// or `Err` with why a server trusting `trusted_keys` would refuse it.
fn check_signature(path: &std::path::Path, bytes: &[u8], trusted_keys: &[String]) -> Result<Result<String, String>> {
    let trusted = signature::TrustedKeys::parse(trusted_keys).context("--trusted-key")?;
    if trusted.required() {
        return Ok(match trusted.verify_files(path, bytes) {
            Ok(()) => Ok("valid: signed by a trusted key over the wasm and its settings".into()),
            Err(e) => Err(e.to_string()),
        });
    }
    let sig_file = signature::signature_path(path);
    let Some(sig) = signature::read_if_present(&sig_file)? else {
        return Ok(Ok("not signed (no --trusted-key given: a server without trusted_keys loads it)".into()));
    };
    let sig = String::from_utf8_lossy(&sig);
    let Some(signer) = signature::signer(&sig) else {
        return Ok(Err(format!("{} names no key", sig_file.display())));
    };
    let own = signature::TrustedKeys::parse(std::slice::from_ref(&signer)).context("the signature's key")?;
    Ok(match own.verify_files(path, bytes) {
        Ok(()) => Ok(format!("matches, signed by {signer} (pass --trusted-key to check it is trusted)")),
        Err(e) => Err(e.to_string()),
    })
}

/// Reads the store and the active plugins `config` names and replays the history
/// in `range` with `candidate` in place of the plugin `against`.
async fn replay_history(
    config: &crate::config::Config,
    candidate: &std::path::Path,
    against: Option<String>,
    settings: Option<PathBuf>,
    range: replay::Range,
) -> Result<replay::ReplayReport> {
    let (plugin, _) = plugin::load_file_configured(candidate, settings.as_deref())?;
    let stem = candidate.file_stem().and_then(|s| s.to_str()).unwrap_or("candidate").to_string();
    let key = against.unwrap_or(stem);
    let bytes = std::fs::read(candidate).with_context(|| format!("reading {}", candidate.display()))?;
    let loaded = plugin::loaded_policy(key.as_str().into(), candidate, &sha256(&bytes), Arc::new(plugin));

    let engine = plugin::PluginEngine::new(config.plugins.limits.clone())?;
    let fallback = config.plugins.builtin_seed_rules.then(plugin::NativeSeedRules::builtin);
    let host =
        plugin::PluginHost::open_trusting(engine, &config.plugins.dir, fallback, crate::app::plugin_trust(config)?)
            .with_context(|| format!("opening the plugin folder {}", config.plugins.dir.display()))?;
    for failure in host.failures() {
        eprintln!("warning: {} did not load ({}); the replay runs without it", failure.file, failure.error);
    }
    if config.postgres.is_none() && !config.sqlite_path().is_file() {
        anyhow::bail!(
            "no history: {} does not exist (set --data-dir or --postgres-url)",
            config.sqlite_path().display()
        );
    }
    let store = crate::app::open_store(config).await?;
    let history = replay::History::read(&*store, &range).await?;
    eprintln!(
        "read {} worker connections, {} jobs, {} solutions from {}",
        history.welcomes.len(),
        history.jobs.len(),
        history.solutions.len(),
        config.describe_backends().into_iter().find(|l| l.contains("store")).unwrap_or_default()
    );
    let (active, with_candidate, replaced) = replay::with_candidate(&host.current(), loaded);
    Ok(replay::replay(&history, &active, &with_candidate, &key, replaced)?)
}

/// A plugin file's SHA-256 as its report shows it.
fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The moment the duration `text` (`90s`, `30m`, `2h`, `7d`) before `now`.
fn before(now: chrono::DateTime<chrono::Utc>, text: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    let duration = parse_duration(text)?;
    // chrono's own `-` panics past the earliest date it can represent.
    now.checked_sub_signed(duration)
        .with_context(|| format!("{:?} is too long a duration: it reaches back before any date", text.trim()))
}

/// A duration as `humantime` reads it (`90s`, `30m`, `2h`, `7d`, `2w`, `1h 30m`);
/// one too long for a date is an error, not a panic (chrono's `Duration::hours`
/// and the like panic past their range).
fn parse_duration(text: &str) -> Result<chrono::Duration> {
    let text = text.trim();
    let too_long = || anyhow::anyhow!("{text:?} is too long a duration");
    let parsed = humantime::parse_duration(text).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => too_long(),
        other => anyhow::anyhow!("{text:?} is not a duration like 90s, 30m, 2h or 7d: {other}"),
    })?;
    chrono::Duration::from_std(parsed).map_err(|_| too_long())
}

/// `FROM..TO`, inclusive.
fn parse_heights(text: &str) -> Result<(i64, i64)> {
    let parsed = text.split_once("..").and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
    match parsed {
        Some((from, to)) if from <= to => Ok((from, to)),
        _ => anyhow::bail!("{text:?} is not a height range like 100..200"),
    }
}

/// Writes a secret key readable by its owner only.
fn write_secret(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};

    #[test]
    fn durations_in_seconds_minutes_hours_days_and_weeks() {
        let parsed: Vec<Duration> = ["90s", "30m", "2h", " 7d ", "2w", "1h 30m", "2.5h"]
            .iter()
            .map(|t| parse_duration(t).expect("a duration"))
            .collect();
        assert_eq!(
            parsed,
            [
                Duration::seconds(90),
                Duration::minutes(30),
                Duration::hours(2),
                Duration::days(7),
                Duration::weeks(2),
                Duration::minutes(90),
                Duration::minutes(150)
            ]
        );
        for bad in ["", "h", "2", "-2h", "2 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_absurd_duration_is_an_error_not_a_panic() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("a date");
        // Past a date's range, past a duration's, past an i64's.
        for absurd in ["999999999999h", "999999999999999999d", "99999999999999999999999s"] {
            let error = before(now, absurd).expect_err(absurd).to_string();
            assert!(error.contains("too long a duration"), "{absurd}: {error}");
        }
        assert_eq!(before(now, "2h").ok(), Some(now - Duration::hours(2)));
    }
}
