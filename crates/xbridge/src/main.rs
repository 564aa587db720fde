//! The `xbridge` binary: parses the command line and hands over to the
//! library. Errors end here, printed once, with a non-zero exit status.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use xbridge::app::Bridge;
use xbridge::cli::{Cli, Command};
#[cfg(feature = "demo")]
use xbridge::demo;
use xbridge::{channels_cmd, check_cmd, dlq_cmd, oauth2_cmd, reload, signals, webhook_cmd};
use xbridge_core::config::Settings;
use xbridge_core::telemetry;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config).await,
        #[cfg(feature = "demo")]
        Command::Demo {
            amqp_url,
            keep_running,
        } => demo::run(&amqp_url, keep_running).await,
        Command::CheckConfig { config } => check_config(&config),
        Command::Check { config, channel } => check(&config, channel.as_deref()).await,
        Command::Webhook { command } => webhook_cmd::run(command).await,
        Command::Channels { command } => channels_cmd::run(command).await,
        Command::Dlq { command } => dlq_cmd::run(command).await,
        Command::OAuth2 { command } => oauth2_cmd::run(command).await,
    };
    match result {
        Ok(()) if xbridge::output::failed() => std::process::ExitCode::from(1),
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xbridge: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Runs the bridge; SIGHUP, or a change of a secret file it names, reloads
/// `config`'s channels ([`reload`]).
async fn run(config: &std::path::Path) -> anyhow::Result<()> {
    let loaded = Settings::load_with_sections(config)?;
    telemetry::init(loaded.settings.telemetry.log_format);
    xbridge_outbound::failpoints::setup();
    let hangups = signals::hangups().context("cannot listen for SIGHUP")?;
    let bridge = Bridge::build(loaded.settings.clone()).await?;
    let shutdown = CancellationToken::new();
    signals::cancel_on_signal(shutdown.clone());
    let reloader = reload::Reloader::new(config.to_owned(), loaded, bridge.live_channels())
        .with_stored(bridge.stored_channels());
    tokio::spawn(Arc::new(reloader).run(hangups, reload::SECRET_FILE_POLL, shutdown.clone()));
    bridge.run(shutdown).await
}

async fn check(config: &std::path::Path, channel: Option<&str>) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    if check_cmd::run(&settings, channel).await? {
        Ok(())
    } else {
        anyhow::bail!("not every channel is ready (see above)")
    }
}

fn check_config(config: &std::path::Path) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    xbridge::outln!("configuration OK: {}", config.display());
    for warning in &settings.warnings {
        xbridge::outln!("  warning: {warning}");
    }
    xbridge::outln!("  X API: {}", settings.x.api_base_url);
    xbridge::outln!("  state store: {}", settings.state.backend.describe());
    for channel in &settings.channels {
        xbridge::outln!(
            "  channel {}: replies from queue {}",
            channel.name,
            settings.amqp.topology.outgoing_queue(&channel.name)
        );
    }
    Ok(())
}
