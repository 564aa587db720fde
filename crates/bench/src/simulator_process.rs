//! The X simulator as a process of its own (`efficiency`): the `x-simulator`
//! binary, so the CPU it spends answering DMs is not counted in the
//! benchmark's process, nor competes inside it with the CRM's publisher.
//! Accounts are added over its admin API (`POST /_sim/accounts`), its send
//! and read windows set wide by flags, and what it recorded read back from
//! `GET /_sim/dms`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use x_simulator::{Account, SentDm};

/// Sends (and reads) an account may make per window: none of the runs meets
/// it, as X's real 1,000 per 15 minutes would stop a 5,000-reply backlog.
const UNLIMITED: u32 = 100_000_000;

/// The `x-simulator` binary next to this one (both in `target/release`).
pub fn default_simulator() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("x-simulator")))
        .unwrap_or_else(|| PathBuf::from("x-simulator"))
}

/// A running `x-simulator` and where it listens.
pub struct SimulatorProcess {
    child: Child,
    /// `http://127.0.0.1:<port>/`, as it printed it.
    pub base_url: reqwest::Url,
    http: reqwest::Client,
}

impl SimulatorProcess {
    /// Starts the binary on a free loopback port, without accounts, with
    /// windows no run reaches, and waits for the line saying where it listens.
    pub async fn start(binary: &Path) -> anyhow::Result<SimulatorProcess> {
        anyhow::ensure!(
            binary.exists(),
            "{} does not exist: build it first with `cargo build --release -p x-simulator`, or pass --simulator",
            binary.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child = Command::new(binary)
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--rate-limit")
            .arg(UNLIMITED.to_string())
            .arg("--read-rate-limit")
            .arg(UNLIMITED.to_string())
            // Its per-request INFO logs would be work of the simulator's
            // that the bridge does not cause.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("the simulator's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the simulator did not say where it listens")??
            .context("the simulator exited before it listened")?;
        let url = line
            .strip_prefix("x-simulator listening on ")
            .with_context(|| format!("unexpected first line from the simulator: {line}"))?;
        Ok(SimulatorProcess {
            child,
            base_url: url.parse()?,
            http: reqwest::Client::new(),
        })
    }

    /// Its process id, for `/proc`.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Adds `accounts` over the admin API.
    pub async fn add_accounts<'a>(
        &self,
        accounts: impl IntoIterator<Item = &'a Account>,
    ) -> anyhow::Result<()> {
        let url = self.base_url.join("_sim/accounts")?;
        for account in accounts {
            let answer = self.http.post(url.clone()).json(account).send().await?;
            anyhow::ensure!(
                answer.status().is_success(),
                "adding account {}: {}",
                account.user_id,
                answer.status()
            );
        }
        Ok(())
    }

    /// Every DM it accepted, of every account.
    pub async fn dms(&self) -> anyhow::Result<Vec<SentDm>> {
        let url = self.base_url.join("_sim/dms")?;
        Ok(self
            .http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Forgets every DM and request so far (`POST /_sim/reset`), so the next
    /// run's reads are its own.
    pub async fn reset(&self) -> anyhow::Result<()> {
        let url = self.base_url.join("_sim/reset")?;
        self.http.post(url).send().await?.error_for_status()?;
        Ok(())
    }

    /// Stops it (SIGKILL: it holds nothing worth a clean stop).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// When the simulator accepted each DM whose text is `<prefix><i>`, by `i`.
pub fn accepted_at(dms: &[SentDm], prefix: &str) -> Vec<(usize, SystemTime)> {
    dms.iter()
        .filter_map(|dm| {
            let i = dm.text.strip_prefix(prefix)?.parse().ok()?;
            Some((i, dm.created_at.into()))
        })
        .collect()
}
