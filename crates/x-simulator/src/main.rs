//! `x-simulator`: the simulator as a process, for CRM developers and docker-compose.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use x_simulator::{
    load_accounts, Account, RateLimitWindow, Simulator, SimulatorConfig, WebhookConfig,
};

/// A local fake of X's DM API in X's wire format. Admin API under /_sim/ (see the crate docs).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on; use 0.0.0.0:8081 inside a container.
    #[arg(long, env = "X_SIMULATOR_BIND", default_value = "127.0.0.1:8081")]
    bind: SocketAddr,
    /// TOML file of [[accounts]] tables (user_id, username, name, consumer_key, consumer_secret,
    /// access_token, access_token_secret, bearer_token).
    #[arg(long, env = "X_SIMULATOR_ACCOUNTS")]
    accounts: Option<PathBuf>,
    /// Also serve the fixed demo account (user id 1000000000000000001, consumer key
    /// demo-consumer-key, token demo-access-token; secrets demo-consumer-secret and
    /// demo-access-token-secret).
    #[arg(long, env = "X_SIMULATOR_DEMO")]
    demo: bool,
    /// DM sends allowed per account per window.
    #[arg(long, env = "X_SIMULATOR_RATE_LIMIT", default_value_t = RateLimitWindow::default().limit)]
    rate_limit: u32,
    /// Length of the rate-limit window, in seconds.
    #[arg(long, env = "X_SIMULATOR_RATE_LIMIT_WINDOW_SECS", default_value_t = RateLimitWindow::default().window.as_secs())]
    rate_limit_window_secs: u64,
    /// DM reads (GET /2/dm_events) allowed per account per window; X's real limit is 15.
    #[arg(long, env = "X_SIMULATOR_READ_RATE_LIMIT", default_value_t = RateLimitWindow::default().limit)]
    read_rate_limit: u32,
    /// Length of the DM-read rate-limit window, in seconds.
    #[arg(long, env = "X_SIMULATOR_READ_RATE_LIMIT_WINDOW_SECS", default_value_t = RateLimitWindow::default().window.as_secs())]
    read_rate_limit_window_secs: u64,
    /// How many times a webhook delivery not answered with a 2xx is retried.
    #[arg(long, env = "X_SIMULATOR_WEBHOOK_RETRIES", default_value_t = WebhookConfig::default().delivery_retries)]
    webhook_retries: u32,
    /// Wait before the first delivery retry, in milliseconds; it doubles for each later one.
    #[arg(long, env = "X_SIMULATOR_WEBHOOK_BACKOFF_MS", default_value_t = WebhookConfig::default().retry_backoff.as_millis() as u64)]
    webhook_backoff_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs go to stderr, so stdout carries only the listening URL for scripts to read.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let accounts = cli.accounts()?;
    let simulator = Simulator::start(cli.config(accounts)).await?;
    println!("x-simulator listening on {}", simulator.base_url());

    stop_signal().await?;
    simulator.shutdown().await;
    Ok(())
}

impl Cli {
    /// The accounts file's accounts, plus the demo account with `--demo`.
    fn accounts(&self) -> anyhow::Result<Vec<Account>> {
        let mut accounts = match &self.accounts {
            Some(path) => load_accounts(path)?,
            None => Vec::new(),
        };
        if self.demo {
            accounts.push(Account::demo());
        }
        if accounts.is_empty() {
            tracing::warn!(
                "no accounts: every request will get 401 until one is added with POST /_sim/accounts"
            );
        }
        Ok(accounts)
    }

    /// The simulator the flags describe, serving `accounts`.
    fn config(&self, accounts: Vec<Account>) -> SimulatorConfig {
        SimulatorConfig {
            bind: self.bind,
            accounts,
            rate_limit: RateLimitWindow {
                limit: self.rate_limit,
                window: Duration::from_secs(self.rate_limit_window_secs),
            },
            read_rate_limit: RateLimitWindow {
                limit: self.read_rate_limit,
                window: Duration::from_secs(self.read_rate_limit_window_secs),
            },
            upload_rate_limit: SimulatorConfig::default().upload_rate_limit,
            webhooks: WebhookConfig {
                delivery_retries: self.webhook_retries,
                retry_backoff: Duration::from_millis(self.webhook_backoff_ms),
                ..WebhookConfig::default()
            },
        }
    }
}

/// Ctrl-C, or SIGTERM as docker sends on `docker stop`.
async fn stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("listening for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("listening for Ctrl-C"),
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("listening for Ctrl-C")
    }
}
