//! `xbridge webhook …`: the one-off setup that makes X push a channel's DMs to
//! `xbridge run` (register the App's webhook, subscribe each account, check and
//! revalidate), so operators need neither curl nor the X developer console.
//!
//! A channel subscribes through the API it chooses (`webhook_api`): the Account
//! Activity API, one subscription for all its DM activity, or the X Activity API, one
//! subscription per DM event type ([`ChannelSettings::xaa_event_types`]), created only
//! where missing so running `subscribe` again changes nothing.
//!
//! A stream channel (`inbound = "stream"`) has no webhook: `xbridge run` keeps its stream
//! subscriptions (one per event type, no `webhook_id`, tagged `xbridge:<channel>`), `subscriptions`
//! lists them like any other and `unsubscribe` deletes them (say, after taking the channel out
//! of service while the bridge was stopped).
//!
//! An OAuth 2.0 channel's account authenticates with its grant from the state store (so
//! the command opens the store), through either API.
//!
//! Output is for people: what X now has, never a credential. Failures come back
//! as errors naming the channel and the step, with [`WebhookError`]'s advice for
//! each of X's refusal reasons; `main` prints them once and exits 1.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use xbridge_core::config::{ChannelSettings, Settings, WebhookApi};
use xbridge_core::oauth2_tokens::channel_auth;
use xbridge_x_api::{
    ActivitySubscription, UserCredentials, Webhook, WebhookClient, WebhookError, XAuth, XClient,
    XHttp,
};

use crate::cli::WebhookCommand;

/// Runs one `webhook` subcommand to completion.
pub async fn run(command: WebhookCommand) -> anyhow::Result<()> {
    match command {
        WebhookCommand::Register {
            config,
            channel,
            url,
        } => register(&config, &channel, &url).await,
        WebhookCommand::Subscribe {
            config,
            channel,
            webhook_id,
        } => subscribe(&config, &channel, webhook_id).await,
        WebhookCommand::Revalidate {
            config,
            channel,
            webhook_id,
        } => revalidate(&config, &channel, webhook_id).await,
        WebhookCommand::Status { config, channel } => status(&config, channel.as_deref()).await,
        WebhookCommand::Subscriptions { config, channel } => subscriptions(&config, &channel).await,
        WebhookCommand::Unsubscribe {
            config,
            channel,
            webhook_id,
        } => unsubscribe(&config, &channel, webhook_id).await,
    }
}

/// Registers `url` as the App's webhook and says what to do next.
async fn register(config: &Path, channel: &str, url: &str) -> anyhow::Result<()> {
    let (_, client) = channel_client(config, channel).await?;
    let webhook = client
        .register_webhook(url)
        .await
        .with_context(|| format!("channel {channel}: registering {url}"))?;
    crate::outln!("registered webhook {} for channel {channel}", webhook.id);
    print_webhook(&webhook);
    crate::outln!(
        "next: xbridge webhook subscribe --channel {channel} --webhook-id {}",
        webhook.id
    );
    Ok(())
}

/// Subscribes the channel's account to the webhook, so X delivers its DMs: through
/// the API the channel chooses.
async fn subscribe(config: &Path, channel: &str, webhook_id: Option<String>) -> anyhow::Result<()> {
    let (settings, client) = channel_client(config, channel).await?;
    let webhook_id = resolve_webhook_id(&client, channel, webhook_id).await?;
    let channel_settings = find_channel(&settings, channel)?;
    if channel_settings.webhook_api == WebhookApi::Xaa {
        return subscribe_xaa(&settings, channel_settings, &client, &webhook_id).await;
    }
    client
        .subscribe(&webhook_id)
        .await
        .with_context(|| format!("channel {channel}: subscribing to webhook {webhook_id}"))?;
    crate::outln!("channel {channel}: subscribed to webhook {webhook_id}");
    Ok(())
}

