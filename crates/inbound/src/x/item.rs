//! What one event of an X body turns into.

use chrono::{DateTime, Utc};
use serde::Serialize;

use serde_json::Value;
use xbridge_core::excerpt::quoted;

use crate::x::json::Object;
use crate::x::message::{rfc3339_millis, DirectMessage};

/// One event of a webhook body or a `GET /2/dm_events` page, normalized.
///
/// A body holds several events; each becomes one item, in the body's order, so one
/// unusable event never costs the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundItem {
    /// A DM, sent by a customer or by the company's account.
    Message(DirectMessage),
    /// Someone is typing in a conversation.
    Typing(Typing),
    /// Someone read a conversation up to a DM.
    Read(ReadReceipt),
    /// An event the bridge does not turn into anything: a kind it does not handle
    /// (`tweet_create_events`, an app revoke, `ParticipantsJoin`…) or an event it cannot
    /// read (then a warning is logged too).
    Ignored {
        /// The event's id, when it has a readable one, for logs and for the poller to
        /// know how far it got.
        event_id: Option<String>,
        /// Why, naming the event and the field.
        reason: String,
    },
}

/// A typing indicator: lets an agent see that the customer is writing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Typing {
    /// The X user who is typing.
    pub sender_id: String,
    /// The X user on the other side of the conversation.
    pub recipient_id: String,
    /// When X saw the typing.
    #[serde(serialize_with = "rfc3339_millis")]
    pub created_at: DateTime<Utc>,
}

/// A read receipt: lets the CRM show that a reply was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadReceipt {
    /// The X user who read the conversation.
    pub reader_id: String,
    /// The last DM event they read; every earlier DM of the conversation is read too.
    pub last_read_event_id: String,
    /// When X saw the read.
    #[serde(serialize_with = "rfc3339_millis")]
    pub created_at: DateTime<Utc>,
}

/// An event the bridge skips on purpose; logged at debug level.
pub(crate) fn skipped(event_id: Option<String>, reason: String) -> InboundItem {
    tracing::debug!(event_id = event_id.as_deref(), %reason, "inbound event ignored");
    InboundItem::Ignored { event_id, reason }
}

/// An event the bridge cannot read although it should; logged as a warning, since a
/// customer's DM may be lost with it.
pub(crate) fn unreadable(event_id: Option<String>, reason: String) -> InboundItem {
    tracing::warn!(event_id = event_id.as_deref(), %reason, "inbound event cannot be read; ignored");
    InboundItem::Ignored { event_id, reason }
}

/// Whether the event's type `field` (at `path`) names a message, `expected`: both
/// formats carry the type in a field of their own. `Err` is the item for an event of
/// another type (skipped) or of none (unreadable).
pub(crate) fn expect_message_type(
    event: &Object,
    event_id: &str,
    path: &str,
    field: &str,
    expected: &str,
) -> Result<(), InboundItem> {
    match event.get(field) {
        Some(Value::String(kind)) if kind == expected => Ok(()),
        Some(Value::String(kind)) => Err(skipped(
            Some(event_id.to_owned()),
            format!("{path}{field} is {}, not a message", quoted(kind)),
        )),
        _ => Err(unreadable(
            Some(event_id.to_owned()),
            format!("{path}{field} is missing or not a string"),
        )),
    }
}
