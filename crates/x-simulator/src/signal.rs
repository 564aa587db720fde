//! Typing indicators and read receipts: DM activity that is not a message. X keeps no DM
//! event for them; they exist only as webhook deliveries (AAA's
//! `direct_message_indicate_typing_events` / `direct_message_mark_read_events`, XAA's
//! `dm.indicate_typing` / `dm.read`).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// What a customer did in a conversation with an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SignalKind {
    /// Is typing a message to the account.
    Typing,
    /// Read the account's DMs up to this event.
    Read { last_read_event_id: String },
}

/// One typing indicator or read receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Signal {
    /// A fresh id, logged as the delivery's `event_id` (X's bodies carry none).
    pub id: String,
    /// Who typed or read.
    pub sender_id: String,
    /// The account typed to, or whose DMs were read: the subscribed side.
    pub recipient_id: String,
    pub created_at: DateTime<Utc>,
    pub kind: SignalKind,
}

impl Signal {
    /// The array AAA (and, UNCONFIRMED, XAA's payload) carries it in.
    pub(crate) fn array(&self) -> &'static str {
        match self.kind {
            SignalKind::Typing => "direct_message_indicate_typing_events",
            SignalKind::Read { .. } => "direct_message_mark_read_events",
        }
    }

    /// The XAA event type a subscription must have to receive it.
    pub(crate) fn event_type(&self) -> &'static str {
        match self.kind {
            SignalKind::Typing => "dm.indicate_typing",
            SignalKind::Read { .. } => "dm.read",
        }
    }

    /// One element of its array, as in X's AAA docs.
    pub(crate) fn to_json(&self) -> Value {
        let mut shown = json!({
            "created_timestamp": self.created_at.timestamp_millis().to_string(),
            "sender_id": self.sender_id,
            "target": { "recipient_id": self.recipient_id },
        });
        if let SignalKind::Read { last_read_event_id } = &self.kind {
            shown["last_read_event_id"] = json!(last_read_event_id);
        }
        shown
    }
}
