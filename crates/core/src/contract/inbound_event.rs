//! The events the inbound side publishes to the CRM, as the contract in
//! `docs/schemas/` describes them: `message.received`, `message.echo`
//! (`message-received.json`, `message-echo.json`), `conversation.typing` and
//! `message.read` (`conversation-typing.json`, `message-read.json`).
//!
//! Each one is a normalized item from X plus the channel it belongs to, and serializes
//! with a `type` field, so a consumer reading several event types from one queue can
//! tell them apart without the routing key. The routing key on `xbridge.incoming` is
//! `<channel>.<type>`, as for the outbound side's status events.

use chrono::{DateTime, Utc};
use serde::Serialize;
use xbridge_x_api::{DmEventId, UserId};

use crate::contract::direct_message::DirectMessage;
use crate::contract::timestamp::rfc3339_millis;

/// `message.received`: a customer sent the channel's account a DM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename = "message.received")]
pub struct ReceivedMessage {
    /// The channel (configured X account) the DM was sent to.
    pub channel: String,
    /// The DM.
    #[serde(flatten)]
    pub message: DirectMessage,
}

/// `message.echo`: the company's account sent a DM from somewhere other than the bridge
/// (X's own app, another tool), so the CRM can show the whole conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename = "message.echo")]
pub struct MessageEcho {
    /// The channel (configured X account) that sent the DM.
    pub channel: String,
    /// The DM; its sender is the channel's own account.
    #[serde(flatten)]
    pub message: DirectMessage,
}

/// `conversation.typing`: someone is typing in one of the channel's conversations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename = "conversation.typing")]
pub struct ConversationTyping {
    /// The channel whose conversation it is.
    pub channel: String,
    /// Who types, to whom, when.
    #[serde(flatten)]
    pub typing: Typing,
}

/// `message.read`: someone read one of the channel's conversations up to a DM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename = "message.read")]
pub struct MessageRead {
    /// The channel whose conversation it is.
    pub channel: String,
    /// Who read up to which DM, when.
    #[serde(flatten)]
    pub read: ReadReceipt,
}

/// A typing indicator: lets an agent see that the customer is writing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Typing {
    /// The X user who is typing.
    pub sender_id: UserId,
    /// The X user on the other side of the conversation.
    pub recipient_id: UserId,
    /// When X saw the typing.
    #[serde(serialize_with = "rfc3339_millis")]
    pub created_at: DateTime<Utc>,
}

/// A read receipt: lets the CRM show that a reply was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadReceipt {
    /// The X user who read the conversation.
    pub reader_id: UserId,
    /// The last DM event they read; every earlier DM of the conversation is read too.
    pub last_read_event_id: DmEventId,
    /// When X saw the read.
    #[serde(serialize_with = "rfc3339_millis")]
    pub created_at: DateTime<Utc>,
}

macro_rules! event_type {
    ($event:ty, $name:literal) => {
        impl $event {
            /// The event type: the `type` field, the AMQP `type` property and the last
            /// words of the routing key.
            pub const EVENT_TYPE: &'static str = $name;

            /// Routing key on the incoming exchange: `<channel>.<type>`.
            pub fn routing_key(&self) -> String {
                format!("{}.{}", self.channel, Self::EVENT_TYPE)
            }
        }
    };
}

event_type!(ReceivedMessage, "message.received");
event_type!(MessageEcho, "message.echo");
event_type!(ConversationTyping, "conversation.typing");
event_type!(MessageRead, "message.read");

impl ReceivedMessage {
    /// A customer's DM to `channel`.
    pub fn new(channel: impl Into<String>, message: DirectMessage) -> ReceivedMessage {
        ReceivedMessage {
            channel: channel.into(),
            message,
        }
    }
}

impl MessageEcho {
    /// A DM `channel`'s account sent outside the bridge.
    pub fn new(channel: impl Into<String>, message: DirectMessage) -> MessageEcho {
        MessageEcho {
            channel: channel.into(),
            message,
        }
    }
}

impl ConversationTyping {
    /// A typing indicator in one of `channel`'s conversations.
    pub fn new(channel: impl Into<String>, typing: Typing) -> ConversationTyping {
        ConversationTyping {
            channel: channel.into(),
            typing,
        }
    }
}

impl MessageRead {
    /// A read receipt in one of `channel`'s conversations.
    pub fn new(channel: impl Into<String>, read: ReadReceipt) -> MessageRead {
        MessageRead {
            channel: channel.into(),
            read,
        }
    }
}
