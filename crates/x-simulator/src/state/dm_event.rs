//! One DM event as X stores it for both participants, and the media it may carry.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The only DM event type the simulator produces (X also has `ParticipantsJoin`/`Leave` for groups).
pub const MESSAGE_CREATE: &str = "MessageCreate";

/// What kind of media a DM carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaType {
    /// A picture: one TON URL, no variants.
    Photo,
    /// A video: a preview image and mp4 variants at several bit rates.
    Video,
    /// A GIF, which X stores as one mp4 variant plus a preview image.
    AnimatedGif,
}

impl MediaType {
    /// X's `type` value: `photo`, `video` or `animated_gif`.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::Photo => "photo",
            MediaType::Video => "video",
            MediaType::AnimatedGif => "animated_gif",
        }
    }

    /// The prefix X puts before the media id in a `media_key`.
    pub(crate) fn key_prefix(self) -> &'static str {
        match self {
            MediaType::Photo => "3",
            MediaType::Video => "7",
            MediaType::AnimatedGif => "16",
        }
    }

    pub(crate) fn default_size(self) -> (u32, u32) {
        match self {
            MediaType::Photo => (1280, 720),
            MediaType::Video => (1280, 720),
            MediaType::AnimatedGif => (498, 280),
        }
    }

    pub(crate) fn default_extension(self) -> &'static str {
        match self {
            MediaType::Photo => "jpg",
            MediaType::Video | MediaType::AnimatedGif => "mp4",
        }
    }
}
/// One rendition of a video or GIF.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaVariant {
    /// Bits per second; X gives 0 for a GIF's single variant.
    pub bit_rate: u64,
    /// `video/mp4`.
    pub content_type: String,
    /// Where the simulator serves it (no credentials needed).
    pub url: String,
}

/// The media attached to a DM event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmAttachment {
    /// The media's own 19-digit id, minted just before the event's (so it is smaller, as on X).
    pub media_id: String,
    /// `3_<media_id>` for a photo, `7_` for a video, `16_` for an animated GIF, as X keys media.
    pub media_key: String,
    /// Photo, video or animated GIF.
    pub media_type: MediaType,
    /// The TON-like URL `{base_url}/1.1/ton/data/dm/{event_id}/{media_id}/{file_name}`, which the
    /// simulator serves to an OAuth 1.0a-signed GET of one of the conversation's accounts.
    pub url: String,
    /// A still image for videos and GIFs.
    pub preview_image_url: Option<String>,
    /// The mp4 renditions of a video or GIF; empty for a photo.
    pub variants: Vec<MediaVariant>,
    /// Pixel width.
    pub width: u32,
    /// Pixel height.
    pub height: u32,
    /// A video's length; `None` for photos and GIFs.
    pub duration_ms: Option<u64>,
    /// The `https://t.co/…` link X appends to the text of the webhook payload for this media.
    pub tco_url: String,
    /// The bytes served for the media ([`crate::MediaSpec::content`]); `None` serves a placeholder.
    /// Not part of any X answer.
    #[serde(skip)]
    pub content: Option<Vec<u8>>,
}

/// One DM as X stores it for both participants: what `GET /2/dm_events` lists and webhooks
/// deliver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmEvent {
    /// The 19-digit event id, from the same sequence as the send endpoints' `dm_event_id`.
    pub id: String,
    /// Always `MessageCreate`.
    pub event_type: String,
    /// The text as written, without the t.co link that stands for media in webhook payloads.
    pub text: String,
    /// Who wrote it: an account (its sends) or a customer.
    pub sender_id: String,
    /// The other member of a 1:1 conversation; `None` for a send into a group conversation.
    pub recipient_id: Option<String>,
    /// `smaller-larger` user id (numerically) for 1:1 conversations, the group id otherwise.
    pub dm_conversation_id: String,
    /// When it was written, to the millisecond.
    pub created_at: DateTime<Utc>,
    /// The media, if any.
    pub attachment: Option<DmAttachment>,
    /// The App that sent it through the API: set for the accounts' sends, `None` for customers'
    /// DMs (written in X's own apps).
    pub source_app_id: Option<String>,
}

impl DmEvent {
    /// Whether the event is in this user's DM history (sent or received).
    pub fn involves(&self, user_id: &str) -> bool {
        self.sender_id == user_id || self.recipient_id.as_deref() == Some(user_id)
    }

    /// `created_at` as X writes it: RFC 3339 with milliseconds, `Z`.
    pub fn created_at_string(&self) -> String {
        self.created_at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }

    pub(crate) fn numeric_id(&self) -> u64 {
        self.id.parse().unwrap_or(0)
    }
}
