//! Media attached to a DM, read from either of X's two media shapes.
//!
//! DM media URLs are not public: a photo's `https://ton.twitter.com/1.1/ton/data/dm/…`
//! URL must be fetched with a request signed by the channel's user token. The bridge
//! passes the URL on; fetching it is a later step.

use serde::Serialize;
use serde_json::Value;

use crate::json::{self, Object};

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

impl AttachmentKind {
    /// X's name for the kind (`photo`, `video`, `animated_gif`), the same in both shapes.
    fn from_x(kind: &str) -> Option<AttachmentKind> {
        match kind {
            "photo" => Some(AttachmentKind::Photo),
            "video" => Some(AttachmentKind::Video),
            "animated_gif" => Some(AttachmentKind::AnimatedGif),
            _ => None,
        }
    }
}

/// One media item of a DM (X allows one per DM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// Photo, video or animated GIF.
    pub kind: AttachmentKind,
    /// X's id of the media: the `media_key` (`3_1583157113245011970`) from v2 lookups,
    /// the numeric media id (`1221092866912550912`) from webhooks. Lets the CRM
    /// recognise the same media when it is delivered twice.
    pub media_key: String,
    /// Where the media is: the photo itself, or for videos and GIFs the highest-bitrate
    /// MP4. Fetching it needs the channel's user token.
    pub url: String,
    /// A still image standing for a video or GIF, when X gives one.
    pub preview_url: Option<String>,
}

impl Attachment {
    /// From a webhook's `message_data.attachment.media` (v1.1 shape: `id_str`,
    /// `media_url_https`, `type`, `video_info.variants[].bitrate`).
    pub(crate) fn from_v1_media(media: &Object, path: &str) -> Result<Attachment, String> {
        let kind = kind(media, path)?;
        let media_key = match media.get("id_str") {
            Some(Value::String(_)) => json::required_id(media, "id_str", path)?,
            _ => json::required_id(media, "id", path)?,
        };
        let image = json::optional_str(media, "media_url_https")
            .or_else(|| json::optional_str(media, "media_url"));
        let (url, preview_url) = match kind {
            AttachmentKind::Photo => (image, None),
            AttachmentKind::Video | AttachmentKind::AnimatedGif => {
                let variants = media
                    .get("video_info")
                    .and_then(|info| info.get("variants"));
                match best_mp4(variants) {
                    Some(mp4) => (Some(mp4), image),
                    None => (image, None),
                }
            }
        };
        let url = url.ok_or_else(|| format!("{path}media_url_https is missing"))?;
        Ok(Attachment {
            kind,
            media_key,
            url,
            preview_url,
        })
    }

    /// From an `includes.media[]` entry of a v2 lookup (`media_key`, `type`, `url`,
    /// `preview_image_url`, `variants[].bit_rate`).
    pub(crate) fn from_v2_media(media: &Object, path: &str) -> Result<Attachment, String> {
        let kind = kind(media, path)?;
        let media_key = match media.get("media_key") {
            Some(Value::String(key)) if is_media_key(key) => key.clone(),
            Some(other) => return Err(format!("{path}media_key {other} is not an X media key")),
            None => return Err(format!("{path}media_key is missing")),
        };
        let preview_url = json::optional_str(media, "preview_image_url");
        let url = match kind {
            AttachmentKind::Photo => json::optional_str(media, "url"),
            AttachmentKind::Video | AttachmentKind::AnimatedGif => {
                best_mp4(media.get("variants")).or_else(|| json::optional_str(media, "url"))
            }
        };
        let url = url.ok_or_else(|| {
            format!("{path}url is missing (request media.fields=url,variants,preview_image_url)")
        })?;
        Ok(Attachment {
            kind,
            media_key,
            url,
            preview_url,
        })
    }
}

fn kind(media: &Object, path: &str) -> Result<AttachmentKind, String> {
    match media.get("type") {
        Some(Value::String(kind)) => AttachmentKind::from_x(kind)
            .ok_or_else(|| format!("{path}type {kind:?} is not a media kind the bridge knows")),
        Some(other) => Err(format!(
            "{path}type must be a string, not {}",
            json::kind(other)
        )),
        None => Err(format!("{path}type is missing")),
    }
}

