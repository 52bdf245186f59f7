//! `eligo plugin`: the policy author's runner over the same plugin runtime the server
//! uses, so that what a plugin decides here is what it decides in production.

use crate::plugin::{self, runner};
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

// clap also reads this doc as `eligo plugin`'s about, but the `Plugin` variant's own,
// applied after, wins: --help does not show it.
/// `eligo plugin`'s subcommands.
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
        #[command(flatten)]
        settings: SettingsArg,
    },
    /// Runs fixture cases against a plugin; exits non-zero on a mismatch.
    Test {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// The case file (JSON; see the README).
        cases: PathBuf,
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
    /// Loads a plugin as the server would and prints what it reports.
    Check {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        #[command(flatten)]
        settings: SettingsArg,
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
        PluginCommand::Run { plugin, hook, input, settings } => {
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
        PluginCommand::Test { plugin, cases: cases_file, settings } => {
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
        PluginCommand::New { name, dir } => {
            use plugin::scaffold::{default_layout, scaffold, Layout};
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
        PluginCommand::Check { plugin, settings } => {
            let path = plugin;
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let (plugin, settings) = plugin::load_file_configured(&path, settings.file.as_deref())?;
            let sha = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&bytes))
            };
            let mut report = plugin::loaded_policy(plugin.name().into(), &path, &sha, Arc::new(plugin)).report;
            report.settings = Some(settings_used(&settings));
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
