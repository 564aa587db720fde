//! The bridge as a child process (`scale`, `replicas`): the real `xbridge`
//! binary with a world's configuration and its own ops port, waited for
//! until `/readyz` answers, stopped with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use xbridge_test_support::TestApp;

use crate::harness::SETUP_PATIENCE;

/// The `xbridge` binary next to this one (both in `target/release`).
pub fn default_xbridge() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("xbridge")))
        .unwrap_or_else(|| PathBuf::from("xbridge"))
}

/// Refuses to start a run without the binary it measures.
pub(crate) fn ensure_built(xbridge: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        xbridge.exists(),
        "{} does not exist: build it first with `cargo build --release -p xbridge`, or pass --xbridge",
        xbridge.display()
    );
    Ok(())
}

/// A running `xbridge run` and the port of its ops server.
pub(crate) struct ChildBridge {
    pub child: Child,
    pub ops_port: u16,
}

impl ChildBridge {
    /// Starts `xbridge run` with `app`'s configuration (written as `file` in
    /// the world's directory) and the ops server on a free loopback port.
    pub(crate) fn spawn(xbridge: &Path, app: &TestApp, file: &str) -> anyhow::Result<ChildBridge> {
        ChildBridge::spawn_with(xbridge, app, file, &app.config_toml())
    }

    /// [`ChildBridge::spawn`] with a configuration of the caller's (`app`'s,
    /// with more in it), the ops server added.
    pub(crate) fn spawn_with(
        xbridge: &Path,
        app: &TestApp,
        file: &str,
        toml: &str,
    ) -> anyhow::Result<ChildBridge> {
        let ops_port = free_port()?;
        let config = app.dir.path().join(file);
        std::fs::write(
            &config,
            format!("{toml}\n[telemetry]\nlisten = \"127.0.0.1:{ops_port}\"\n"),
        )?;
        let child = Command::new(xbridge)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn,lapin=off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", xbridge.display()))?;
        Ok(ChildBridge { child, ops_port })
    }

    /// Waits until the ops server says the bridge is ready.
    pub(crate) async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}/readyz", self.ops_port);
        let deadline = Instant::now() + SETUP_PATIENCE * 5;
        loop {
            if let Ok(answer) = http.get(&url).send().await {
                if answer.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the bridge exited before it was ready: {status}");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the bridge was not ready in time"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks the bridge to stop (SIGTERM), without waiting.
    pub(crate) fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }

    /// Waits up to 30 s for the bridge to exit.
    pub(crate) async fn wait_exit(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// A loopback port free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Starts `command`, one of this binary's hidden subcommands (the relay, the
/// CRM reader), with its stdout piped, and waits until its first line says
/// `ready`; `what` names it in errors. The rest of its stdout is the caller's.
pub(crate) async fn spawn_until_ready(
    mut command: Command,
    what: &str,
) -> anyhow::Result<(Child, Lines<BufReader<ChildStdout>>)> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting the {what}"))?;
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("the {what}'s stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .with_context(|| format!("the {what} did not get ready"))??;
    anyhow::ensure!(
        first.as_deref() == Some("ready"),
        "the {what} said {first:?} instead of ready"
    );
    Ok((child, lines))
}
