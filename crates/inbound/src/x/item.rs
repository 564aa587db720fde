//! What one event of an X body turns into.

use serde_json::Value;
use xbridge_core::contract::{DirectMessage, ReadReceipt, Typing};
use xbridge_core::excerpt::quoted;
use xbridge_x_api::DmEventId;

use crate::x::json::{self, Object};

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
        event_id: Option<DmEventId>,
        /// Why, naming the event and the field.
        reason: String,
    },
}

/// An event the bridge skips on purpose; logged at debug level.
pub(crate) fn skipped(event_id: Option<DmEventId>, reason: String) -> InboundItem {
    tracing::debug!(event_id = event_id.as_ref().map(|id| id.as_str()), %reason, "inbound event ignored");
    InboundItem::Ignored { event_id, reason }
}

/// An event the bridge cannot read although it should; logged as a warning, since a
/// customer's DM may be lost with it.
pub(crate) fn unreadable(event_id: Option<DmEventId>, reason: String) -> InboundItem {
    tracing::warn!(event_id = event_id.as_ref().map(|id| id.as_str()), %reason, "inbound event cannot be read; ignored");
    InboundItem::Ignored { event_id, reason }
}

/// One message event of either format, as an item: its id, then its type in the
/// format's `type_field` (a message is `expected`; another type is skipped), then
/// the message as `create` reads it. Whatever cannot be read is unreadable, with the
/// event's id when it has one.
pub(crate) fn message_item(
    event: &Object,
    path: &str,
    type_field: &str,
    expected: &str,
    create: impl FnOnce(&DmEventId) -> Result<DirectMessage, String>,
) -> InboundItem {
    let event_id = match json::required_id(event, "id", path) {
        Ok(id) => id,
        Err(reason) => return unreadable(None, reason),
    };
    match event.get(type_field) {
        Some(Value::String(kind)) if kind == expected => {}
        Some(Value::String(kind)) => {
            return skipped(
                Some(event_id),
                format!("{path}{type_field} is {}, not a message", quoted(kind)),
            )
        }
        _ => {
            return unreadable(
                Some(event_id),
                format!("{path}{type_field} is missing or not a string"),
            )
        }
    }
    match create(&event_id) {
        Ok(message) => InboundItem::Message(message),
        Err(reason) => unreadable(Some(event_id), reason),
    }
}