/// One X Activity subscription per event type the channel wants, bound to the
/// webhook; those X already has are left alone.
async fn subscribe_xaa(
    settings: &Settings,
    channel: &ChannelSettings,
    client: &WebhookClient,
    webhook_id: &str,
) -> anyhow::Result<()> {
    let name = &channel.name;
    let user_id = account_id(settings, channel, client).await?;
    let present = account_subscriptions(client, name, &user_id).await?;
    let inbound = &settings.inbound;
    let wanted = channel.xaa_event_types(inbound.publish_echoes, inbound.publish_activity);
    let tag = format!("xbridge:{name}");
    for event in wanted {
        let event_type = event.as_str();
        let existing = present
            .iter()
            .find(|s| s.event_type == event_type && s.webhook_id.as_deref() == Some(webhook_id));
        if let Some(existing) = existing {
            crate::outln!(
                "channel {name}: {event_type} already subscribed (subscription {})",
                existing.subscription_id
            );
            continue;
        }
        let created = client
            .create_activity_subscription(event_type, &user_id, webhook_id, &tag)
            .await
            .with_context(|| {
                format!("channel {name}: subscribing {event_type} to webhook {webhook_id}")
            })?;
        crate::outln!(
            "channel {name}: subscribed {event_type} to webhook {webhook_id} (subscription {})",
            created.subscription_id
        );
    }
    Ok(())
}

/// Lists the X Activity subscriptions of the channel's account.
async fn subscriptions(config: &Path, channel: &str) -> anyhow::Result<()> {
    let (settings, client) = channel_client(config, channel).await?;
    let channel_settings = find_channel(&settings, channel)?;
    let user_id = account_id(&settings, channel_settings, &client).await?;
    let found = account_subscriptions(&client, channel, &user_id).await?;
    let api = if channel_settings.inbound.streams() {
        "inbound = stream".to_owned()
    } else {
        format!("webhook_api = {}", channel_settings.webhook_api.as_str())
    };
    crate::outln!("channel {channel} (account {user_id}, {api}):");
    if found.is_empty() {
        crate::outln!("  no X Activity subscriptions");
    }
    for subscription in &found {
        print_subscription(subscription);
    }
    Ok(())
}

/// Ends the channel's subscriptions: every X Activity DM subscription of its
/// account (a stream channel's have no webhook), and (with `aaa`, unless the channel
/// streams) its Account Activity subscription to the webhook.
async fn unsubscribe(
    config: &Path,
    channel: &str,
    webhook_id: Option<String>,
) -> anyhow::Result<()> {
    let (settings, client) = channel_client(config, channel).await?;
    let channel_settings = find_channel(&settings, channel)?;
    let user_id = account_id(&settings, channel_settings, &client).await?;
    if channel_settings.webhook_api == WebhookApi::Aaa && !channel_settings.inbound.streams() {
        let webhook_id = resolve_webhook_id(&client, channel, webhook_id.clone()).await?;
        client
            .unsubscribe(&webhook_id, &user_id)
            .await
            .with_context(|| {
                format!("channel {channel}: unsubscribing from webhook {webhook_id}")
            })?;
        crate::outln!("channel {channel}: unsubscribed from webhook {webhook_id}");
    }
    let found = account_subscriptions(&client, channel, &user_id).await?;
    let mine = found.iter().filter(|s| {
        s.event_type.starts_with("dm.")
            && webhook_id
                .as_deref()
                .is_none_or(|id| s.webhook_id.as_deref() == Some(id))
    });
    for subscription in mine {
        let id = &subscription.subscription_id;
        let deleted = client
            .delete_activity_subscription(id)
            .await
            .with_context(|| format!("channel {channel}: deleting subscription {id}"))?;
        let how = if deleted { "deleted" } else { "already gone" };
        crate::outln!(
            "channel {channel}: {} subscription {id} {how}",
            subscription.event_type
        );
    }
    Ok(())
}

