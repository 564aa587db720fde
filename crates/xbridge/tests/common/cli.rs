//! Running the `xbridge` command line as an operator would, from the tests of its
//! subcommands.

use std::path::Path;

/// Runs `xbridge ARGS --config FILE` and returns whether it succeeded and what it printed
/// (stdout, then stderr). Fails the test if any of `secrets` was printed: the commands
/// print no credential, whatever happens.
pub async fn xbridge(config: &Path, args: &[&str], secrets: &[impl AsRef<str>]) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_xbridge"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("XBRIDGE_CONFIG")
        .output()
        .await
        .expect("xbridge runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for secret in secrets {
        assert!(
            !text.contains(secret.as_ref()),
            "a secret was printed:\n{text}"
        );
    }
    (output.status.success(), text)
}
