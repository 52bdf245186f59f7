// sqlx::migrate! embeds the migration files at compile time; rebuild when they change.
// `eligo --version` names the commit it was built from: read here, from git when
// the source is a checkout (else "unknown", as from a source tarball).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    // Not named ELIGO_*: cargo also sets it when it runs the binary (cargo run,
    // tests), where `config check` would take it for a misspelt setting.
    println!("cargo:rustc-env=BUILT_FROM_COMMIT={commit}{}", if dirty { "-modified" } else { "" });
    // Built again when HEAD moves (a commit, a checkout), not on every edit.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
