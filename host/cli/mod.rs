//! The `eligo` command's subcommands, in the library so that each can be called and
//! tested without spawning the binary; `host/main.rs` only parses and dispatches here.
//!
//! - [`serve_args`]: `serve`'s settings and the configuration they make.
//! - [`serve`]: `serve`, the default command.
//! - [`migrate`]: the `migrate` command.
//! - [`config_check`]: `config check` and its connection probes.
//! - [`plugin`]: the `plugin` subcommands.
//! - [`kafka_mock`]: the `kafka-mock` command.
//! - `manual`: `man`; `completions` is one call to clap_complete.

pub mod config_check;
pub mod kafka_mock;
mod manual;
pub mod migrate;
pub mod plugin;
mod process;
pub mod serve;
pub mod serve_args;

use anyhow::Result;
use clap::{Parser, Subcommand};
use config_check::ConfigCommand;
use plugin::PluginCommand;
use serve_args::ServeArgs;
use std::path::PathBuf;
use std::process::ExitCode;

/// eligo moves jobs from nodes to workers and solutions back; WebAssembly policy
/// plugins make every decision.
#[derive(Parser)]
#[command(version = VERSION, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command, eligo serves: these are `serve`'s settings.
    #[command(flatten)]
    serve: ServeArgs,
}

/// The version and the commit this binary was built from (`-modified` when the
/// checkout had uncommitted changes).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("BUILT_FROM_COMMIT"), ")");

// clap also reads this doc as `eligo`'s about, but `Cli`'s own, applied after, wins:
// --help does not show it.
/// The subcommands; without one, eligo serves.
#[derive(Subcommand)]
pub enum Command {
    /// Runs the server (the default): every role, or those given with --roles.
    Serve(ServeArgs),
    /// Applies the database migrations and exits.
    Migrate(ServeArgs),
    /// Work with policy plugins: run one hook, run fixture cases, check a file.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Runs librdkafka's in-memory mock Kafka cluster (topics `job` and `solution`)
    /// until interrupted, for trying the networked roles on one machine. Prints its
    /// bootstrap servers; not for production (memory only, no TLS or SASL).
    KafkaMock {
        /// Also write the bootstrap servers to this file, for scripts.
        #[arg(long)]
        write_to: Option<PathBuf>,
    },
    /// Prints the shell completion script for SHELL, e.g.
    /// `eligo completions bash > ~/.local/share/bash-completion/completions/eligo`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Writes the manual pages (eligo.1 and one per subcommand) into DIR, for
    /// `man -M DIR eligo` or a MANPATH folder such as ~/.local/share/man/man1.
    Man {
        /// Where to write them (created if missing).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// Runs the command `cli` names. `matches` are what `cli` was parsed from: `config
/// check` reads in them whether each setting came from a flag or the environment.
///
/// A failing `plugin test` is an exit code rather than an error: its report is
/// already printed, and an error would add a line to it.
pub fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<ExitCode> {
    match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(args) => serve::run(&args)?,
        Command::Migrate(args) => migrate::run(&args)?,
        Command::Plugin(command) => return plugin::run(command),
        Command::Config(ConfigCommand::Check { serve, connect }) => {
            let check = matches.subcommand_matches("config").and_then(|m| m.subcommand_matches("check"));
            config_check::run(&serve, check, connect)?
        }
        Command::KafkaMock { write_to } => kafka_mock::run(write_to)?,
        Command::Completions { shell } => clap_complete::generate(
            shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "eligo",
            &mut std::io::stdout(),
        ),
        Command::Man { dir } => manual::write(&dir)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
