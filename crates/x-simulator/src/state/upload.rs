//! What the simulator remembers of a media upload, and the processing settings tests steer.

use std::collections::BTreeMap;

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::dm_event::MediaType;

/// How an account's video and GIF uploads process after FINALIZE ([`crate::Simulator::set_media_processing`],
/// `POST /_sim/media_processing`). Images are never processed: they are usable at once.
///
/// As JSON, every field optional: `{"status_polls_before_done":2,"outcome":{"kind":"failed","message":"Unsupported video format"},"check_after_secs":0}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MediaProcessing {
    /// How many STATUS polls answer `in_progress` before one answers the outcome.
    pub status_polls_before_done: u32,
    /// What processing ends in.
    pub outcome: ProcessingOutcome,
    /// The `check_after_secs` of FINALIZE's and STATUS's `processing_info`; tests set 0 so a
    /// client that honours it does not wait.
    pub check_after_secs: u64,
}

impl Default for MediaProcessing {
    /// One poll in progress, then success, with X's typical one-second hint.
    fn default() -> Self {
        MediaProcessing {
            status_polls_before_done: 1,
            outcome: ProcessingOutcome::Succeeded,
            check_after_secs: 1,
        }
    }
}

/// How processing ends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProcessingOutcome {
    /// `succeeded`: the media can be attached.
    #[default]
    Succeeded,
    /// `failed` with X's v1.1-style `{"code":1,"name":"InvalidMedia","message":…}`.
    Failed {
        /// The `message` X gives, e.g. `Unsupported video format`.
        message: String,
    },
}

/// Where an upload stands, as [`Upload::processing`] shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ProcessingState {
    /// Initialized, not finalized: APPENDs still accepted.
    Uploading,
    /// A video or GIF finalized and not yet polled.
    Pending,
    /// Polled at least once, not done.
    InProgress {
        /// The last `progress_percent` answered.
        progress_percent: u8,
    },
    /// Usable in a DM; images get here at FINALIZE.
    Succeeded,
    /// Processing failed; a DM with it is refused.
    Failed {
        /// X's message.
        message: String,
    },
}

/// One media upload as a test sees it ([`crate::Simulator::uploads`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Upload {
    /// The 19-digit media id INITIALIZE answered, from the simulator's one id sequence.
    pub id: String,
    /// `3_<id>` (dm_image), `16_<id>` (dm_gif) or `7_<id>` (dm_video), as X keys media.
    pub media_key: String,
    /// The account that uploaded it; only it may append, finalize, poll or attach it.
    pub user_id: String,
    /// INITIALIZE's `media_type`, e.g. `image/jpeg`.
    pub media_type: String,
    /// INITIALIZE's `media_category`: `dm_image`, `dm_gif` or `dm_video`.
    pub category: String,
    /// INITIALIZE's `total_bytes`.
    pub total_bytes: u64,
    /// INITIALIZE's `shared` (false if absent).
    pub shared: bool,
    /// Every accepted APPEND as `(segment_index, bytes)`, in arrival order (a repeated index
    /// replaced the earlier segment and shows twice here).
    pub segments: Vec<(u32, u64)>,
    /// Whether FINALIZE accepted it.
    pub finalized: bool,
    /// Where processing stands.
    pub processing: ProcessingState,
    /// The segments' bytes, assembled in segment-index order (left out of the admin JSON).
    #[serde(skip)]
    pub bytes: Vec<u8>,
    /// `bytes.len()`, for the admin JSON.
    pub size: u64,
    /// When INITIALIZE was answered, by the simulator's clock.
    pub created_at: DateTime<Utc>,
}

/// The `media_category` values the simulator serves: DM media only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Category {
    /// `dm_image`.
    Image,
    /// `dm_gif`.
    Gif,
    /// `dm_video`.
    Video,
}

impl Category {
    pub(crate) fn parse(value: &str) -> Option<Category> {
        match value {
            "dm_image" => Some(Category::Image),
            "dm_gif" => Some(Category::Gif),
            "dm_video" => Some(Category::Video),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Category::Image => "dm_image",
            Category::Gif => "dm_gif",
            Category::Video => "dm_video",
        }
    }

    /// X's size limits per kind (README §5): image 5 MB, GIF 15 MB, video 512 MB, in MiB.
    pub(crate) fn max_bytes(self) -> u64 {
        const MIB: u64 = 1024 * 1024;
        match self {
            Category::Image => 5 * MIB,
            Category::Gif => 15 * MIB,
            Category::Video => 512 * MIB,
        }
    }

    /// The MIME types X takes for the category (its documented image formats JPEG, PNG, WEBP,
    /// BMP; GIFs; MP4 and MOV videos).
    pub(crate) fn media_types(self) -> &'static [&'static str] {
        match self {
            Category::Image => &[
                "image/jpeg",
                "image/pjpeg",
                "image/png",
                "image/webp",
                "image/bmp",
            ],
            Category::Gif => &["image/gif"],
            Category::Video => &["video/mp4", "video/quicktime"],
        }
    }

    pub(crate) fn media_kind(self) -> MediaType {
        match self {
            Category::Image => MediaType::Photo,
            Category::Gif => MediaType::AnimatedGif,
            Category::Video => MediaType::Video,
        }
    }

    pub(crate) fn key_prefix(self) -> &'static str {
        match self {
            Category::Image => "3",
            Category::Gif => "16",
            Category::Video => "7",
        }
    }

    /// Videos and GIFs are transcoded after FINALIZE; images are usable at once.
    pub(crate) fn processes(self) -> bool {
        self != Category::Image
    }
}

/// What the simulator remembers of one upload.
#[derive(Debug)]
pub(crate) struct UploadRecord {
    pub(crate) id: String,
    pub(crate) media_key: String,
    pub(crate) user_id: String,
    pub(crate) media_type: String,
    pub(crate) category: Category,
    pub(crate) total_bytes: u64,
    pub(crate) shared: bool,
    pub(crate) arrivals: Vec<(u32, u64)>,
    pub(crate) parts: BTreeMap<u32, Bytes>,
    pub(crate) finalized: bool,
    pub(crate) processing: ProcessingState,
    /// The account's processing settings as they were at FINALIZE.
    pub(crate) settings: MediaProcessing,
    /// STATUS polls answered since FINALIZE.
    pub(crate) polls: u32,
    pub(crate) created_at: DateTime<Utc>,
}
