//! The `eligo` command: a thin layer over the library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use eligo::plugin::{self, runner};
use std::path::PathBuf;
use std::sync::Arc;

/// eligo moves jobs from nodes to workers and solutions back; WebAssembly policy
/// plugins make every decision.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Work with policy plugins: run one hook, run fixture cases, check a file.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
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
    },
    /// Runs fixture cases against a plugin; exits non-zero on a mismatch.
    Test {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// The case file (JSON; see the README).
        cases: PathBuf,
    },
    /// Loads a plugin as the server would and prints what it reports.
    Check {
        /// The plugin component (.wasm).
        plugin: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Plugin(command)) => plugin_command(command),
        None => bail!("no command given; see --help"),
    }
}

fn plugin_command(command: PluginCommand) -> Result<()> {
    match command {
        PluginCommand::Run { plugin, hook, input } => {
            let plugin = plugin::load_file(&plugin)?;
            let text = if input.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&input).with_context(|| format!("reading {}", input.display()))?
            };
            let input = serde_json::from_str(&text).context("the input is not JSON")?;
            let (decision, cost) = runner::run_hook(&plugin, &hook, input)?;
            let out = serde_json::json!({
                "decision": decision,
                "cost": { "micros": cost.elapsed.as_secs_f64() * 1e6, "fuel": cost.fuel, "memory_bytes": cost.memory_bytes },
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        PluginCommand::Test { plugin, cases } => {
            let plugin = plugin::load_file(&plugin)?;
            let text = std::fs::read_to_string(&cases).with_context(|| format!("reading {}", cases.display()))?;
            let cases: runner::CaseFile =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", cases.display()))?;
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
                std::process::exit(1);
            }
            Ok(())
        }
        PluginCommand::Check { plugin } => {
            let path = plugin;
            let plugin = plugin::load_file(&path)?;
            let bytes = std::fs::read(&path)?;
            let sha = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&bytes))
            };
            let report = plugin::loaded_policy(plugin.name().into(), &path, &sha, Arc::new(plugin)).report;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
