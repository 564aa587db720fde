//! A DM as the bridge understands it, whichever way X delivered it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::x::attachment::Attachment;
use crate::x::sender::Sender;

/// How the bridge learnt of a DM: the CRM may want to know that a DM came late, through
/// the poller that catches up on what the webhook missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceivedVia {
    /// Pushed by X to the webhook (Account Activity or X Activity API).
    Webhook,
    /// Found by paging `GET /2/dm_events`.
    Poll,
}

/// One DM, normalized from a webhook body or a `GET /2/dm_events` page.
///
/// It does not yet say which channel it belongs to, nor whether the company sent it:
/// the caller knows the channel, and [`classify`](crate::classify) tells a customer's DM
/// from an echo. [`ReceivedMessage`](crate::ReceivedMessage) and
/// [`MessageEcho`](crate::MessageEcho) wrap it for the CRM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectMessage {
    /// X's id of the DM event. The same DM delivered twice (webhook retry, webhook and
    /// poll) has the same id, so it is the key to drop duplicates by.
    pub event_id: String,
    /// X's `dm_conversation_id`: `<smaller user id>-<larger user id>` for a 1:1
    /// conversation, a bare number for a group. The CRM threads DMs by it and can reply
    /// into it.
    pub conversation_id: String,
    /// Who wrote the DM.
    pub sender: Sender,
    /// The X user the DM was addressed to (in a group conversation, which has no single
    /// recipient, the account the DM was fetched for).
    pub recipient_id: String,
    /// The text, without the `https://t.co/…` link X appends for an attachment (the
    /// attachment is in `attachments`). Empty for a DM that is only media.
    pub text: String,
    /// The DM's media (X allows one per DM).
    pub attachments: Vec<Attachment>,
    /// When X says the DM was sent (never when the bridge got it).
    #[serde(serialize_with = "rfc3339_millis")]
    pub created_at: DateTime<Utc>,
    /// Whether the webhook or the poller delivered it.
    pub received_via: ReceivedVia,
    /// The X App that sent the DM (`source_app_id`, webhooks only). Not part of the
    /// contract; it can help tell the bridge's own sends from others.
    #[serde(skip)]
    pub source_app_id: Option<String>,
}

/// RFC 3339 in UTC with milliseconds (`2018-01-19T23:12:40.557Z`), the contract's time
/// format.
pub(crate) fn rfc3339_millis<S: serde::Serializer>(
    at: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}
