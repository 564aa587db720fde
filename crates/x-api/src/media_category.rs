//! What X calls the kind of DM media (`media_category` of `POST /2/media/upload/initialize`),
//! and which MIME types fall into which: X applies each category's size and format limits at
//! upload, and decides by it whether to process the media after FINALIZE.
//!
//! The one definition in the bridge: the CRM's reply contract (`xbridge_core::contract`)
//! re-exports it to say which attachments a reply may carry, and the uploader sends its
//! wire name to X.

use std::fmt;

const MIB: u64 = 1024 * 1024;

/// The MIME types a DM attachment may have: those X accepts for DM media, each in one
/// [`MediaCategory`] ([`MediaCategory::from_mime_type`]).
pub const SUPPORTED_MIME_TYPES: [&str; 6] = [
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "video/mp4",
    "video/quicktime",
];

/// X's media category for a DM attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaCategory {
    /// JPEG, PNG or WebP image: `dm_image`, at most 5 MiB, usable at once.
    DmImage,
    /// Animated GIF: `dm_gif`, at most 15 MiB, processed by X.
    DmGif,
    /// MP4 or QuickTime video: `dm_video`, at most 512 MiB, processed by X.
    DmVideo,
}

impl MediaCategory {
    /// The category of a supported MIME type, `None` for any other. GIFs are
    /// their own category because X animates them and allows them more bytes.
    /// `video/quicktime` is in X's list of upload media types and X transcodes
    /// it; MP4 (H.264/AAC) remains what X recommends.
    pub fn from_mime_type(mime_type: &str) -> Option<MediaCategory> {
        match mime_type {
            "image/jpeg" | "image/png" | "image/webp" => Some(MediaCategory::DmImage),
            "image/gif" => Some(MediaCategory::DmGif),
            "video/mp4" | "video/quicktime" => Some(MediaCategory::DmVideo),
            _ => None,
        }
    }

    /// X's wire name (`dm_image`, `dm_gif`, `dm_video`).
    pub fn as_str(self) -> &'static str {
        match self {
            MediaCategory::DmImage => "dm_image",
            MediaCategory::DmGif => "dm_gif",
            MediaCategory::DmVideo => "dm_video",
        }
    }

    /// X's size limit for the category, in bytes (image 5 MB, GIF 15 MB, video 512 MB,
    /// counted in MiB), so a caller can refuse a too-large file before downloading or
    /// uploading it.
    pub fn max_bytes(self) -> u64 {
        match self {
            MediaCategory::DmImage => 5 * MIB,
            MediaCategory::DmGif => 15 * MIB,
            MediaCategory::DmVideo => 512 * MIB,
        }
    }
}

impl fmt::Display for MediaCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_use_xs_names_and_limits() {
        assert_eq!(MediaCategory::DmImage.as_str(), "dm_image");
        assert_eq!(MediaCategory::DmGif.to_string(), "dm_gif");
        assert_eq!(MediaCategory::DmVideo.max_bytes(), 512 * 1024 * 1024);
    }
}
