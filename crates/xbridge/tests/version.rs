//! `xbridge --version`: the version line operators and the image's labels
//! compare with a release, `xbridge <version> (<commit>)`.

use std::path::Path;
use std::process::Command;

fn version_line(flag: &str) -> String {
    let output = Command::new(Path::new(env!("CARGO_BIN_EXE_xbridge")))
        .arg(flag)
        .output()
        .expect("xbridge runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

#[test]
fn the_version_names_the_release_and_the_commit() {
    let line = version_line("--version");
    let rest = line
        .trim_end()
        .strip_prefix(&format!("xbridge {} (", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("not `xbridge <version> (<commit>)`: {line:?}"));
    let commit = rest
        .strip_suffix(')')
        .unwrap_or_else(|| panic!("no closing parenthesis: {line:?}"));
    assert!(
        commit == "unknown"
            || (!commit.is_empty() && commit.bytes().all(|b| b.is_ascii_hexdigit()))
            || std::env::var("XBRIDGE_COMMIT").is_ok_and(|given| given.trim() == commit),
        "the commit is neither a hash, the XBRIDGE_COMMIT given, nor `unknown`: {line:?}"
    );
    assert_eq!(version_line("-V"), line, "-V says the same");
}

/// Built from this repository with git at hand, the commit is HEAD's.
#[test]
fn a_build_from_a_git_checkout_names_its_commit() {
    if std::env::var("XBRIDGE_COMMIT").is_ok_and(|given| !given.trim().is_empty()) {
        return; // the build was told its commit
    }
    let Some(head) = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
    else {
        return; // not a checkout, or no git: `unknown` is right, checked above
    };
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    let line = version_line("--version");
    assert!(
        line.contains(&format!("({head})")),
        "{line:?} is not HEAD {head}"
    );
}