/// `<type>_<id>` as X forms media keys; the contract's `^([0-9]{1,3}_)?[0-9]{1,19}$`.
fn is_media_key(key: &str) -> bool {
    match key.split_once('_') {
        Some((prefix, id)) => {
            (1..=3).contains(&prefix.len())
                && prefix.bytes().all(|b| b.is_ascii_digit())
                && json::is_id(id)
        }
        None => json::is_id(key),
    }
}

/// The URL of the highest-bitrate `video/mp4` variant. The bitrate is `bit_rate` in v2
/// and `bitrate` in v1.1; GIFs have a single variant, often without one.
fn best_mp4(variants: Option<&Value>) -> Option<String> {
    variants?
        .as_array()?
        .iter()
        .filter_map(Value::as_object)
        .filter(|v| v.get("content_type").and_then(Value::as_str) == Some("video/mp4"))
        .filter_map(|v| {
            let url = json::optional_str(v, "url")?;
            let rate = v
                .get("bit_rate")
                .or_else(|| v.get("bitrate"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            Some((rate, url))
        })
        .max_by_key(|(rate, _)| *rate)
        .map(|(_, url)| url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v1(media: Value) -> Result<Attachment, String> {
        Attachment::from_v1_media(media.as_object().unwrap(), "media.")
    }

    fn v2(media: Value) -> Result<Attachment, String> {
        Attachment::from_v2_media(media.as_object().unwrap(), "media.")
    }

    #[test]
    fn a_v2_video_takes_the_highest_bitrate_mp4() {
        let video = v2(json!({"media_key":"7_1583157113245011970","type":"video",
            "preview_image_url":"https://pbs.twimg.com/p.jpg",
            "variants":[
                {"content_type":"application/x-mpegURL","url":"https://video.twimg.com/v.m3u8"},
                {"bit_rate":832000,"content_type":"video/mp4","url":"https://video.twimg.com/mid.mp4"},
                {"bit_rate":2176000,"content_type":"video/mp4","url":"https://video.twimg.com/high.mp4"},
                {"bit_rate":256000,"content_type":"video/mp4","url":"https://video.twimg.com/low.mp4"}]}))
        .unwrap();
        assert_eq!(video.kind, AttachmentKind::Video);
        assert_eq!(video.media_key, "7_1583157113245011970");
        assert_eq!(video.url, "https://video.twimg.com/high.mp4");
        assert_eq!(
            video.preview_url.as_deref(),
            Some("https://pbs.twimg.com/p.jpg")
        );
    }

    #[test]
    fn a_v1_gif_takes_its_mp4_and_keeps_the_image_as_preview() {
        let gif = v1(json!({"id_str":"1221092866912550912","type":"animated_gif",
            "media_url_https":"https://pbs.twimg.com/dm_gif_preview/x.jpg",
            "video_info":{"variants":[{"bitrate":0,"content_type":"video/mp4","url":"https://video.twimg.com/dm_gif/x.mp4"}]}}))
        .unwrap();
        assert_eq!(gif.kind, AttachmentKind::AnimatedGif);
        assert_eq!(gif.url, "https://video.twimg.com/dm_gif/x.mp4");
        assert_eq!(
            gif.preview_url.as_deref(),
            Some("https://pbs.twimg.com/dm_gif_preview/x.jpg")
        );
    }

    #[test]
    fn a_v1_media_id_given_only_as_a_number_keeps_its_digits() {
        let media: Value = serde_json::from_str(
            r#"{"id":1221092866912550912,"type":"photo","media_url_https":"https://ton.twitter.com/x.png"}"#,
        )
        .unwrap();
        assert_eq!(v1(media).unwrap().media_key, "1221092866912550912");
    }

    #[test]
    fn unusable_media_say_why() {
        assert!(
            v1(json!({"id_str":"1","type":"sticker","media_url_https":"https://x"}))
                .unwrap_err()
                .contains("sticker")
        );
        assert!(v1(json!({"type":"photo","media_url_https":"https://x"}))
            .unwrap_err()
            .contains("media.id is missing"));
        assert!(v1(json!({"id_str":"1","type":"photo"}))
            .unwrap_err()
            .contains("media_url_https is missing"));
        assert!(v2(json!({"media_key":"3_1","type":"photo"}))
            .unwrap_err()
            .contains("url is missing"));
        assert!(
            v2(json!({"media_key":"x_1","type":"photo","url":"https://x"}))
                .unwrap_err()
                .contains("not an X media key")
        );
        assert!(v2(json!({"media_key":"3_1","url":"https://x"}))
            .unwrap_err()
            .contains("type is missing"));
    }
}
