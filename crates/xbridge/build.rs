//! Stamps the binary with the commit it was built from, for `xbridge --version`
//! (`xbridge <version> (<commit>)`): an operator comparing a running pod with a
//! release needs more than the crate version, which changes only at releases.
//!
//! The commit is `XBRIDGE_COMMIT` when set (the Dockerfile passes it as a build
//! argument, since `.git` is not in the image's build context), else
//! `git rev-parse --short=12 HEAD`, else `unknown`. Nothing here may fail the
//! build: a source tarball without git still builds.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=XBRIDGE_COMMIT");
    let commit = std::env::var("XBRIDGE_COMMIT")
        .ok()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    for path in git_files_to_watch() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rustc-env=XBRIDGE_BUILD_COMMIT={commit}");
}

/// The short hash of `HEAD`, when this is a git checkout and git runs.
fn git_commit() -> Option<String> {
    let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Only a hash may land in the version line.
    hash.bytes().all(|b| b.is_ascii_hexdigit()).then_some(hash)
}

/// What changes when `HEAD` moves: `HEAD` itself (a checkout), the branch it
/// names (a commit) and `packed-refs` (where the branch may live). Only files that
/// exist are named: cargo reruns a build script every time for a missing one.
fn git_files_to_watch() -> Vec<PathBuf> {
    let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) else {
        return Vec::new();
    };
    // A worktree keeps its HEAD apart and its branches in the common directory.
    let common_dir = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
        .map(PathBuf::from)
        .unwrap_or_else(|| git_dir.clone());
    let mut files = vec![git_dir.join("HEAD"), common_dir.join("packed-refs")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        files.push(common_dir.join(branch));
    }
    files.retain(|file| file.is_file());
    files
}

/// Runs git in the crate's directory; `None` when git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}
