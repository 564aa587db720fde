//! `xbridge channels list`: the channels the running bridge serves, as its
//! operations port's `/channels` lists them.
//!
//! It asks the bridge rather than reading the file and the store: only the
//! running process knows the merged registry as served (the CRM's channels,
//! a reload it applied or refused) and each channel's state. Nothing it
//! prints is a credential, since `/channels` holds none.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::ChannelsCommand;
use crate::ops::ChannelEntry;
use xbridge_core::config::Settings;

/// How long the bridge has to answer: it answers from memory.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Runs one `channels` subcommand.
pub async fn run(command: ChannelsCommand) -> anyhow::Result<()> {
    match command {
        ChannelsCommand::List { config, json } => list(&config, json).await,
    }
}

async fn list(config: &Path, json: bool) -> anyhow::Result<()> {
    let telemetry = Settings::load_telemetry(config)?;
    let Some(listen) = telemetry.listen else {
        anyhow::bail!(
            "{} sets no telemetry.listen: the bridge serves no operations port to ask (set it and restart the bridge)",
            config.display()
        );
    };
    let url = format!("http://{}/channels", reachable(listen));
    let entries = fetch(&url).await?;
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        print_table(&entries);
    }
    Ok(())
}

/// Where to reach a server listening on `listen`: this host when it listens
/// on every address.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

async fn fetch(url: &str) -> anyhow::Result<Vec<ChannelEntry>> {
    let client = reqwest::Client::builder()
        .timeout(ANSWER_WITHIN)
        .build()
        .context("setting up the HTTP client")?;
    let not_running = || {
        format!("no bridge answers at {url}: is `xbridge run` running with this configuration, on this host?")
    };
    let answer = client
        .get(url)
        .send()
        .await
        .with_context(not_running)?
        .error_for_status()
        .with_context(not_running)?;
    answer
        .json()
        .await
        .with_context(|| format!("{url} did not answer with a channel list"))
}

fn print_table(entries: &[ChannelEntry]) {
    if entries.is_empty() {
        crate::outln!("the bridge serves no channel");
        return;
    }
    let rows: Vec<[String; 8]> = entries
        .iter()
        .map(|e| {
            [
                e.name.clone(),
                e.origin.clone(),
                e.revision.to_string(),
                if e.paused { "yes" } else { "no" }.to_owned(),
                e.inbound.clone(),
                e.state.clone().unwrap_or_else(|| "-".into()),
                e.user_id.clone().unwrap_or_else(|| "-".into()),
                if e.here { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    let header = [
        "CHANNEL", "ORIGIN", "REVISION", "PAUSED", "INBOUND", "STATE", "USER_ID", "HERE",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        crate::outln!("{}", cells.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_listening_everywhere_is_asked_on_this_host() {
        let asked = reachable("0.0.0.0:9090".parse().unwrap());
        assert_eq!(asked, "127.0.0.1:9090".parse().unwrap());
        let asked = reachable("[::]:9090".parse().unwrap());
        assert_eq!(asked, "[::1]:9090".parse().unwrap());
        let asked = reachable("10.0.0.5:9090".parse().unwrap());
        assert_eq!(asked, "10.0.0.5:9090".parse().unwrap());
    }
}