/// The account's X user id: configured, or asked of X (`GET /2/users/me`) with the
/// authentication of `webhooks`, the channel's client.
async fn account_id(
    settings: &Settings,
    channel: &ChannelSettings,
    webhooks: &WebhookClient,
) -> anyhow::Result<String> {
    if let Some(id) = &channel.user_id {
        return Ok(id.clone());
    }
    let client = XHttp::new()
        .and_then(|http| XClient::with_auth((&settings.x).into(), webhooks.auth(), http))
        .with_context(|| format!("channel {}: setting up the X client", channel.name))?;
    let (user, _) = client
        .me()
        .await
        .with_context(|| format!("channel {}: asking X who the account is", channel.name))?;
    Ok(user.id.as_str().to_owned())
}

/// The App's X Activity subscriptions whose filter is the account.
async fn account_subscriptions(
    client: &WebhookClient,
    channel: &str,
    user_id: &str,
) -> anyhow::Result<Vec<ActivitySubscription>> {
    let all = client
        .list_activity_subscriptions()
        .await
        .with_context(|| format!("channel {channel}: listing X Activity subscriptions"))?;
    Ok(all
        .into_iter()
        .filter(|s| s.user_id.as_deref() == Some(user_id))
        .collect())
}

fn print_subscription(subscription: &ActivitySubscription) {
    crate::outln!(
        "  {} subscription {} -> webhook {}",
        subscription.event_type,
        subscription.subscription_id,
        subscription
            .webhook_id
            .as_deref()
            .unwrap_or("none (stream only)")
    );
}

/// Asks X to run the CRC again. X may answer only that it ran the CRC: its
/// list says whether it passed.
async fn revalidate(
    config: &Path,
    channel: &str,
    webhook_id: Option<String>,
) -> anyhow::Result<()> {
    let (_, client) = channel_client(config, channel).await?;
    let webhook_id = resolve_webhook_id(&client, channel, webhook_id).await?;
    client
        .revalidate_webhook(&webhook_id)
        .await
        .with_context(|| format!("channel {channel}: revalidating webhook {webhook_id}"))?;
    let still_invalid = client
        .list_webhooks()
        .await
        .is_ok_and(|webhooks| webhooks.iter().any(|w| w.id == webhook_id && !w.valid));
    if still_invalid {
        bail!(
            "channel {channel}: X ran the CRC for webhook {webhook_id} but still lists it invalid: {}",
            WebhookError::CrcValidationFailed
        );
    }
    crate::outln!("webhook {webhook_id} passed X's CRC and is valid again");
    Ok(())
}

/// Prints each selected channel's webhooks (id, URL, validity, creation) and
/// whether the channel's account is subscribed to each.
async fn status(config: &Path, only: Option<&str>) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let channels: Vec<&ChannelSettings> = match only {
        Some(name) => vec![find_channel(&settings, name)?],
        None => settings.channels.iter().collect(),
    };
    if channels.is_empty() {
        bail!("{} configures no channels", config.display());
    }
    for channel in channels {
        let name = &channel.name;
        let client = client_for(&settings, channel).await?;
        let webhooks = client
            .list_webhooks()
            .await
            .with_context(|| format!("channel {name}: listing webhooks"))?;
        crate::outln!("channel {name}:");
        if webhooks.is_empty() {
            crate::outln!(
                "  no webhook registered (xbridge webhook register --channel {name} --url URL)"
            );
        }
        if channel.webhook_api == WebhookApi::Xaa {
            for webhook in &webhooks {
                print_webhook(webhook);
            }
            let user_id = account_id(&settings, channel, &client).await?;
            let found = account_subscriptions(&client, name, &user_id).await?;
            crate::outln!("  X Activity subscriptions of account {user_id}:");
            if found.is_empty() {
                crate::outln!("    none (xbridge webhook subscribe --channel {name})");
            }
            for subscription in &found {
                print_subscription(subscription);
            }
            continue;
        }
        for webhook in &webhooks {
            print_webhook(webhook);
            let subscribed = client
                .subscription_status(&webhook.id)
                .await
                .with_context(|| {
                    format!(
                        "channel {name}: checking the subscription to webhook {}",
                        webhook.id
                    )
                })?;
            crate::outln!("    subscribed: {}", yes_no(subscribed));
        }
    }
    Ok(())
}

