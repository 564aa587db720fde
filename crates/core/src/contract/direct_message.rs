//! A DM as the bridge understands it, whichever way X delivered it: the body of the
//! `message.received` and `message.echo` events (`docs/schemas/message-received.json`,
//! `message-echo.json`), with its sender and media. The inbound side reads X's bodies
//! into these types; [`super::inbound_event`] wraps them for the CRM.

use chrono::{DateTime, Utc};
use serde::Serialize;
use xbridge_x_api::{ConversationId, DmEventId, UserId};

use crate::contract::timestamp::rfc3339_millis;

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
/// the caller knows the channel, and the inbound side's `classify` tells a customer's DM
/// from an echo. [`ReceivedMessage`](super::ReceivedMessage) and
/// [`MessageEcho`](super::MessageEcho) wrap it for the CRM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectMessage {
    /// X's id of the DM event. The same DM delivered twice (webhook retry, webhook and
    /// poll) has the same id, so it is the key to drop duplicates by.
    pub event_id: DmEventId,
    /// X's `dm_conversation_id`: `<smaller user id>-<larger user id>` for a 1:1
    /// conversation, a bare number for a group. The CRM threads DMs by it and can reply
    /// into it.
    pub conversation_id: ConversationId,
    /// Who wrote the DM.
    pub sender: Sender,
    /// The X user the DM was addressed to (in a group conversation, which has no single
    /// recipient, the account the DM was fetched for).
    pub recipient_id: UserId,
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

/// The author of a DM as the CRM sees it.
///
/// Only `id` is certain. The profile fields come from the user table of the same body,
/// which may lack the user; they are then `None` (serialized as `null`) and a later user
/// lookup can fill them. They let the CRM link the X account to a contact and show who
/// wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sender {
    /// X user id (decimal string): the stable key of the X account.
    pub id: UserId,
    /// The @handle without the `@` (`screen_name` in webhooks, `username` in v2).
    pub username: Option<String>,
    /// The display name.
    pub name: Option<String>,
    /// The profile picture's URL, as X gives it (the small `_normal` size).
    pub avatar_url: Option<String>,
}

/// What kind of media an attachment is, so the CRM can choose how to show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentKind {
    /// A still image.
    Photo,
    /// A video; `url` is its best MP4.
    Video,
    /// A GIF, which X stores as a silent looping MP4.
    AnimatedGif,
}

/// One media item of a DM (X allows one per DM), as the contract publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// Photo, video or animated GIF.
    pub kind: AttachmentKind,
    /// X's numeric media id (`1221092866912550912`): what webhooks give, and the digits of
    /// a v2 `media_key` after its `_`, so both paths fill it and the CRM can recognise the
    /// same media whichever way it came. `None` only if X gave neither.
    pub media_id: Option<String>,
    /// X's v2 media key (`3_1221092866912550912`), as the poller's `includes.media` gives
    /// it, or a webhook when its media entity carries one. Not made up from the id: the
    /// prefix depends on X's media category, which a webhook does not state.
    pub media_key: Option<String>,
    /// The bridge's signed URL of the media (for videos and GIFs, of the highest-bitrate
    /// MP4), which the CRM fetches without X credentials until it expires. `None` when the
    /// bridge has no public URL for its media proxy or X's URL is not on an allowed origin.
    pub url: Option<String>,
    /// The bridge's signed URL of the still image X gives for a video or GIF; `None` for a
    /// photo (its `url` is the image) or when X gives none or it cannot be proxied.
    pub preview_url: Option<String>,
    /// Width in pixels, when X says (the original size if given, else the largest X
    /// renders).
    pub width: Option<u32>,
    /// Height in pixels, when X says.
    pub height: Option<u32>,
    /// A video's length in milliseconds, when X says.
    pub duration_ms: Option<u64>,
    /// X's URL of the media (TON, or the best MP4 variant): needs the channel's OAuth
    /// signature, so it is only the media proxy's upstream, never published.
    #[serde(skip)]
    pub x_url: String,
    /// X's URL of the preview image, never published (see `x_url`).
    #[serde(skip)]
    pub x_preview_url: Option<String>,
}
