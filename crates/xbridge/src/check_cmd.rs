//! `xbridge check`: is each channel ready? For every channel it asks X who
//! the access token belongs to, probes a DM endpoint (X answers `/users/me`
//! even for tokens without DM permission or accounts without credits), and
//! tries the bearer token on the webhook list, then prints the account or
//! the precise problem with its fix. Never prints a secret.

use xbridge_core::config::{ChannelSettings, InboundMode, Settings};
use xbridge_x_api::{
    webhook_problem, DmEventsRequest, UserCredentials, WebhookClient, XClient, XClientConfig,
    XError,
};

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
/// Messages, then the bearer token and the webhook.
async fn check_channel(settings: &Settings, channel: &ChannelSettings) -> Vec<String> {
    crate::outln!("channel {}:", channel.name);
    let config = XClientConfig::from(&settings.x);
    let credentials = UserCredentials::from(channel);
    let mut problems = Vec::new();
    let client = match XClient::new(config.clone(), credentials.clone()) {
        Ok(client) => client,
        Err(e) => return vec![format!("cannot build the X client: {e}")],
    };
    if let Err(error) = check_account(&client, channel, &mut problems).await {
        problems.push(diagnose(&error));
        return problems;
    }
    // A DM read: the permission, the enrollment and the credits all show here.
    match client.list_dm_events(&DmEventsRequest::first(1)).await {
        Ok(_) => crate::outln!("  Direct Messages: readable"),
        Err(error) => problems.push(diagnose(&error)),
    }
    match WebhookClient::new(config, channel.bearer_token.clone(), credentials) {
        Ok(webhooks) => check_webhooks(&webhooks, channel, &mut problems).await,
        Err(e) => problems.push(format!("cannot build the webhook client: {e}")),
    }
    problems
}

/// Who the access token belongs to: the account must be the configured
/// `user_id`, and the token must carry the Direct Messages permission.
async fn check_account(
    client: &XClient,
    channel: &ChannelSettings,
    problems: &mut Vec<String>,
) -> Result<(), XError> {
    let (user, access_level) = client.me().await?;
    crate::outln!("  X account: @{} (id {})", user.username, user.id);
    if let Some(configured) = &channel.user_id {
        if configured != &user.id {
            problems.push(format!(
                "user_id is {configured} in the configuration, but the access token belongs to {} (@{}): fix user_id or the credentials",
                user.id, user.username
            ));
        }
    }
    match access_level.as_deref() {
        Some("read-write-directmessages") | None => {}
        Some(level) => problems.push(format!(
            "the access token's permission is {level:?}, without Direct Messages. {}",
            PERMISSION_FIX
        )),
    }
    Ok(())
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

const PERMISSION_FIX: &str = "Fix: in the X developer console set the App's permissions to \"Read and write and Direct message\", then regenerate the access token and secret (a token keeps the permissions it was made with) and update this channel's credentials";

/// The problem an X error shows, with what to do about it.
fn diagnose(error: &XError) -> String {
    match error {
        XError::Unauthorized { .. } => format!(
            "X refuses the credentials (HTTP {}): check the API key and secret and the access token and secret; regenerate them in the X developer console if they were revoked",
            error.http_status().unwrap_or(401)
        ),
        XError::MissingDmPermission { .. } => format!(
            "the access token may not use Direct Messages (403 oauth1-permissions). {PERMISSION_FIX}"
        ),
        XError::NotEnrolled { .. } => "the X App is not attached to a Project with an active plan (403 client-forbidden): attach it in the X developer console".into(),
        XError::CreditsExhausted { .. } => format!(
            "the X account has no credits or is over its spending cap (HTTP {}): top up or raise the limit at console.x.com",
            error.http_status().unwrap_or(402)
        ),
        XError::RateLimited { .. } => "X's rate limit is used up right now; the check could not finish, try again after the reset".into(),
        XError::Transient { .. } | XError::NotConnected { .. } => {
            format!("cannot reach X: {error}")
        }
        XError::RecipientRefuses { .. }
        | XError::InvalidRequest { .. }
        | XError::MediaProcessingFailed { .. } => {
            format!("X refused the check: {error}")
        }
    }
}
