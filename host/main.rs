//! The `eligo` command: parses the command line and hands it to [`eligo::cli`], where
//! every subcommand lives.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory, FromArgMatches};
use eligo::cli::Cli;
use std::process::ExitCode;

/// Prints a failure as its cause chain, one line each. anyhow's own report adds
/// a backtrace whenever `RUST_BACKTRACE` is set, common on developer machines and
/// useless to someone whose file is missing: eligo shows it only when
/// `ELIGO_BACKTRACE=1` asks for it.
fn main() -> ExitCode {
    small_pages_only();
    // Parsed by hand rather than with `Cli::parse`: `config check` needs the matches
    // too, to say whether each setting came from a flag or the environment.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match eligo::cli::run(cli, &matches) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if std::env::var_os("ELIGO_BACKTRACE").is_some_and(|v| v != "0") {
                eprintln!("{}", error.backtrace());
            }
            ExitCode::FAILURE
        }
    }
}

/// Keeps the process's memory in 4 KiB pages. mimalloc hands out memory from large
/// aligned regions, which the kernel backs with 2 MiB transparent huge pages when the
/// host allows them ("always", or "madvise" and the allocator advising it). Each
/// first touch of one then zeroes 2 MiB: in a reconnect storm that was ~40 % of a
/// worker server's CPU, the storm took ~1.4× as long and RSS was ~10 % higher
/// (docs/capacity.md). The build does not advise huge pages (`no_thp`); this covers
/// hosts where they are on for everything. Only pages touched from here on are
/// affected; a host where it is refused keeps its setting.
fn small_pages_only() {
    #[cfg(all(feature = "mimalloc", target_os = "linux"))]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("warning: transparent huge pages stay on: {e}");
    }
}
