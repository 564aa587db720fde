//! `xbridge check`: is each channel ready? For every channel it asks X who
//! the access token belongs to, probes a DM endpoint (X answers `/users/me`
//! even for tokens without DM permission or accounts without credits), and
//! tries the bearer token on the webhook list, then prints the account or
//! the precise problem with its fix. Never prints a secret. The channels
//! the CRM created are checked after the file's, read from the state store.
//! A channel subscribed through the X Activity API (`webhook_api = "xaa"`) also
//! has its account's subscriptions checked: each DM event type it wants must be
//! bound to a registered webhook. An OAuth 2.0 channel's webhook calls use its grant
//! too.

use std::sync::Arc;

use xbridge_control::diagnosis::{check_account, check_account_with};
use xbridge_core::config::{ChannelSettings, Settings, StateBackend, WebhookApi};
use xbridge_core::oauth2_tokens::channel_auth;
use xbridge_x_api::{webhook_problem, UserCredentials, WebhookClient, XClientConfig};
use xbridge_x_api::{XAuth, XClient, XHttp};

/// Checks `channel` (or every channel, the file's and the CRM's) and returns
/// whether all are ready.
pub async fn run(settings: &Settings, channel: Option<&str>) -> anyhow::Result<bool> {
    let (crm, crm_read) = match crm_channels(settings).await {
        Ok(crm) => (crm, true),
        Err(e) => {
            crate::outln!("PROBLEM: the CRM's channels are not checked: {e:#}");
            (Vec::new(), false)
        }
    };
    let all = settings.channels.iter().chain(crm.iter());
    let channels: Vec<&ChannelSettings> = match channel {
        Some(name) => vec![all.clone().find(|c| c.name == name).ok_or_else(|| {
            anyhow::anyhow!("no channel named {name:?} in the configuration or the CRM's channels")
        })?],
        None => all.collect(),
    };
    let mut all_ready = crm_read;
    for channel in channels {
        if crm.iter().any(|c| std::ptr::eq(c, channel)) {
            crate::outln!("channel {} (created by the CRM):", channel.name);
        } else {
            crate::outln!("channel {}:", channel.name);
        }
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
    let config = XClientConfig::from(&settings.x);
    let (check, auth) = if channel.oauth2.is_some() {
        match oauth2_client(settings, channel).await {
            Ok((client, auth)) => (check_account_with(&client, channel).await, auth),
            Err(problem) => return vec![problem],
        }
    } else {
        let credentials = UserCredentials::from(channel);
        (
            check_account(config.clone(), channel).await,
            credentials.into(),
        )
    };
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
    match WebhookClient::new(config, channel.bearer_token.clone(), auth) {
        Ok(webhooks) => {
            let registered = check_webhooks(&webhooks, channel, &mut problems).await;
            let user_id = check.account.as_ref().map(|a| a.user_id.as_str());
            if let (Some(registered), Some(user_id)) = (registered, user_id) {
                // A stream channel's subscriptions have no webhook; the bridge makes them.
                if channel.webhook_api == WebhookApi::Xaa && channel.inbound.uses_webhook() {
                    let wanted = channel.xaa_event_types(
                        settings.inbound.publish_echoes,
                        settings.inbound.publish_activity,
                    );
                    let wanted: Vec<&str> = wanted.iter().map(|e| e.as_str()).collect();
                    check_xaa(
                        &webhooks,
                        channel,
                        user_id,
                        &registered,
                        &wanted,
                        &mut problems,
                    )
                    .await;
                }
            }
        }
        Err(e) => problems.push(format!("cannot build the webhook client: {e}")),
    }
    problems
}

/// An OAuth 2.0 channel's grant as the state store holds it (present, refused, when its
/// access token ends), printed, and a client probing with it (and its authentication,
/// for the webhook calls); the problem with its fix when there is no usable grant.
async fn oauth2_client(
    settings: &Settings,
    channel: &ChannelSettings,
) -> Result<(XClient, XAuth), String> {
    let fix = format!("run `xbridge oauth2 authorize --channel {}`", channel.name);
    let key = settings
        .state
        .credentials_key()
        .map_err(|e| format!("an OAuth 2.0 channel's grant is stored encrypted: {e}"))?;
    let store = crate::app::open_store(&settings.state).await.map_err(|e| {
        format!("the state store holding the OAuth 2.0 grant cannot be opened: {e:#}")
    })?;
    let row = store
        .oauth2_grant(&channel.name)
        .await
        .map_err(|e| format!("the OAuth 2.0 grant cannot be read: {e}"))?;
    match &row {
        Some(row) if row.refused => {
            return Err(format!(
                "X refused the channel's OAuth 2.0 grant (revoked, expired or spent); {fix}"
            ))
        }
        Some(row) => crate::outln!(
            "  OAuth 2.0 grant: stored (generation {}), access token until {}",
            row.generation,
            row.expires_at
                .map_or_else(|| "unknown".to_owned(), |at| at.to_rfc3339())
        ),
        None if channel
            .oauth2
            .as_ref()
            .is_some_and(|o| o.refresh_token.is_some()) =>
        {
            crate::outln!(
                "  OAuth 2.0 grant: none stored yet; the configured refresh token is used"
            )
        }
        None => {
            return Err(format!(
                "no OAuth 2.0 grant is stored for the channel; {fix}"
            ))
        }
    }
    let http = XHttp::new().map_err(|e| e.to_string())?;
    let auth = channel_auth(&settings.x, channel, store, Some(Arc::new(key)), &http)?;
    let client = XClient::with_auth(XClientConfig::from(&settings.x), auth.clone(), http)
        .map_err(|e| e.to_string())?;
    Ok((client, auth))
}

/// The account's X Activity subscriptions: each event type in `wanted` must have one
/// bound to one of the App's webhooks (`registered`, their ids), else X delivers none of
/// those events. `dm.received` missing means no customer DM arrives by webhook at all.
async fn check_xaa(
    webhooks: &WebhookClient,
    channel: &ChannelSettings,
    user_id: &str,
    registered: &[String],
    wanted: &[&str],
    problems: &mut Vec<String>,
) {
    let name = &channel.name;
    let all = match webhooks.list_activity_subscriptions().await {
        Ok(all) => all,
        Err(error) => {
            problems.push(format!(
                "X Activity subscriptions cannot be listed: {error}"
            ));
            return;
        }
    };
    let bound = |event_type: &str| {
        all.iter().any(|s| {
            s.event_type == event_type
                && s.user_id.as_deref() == Some(user_id)
                && s.webhook_id
                    .as_ref()
                    .is_some_and(|id| registered.contains(id))
        })
    };
    let (present, missing): (Vec<&str>, Vec<&str>) = wanted.iter().partition(|e| bound(e));
    if !present.is_empty() {
        crate::outln!("  X Activity subscriptions: {}", present.join(", "));
    }
    if missing.is_empty() {
        return;
    }
    let fix = format!("run `xbridge webhook subscribe --channel {name}`");
    if missing.contains(&"dm.received") {
        problems.push(format!(
            "the account is not subscribed to dm.received through the X Activity API, so X delivers none of its customers' DMs to the webhook: {fix}"
        ));
    } else {
        problems.push(format!(
            "the account is not subscribed to {} through the X Activity API, so those events do not arrive: {fix}",
            missing.join(", ")
        ));
    }
}

/// The bearer token on the webhook list; for a channel X delivers to, that
/// a valid webhook is registered. The ids of the App's webhooks, if X listed them.
async fn check_webhooks(
    webhooks: &WebhookClient,
    channel: &ChannelSettings,
    problems: &mut Vec<String>,
) -> Option<Vec<String>> {
    match webhooks.list_webhooks().await {
        Ok(list) => {
            crate::outln!("  bearer token: accepted");
            if channel.inbound.uses_webhook() {
                match list.iter().find(|w| w.valid) {
                    Some(webhook) => crate::outln!("  webhook: {} (valid)", webhook.url),
                    None => problems.extend(webhook_problem(&list)),
                }
            }
            Some(list.into_iter().map(|w| w.id).collect())
        }
        Err(error) => {
            problems.push(format!(
                "the bearer token was refused ({error}): copy the App's bearer token from the X developer console"
            ));
            None
        }
    }
}

/// The channels the CRM created, from the state store, as the bridge serves
/// them ([`crate::channel_lookup`]): none without `state.credentials_key`, or
/// before the state file exists. A store that cannot be opened (a state file a
/// running bridge holds) or read with the key is an error: the file's channels
/// are still checked, and the command does not say all is ready. The store is
/// only read: the key is not recorded in it (a PostgreSQL schema is migrated,
/// as a bridge would).
async fn crm_channels(settings: &Settings) -> anyhow::Result<Vec<ChannelSettings>> {
    if settings.state.credentials_key.is_none() {
        return Ok(Vec::new());
    }
    if let StateBackend::Embedded { path } = &settings.state.backend {
        if !path.exists() {
            return Ok(Vec::new());
        }
    }
    let store = crate::app::open_store_as_is(&settings.state).await?;
    crate::channel_lookup::crm_channels(settings, store).await
}
