//! `eligo man`: the manual pages, made by clap_mangen from the same definitions
//! as `--help`, so they never disagree with it.

use anyhow::{Context, Result};
use clap::CommandFactory;
use std::path::Path;

/// Writes `eligo.1` and `eligo-<subcommand>.1` (nested ones joined by `-`) into `dir`.
pub fn write(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let command = super::Cli::command();
    let mut written = Vec::new();
    write_page(dir, command, "eligo", &mut written)?;
    for path in &written {
        println!("{}", path.display());
    }
    Ok(())
}

fn write_page(dir: &Path, command: clap::Command, name: &str, written: &mut Vec<std::path::PathBuf>) -> Result<()> {
    // A subcommand's page is named after its whole path, as git's are.
    let command = command.name(name.to_string()).version(super::VERSION);
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page).context("rendering a manual page")?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_name = format!("{name}-{}", sub.get_name());
        write_page(dir, sub.clone(), &sub_name, written)?;
    }
    Ok(())
}
