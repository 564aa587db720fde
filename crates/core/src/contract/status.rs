//! What became of a reply, told to the CRM on the incoming exchange:
//! `message.sent` (`docs/schemas/message-sent.json`) or `message.failed`
//! (`docs/schemas/message-failed.json`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use xbridge_x_api::{ConversationId, DmEventId};

use crate::contract::reason::FailureReason;
use crate::contract::timestamp::rfc3339_millis;

/// An event the bridge publishes to the CRM about one of its replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum StatusEvent {
    /// The reply went out as a DM.
    #[serde(rename = "message.sent")]
    Sent {
        /// The CRM's id of the reply.
        message_id: String,
        /// The channel it went out on.
        channel: String,
        /// X's id of the DM event (the first, when the reply became several
        /// DMs): lets the CRM match the echo X sends back.
        dm_event_id: DmEventId,
        /// Every DM the reply became, in order: one, or one per attachment
        /// (X takes one attachment per DM; the text goes with the first).
        dm_event_ids: Vec<DmEventId>,
        /// X's conversation id, for replies addressed by recipient.
        conversation_id: ConversationId,
        /// When X accepted it.
        #[serde(serialize_with = "rfc3339_millis")]
        sent_at: DateTime<Utc>,
    },
    /// The reply will not go out; it is in the dead-letter queue.
    #[serde(rename = "message.failed")]
    Failed {
        /// The CRM's id of the reply.
        message_id: String,
        /// The channel it was for.
        channel: String,
        /// Machine-readable reason.
        reason: FailureReason,
        /// Human-readable explanation for the agent.
        detail: String,
        /// Requests made to X for this reply.
        attempts: u32,
    },
}

impl StatusEvent {
    /// `message.sent` / `message.failed`: the AMQP `type` and the last words
    /// of the routing key.
    pub fn event_type(&self) -> &'static str {
        match self {
            StatusEvent::Sent { .. } => "message.sent",
            StatusEvent::Failed { .. } => "message.failed",
        }
    }

    /// The reply's CRM id.
    pub fn message_id(&self) -> &str {
        match self {
            StatusEvent::Sent { message_id, .. } | StatusEvent::Failed { message_id, .. } => {
                message_id
            }
        }
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        match self {
            StatusEvent::Sent { channel, .. } | StatusEvent::Failed { channel, .. } => channel,
        }
    }

    /// Routing key on the incoming exchange: `<channel>.<type>`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.channel(), self.event_type())
    }

    /// Deterministic AMQP message id (`<channel>:<message_id>:sent`), so the
    /// CRM can drop the rare duplicate a crash can cause.
    pub fn amqp_message_id(&self) -> String {
        let suffix = match self {
            StatusEvent::Sent { .. } => "sent",
            StatusEvent::Failed { .. } => "failed",
        };
        format!("{}:{}:{suffix}", self.channel(), self.message_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_events_serialize_to_the_contract() {
        let sent = StatusEvent::Sent {
            message_id: "m1".into(),
            channel: "acme".into(),
            dm_event_id: "1585800613253812228".into(),
            dm_event_ids: vec!["1585800613253812228".into()],
            conversation_id: "1-2".into(),
            sent_at: DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
                .unwrap()
                .into(),
        };
        assert_eq!(
            serde_json::to_value(&sent).unwrap(),
            serde_json::json!({"type":"message.sent","message_id":"m1","channel":"acme","dm_event_id":"1585800613253812228","dm_event_ids":["1585800613253812228"],"conversation_id":"1-2","sent_at":"2026-11-25T10:00:00.000Z"})
        );
        assert_eq!(sent.routing_key(), "acme.message.sent");
        assert_eq!(sent.amqp_message_id(), "acme:m1:sent");
        let failed = StatusEvent::Failed {
            message_id: "m1".into(),
            channel: "acme".into(),
            reason: FailureReason::CreditsExhausted,
            detail: "no credits".into(),
            attempts: 2,
        };
        assert_eq!(
            serde_json::to_value(&failed).unwrap()["reason"],
            "credits_exhausted"
        );
    }
}
