//! The stream channels' XAA subscriptions: each has one per event type it wants, without a
//! webhook (so only the stream carries them) and tagged `xbridge:<channel>`, and no other.
//!
//! The App's task keeps them so while it holds the App's lease ([`ensure`]), at every
//! (re)connection of the stream and every 10 minutes while connected — subscriptions are
//! deleted elsewhere too (a lagging replica's [`retire`], an operator's `xbridge webhook
//! unsubscribe`) and X says nothing of it, so they come back by themselves. It creates what
//! X lacks and deletes the channel's tagged stream subscriptions it no longer wants (an event
//! type dropped from `xaa_events`, the account of an old `user_id`). A channel
//! that leaves the stream has all of its own deleted by [`retire`], run by
//! [`super::StreamApps::leave`] in every replica (the task may be gone: it stops with the App's
//! last stream channel). Subscriptions are told apart by their tag and `webhook_id`, so a
//! webhook channel's, another tool's or another channel's are never touched.

use std::collections::BTreeMap;

use xbridge_core::config::{ChannelSettings, Settings};
use xbridge_x_api::{ActivitySubscription, WebhookClient, WebhookError, XHttp};

use super::Member;

/// The tag of the channel's stream subscriptions.
fn tag(channel: &ChannelSettings) -> String {
    format!("xbridge:{}", channel.name)
}

/// Whether `subscription` is one of the channel's stream subscriptions: no webhook, and the
/// channel's tag (a webhook channel's, another tool's or another channel's are not).
pub fn is_streamed_for(subscription: &ActivitySubscription, channel: &ChannelSettings) -> bool {
    subscription.webhook_id.is_none() && subscription.tag.as_deref() == Some(&tag(channel))
}

/// The X client for the channel's subscriptions (created and listed with the account's user
/// context, deleted with the App's Bearer token). Its one construction, kept apart so a change
/// of how channels authenticate touches one place.
fn client(
    settings: &Settings,
    http: &XHttp,
    member: &Member,
) -> Result<WebhookClient, WebhookError> {
    WebhookClient::with_http(
        (&settings.x).into(),
        member.settings.bearer_token.clone(),
        member.auth.clone(),
        http.clone(),
    )
    .map_err(WebhookError::from)
}

/// What [`ensure`] did for one channel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ensured {
    /// Its subscriptions are what it wants now.
    pub(crate) done: bool,
    /// Its `dm.received` subscription was missing and is made now: if it had one before,
    /// it was deleted elsewhere, and the DMs meanwhile never came by the stream.
    pub(crate) received_made: bool,
}

/// Makes each member's subscriptions what it wants: creates the missing, deletes the
/// unwanted. Per channel, what was done; one not `done` is logged and tried again at the
/// next reconnection or the next upkeep, every 10 minutes.
pub(crate) async fn ensure(
    settings: &Settings,
    http: &XHttp,
    members: &BTreeMap<String, Member>,
) -> BTreeMap<String, Ensured> {
    let mut outcomes = BTreeMap::new();
    for (name, member) in members {
        outcomes.insert(name.clone(), ensure_one(settings, http, member).await);
    }
    outcomes
}

async fn ensure_one(settings: &Settings, http: &XHttp, member: &Member) -> Ensured {
    let channel = &member.settings;
    let Some(user_id) = channel.user_id.as_deref() else {
        return Ensured {
            done: true,
            received_made: false,
        };
    };
    let Some((client, present)) = listed(settings, http, member).await else {
        return Ensured::default();
    };
    let inbound = &settings.inbound;
    let wanted: Vec<&str> = channel
        .xaa_event_types(inbound.publish_echoes, inbound.publish_activity)
        .into_iter()
        .map(|event| event.as_str())
        .collect();
    let mut done = true;
    let mut received_made = false;
    for event_type in &wanted {
        // Only the channel's own: another's (untagged, another tag) may be deleted by its
        // owner at any time, and would leave this channel without events.
        let there = present.iter().any(|s| {
            s.event_type == *event_type
                && s.user_id.as_deref() == Some(user_id)
                && is_streamed_for(s, channel)
        });
        if !there {
            let made = create(&client, channel, event_type, user_id).await;
            received_made |= made && *event_type == "dm.received";
            done &= made;
        }
    }
    let unwanted = present.iter().filter(|s| {
        is_streamed_for(s, channel)
            && !(s.user_id.as_deref() == Some(user_id) && wanted.contains(&s.event_type.as_str()))
    });
    for subscription in unwanted {
        done &= delete(&client, channel, subscription).await;
    }
    Ensured {
        done,
        received_made,
    }
}

/// Deletes every stream subscription of `member`'s channel, which no longer streams.
pub(crate) async fn retire(settings: &Settings, http: &XHttp, member: &Member) {
    let channel = &member.settings;
    let Some((client, present)) = listed(settings, http, member).await else {
        return;
    };
    for subscription in present.iter().filter(|s| is_streamed_for(s, channel)) {
        delete(&client, channel, subscription).await;
    }
}

/// The channel's client and the App's subscriptions; `None` when X could not be asked
/// (logged).
async fn listed(
    settings: &Settings,
    http: &XHttp,
    member: &Member,
) -> Option<(WebhookClient, Vec<ActivitySubscription>)> {
    let channel = &member.settings;
    let client = match client(settings, http, member) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(channel = channel.name, %error, "cannot build the X client for the channel's subscriptions");
            return None;
        }
    };
    match client.list_activity_subscriptions().await {
        Ok(present) => Some((client, present)),
        Err(error) => {
            tracing::warn!(channel = channel.name, %error, "cannot list the X Activity subscriptions");
            None
        }
    }
}

async fn create(
    client: &WebhookClient,
    channel: &ChannelSettings,
    event_type: &str,
    user_id: &str,
) -> bool {
    match client
        .create_stream_subscription(event_type, user_id, &tag(channel))
        .await
    {
        Ok(created) => {
            tracing::info!(
                channel = channel.name,
                event_type,
                subscription_id = created.subscription_id,
                "X Activity subscription created for the stream"
            );
            true
        }
        Err(error) => {
            tracing::error!(channel = channel.name, event_type, %error, "cannot subscribe the account for the activity stream");
            false
        }
    }
}

async fn delete(
    client: &WebhookClient,
    channel: &ChannelSettings,
    subscription: &ActivitySubscription,
) -> bool {
    let (event_type, id) = (&subscription.event_type, &subscription.subscription_id);
    match client.delete_activity_subscription(id).await {
        Ok(_) => {
            tracing::info!(
                channel = channel.name,
                event_type,
                subscription_id = id,
                "X Activity stream subscription the channel no longer wants deleted"
            );
            true
        }
        Err(error) => {
            tracing::error!(channel = channel.name, event_type, subscription_id = id, %error, "cannot delete an X Activity stream subscription the channel no longer wants");
            false
        }
    }
}
