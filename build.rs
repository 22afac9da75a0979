//! Records the git commit the binary is built from, for `recoverd --version`:
//! `RECOVERD_GIT_COMMIT` when set (a container build, which has no .git), else
//! `git rev-parse --short HEAD`, else nothing (the binary says `unknown`).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RECOVERD_GIT_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let commit = std::env::var("RECOVERD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            watch_head();
            git(&["rev-parse", "--short", "HEAD"])
        });
    if let Some(commit) = commit {
        println!("cargo:rustc-env=RECOVERD_GIT_COMMIT={}", commit.trim());
    }
}

/// `git ARGS` in the crate's directory: its output, or `None` (no git, not a checkout).
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

/// Builds again when HEAD moves: HEAD itself, the branch it names, and packed refs.
fn watch_head() {
    let (Some(git_dir), Some(common)) = (
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) else {
        return;
    };
    let mut watched = vec![Path::new(&git_dir).join("HEAD"), Path::new(&common).join("packed-refs")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(Path::new(&common).join(branch));
    }
    // A path that does not exist would make cargo run this script on every build.
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
