//! `xbridge check`: is each channel ready? For every channel it asks X who
//! the access token belongs to, probes a DM endpoint (X answers `/users/me`
//! even for tokens without DM permission or accounts without credits), and
//! tries the bearer token on the webhook list, then prints the account or
//! the precise problem with its fix. Never prints a secret.

use xbridge_control::diagnosis::check_account;
use xbridge_core::config::{ChannelSettings, InboundMode, Settings};
use xbridge_x_api::{webhook_problem, UserCredentials, WebhookClient, XClientConfig};

/// Checks `channel` (or every channel) and returns whether all are ready.
pub async fn run(settings: &Settings, channel: Option<&str>) -> anyhow::Result<bool> {
    let channels: Vec<&ChannelSettings> = match channel {
        Some(name) => vec![settings
            .channel(name)
            .ok_or_else(|| anyhow::anyhow!("no channel named {name:?} in the configuration"))?],
        None => settings.channels.iter().collect(),
    };
    let mut all_ready = true;
    for channel in channels {
        let problems = check_channel(settings, channel).await;
        if problems.is_empty() {
            crate::outln!("  ready");
        } else {
            all_ready = false;
            for problem in problems {
                crate::outln!("  PROBLEM: {problem}");
            }
        }
    }
    Ok(all_ready)
}

/// One channel's checks in the order a fix is found: the account first (if
/// X refuses the credentials nothing else can be asked), then Direct
/// Messages (both by the diagnosis the CRM's commands get too), then the
/// bearer token and the webhook.
async fn check_channel(settings: &Settings, channel: &ChannelSettings) -> Vec<String> {
    crate::outln!("channel {}:", channel.name);
    let config = XClientConfig::from(&settings.x);
    let check = check_account(config.clone(), channel).await;
    if let Some(account) = &check.account {
        crate::outln!(
            "  X account: @{} (id {})",
            account.username,
            account.user_id
        );
    }
    let mut problems: Vec<String> = check.problems.into_iter().map(|p| p.text).collect();
    if check.account.is_none() {
        return problems;
    }
    if check.dms_readable {
        crate::outln!("  Direct Messages: readable");
    }
    let credentials = UserCredentials::from(channel);
    match WebhookClient::new(config, channel.bearer_token.clone(), credentials) {
        Ok(webhooks) => check_webhooks(&webhooks, channel, &mut problems).await,
        Err(e) => problems.push(format!("cannot build the webhook client: {e}")),
    }
    problems
}

/// The bearer token on the webhook list; for a channel X delivers to, that
/// a valid webhook is registered.
async fn check_webhooks(
    webhooks: &WebhookClient,
    channel: &ChannelSettings,
    problems: &mut Vec<String>,
) {
    match webhooks.list_webhooks().await {
        Ok(list) => {
            crate::outln!("  bearer token: accepted");
            if channel.inbound != InboundMode::Poll {
                match list.iter().find(|w| w.valid) {
                    Some(webhook) => crate::outln!("  webhook: {} (valid)", webhook.url),
                    None => problems.extend(webhook_problem(&list)),
                }
            }
        }
        Err(error) => problems.push(format!(
            "the bearer token was refused ({error}): copy the App's bearer token from the X developer console"
        )),
    }
}