fn print_webhook(webhook: &Webhook) {
    crate::outln!("  webhook {}", webhook.id);
    crate::outln!("    url: {}", webhook.url);
    crate::outln!("    valid: {}", yes_no(webhook.valid));
    crate::outln!("    created_at: {}", webhook.created_at.to_rfc3339());
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

/// The webhook id given, or the App's only webhook: Pay Per Use allows one, so
/// asking for the id would only make the operator copy it around.
async fn resolve_webhook_id(
    client: &WebhookClient,
    channel: &str,
    given: Option<String>,
) -> anyhow::Result<String> {
    if let Some(id) = given {
        return Ok(id);
    }
    let webhooks = client
        .list_webhooks()
        .await
        .with_context(|| format!("channel {channel}: listing webhooks"))?;
    match webhooks.as_slice() {
        [only] => Ok(only.id.clone()),
        [] => bail!(
            "channel {channel}: this X App has no webhook yet; register one first with `xbridge webhook register --channel {channel} --url URL`"
        ),
        several => bail!(
            "channel {channel}: this X App has {} webhooks ({}); pick one with --webhook-id",
            several.len(),
            several
                .iter()
                .map(|w| w.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The configuration and a webhook client for one named channel.
async fn channel_client(config: &Path, name: &str) -> anyhow::Result<(Settings, WebhookClient)> {
    let settings = Settings::load(config)?;
    let client = client_for(&settings, find_channel(&settings, name)?).await?;
    Ok((settings, client))
}

fn find_channel<'a>(settings: &'a Settings, name: &str) -> anyhow::Result<&'a ChannelSettings> {
    settings.channel(name).with_context(|| {
        let known: Vec<&str> = settings.channels.iter().map(|c| c.name.as_str()).collect();
        format!(
            "no channel {name:?} in the configuration (configured: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )
    })
}

async fn client_for(
    settings: &Settings,
    channel: &ChannelSettings,
) -> anyhow::Result<WebhookClient> {
    let http = XHttp::new()
        .map_err(WebhookError::from)
        .with_context(|| format!("channel {}: setting up the X client", channel.name))?;
    let auth = account_auth(settings, channel, &http).await?;
    WebhookClient::with_http(
        (&settings.x).into(),
        channel.bearer_token.clone(),
        auth,
        http,
    )
    .map_err(WebhookError::from)
    .with_context(|| format!("channel {}: setting up the X client", channel.name))
}

/// How the channel's account authenticates: its OAuth 1.0a pair, or its OAuth 2.0 grant
/// from the state store, refreshed and stored back there like the running bridge does
/// (the store holds the only current refresh token: X spends the old one at each refresh).
async fn account_auth(
    settings: &Settings,
    channel: &ChannelSettings,
    http: &XHttp,
) -> anyhow::Result<XAuth> {
    let name = &channel.name;
    if channel.oauth2.is_none() {
        return Ok(XAuth::from(UserCredentials::from(channel)));
    }
    let key = settings
        .state
        .credentials_key()
        .with_context(|| format!("channel {name}: its OAuth 2.0 grant is stored encrypted"))?;
    let store = crate::app::open_store(&settings.state).await.with_context(|| {
        format!("channel {name}: its OAuth 2.0 grant is in the state store (with the embedded store, run this while the bridge is stopped)")
    })?;
    channel_auth(&settings.x, channel, store, Some(Arc::new(key)), http).map_err(anyhow::Error::msg)
}
