//! What the X Activity API delivers to webhooks: for each `dm.*` subscription whose user took
//! part in a DM (or was typed to, or read), its event in XAA's envelope
//! `{"data":{"event_uuid","filter":{"user_id"},"event_type","tag"?,"payload":{…}}}`.
//!
//! A message is `dm.received` for its recipient and `dm.sent` for its sender (the account's
//! own sends through the API included, as with AAA). Typing and read receipts go to the
//! account typed to or whose DMs were read. Subscriptions without a webhook (stream only) and
//! invalid webhooks get nothing here.

use rand::Rng as _;
use serde_json::{json, Value};

use crate::dm_json::{self, UserShape};
use crate::signal::Signal;
use crate::state::{ActivitySubscription, DmEvent, Inner, Webhook};

/// One XAA POST to make.
pub(crate) struct Target {
    pub webhook: Webhook,
    /// The subscription's `filter.user_id`.
    pub for_user_id: String,
    pub body: String,
}

fn message_payload(inner: &Inner, event: &DmEvent) -> Value {
    json!({
        "direct_message_events": [dm_json::message_event(event)],
        "users": dm_json::users(inner, event, UserShape::Xaa),
    })
}

fn signal_payload(inner: &Inner, signal: &Signal) -> Value {
    let ids = [signal.sender_id.as_str(), signal.recipient_id.as_str()];
    json!({
        signal.array(): [signal.to_json()],
        "users": dm_json::users_of(inner, ids, UserShape::Xaa),
    })
}

/// What the App's activity stream carries for a message: `(app_key, envelope)` for every
/// matching subscription, with or without a webhook ([`crate::activity_stream`]).
pub(crate) fn message_stream_lines(inner: &Inner, event: &DmEvent) -> Vec<(String, String)> {
    let Some(recipient) = event.recipient_id.as_deref() else {
        return Vec::new();
    };
    let payload = message_payload(inner, event);
    let mut lines = stream_lines(inner, recipient, "dm.received", &payload);
    if event.sender_id != recipient {
        lines.extend(stream_lines(inner, &event.sender_id, "dm.sent", &payload));
    }
    lines
}

/// What the App's activity stream carries for a typing indicator or read receipt.
pub(crate) fn signal_stream_lines(inner: &Inner, signal: &Signal) -> Vec<(String, String)> {
    let payload = signal_payload(inner, signal);
    stream_lines(inner, &signal.recipient_id, signal.event_type(), &payload)
}

fn stream_lines(
    inner: &Inner,
    user_id: &str,
    event_type: &str,
    payload: &Value,
) -> Vec<(String, String)> {
    inner
        .activity_subscriptions
        .iter()
        .filter(|s| s.user_id == user_id && s.event_type == event_type)
        .map(|subscription| {
            (
                subscription.app_key.clone(),
                envelope(subscription, payload),
            )
        })
        .collect()
}

/// The XAA deliveries of a message.
pub(crate) fn message_targets(inner: &Inner, event: &DmEvent) -> Vec<Target> {
    let Some(recipient) = event.recipient_id.as_deref() else {
        return Vec::new();
    };
    let payload = message_payload(inner, event);
    let mut targets = targets(inner, recipient, "dm.received", &payload);
    if event.sender_id != recipient {
        targets.extend(targets_for(inner, &event.sender_id, "dm.sent", &payload));
    }
    targets
}

/// The XAA deliveries of a typing indicator or read receipt.
pub(crate) fn signal_targets(inner: &Inner, signal: &Signal) -> Vec<Target> {
    let payload = signal_payload(inner, signal);
    targets(inner, &signal.recipient_id, signal.event_type(), &payload)
}

fn targets(inner: &Inner, user_id: &str, event_type: &str, payload: &Value) -> Vec<Target> {
    targets_for(inner, user_id, event_type, payload).collect()
}

fn targets_for<'a>(
    inner: &'a Inner,
    user_id: &'a str,
    event_type: &'a str,
    payload: &'a Value,
) -> impl Iterator<Item = Target> + 'a {
    inner
        .activity_subscriptions
        .iter()
        .filter(move |s| s.user_id == user_id && s.event_type == event_type)
        .filter_map(move |subscription| {
            let webhook_id = subscription.webhook_id.as_deref()?;
            let webhook = inner
                .webhooks
                .iter()
                .find(|w| w.id == webhook_id && w.valid)?;
            Some(Target {
                webhook: webhook.clone(),
                for_user_id: user_id.to_string(),
                body: envelope(subscription, payload),
            })
        })
}

/// XAA's envelope around a payload. `event_uuid` is a signed 64-bit number as a string, as
/// in X's samples (some are negative).
pub(crate) fn envelope(subscription: &ActivitySubscription, payload: &Value) -> String {
    let mut data = json!({
        "event_uuid": rand::rng().random::<i64>().to_string(),
        "filter": { "user_id": subscription.user_id },
        "event_type": subscription.event_type,
        "payload": payload,
    });
    if let Some(tag) = &subscription.tag {
        data["tag"] = json!(tag);
    }
    json!({ "data": data }).to_string()
}
