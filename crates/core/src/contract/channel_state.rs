//! A channel's state as the CRM hears of it: the `channel.state` event on the incoming
//! exchange (`docs/schemas/channel-state.json`), also shown on `/readyz` and as the
//! `xbridge_channel_state` gauge's `state` label. The registry that tracks and
//! broadcasts the states is [`crate::channel_state::ChannelStates`].

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::contract::timestamp::{rfc3339_millis, rfc3339_millis_opt};

/// The states a channel can be in. A closed set: documented for the CRM and
/// used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelState {
    /// Replies go out and DMs come in.
    Ok,
    /// X's rate limit holds replies until a reset.
    RateLimited,
    /// The X account has no credits (or hit a cap): replies wait.
    CreditsExhausted,
    /// X refuses the channel's credentials.
    Unauthorized,
    /// The access token may not send DMs.
    MissingPermission,
    /// X considers the webhook invalid: no webhook events arrive.
    WebhookInvalid,
    /// Polling for DMs is paused after repeated failures.
    PollingPaused,
    /// Replies are held by the CRM's `channel.pause` until `channel.resume`;
    /// DMs keep coming in.
    Paused,
    /// The channel was removed (`channel.remove`, or gone from the file on a
    /// reload): nothing is served; its replies wait in its queue.
    Removed,
    /// RabbitMQ refuses the channel's reply queue (declared before with other
    /// arguments, deleted, or not permitted to the bridge's user): its replies
    /// are not taken until the bridge, trying again, is let in. The other
    /// channels are not affected.
    BrokerRefused,
}

impl ChannelState {
    /// Every state, for metrics.
    pub const ALL: [ChannelState; 10] = [
        ChannelState::Ok,
        ChannelState::RateLimited,
        ChannelState::CreditsExhausted,
        ChannelState::Unauthorized,
        ChannelState::MissingPermission,
        ChannelState::WebhookInvalid,
        ChannelState::PollingPaused,
        ChannelState::Paused,
        ChannelState::Removed,
        ChannelState::BrokerRefused,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelState::Ok => "ok",
            ChannelState::RateLimited => "rate_limited",
            ChannelState::CreditsExhausted => "credits_exhausted",
            ChannelState::Unauthorized => "unauthorized",
            ChannelState::MissingPermission => "missing_permission",
            ChannelState::WebhookInvalid => "webhook_invalid",
            ChannelState::PollingPaused => "polling_paused",
            ChannelState::Paused => "paused",
            ChannelState::Removed => "removed",
            ChannelState::BrokerRefused => "broker_refused",
        }
    }
}

/// A channel's current state, since when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelStatus {
    /// The state.
    pub state: ChannelState,
    /// When the channel entered it, or when its cause (`detail`) last changed
    /// ([`ChannelStates::explain`](crate::channel_state::ChannelStates::explain)).
    #[serde(serialize_with = "rfc3339_millis")]
    pub since: DateTime<Utc>,
    /// For `rate_limited`: when X's window resets.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339_millis_opt"
    )]
    pub until: Option<DateTime<Utc>>,
    /// Human-readable cause (X's own words where there are some).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The `channel.state` event for the CRM.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelStateEvent {
    /// Always `channel.state`.
    #[serde(rename = "type")]
    pub event_type: &'static str,
    /// The channel.
    pub channel: String,
    /// Its new status.
    #[serde(flatten)]
    pub status: ChannelStatus,
}

impl ChannelStateEvent {
    /// Routing key on the incoming exchange.
    pub fn routing_key(&self) -> String {
        format!("{}.channel.state", self.channel)
    }

    /// Its AMQP `message_id`, `<channel>:state:<since millis>`: one per status, so a
    /// CRM deduplicating by it drops only a repeat of the same status
    /// ([`ChannelStates::explain`](crate::channel_state::ChannelStates::explain) moves
    /// `since` for a new cause).
    pub fn amqp_message_id(&self) -> String {
        format!(
            "{}:state:{}",
            self.channel,
            self.status.since.timestamp_millis()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_event_is_keyed_by_channel_and_since() {
        let event = ChannelStateEvent {
            event_type: "channel.state",
            channel: "acme".into(),
            status: ChannelStatus {
                state: ChannelState::RateLimited,
                since: DateTime::from_timestamp_millis(1_764_000_000_123).unwrap(),
                until: DateTime::from_timestamp_millis(1_764_000_900_000),
                detail: None,
            },
        };
        assert_eq!(event.routing_key(), "acme.channel.state");
        assert_eq!(event.amqp_message_id(), "acme:state:1764000000123");
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["since"], "2025-11-24T16:00:00.123Z");
        assert_eq!(json["until"], "2025-11-24T16:15:00.000Z");
        assert_eq!(json["state"], "rate_limited");
    }
}
